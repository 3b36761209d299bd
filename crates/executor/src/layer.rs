//! A sandbox's writable layer: an overlay of the shared read-only image and
//! an upper directory on the sandbox's own ext4 volume, a sparse file of
//! `disk_mb`. Writing past the size fails inside the sandbox with ENOSPC;
//! the host's disk is untouched beyond the volume.

use crate::cmd::run;
use crate::Error;
use std::path::{Path, PathBuf};

/// The files of one sandbox's layer, under its directory.
#[derive(Debug, Clone)]
pub struct Layer {
    dir: PathBuf,
}

impl Layer {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn image_file(&self) -> PathBuf {
        self.dir.join("disk.img")
    }
    pub fn volume(&self) -> PathBuf {
        self.dir.join("disk")
    }
    /// The overlay upper directory: the sandbox's changes to its image.
    pub fn upper(&self) -> PathBuf {
        self.volume().join("upper")
    }
    /// The merged root filesystem the runtime boots.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Creates the volume and mounts the overlay on `lowers`.
    pub async fn create(&self, lowers: &[PathBuf], disk_mb: u64) -> Result<(), Error> {
        let result = async {
            self.make_volume(disk_mb).await?;
            self.mount_overlay(lowers).await
        }
        .await;
        if result.is_err() {
            self.destroy().await;
        }
        result
    }

    /// Creates the sparse ext4 volume of `disk_mb` and mounts it, with empty
    /// `upper` and `work` directories. Cleans up after itself on failure.
    pub async fn make_volume(&self, disk_mb: u64) -> Result<(), Error> {
        let result = self.make_volume_inner(disk_mb).await;
        if result.is_err() {
            self.destroy().await;
        }
        result
    }

    async fn make_volume_inner(&self, disk_mb: u64) -> Result<(), Error> {
        tokio::fs::create_dir_all(self.volume()).await?;
        let img = self.image_file();
        let file = tokio::fs::File::create(&img).await?;
        file.set_len(disk_mb * 1024 * 1024).await?;
        drop(file);
        let img_s = img.to_string_lossy();
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal",
                "-E",
                "lazy_itable_init=1,nodiscard",
                &img_s,
            ],
        )
        .await?;
        run(
            "mount",
            &["-o", "loop", &img_s, &self.volume().to_string_lossy()],
        )
        .await?;
        tokio::fs::create_dir_all(self.upper()).await?;
        tokio::fs::create_dir_all(self.volume().join("work")).await?;
        Ok(())
    }

    /// Takes over the ready volume of `spare` (made by [`make_volume`]):
    /// its image file is renamed and its mount moved here, without copying.
    pub async fn adopt_volume(&self, spare: &Layer) -> Result<(), Error> {
        tokio::fs::create_dir_all(self.volume()).await?;
        tokio::fs::rename(spare.image_file(), self.image_file()).await?;
        let (from, to) = (spare.volume(), self.volume());
        tokio::task::spawn_blocking(move || {
            nix::mount::mount(
                Some(&from),
                &to,
                None::<&str>,
                nix::mount::MsFlags::MS_MOVE,
                None::<&str>,
            )
        })
        .await
        .expect("mount task")
        .map_err(|e| Error::Host {
            what: format!("move mount of {}", spare.volume().display()),
            reason: e.to_string(),
        })?;
        let _ = tokio::fs::remove_dir_all(&spare.dir).await;
        Ok(())
    }

    /// Mounts the volume of an existing layer again (after [`unmount`](Self::unmount)).
    pub async fn mount_volume(&self) -> Result<(), Error> {
        tokio::fs::create_dir_all(self.volume()).await?;
        run(
            "mount",
            &[
                "-o",
                "loop",
                &self.image_file().to_string_lossy(),
                &self.volume().to_string_lossy(),
            ],
        )
        .await
        .map(drop)
    }

    /// Mounts the overlay of `lowers` (top-most first: snapshot layers, then
    /// the image) and the volume's upper dir at [`rootfs`](Self::rootfs).
    pub async fn mount_overlay(&self, lowers: &[PathBuf]) -> Result<(), Error> {
        tokio::fs::create_dir_all(self.rootfs()).await?;
        let lower = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower,
            self.upper().display(),
            self.volume().join("work").display()
        );
        let target = self.rootfs();
        tokio::task::spawn_blocking(move || {
            nix::mount::mount(
                Some("overlay"),
                &target,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(opts.as_str()),
            )
        })
        .await
        .expect("mount task")
        .map_err(|e| Error::Host {
            what: format!("overlay mount on {}", self.rootfs().display()),
            reason: e.to_string(),
        })
    }

    /// Unmounts the overlay and the volume; the volume's file stays. Best
    /// effort, idempotent.
    pub async fn unmount(&self) {
        for m in [self.rootfs(), self.volume()] {
            if is_mountpoint(&m) {
                let s = m.to_string_lossy().to_string();
                if run("umount", &[&s]).await.is_err() {
                    let _ = run("umount", &["-l", &s]).await;
                }
            }
        }
    }

    /// Whether the overlay is mounted.
    pub fn is_mounted(&self) -> bool {
        is_mountpoint(&self.rootfs())
    }

    /// Unmounts everything and removes the directory. Best effort, idempotent.
    pub async fn destroy(&self) {
        self.unmount().await;
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }
}

/// Mount points at or below `root`, deepest first.
pub fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn is_mountpoint(p: &Path) -> bool {
    mounts_below(p).iter().any(|m| m == p)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn proc_is_found_as_a_mount() {
        assert!(mounts_below(Path::new("/proc")).contains(&PathBuf::from("/proc")));
    }
}
