//! Removing large files without stalling the host's other writers.
//!
//! On a filesystem mounted with `discard` (this host's ext4 root is), an
//! unlink frees — and discards — all of a file's blocks in one journal
//! commit, and every `fsync` on the filesystem waits for that commit:
//! unlinking a 270 MB suspend image took 70 ms here, and the state store's
//! next commit waited 69 ms for it (it was most of what a resume spent
//! after its sandbox answered). Truncating the file in steps frees its
//! blocks over many small commits that other writers slip between.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Blocks freed per step: a concurrent `fsync` waited at most ~8 ms.
const STEP: u64 = 8 << 20;
/// The pause after a step that freed blocks, for other commits.
const PAUSE: Duration = Duration::from_millis(1);

/// Removes `path` (a file or a directory tree, not following symlinks),
/// freeing the blocks of its large files a step at a time. Missing is not
/// an error.
pub async fn remove(path: impl Into<PathBuf>) -> io::Result<()> {
    let path = path.into();
    tokio::task::spawn_blocking(move || remove_blocking(&path))
        .await
        .map_err(io::Error::other)?
}

fn remove_blocking(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        shrink_tree(path, meta.dev());
        std::fs::remove_dir_all(path)
    } else {
        if meta.is_file() {
            shrink(path, &meta);
        }
        std::fs::remove_file(path)
    }
}

/// Shrinks the large files below `dir` on device `dev` (best effort: what
/// it cannot read is left to the removal; a mount below is never entered).
fn shrink_tree(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            shrink_tree(&e.path(), dev);
        } else if meta.is_file() {
            shrink(&e.path(), &meta);
        }
    }
}

/// Truncates a file with more than [`STEP`] allocated down to nothing,
/// [`STEP`] bytes at a time from its end. A sparse file's holes cost
/// nothing to cross.
fn shrink(path: &Path, meta: &std::fs::Metadata) {
    if meta.blocks() * 512 <= STEP || meta.nlink() > 1 {
        return; // small, or its blocks stay with another name
    }
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) else {
        return;
    };
    let mut size = meta.len();
    let mut blocks = meta.blocks();
    while size > 0 {
        size = size.saturating_sub(STEP);
        if file.set_len(size).is_err() {
            return;
        }
        let now = file.metadata().map(|m| m.blocks()).unwrap_or(0);
        if now < blocks {
            std::thread::sleep(PAUSE);
        }
        blocks = now;
        if blocks == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_file(p: &Path, mb: usize) {
        let mut f = std::fs::File::create(p).unwrap();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..mb {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }

    #[tokio::test]
    async fn removes_a_tree_with_large_small_and_sparse_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("img");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        write_file(&root.join("pages"), 20);
        write_file(&root.join("sub/small"), 1);
        let sparse = std::fs::File::create(root.join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        remove(&root).await.unwrap();
        assert!(!root.exists());
        assert!(
            Path::new("/etc/hostname").exists(),
            "a symlink's target stays"
        );
    }

    #[tokio::test]
    async fn a_hard_linked_file_keeps_its_content_under_its_other_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        write_file(&a, 12);
        let b = dir.path().join("b");
        std::fs::hard_link(&a, &b).unwrap();
        remove(&a).await.unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::metadata(&b).unwrap().len(), 12 << 20);
    }

    #[tokio::test]
    async fn a_missing_path_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        remove(dir.path().join("nothing")).await.unwrap();
    }

    #[test]
    fn a_large_file_is_shrunk_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        write_file(&p, 20);
        shrink(&p, &std::fs::metadata(&p).unwrap());
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.len(), m.blocks()), (0, 0));
    }
}
