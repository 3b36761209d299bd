//! Applies OCI image layers (tar streams) to a root filesystem directory.
//!
//! Layers come from untrusted images: every path is resolved inside the
//! root as a chroot would (symlinks in a path are followed relative to the
//! root, `..` stops at it), so no entry lands outside it. Whiteouts
//! (`.wh.NAME`) remove what lower layers had; an opaque marker
//! (`.wh..wh..opq`) empties its directory of what lower layers put there.

use crate::Error;
use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// Symlinks followed in one path before it is refused (as Linux's ELOOP).
const MAX_HOPS: usize = 40;

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(media_type: &str) -> Result<Self, Error> {
        let m = media_type;
        if m.ends_with("tar+gzip")
            || m.ends_with(".tar.gzip")
            || m.ends_with("rootfs.diff.tar.gzip")
        {
            Ok(Compression::Gzip)
        } else if m.ends_with("tar+zstd") {
            Ok(Compression::Zstd)
        } else if m.ends_with(".tar")
            || m.ends_with("layer.v1.tar")
            || m.ends_with("rootfs.diff.tar")
        {
            Ok(Compression::None)
        } else {
            Err(Error::Unsupported(format!("layer media type {m}")))
        }
    }

    /// Guessed from the first bytes (docker archives name no media type).
    pub fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// What applying a layer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    pub entries: u64,
    pub bytes: u64,
    /// Device nodes skipped (a sandbox gets its devices from gVisor).
    pub skipped_devices: u64,
}

/// Applies one layer, compressed as `compression`, to `root`.
pub fn apply_layer(
    root: &Path,
    blob: impl Read,
    compression: Compression,
) -> Result<Applied, Error> {
    apply_layer_over(root, &[], blob, compression)
}

/// [`apply_layer`] into `root` where `root` is the top of an overlay over
/// `below` (top-most first): paths resolve through the symlinks of the
/// merged view, entries are written in `root`.
pub fn apply_layer_over(
    root: &Path,
    below: &[&Path],
    blob: impl Read,
    compression: Compression,
) -> Result<Applied, Error> {
    let mut roots = vec![root];
    roots.extend_from_slice(below);
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(blob).map_err(io_err("zstd"))?)
        }
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(false);
    let mut applied = Applied::default();
    // Paths this layer made: an opaque marker keeps them.
    let mut made: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(io_err("reading layer"))? {
        let mut entry = entry.map_err(io_err("reading layer"))?;
        let rel = clean(&entry.path().map_err(io_err("entry path"))?);
        let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
            continue; // the root itself
        };
        let parent = resolve_over(&roots, rel.parent().unwrap_or(Path::new("")))?;
        applied.entries += 1;
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE.as_bytes() {
            empty_dir_except(&parent, &made)?;
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT.as_bytes()) {
            remove_any(&parent.join(std::ffi::OsStr::from_bytes(hidden)))?;
            continue;
        }
        // Errors name the entry, not where the host keeps it.
        std::fs::create_dir_all(&parent).map_err(io_err_at("mkdir", &rel))?;
        let dest = parent.join(&name);
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if !std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
                    remove_any(&dest)?;
                }
                entry.unpack(&dest).map_err(io_err_at("unpack", &rel))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(io_err("link name"))?
                    .ok_or_else(|| Error::Layer("hard link without a target".into()))?;
                let target = clean(&target);
                let target_parent = resolve_over(&roots, target.parent().unwrap_or(Path::new("")))?;
                let target = target_parent.join(target.file_name().unwrap_or_default());
                remove_any(&dest)?;
                std::fs::hard_link(&target, &dest).map_err(io_err_at("hard link", &rel))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                applied.skipped_devices += 1;
                continue;
            }
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Symlink
            | tar::EntryType::Fifo => {
                remove_any(&dest)?;
                applied.bytes += entry.size();
                entry.unpack(&dest).map_err(io_err_at("unpack", &rel))?;
            }
            // Metadata entries (pax, GNU long names) are read by `tar`.
            _ => continue,
        }
        made.insert(dest);
    }
    Ok(applied)
}

/// A tar path as plain components: no root, no `.`; `..` kept for
/// [`resolve`] to clamp.
fn clean(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect()
}

/// Where relative path `rel` is under `root` with every symlink in it
/// followed as if `root` were `/`. Missing components are taken as they
/// are (they will be made as directories).
pub fn resolve(root: &Path, rel: &Path) -> Result<PathBuf, Error> {
    resolve_over(&[root], rel)
}

/// [`resolve`] in the merged view of overlay layers `roots` (top-most
/// first; an overlay whiteout hides what is below it): the path under
/// `roots[0]`.
pub fn resolve_over(roots: &[&Path], rel: &Path) -> Result<PathBuf, Error> {
    let root = roots[0];
    let mut todo: VecDeque<OsString> = VecDeque::new();
    push_front(&mut todo, rel);
    let mut at = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            at.pop();
            continue;
        }
        if c == "." || c.is_empty() {
            continue;
        }
        let host = top_most(roots, &at.join(&c)).unwrap_or_else(|| root.join(&at).join(&c));
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(Error::Layer(format!(
                        "too many symlinks in {}",
                        rel.display()
                    )));
                }
                let target = std::fs::read_link(&host).map_err(io_err_at("readlink", &host))?;
                if target.is_absolute() {
                    at = PathBuf::new();
                }
                push_front(&mut todo, &target);
            }
            _ => at.push(&c),
        }
    }
    Ok(root.join(at))
}

/// The host path of `rel` in the top-most of `roots` that has it; `None`
/// when none does or a whiteout hides it.
pub fn top_most(roots: &[&Path], rel: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for r in roots {
        let p = r.join(rel);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            let whiteout = m.file_type().is_char_device() && m.rdev() == 0;
            return (!whiteout).then_some(p);
        }
    }
    None
}

fn push_front(todo: &mut VecDeque<OsString>, p: &Path) {
    let parts: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    for part in parts.into_iter().rev() {
        todo.push_front(part);
    }
}

/// Removes a file, symlink or directory tree; nothing there is fine.
fn remove_any(p: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).map_err(io_err_at("remove", p)),
        Ok(_) => std::fs::remove_file(p).map_err(io_err_at("remove", p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err_at("stat", p)(e)),
    }
}

/// Empties directory `dir` of everything but what this layer made.
fn empty_dir_except(dir: &Path, keep: &HashSet<PathBuf>) -> Result<(), Error> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let p = e.path();
        if !keep.contains(&p) {
            remove_any(&p)?;
        }
    }
    Ok(())
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> Error {
    move |e| Error::Layer(format!("{what}: {e}"))
}

fn io_err_at<'a>(what: &'static str, p: &'a Path) -> impl Fn(io::Error) -> Error + 'a {
    move |e| Error::Layer(format!("{what} {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer made of (path, kind) entries: "d" dir, "f:TEXT" file,
    /// "l:TARGET" symlink, "h:TARGET" hard link.
    fn layer(entries: &[(&str, &str)]) -> Vec<u8> {
        // Names are written raw: `tar` itself refuses `..`, hostile
        // layers do not.
        fn raw(field: &mut [u8], s: &str) {
            field.fill(0);
            field[..s.len()].copy_from_slice(s.as_bytes());
        }
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in entries {
            let mut h = tar::Header::new_old();
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(0);
            raw(&mut h.as_old_mut().name, path);
            let mut data: &[u8] = b"";
            if *kind == "d" {
                h.set_entry_type(tar::EntryType::Directory);
            } else if let Some(text) = kind.strip_prefix("f:") {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(text.len() as u64);
                data = text.as_bytes();
            } else if let Some(t) = kind.strip_prefix("l:") {
                h.set_entry_type(tar::EntryType::Symlink);
                raw(&mut h.as_old_mut().linkname, t);
            } else if let Some(t) = kind.strip_prefix("h:") {
                h.set_entry_type(tar::EntryType::Link);
                raw(&mut h.as_old_mut().linkname, t);
            }
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn apply(root: &Path, entries: &[(&str, &str)]) -> Result<Applied, Error> {
        apply_layer(root, &layer(entries)[..], Compression::None)
    }

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn layers_stack_with_whiteouts_and_opaque_dirs() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        apply(
            r,
            &[
                ("etc", "d"),
                ("etc/a", "f:a1"),
                ("etc/b", "f:b1"),
                ("opt", "d"),
                ("opt/old", "f:x"),
                ("opt/sub", "d"),
                ("opt/sub/deep", "f:y"),
            ],
        )
        .unwrap();
        apply(
            r,
            &[
                ("etc/a", "f:a2"),
                ("etc/.wh.b", "f:"),
                ("opt", "d"),
                ("opt/.wh..wh..opq", "f:"),
                ("opt/new", "f:n"),
            ],
        )
        .unwrap();
        assert_eq!(read(r.join("etc/a")), "a2");
        assert!(!r.join("etc/b").exists());
        assert_eq!(read(r.join("opt/new")), "n");
        assert!(!r.join("opt/old").exists());
        assert!(!r.join("opt/sub").exists());
    }

    #[test]
    fn opaque_marker_after_the_layers_own_children_keeps_them() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        apply(r, &[("opt", "d"), ("opt/old", "f:x")]).unwrap();
        apply(
            r,
            &[("opt", "d"), ("opt/new", "f:n"), ("opt/.wh..wh..opq", "f:")],
        )
        .unwrap();
        assert_eq!(read(r.join("opt/new")), "n");
        assert!(!r.join("opt/old").exists());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = t.path();
        let out = outside.path().display().to_string();
        // merged-usr: /lib is a symlink to usr/lib, a later layer writes
        // through it; absolute and `..` links may not leave the root.
        apply(
            r,
            &[
                ("usr", "d"),
                ("usr/lib", "d"),
                ("lib", "l:usr/lib"),
                ("escape", "l:../../../../../.."),
                ("abs", &format!("l:{out}")),
            ],
        )
        .unwrap();
        apply(
            r,
            &[
                ("lib/libx.so", "f:x"),
                ("escape/evil", "f:1"),
                ("abs/evil", "f:2"),
                ("../../evil3", "f:3"),
            ],
        )
        .unwrap();
        assert_eq!(read(r.join("usr/lib/libx.so")), "x");
        assert!(r.join("lib").is_symlink());
        assert_eq!(read(r.join("evil")), "1");
        assert_eq!(read(r.join(out.trim_start_matches('/')).join("evil")), "2");
        assert_eq!(read(r.join("evil3")), "3");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "safe").unwrap();
        let r = t.path();
        apply(r, &[("f", &format!("l:{}", victim.display()))]).unwrap();
        apply(r, &[("f", "f:new")]).unwrap();
        assert_eq!(read(victim), "safe");
        assert_eq!(read(r.join("f")), "new");
        assert!(!r.join("f").is_symlink());
    }

    #[test]
    fn hard_links_point_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        apply(r, &[("a", "f:shared"), ("b", "h:a"), ("c", "h:/../../a")]).unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &str| std::fs::metadata(r.join(p)).unwrap().ino();
        assert_eq!(ino("a"), ino("b"));
        assert_eq!(ino("a"), ino("c"));
    }

    #[test]
    fn paths_resolve_through_the_layers_below() {
        let (top, base) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // merged-usr in the base: /lib -> usr/lib; the top writes through it.
        apply(
            base.path(),
            &[("usr", "d"), ("usr/lib", "d"), ("lib", "l:usr/lib")],
        )
        .unwrap();
        apply_layer_over(
            top.path(),
            &[base.path()],
            &layer(&[("lib/x.so", "f:x")])[..],
            Compression::None,
        )
        .unwrap();
        assert_eq!(read(top.path().join("usr/lib/x.so")), "x");
        assert!(!top.path().join("lib").exists());
        let roots = [top.path(), base.path()];
        assert_eq!(
            top_most(&roots, Path::new("usr/lib/x.so")),
            Some(top.path().join("usr/lib/x.so"))
        );
        assert_eq!(
            top_most(&roots, Path::new("lib")),
            Some(base.path().join("lib"))
        );
        assert_eq!(top_most(&roots, Path::new("nope")), None);
    }

    #[test]
    fn symlink_loops_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        apply(r, &[("x", "l:y"), ("y", "l:x")]).unwrap();
        assert!(matches!(apply(r, &[("x/f", "f:1")]), Err(Error::Layer(_))));
    }

    #[test]
    fn compression_is_named_by_media_type_or_sniffed() {
        use Compression::*;
        let m = Compression::from_media_type;
        assert_eq!(
            m("application/vnd.oci.image.layer.v1.tar+gzip").unwrap(),
            Gzip
        );
        assert_eq!(
            m("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Zstd
        );
        assert_eq!(m("application/vnd.oci.image.layer.v1.tar").unwrap(), None);
        assert_eq!(
            m("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            Gzip
        );
        assert!(m("application/vnd.oci.image.layer.nondistributable.v2").is_err());
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Gzip);
        assert_eq!(Compression::sniff(b"usr/"), None);
    }
}
