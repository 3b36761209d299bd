//! Files of an image build on this host. A build's state after each step is
//! a flat overlay layer over its base image (as a snapshot's is: see
//! [`crate::snapshot`]); layers never change once written, a step writes a
//! hard-linked copy. `COPY`/`ADD` and `WORKDIR` write into the layer here,
//! resolving every path through the merged view of the layer and the image
//! (so `/lib -> usr/lib` in the image is followed, and nothing lands outside
//! the root). A finished build becomes a plain root filesystem: the image's
//! files hard-linked, the layer applied on top.

use crate::snapshot;
use crate::Error;
use sbx_image::unpack::{resolve_over, top_most};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Makes `dest`, the layer the next step writes: a hard-linked copy of
/// `parent`, or empty.
pub async fn next_layer(parent: Option<&Path>, dest: &Path) -> Result<(), Error> {
    match parent {
        Some(p) => snapshot::link_tree(p, dest).await,
        None => Ok(tokio::fs::create_dir_all(dest).await?),
    }
}

/// What one `COPY` or `ADD` puts where.
#[derive(Debug, Clone)]
pub struct CopySpec {
    /// Host paths of the matched sources (files, directories, symlinks).
    pub sources: Vec<PathBuf>,
    /// Absolute path in the image; a trailing `/` makes it a directory.
    pub dest: String,
    pub owner: Option<(u32, u32)>,
    pub mode: Option<u32>,
    /// `ADD`: local tar archives (plain, gzip, zstd) are unpacked.
    pub unpack_archives: bool,
}

/// Copies `spec.sources` into `layer`, the top of an overlay over `below`
/// (top-most first). Returns the bytes written.
pub fn copy_into(layer: &Path, below: &[&Path], spec: &CopySpec) -> Result<u64, Error> {
    let mut roots = vec![layer];
    roots.extend_from_slice(below);
    let dest = rel(&spec.dest);
    let existing_dir = top_most(&roots, &dest).is_some_and(|p| p.is_dir());
    let into_dir = spec.dest.ends_with('/')
        || spec.sources.len() > 1
        || existing_dir
        || spec.sources.iter().any(|s| s.is_dir());
    let mut bytes = 0;
    for src in &spec.sources {
        let meta = std::fs::symlink_metadata(src)?;
        if meta.is_dir() {
            mkdirs(&roots, &dest, spec.owner, None)?;
            bytes += copy_dir_contents(&roots, src, &dest, spec)?;
        } else if spec.unpack_archives && meta.is_file() && is_archive(src) {
            mkdirs(&roots, &dest, spec.owner, None)?;
            bytes += unpack_archive(&roots, src, &dest)?;
        } else {
            let target = if into_dir {
                mkdirs(&roots, &dest, spec.owner, None)?;
                dest.join(src.file_name().unwrap_or_default())
            } else {
                if let Some(parent) = dest.parent() {
                    mkdirs(&roots, parent, None, None)?;
                }
                dest.clone()
            };
            bytes += copy_entry(&roots, src, &target, spec)?;
        }
    }
    Ok(bytes)
}

/// Makes directory `dir` (absolute in the image) exist, as `WORKDIR` does.
pub fn make_dir(layer: &Path, below: &[&Path], dir: &str) -> Result<(), Error> {
    let mut roots = vec![layer];
    roots.extend_from_slice(below);
    mkdirs(&roots, &rel(dir), None, None)
}

/// The root filesystem of a finished build in `dest` (made): `base`'s
/// files hard-linked, `layer` applied on top (its whiteouts delete).
pub async fn flatten(base: Option<&Path>, layer: Option<&Path>, dest: &Path) -> Result<(), Error> {
    match base {
        Some(b) => snapshot::link_tree(b, dest).await?,
        None => tokio::fs::create_dir_all(dest).await?,
    }
    let Some(layer) = layer else { return Ok(()) };
    let upper = dest.with_extension("upper");
    let _ = tokio::fs::remove_dir_all(&upper).await;
    snapshot::link_tree(layer, &upper).await?;
    let (u, d) = (upper.clone(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || {
        snapshot::apply_upper(&u, &d)?;
        remove_whiteouts(&d)
    })
    .await
    .expect("flatten task")?;
    let _ = tokio::fs::remove_dir_all(&upper).await;
    Ok(())
}

/// Overlay whiteouts (character devices 0:0) left by applying a layer.
fn remove_whiteouts(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.path().symlink_metadata()?;
        if m.is_dir() {
            remove_whiteouts(&e.path())?;
        } else if m.file_type().is_char_device() && m.rdev() == 0 {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// An absolute image path as a relative one.
fn rel(p: &str) -> PathBuf {
    PathBuf::from(p.trim_start_matches('/'))
}

/// Makes each missing directory of `dir` in `roots[0]` (through the merged
/// view), with the owner and mode it has below, else `owner` and `mode`
/// (root, 0755).
fn mkdirs(
    roots: &[&Path],
    dir: &Path,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
) -> Result<(), Error> {
    let mut at = PathBuf::new();
    for c in dir.components() {
        at.push(c);
        let host = resolve_over(roots, &at)?;
        if host.is_dir() {
            continue;
        }
        // Present below (so not at `host` in the layer): copy its attributes.
        let like = top_most(&roots[1..], host.strip_prefix(roots[0]).unwrap_or(&at))
            .and_then(|p| p.metadata().ok())
            .filter(|m| m.is_dir());
        if let Ok(m) = host.symlink_metadata() {
            if !m.is_dir() {
                std::fs::remove_file(&host)?;
            }
        }
        std::fs::create_dir_all(&host)?;
        let (uid, gid, m) = match &like {
            Some(m) => (m.uid(), m.gid(), m.mode() & 0o7777),
            None => {
                let (u, g) = owner.unwrap_or((0, 0));
                (u, g, mode.unwrap_or(0o755))
            }
        };
        std::os::unix::fs::lchown(&host, Some(uid), Some(gid))?;
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(m))?;
    }
    Ok(())
}

fn copy_dir_contents(
    roots: &[&Path],
    src: &Path,
    dest: &Path,
    spec: &CopySpec,
) -> Result<u64, Error> {
    let mut bytes = 0;
    let mut entries: Vec<_> = std::fs::read_dir(src)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let target = dest.join(e.file_name());
        let m = e.path().symlink_metadata()?;
        if m.is_dir() {
            mkdirs(
                roots,
                &target,
                spec.owner,
                Some(spec.mode.unwrap_or(m.mode() & 0o7777)),
            )?;
            bytes += copy_dir_contents(roots, &e.path(), &target, spec)?;
        } else {
            bytes += copy_entry(roots, &e.path(), &target, spec)?;
        }
    }
    Ok(bytes)
}

/// Copies one file or symlink to image path `target`.
fn copy_entry(roots: &[&Path], src: &Path, target: &Path, spec: &CopySpec) -> Result<u64, Error> {
    let parent = resolve_over(roots, target.parent().unwrap_or(Path::new("")))?;
    let host = parent.join(target.file_name().unwrap_or_default());
    match host.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&host)?,
        Ok(_) => std::fs::remove_file(&host)?,
        Err(_) => {}
    }
    let m = src.symlink_metadata()?;
    let (uid, gid) = spec.owner.unwrap_or((0, 0));
    if m.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, &host)?;
        std::os::unix::fs::lchown(&host, Some(uid), Some(gid))?;
        return Ok(0);
    }
    if !m.is_file() {
        return Ok(0); // sockets, fifos, devices: not copied
    }
    let bytes = std::fs::copy(src, &host)?;
    std::os::unix::fs::lchown(&host, Some(uid), Some(gid))?;
    let mode = spec.mode.unwrap_or(m.mode() & 0o7777);
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode))?;
    Ok(bytes)
}

fn is_archive(p: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 262];
    let Ok(n) = std::fs::File::open(p).and_then(|mut f| f.read(&mut head)) else {
        return false;
    };
    let head = &head[..n];
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || head.get(257..262) == Some(b"ustar")
}

/// Unpacks tar archive `src` into image directory `dest`.
fn unpack_archive(roots: &[&Path], src: &Path, dest: &Path) -> Result<u64, Error> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(src)?;
    let mut head = [0u8; 4];
    let n = f.read(&mut head)?;
    f.rewind()?;
    let dir = resolve_over(roots, dest)?;
    let below: Vec<PathBuf> = roots[1..]
        .iter()
        .map(|r| r.join(dir.strip_prefix(roots[0]).unwrap_or(dest)))
        .collect();
    let below: Vec<&Path> = below.iter().map(PathBuf::as_path).collect();
    sbx_image::unpack::apply_layer_over(
        &dir,
        &below,
        std::io::BufReader::new(f),
        sbx_image::Compression::sniff(&head[..n]),
    )?;
    Ok(std::fs::metadata(src)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn spec(sources: Vec<PathBuf>, dest: &str) -> CopySpec {
        CopySpec {
            sources,
            dest: dest.into(),
            owner: None,
            mode: None,
            unpack_archives: false,
        }
    }

    #[test]
    fn copies_follow_the_images_symlinks_and_docker_rules() {
        let t = tempfile::tempdir().unwrap();
        let (base, layer, ctx) = (
            t.path().join("base"),
            t.path().join("layer"),
            t.path().join("ctx"),
        );
        std::fs::create_dir_all(base.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", base.join("lib")).unwrap();
        std::fs::create_dir_all(&layer).unwrap();
        write(&ctx.join("app.py"), "print(1)");
        write(&ctx.join("pkg/a.txt"), "a");
        write(&ctx.join("pkg/sub/b.txt"), "b");
        let below = [base.as_path()];
        // A file to a file path; into a directory through the image's symlink.
        copy_into(
            &layer,
            &below,
            &spec(vec![ctx.join("app.py")], "/srv/main.py"),
        )
        .unwrap();
        copy_into(&layer, &below, &spec(vec![ctx.join("app.py")], "/lib/")).unwrap();
        // A directory: its contents.
        let mut s = spec(vec![ctx.join("pkg")], "/opt/pkg");
        s.owner = Some((1000, 1000));
        s.mode = Some(0o640);
        copy_into(&layer, &below, &s).unwrap();
        assert_eq!(
            std::fs::read_to_string(layer.join("srv/main.py")).unwrap(),
            "print(1)"
        );
        assert!(layer.join("usr/lib/app.py").is_file());
        assert!(
            !layer.join("lib").exists(),
            "the image's /lib symlink stays"
        );
        let b = layer.join("opt/pkg/sub/b.txt").metadata().unwrap();
        assert_eq!((b.uid(), b.gid(), b.mode() & 0o777), (1000, 1000, 0o640));
        assert!(layer.join("opt/pkg/a.txt").is_file());
        // WORKDIR.
        make_dir(&layer, &below, "/work/dir").unwrap();
        assert!(layer.join("work/dir").is_dir());
    }

    #[tokio::test]
    async fn a_finished_build_is_the_image_with_the_layer_applied() {
        let t = tempfile::tempdir().unwrap();
        let (base, layer, out) = (
            t.path().join("base"),
            t.path().join("layer"),
            t.path().join("out"),
        );
        write(&base.join("etc/keep"), "base");
        write(&base.join("etc/gone"), "base");
        write(&layer.join("etc/new"), "layer");
        // An overlay whiteout of etc/gone.
        nix::sys::stat::mknod(
            &layer.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        flatten(Some(&base), Some(&layer), &out).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("etc/keep")).unwrap(),
            "base"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("etc/new")).unwrap(),
            "layer"
        );
        assert!(!out.join("etc/gone").exists());
        // The base and the layer are untouched.
        assert!(base.join("etc/gone").is_file());
        assert!(layer.join("etc/gone").exists());
        assert!(!base.join("etc/new").exists());
    }
}
