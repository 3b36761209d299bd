//! `sbx cp SRC DST`: stream a file to or from a sandbox. Exactly one side is
//! `ID:/path`; `-` as the local side is stdin or stdout.

use crate::client::Client;
use anyhow::{bail, Context, Result};
use clap::Args;
use futures::StreamExt;
use reqwest::{Body, Method};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

const CHUNK: usize = 64 * 1024;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    sbx cp ./data.csv my-box:/tmp/data.csv    upload\n  \
    sbx cp my-box:/var/log/app.log .           download into the current directory\n  \
    tar c src | sbx cp - my-box:/tmp/src.tar   upload from stdin\n  \
    sbx cp my-box:/etc/os-release -            download to stdout\n\
A remote path ending in / takes the local file's name. A local path containing\n\
a colon must start with ./ or / so that it is not taken for ID:PATH.")]
pub struct CpArgs {
    /// Source: a local path, `-` (stdin), or ID:/path.
    pub src: String,
    /// Destination: a local path or directory, `-` (stdout), or ID:/path.
    pub dst: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `-`: stdin as a source, stdout as a destination.
    Stdio,
    Local(PathBuf),
    Remote {
        id: String,
        path: String,
    },
}

/// `ID:PATH` is remote when ID is non-empty and has no `/`; `-` is stdio;
/// anything else is a local path.
pub fn parse_location(s: &str) -> Location {
    if s == "-" {
        return Location::Stdio;
    }
    if let Some((id, path)) = s.split_once(':') {
        if !id.is_empty() && !id.contains('/') && !path.is_empty() {
            return Location::Remote {
                id: id.to_string(),
                path: path.to_string(),
            };
        }
    }
    Location::Local(PathBuf::from(s))
}

/// Last component of a remote path, if it names a file.
fn remote_basename(path: &str) -> Option<&str> {
    path.rsplit('/')
        .next()
        .filter(|b| !b.is_empty() && *b != "." && *b != "..")
}

pub async fn run(client: &Client, args: CpArgs) -> Result<i32> {
    match (parse_location(&args.src), parse_location(&args.dst)) {
        (Location::Remote { .. }, Location::Remote { .. }) => {
            bail!("both sides are remote: copy through a local file")
        }
        (Location::Remote { id, path }, local) => download(client, &id, &path, local).await?,
        (local, Location::Remote { id, path }) => upload(client, local, &id, &path).await?,
        _ => bail!("one side must be a sandbox path, ID:/path"),
    }
    Ok(0)
}

async fn upload(client: &Client, src: Location, id: &str, path: &str) -> Result<()> {
    let (body, name) = match &src {
        Location::Stdio => (
            Body::wrap_stream(ReaderStream::with_capacity(tokio::io::stdin(), CHUNK)),
            None,
        ),
        Location::Local(p) => {
            let file = tokio::fs::File::open(p)
                .await
                .with_context(|| format!("cannot open {}", p.display()))?;
            if file.metadata().await?.is_dir() {
                bail!("{} is a directory: only files can be copied", p.display());
            }
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (
                Body::wrap_stream(ReaderStream::with_capacity(file, CHUNK)),
                name,
            )
        }
        Location::Remote { .. } => unreachable!("checked by the caller"),
    };
    let remote = upload_path(path, name.as_deref())?;
    let target = client.target(id).await?;
    let rb = client
        .daemon(&target, Method::PUT, "/files")
        .query(&[("path", remote.as_str())])
        .body(body);
    client.send(rb).await?;
    Ok(())
}

/// The remote file to write: `dir/` takes the local file's name.
fn upload_path(path: &str, local_name: Option<&str>) -> Result<String> {
    if !path.ends_with('/') {
        return Ok(path.to_string());
    }
    match local_name {
        Some(n) => Ok(format!("{path}{n}")),
        None => bail!("{path} is a directory: name the remote file to write stdin to"),
    }
}

async fn download(client: &Client, id: &str, path: &str, dst: Location) -> Result<()> {
    let dest = match &dst {
        Location::Stdio => None,
        Location::Local(p) => Some(download_path(p, path).await?),
        Location::Remote { .. } => unreachable!("checked by the caller"),
    };
    let target = client.target(id).await?;
    let rb = client
        .daemon(&target, Method::GET, "/files")
        .query(&[("path", path)]);
    let resp = client.send(rb).await?;
    let mut body = resp.bytes_stream();
    let Some(dest) = dest else {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.context("reading the file")?).await?;
        }
        out.flush().await?;
        return Ok(());
    };
    let tmp = temp_beside(&dest);
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        while let Some(chunk) = body.next().await {
            file.write_all(&chunk.context("reading the file")?)
                .await
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, &dest)
            .await
            .with_context(|| format!("cannot move the file into {}", dest.display()))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// The local file to write: into a directory, the remote file's name.
async fn download_path(local: &Path, remote: &str) -> Result<PathBuf> {
    let is_dir = local.as_os_str().to_string_lossy().ends_with('/')
        || tokio::fs::metadata(local)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false);
    if !is_dir {
        return Ok(local.to_path_buf());
    }
    match remote_basename(remote) {
        Some(name) => Ok(local.join(name)),
        None => bail!("{remote} names no file"),
    }
}

/// A hidden name in the same directory, so the final rename is atomic.
fn temp_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    dest.with_file_name(format!(".{name}.sbx-part-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn locations() {
        assert_eq!(parse_location("-"), Location::Stdio);
        assert_eq!(
            parse_location("sb1:/tmp/a"),
            Location::Remote {
                id: "sb1".into(),
                path: "/tmp/a".into()
            }
        );
        assert_eq!(
            parse_location("web:/a:b"),
            Location::Remote {
                id: "web".into(),
                path: "/a:b".into()
            }
        );
        assert_eq!(
            parse_location("./a:b"),
            Location::Local(PathBuf::from("./a:b"))
        );
        assert_eq!(
            parse_location("/x:y"),
            Location::Local(PathBuf::from("/x:y"))
        );
        assert_eq!(parse_location(":/x"), Location::Local(PathBuf::from(":/x")));
        assert_eq!(
            parse_location("sb1:"),
            Location::Local(PathBuf::from("sb1:"))
        );
        assert_eq!(
            parse_location("file.txt"),
            Location::Local(PathBuf::from("file.txt"))
        );
    }

    #[test]
    fn basenames_and_targets() {
        assert_eq!(remote_basename("/var/log/app.log"), Some("app.log"));
        assert_eq!(remote_basename("/var/log/"), None);
        assert_eq!(remote_basename("/"), None);
        assert_eq!(upload_path("/tmp/", Some("a.txt")).unwrap(), "/tmp/a.txt");
        assert_eq!(upload_path("/tmp/b", Some("a.txt")).unwrap(), "/tmp/b");
        assert!(upload_path("/tmp/", None).is_err());
        assert_eq!(
            temp_beside(Path::new("/d/f.txt")),
            PathBuf::from(format!("/d/.f.txt.sbx-part-{}", std::process::id()))
        );
    }

    #[tokio::test]
    async fn download_into_a_directory_uses_the_remote_name() {
        let dir = std::env::temp_dir();
        assert_eq!(
            download_path(&dir, "/etc/hosts").await.unwrap(),
            dir.join("hosts")
        );
        assert_eq!(
            download_path(Path::new("newdir/"), "/etc/hosts")
                .await
                .unwrap(),
            PathBuf::from("newdir/hosts")
        );
        assert_eq!(
            download_path(Path::new("out.txt"), "/etc/hosts")
                .await
                .unwrap(),
            PathBuf::from("out.txt")
        );
        assert!(download_path(&dir, "/etc/").await.is_err());
    }

    #[test]
    fn cp_parses() {
        let crate::Command::Cp(a) = crate::tests::parse(&["cp", "-", "sb:/x"]).command else {
            panic!()
        };
        assert_eq!((a.src.as_str(), a.dst.as_str()), ("-", "sb:/x"));
        assert!(crate::Cli::try_parse_from(["sbx", "cp", "a"]).is_err());
    }
}
