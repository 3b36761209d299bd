//! Snapshot layers on this host: a sandbox's writable layer captured as a
//! self-contained, read-only overlay layer.
//!
//! A layer is flat: when the sandbox was itself restored from a snapshot,
//! its captured changes are applied on a hard-linked copy of that
//! snapshot's layer, so every snapshot boots on exactly `[layer, image]` and
//! deleting one snapshot never affects another. Layers are never modified
//! in place once written (hard links between them stay safe).

use crate::cmd::run;
use crate::Error;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Copies `src` to the new path `dst`, keeping owners, modes, times, xattrs
/// (`trusted.overlay.opaque`) and device nodes (overlay whiteouts).
pub async fn copy_tree(src: &Path, dst: &Path) -> Result<(), Error> {
    run(
        "cp",
        &[
            "-a",
            "--no-target-directory",
            &src.to_string_lossy(),
            &dst.to_string_lossy(),
        ],
    )
    .await
    .map(drop)
}

/// Like [`copy_tree`], with files hard-linked instead of copied (for
/// immutable sources: layers).
pub async fn link_tree(src: &Path, dst: &Path) -> Result<(), Error> {
    run(
        "cp",
        &[
            "-al",
            "--no-target-directory",
            &src.to_string_lossy(),
            &dst.to_string_lossy(),
        ],
    )
    .await
    .map(drop)
}

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let name = std::ffi::CString::new(OPAQUE_XATTR).expect("no nul");
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and buf is writable for its length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n > 0 && buf[0] == b'y'
}

fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies an overlay upper dir onto `layer` with overlay semantics,
/// consuming `upper` (entries are moved, not copied; both must be on one
/// filesystem): files, symlinks and whiteouts replace what `layer` has at
/// their path; opaque directories replace the whole directory; other
/// directories merge, taking the upper's owner, mode and times.
pub fn apply_upper(upper: &Path, layer: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(upper)? {
        let entry = entry?;
        let src = entry.path();
        let dst = layer.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.is_dir() && !is_opaque(&src) {
            match std::fs::symlink_metadata(&dst) {
                Ok(m) if m.is_dir() => {
                    apply_upper(&src, &dst)?;
                    copy_dir_attributes(&meta, &dst)?;
                    continue;
                }
                Ok(_) => remove_any(&dst)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        } else {
            remove_any(&dst)?;
        }
        std::fs::rename(&src, &dst)?;
    }
    Ok(())
}

fn copy_dir_attributes(meta: &std::fs::Metadata, dst: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let ts = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        None,
        dst,
        &ts(meta.atime(), meta.atime_nsec()),
        &ts(meta.mtime(), meta.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Total size of the regular files below `dir` (hard links counted once).
pub fn tree_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut total = 0;
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                total += walk(&e.path(), seen);
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
        total
    }
    walk(dir, &mut Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[tokio::test]
    async fn upper_applies_on_a_linked_copy_without_touching_the_parent() {
        let d = tempfile::tempdir().unwrap();
        let parent = d.path().join("parent");
        fs::create_dir_all(parent.join("etc/conf.d")).unwrap();
        fs::write(parent.join("etc/a"), "old a").unwrap();
        fs::write(parent.join("etc/b"), "keep b").unwrap();
        fs::write(parent.join("etc/conf.d/x"), "x").unwrap();
        fs::write(parent.join("gone"), "soon deleted").unwrap();

        let upper = d.path().join("upper");
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/a"), "new a").unwrap();
        fs::write(upper.join("new"), "new file").unwrap();
        // A whiteout for `gone` (as overlayfs writes it).
        nix::sys::stat::mknod(
            &upper.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        fs::set_permissions(upper.join("etc"), fs::Permissions::from_mode(0o700)).unwrap();

        let child = d.path().join("child");
        link_tree(&parent, &child).await.unwrap();
        apply_upper(&upper, &child).unwrap();

        assert_eq!(read(&child.join("etc/a")), "new a");
        assert_eq!(read(&child.join("etc/b")), "keep b");
        assert_eq!(read(&child.join("etc/conf.d/x")), "x");
        assert_eq!(read(&child.join("new")), "new file");
        let wh = fs::symlink_metadata(child.join("gone")).unwrap();
        assert_eq!(wh.rdev(), 0);
        assert!(!wh.is_file(), "the whiteout replaces the file");
        assert_eq!(
            fs::metadata(child.join("etc")).unwrap().mode() & 0o777,
            0o700
        );
        // The parent layer is unchanged.
        assert_eq!(read(&parent.join("etc/a")), "old a");
        assert_eq!(read(&parent.join("gone")), "soon deleted");
        assert_eq!(tree_bytes(&parent), 5 + 6 + 1 + 12);
    }

    #[tokio::test]
    async fn copies_keep_the_opaque_marker() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("dir")).unwrap();
        let ok = xattr_set(&src.join("dir"), OPAQUE_XATTR, b"y");
        let dst = d.path().join("dst");
        copy_tree(&src, &dst).await.unwrap();
        if ok {
            assert!(is_opaque(&dst.join("dir")));
        }
        assert!(dst.join("dir").is_dir());
    }

    fn xattr_set(p: &Path, name: &str, value: &[u8]) -> bool {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid NUL-terminated strings and a readable value buffer.
        unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            ) == 0
        }
    }
}
