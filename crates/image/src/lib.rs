//! Sandbox images from OCI sources: a distribution registry (v2 API, through
//! the `oci-client` crate), an OCI layout directory or archive
//! (`skopeo copy … oci-archive:`), or a `docker save` archive. A source is
//! first [fetched](fetch) into a directory of layer blobs and its config,
//! then [unpacked](unpack::apply_layer) layer by layer into a root
//! filesystem.

mod archive;
mod registry;
pub mod unpack;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use registry::Credentials;
pub use unpack::Compression;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad image reference `{0}`: {1}")]
    BadReference(String, String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("not in the registry: {0}")]
    NotFound(String),
    #[error("the registry refused access: {0}")]
    Unauthorized(String),
    #[error("{0}")]
    Archive(String),
    #[error("layer: {0}")]
    Layer(String),
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `[docker://]HOST/REPO:TAG` or `…@sha256:…`; Docker Hub when no host.
    Registry(String),
    /// `oci:DIR`: an OCI image layout directory.
    OciDir(PathBuf),
    /// `oci-archive:PATH`: an OCI image layout in a tar file.
    OciArchive(PathBuf),
    /// `docker-archive:PATH`: what `docker save` writes.
    DockerArchive(PathBuf),
}

impl Source {
    pub fn parse(s: &str) -> Result<Source, Error> {
        let s = s.trim();
        let bad = |why: &str| Error::BadReference(s.into(), why.into());
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let path = |p: &str| -> Result<PathBuf, Error> {
            if p.is_empty() {
                Err(bad("no path"))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        if let Some(p) = s.strip_prefix("oci-archive:") {
            return Ok(Source::OciArchive(path(p)?));
        }
        if let Some(p) = s.strip_prefix("docker-archive:") {
            return Ok(Source::DockerArchive(path(p)?));
        }
        if let Some(p) = s.strip_prefix("oci:") {
            return Ok(Source::OciDir(path(p)?));
        }
        let r = s.strip_prefix("docker://").unwrap_or(s);
        registry::parse_reference(r).map_err(|e| bad(&e))?;
        Ok(Source::Registry(r.to_string()))
    }

    /// Whether the source is a file the client has (an archive), which it
    /// sends along rather than naming.
    pub fn is_archive(&self) -> bool {
        matches!(self, Source::OciArchive(_) | Source::DockerArchive(_))
    }
}

/// What of an image's config a sandbox uses (the OCI image config's
/// `config` object; Docker's is the same).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
}

impl ImageConfig {
    /// From an image config blob (`{"architecture": …, "config": {…}}`).
    pub fn from_blob(json: &[u8]) -> Result<ImageConfig, Error> {
        #[derive(Deserialize)]
        struct Blob {
            #[serde(default)]
            architecture: Option<String>,
            #[serde(default)]
            os: Option<String>,
            #[serde(default)]
            config: Option<ImageConfig>,
        }
        let b: Blob = serde_json::from_slice(json)
            .map_err(|e| Error::Unsupported(format!("image config: {e}")))?;
        if let Some(os) = b.os.as_deref().filter(|o| *o != "linux") {
            return Err(Error::Unsupported(format!("os {os} (sandboxes run linux)")));
        }
        if let Some(a) = b.architecture.as_deref().filter(|a| *a != "amd64") {
            return Err(Error::Unsupported(format!(
                "architecture {a} (this host runs amd64)"
            )));
        }
        let mut c = b.config.unwrap_or_default();
        // Empty strings mean "not set" in image configs.
        c.working_dir = c.working_dir.filter(|w| !w.is_empty());
        c.user = c.user.filter(|u| !u.is_empty());
        Ok(c)
    }

    /// The command a sandbox of this image starts with: entrypoint + cmd.
    pub fn start_command(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .flatten()
            .chain(self.cmd.iter().flatten())
            .cloned()
            .collect()
    }
}

/// A fetched image: its config and its layer blobs in order, bottom first.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub config: ImageConfig,
    pub layers: Vec<LayerBlob>,
    /// The manifest's digest (`sha256:…`), when the source names one.
    pub digest: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub path: PathBuf,
    pub compression: Option<Compression>,
    pub size: u64,
}

/// What a fetch and an unpack report as they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The manifest is read: `layers` blobs, `bytes` in all.
    Resolved { layers: usize, bytes: u64 },
    /// Layer `index` (from 0) is downloaded.
    Fetched { index: usize, bytes: u64 },
    /// Layer `index` is applied to the root filesystem.
    Applied { index: usize, entries: u64 },
}

/// Fetches `source` into directory `work` (made; the caller removes it).
/// Archives and layout directories are read where they are; registry
/// blobs are downloaded, their digests checked.
pub async fn fetch(
    source: &Source,
    credentials: &Credentials,
    insecure: bool,
    work: &Path,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Fetched, Error> {
    tokio::fs::create_dir_all(work).await?;
    let local = match source {
        // A pull says when it has resolved the manifest, before it downloads.
        Source::Registry(r) => {
            return registry::pull(r, credentials, insecure, work, progress).await
        }
        Source::OciDir(d) => {
            let d = d.clone();
            blocking(move || archive::open_oci_layout(&d)).await
        }
        Source::OciArchive(p) | Source::DockerArchive(p) => {
            let (p, dir) = (p.clone(), work.join("archive"));
            let docker = matches!(source, Source::DockerArchive(_));
            blocking(move || {
                archive::extract(&p, &dir)?;
                if docker {
                    archive::open_docker_archive(&dir)
                } else {
                    archive::open_oci_layout(&dir)
                }
            })
            .await
        }
    }?;
    progress(Progress::Resolved {
        layers: local.layers.len(),
        bytes: local.layers.iter().map(|l| l.size).sum(),
    });
    Ok(local)
}

/// Applies the fetched layers to `rootfs` (made if missing), in order.
pub async fn unpack(
    fetched: &Fetched,
    rootfs: &Path,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(), Error> {
    tokio::fs::create_dir_all(rootfs).await?;
    for (index, layer) in fetched.layers.iter().enumerate() {
        let (layer, root) = (layer.clone(), rootfs.to_path_buf());
        let applied = blocking(move || {
            let mut f = std::fs::File::open(&layer.path)?;
            let compression = match layer.compression {
                Some(c) => c,
                None => {
                    use std::io::{Read, Seek};
                    let mut head = [0u8; 4];
                    let n = f.read(&mut head)?;
                    f.rewind()?;
                    Compression::sniff(&head[..n])
                }
            };
            unpack::apply_layer(&root, std::io::BufReader::new(f), compression)
        })
        .await?;
        progress(Progress::Applied {
            index,
            entries: applied.entries,
        });
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            Source::parse("oci-archive:/tmp/a.tar").unwrap(),
            Source::OciArchive("/tmp/a.tar".into())
        );
        assert_eq!(
            Source::parse("docker-archive:x.tar").unwrap(),
            Source::DockerArchive("x.tar".into())
        );
        assert_eq!(
            Source::parse("docker://127.0.0.1:5000/bb:1").unwrap(),
            Source::Registry("127.0.0.1:5000/bb:1".into())
        );
        assert_eq!(
            Source::parse("busybox").unwrap(),
            Source::Registry("busybox".into())
        );
        for bad in ["", "oci-archive:", "Not A Ref!", "a/b:c:d:e"] {
            assert!(Source::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_reads_what_sandboxes_use() {
        let c = ImageConfig::from_blob(
            br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"WorkingDir":"/app","User":"","Entrypoint":["/bin/tini"],"Cmd":["serve"]},"rootfs":{}}"#,
        )
        .unwrap();
        assert_eq!(c.env, vec!["A=1"]);
        assert_eq!(c.working_dir.as_deref(), Some("/app"));
        assert_eq!(c.user, None);
        assert_eq!(c.start_command(), vec!["/bin/tini", "serve"]);
        assert!(ImageConfig::from_blob(br#"{"architecture":"arm64","os":"linux"}"#).is_err());
        assert_eq!(
            ImageConfig::from_blob(br#"{"os":"linux"}"#).unwrap(),
            ImageConfig::default()
        );
    }
}
