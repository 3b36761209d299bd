//! OCI image layouts (a directory, or a tar of one: `oci-archive`) and
//! `docker save` archives (`docker-archive`).

use crate::{unpack, Compression, Error, Fetched, ImageConfig, LayerBlob};
use serde::Deserialize;
use std::path::{Path, PathBuf};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Unpacks archive `tar` into `dir` (paths kept inside it).
pub(crate) fn extract(tar: &Path, dir: &Path) -> Result<(), Error> {
    let f = std::fs::File::open(tar).map_err(|e| Error::Archive(format!("the archive: {e}")))?;
    std::fs::create_dir_all(dir)?;
    // Not named: it is a temporary file of the server's.
    unpack::apply_layer(dir, std::io::BufReader::new(f), Compression::None).map_err(|e| {
        Error::Archive(format!(
            "the archive is not a readable tar file: {}",
            e.to_string().trim_start_matches("layer: ")
        ))
    })?;
    Ok(())
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Reads an OCI image layout in `dir`: its index's linux/amd64 image (or
/// its only one).
pub(crate) fn open_oci_layout(dir: &Path) -> Result<Fetched, Error> {
    let bad = |why: String| Error::Archive(format!("OCI layout {}: {why}", dir.display()));
    let index =
        std::fs::read(dir.join("index.json")).map_err(|e| bad(format!("index.json: {e}")))?;
    let mut index: Index =
        serde_json::from_slice(&index).map_err(|e| bad(format!("index.json: {e}")))?;
    // Nested indexes (manifest lists) are followed to an image manifest.
    for _ in 0..4 {
        let chosen = choose(&index.manifests).ok_or_else(|| bad("no linux/amd64 image".into()))?;
        let blob = read_blob(dir, &chosen.digest)?;
        if chosen.media_type == INDEX || chosen.media_type == DOCKER_LIST {
            index = serde_json::from_slice(&blob).map_err(|e| bad(format!("index: {e}")))?;
            continue;
        }
        let manifest: Manifest =
            serde_json::from_slice(&blob).map_err(|e| bad(format!("manifest: {e}")))?;
        let config = ImageConfig::from_blob(&read_blob(dir, &manifest.config.digest)?)?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| {
                Ok(LayerBlob {
                    path: blob_path(dir, &l.digest)?,
                    compression: Some(Compression::from_media_type(&l.media_type)?),
                    size: l.size,
                })
            })
            .collect::<Result<_, Error>>()?;
        return Ok(Fetched {
            config,
            layers,
            digest: Some(chosen.digest.clone()),
        });
    }
    Err(bad("indexes nested too deep".into()))
}

fn choose(manifests: &[Descriptor]) -> Option<&Descriptor> {
    if manifests.len() == 1 {
        return manifests.first();
    }
    manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    })
}

/// `blobs/<algorithm>/<hex>` of a digest, refusing anything else.
fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, Error> {
    let (alg, hex) = digest
        .split_once(':')
        .filter(|(a, h)| {
            !a.is_empty()
                && !h.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && h.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .ok_or_else(|| Error::Archive(format!("bad digest `{digest}`")))?;
    Ok(dir.join("blobs").join(alg).join(hex))
}

fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, Error> {
    let p = blob_path(dir, digest)?;
    std::fs::read(&p).map_err(|e| Error::Archive(format!("blob {digest}: {e}")))
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Reads a `docker save` archive unpacked in `dir`: its first image.
pub(crate) fn open_docker_archive(dir: &Path) -> Result<Fetched, Error> {
    let bad = |why: String| Error::Archive(format!("docker archive: {why}"));
    let m =
        std::fs::read(dir.join("manifest.json")).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let m: Vec<DockerManifest> =
        serde_json::from_slice(&m).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let m = m
        .first()
        .ok_or_else(|| bad("no image in manifest.json".into()))?;
    let inside = |p: &str| unpack::resolve(dir, Path::new(p));
    let config =
        std::fs::read(inside(&m.config)?).map_err(|e| bad(format!("{}: {e}", m.config)))?;
    let config = ImageConfig::from_blob(&config)?;
    let layers = m
        .layers
        .iter()
        .map(|l| {
            let path = inside(l)?;
            let size = std::fs::metadata(&path)
                .map_err(|e| bad(format!("{l}: {e}")))?
                .len();
            Ok(LayerBlob {
                path,
                compression: None,
                size,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Fetched {
        config,
        layers,
        digest: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_name_blobs_and_nothing_else() {
        let d = Path::new("/x");
        assert_eq!(
            blob_path(d, "sha256:abc123").unwrap(),
            Path::new("/x/blobs/sha256/abc123")
        );
        for bad in [
            "sha256:../../etc",
            "../x:ab",
            "sha256:",
            "nocolon",
            "SHA:ab",
        ] {
            assert!(blob_path(d, bad).is_err(), "{bad}");
        }
    }
}
