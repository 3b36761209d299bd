//! A sandbox's writable layer: an overlay of the shared read-only image and
//! an upper directory on the sandbox's own volume, a sparse file of
//! `disk_mb` formatted btrfs (or ext4 where btrfs is missing). Writing past
//! the size fails inside the sandbox with ENOSPC; the host's disk is
//! untouched beyond the volume.
//!
//! btrfs is there for captures: a read-only snapshot of the volume takes
//! constant time whatever the sandbox wrote, so a snapshot pauses the
//! sandbox for its memory only; the snapshot is copied out after it runs
//! again. An ext4 volume (made by an older sbx, or on a host without btrfs)
//! is copied during the pause instead.

use crate::btrfs;
use crate::cmd::run;
use crate::Error;
use std::path::{Path, PathBuf};

/// Prefix of the read-only snapshots a capture makes in a btrfs volume.
const CAPTURE_PREFIX: &str = ".capture-";

/// The filesystem new volumes get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeFs {
    Btrfs,
    Ext4,
}

impl VolumeFs {
    /// btrfs when the kernel has it and `mkfs.btrfs` is installed.
    pub fn detect() -> Self {
        let kernel = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("btrfs"))
        });
        if kernel && sbx_runtime::gvisor::find_in_path("mkfs.btrfs").is_some() {
            Self::Btrfs
        } else {
            tracing::warn!(
                "btrfs is missing (kernel: {kernel}; install btrfs-progs): sandbox volumes are \
                 ext4, and a snapshot copies the sandbox's files while it is paused"
            );
            Self::Ext4
        }
    }
}

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
    pub async fn create(
        &self,
        lowers: &[PathBuf],
        disk_mb: u64,
        fs: VolumeFs,
    ) -> Result<(), Error> {
        let result = async {
            self.make_volume(disk_mb, fs).await?;
            self.mount_overlay(lowers).await
        }
        .await;
        if result.is_err() {
            self.destroy().await;
        }
        result
    }

    /// Creates the sparse volume of `disk_mb` and mounts it, with empty
    /// `upper` and `work` directories. Cleans up after itself on failure.
    pub async fn make_volume(&self, disk_mb: u64, fs: VolumeFs) -> Result<(), Error> {
        let result = self.make_volume_inner(disk_mb, fs).await;
        if result.is_err() {
            self.destroy().await;
        }
        result
    }

    async fn make_volume_inner(&self, disk_mb: u64, fs: VolumeFs) -> Result<(), Error> {
        tokio::fs::create_dir_all(self.volume()).await?;
        let img = self.image_file();
        let file = tokio::fs::File::create(&img).await?;
        file.set_len(disk_mb * 1024 * 1024).await?;
        drop(file);
        let img_s = img.to_string_lossy();
        match fs {
            // Mixed data and metadata, one copy of each: the whole volume
            // holds data (separate groups kept a quarter of a 3 GB volume
            // from it), and space freed by a delete can be written again
            // at once (with separate groups a full volume stayed full
            // until btrfs's next commit).
            VolumeFs::Btrfs => run(
                "mkfs.btrfs",
                &[
                    "-q", "-f", "-K", "--mixed", "-m", "single", "-d", "single", &img_s,
                ],
            )
            .await
            .map(drop)?,
            VolumeFs::Ext4 => run(
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
            .await
            .map(drop)?,
        }
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

    /// Whether the volume can be captured in constant time (btrfs).
    pub fn can_snapshot(&self) -> bool {
        btrfs::is_btrfs(&self.volume())
    }

    /// Writes what the host caches for the volume to its disk (syncfs), so
    /// that a snapshot taken next has little left to flush.
    pub async fn sync_volume(&self) -> Result<(), Error> {
        let volume = self.volume();
        tokio::task::spawn_blocking(move || crate::host::syncfs(&volume))
            .await
            .expect("syncfs task")
            .map_err(Error::from)
    }

    /// Takes a read-only snapshot of the volume named after `capture`
    /// (constant time); its copy of the upper dir is at
    /// [`Self::captured_upper`]. Blocking.
    pub fn snapshot_volume(&self, capture: &str) -> std::io::Result<()> {
        btrfs::snapshot_readonly(&self.volume(), &self.volume(), &capture_name(capture))
    }

    /// The upper dir as [`Self::snapshot_volume`] captured it for `capture`.
    pub fn captured_upper(&self, capture: &str) -> PathBuf {
        self.volume().join(capture_name(capture)).join("upper")
    }

    /// Removes the snapshot [`Self::snapshot_volume`] took for `capture`.
    /// Idempotent.
    pub async fn drop_snapshot(&self, capture: &str) {
        let (volume, name) = (self.volume(), capture_name(capture));
        tokio::task::spawn_blocking(move || drop_subvolume(&volume, &name))
            .await
            .expect("subvolume task");
    }

    /// Removes every capture snapshot in the volume (those a crash left).
    pub async fn drop_all_snapshots(&self) {
        let volume = self.volume();
        tokio::task::spawn_blocking(move || {
            for name in btrfs::entries_with_prefix(&volume, CAPTURE_PREFIX) {
                drop_subvolume(&volume, &name);
            }
        })
        .await
        .expect("subvolume task");
    }

    /// Whether the overlay is mounted.
    pub fn is_mounted(&self) -> bool {
        is_mountpoint(&self.rootfs())
    }

    /// Unmounts everything and removes the directory. Best effort, idempotent.
    pub async fn destroy(&self) {
        self.unmount().await;
        let _ = crate::gently::remove(&self.dir).await;
    }
}

fn capture_name(capture: &str) -> String {
    format!("{CAPTURE_PREFIX}{capture}")
}

/// Removes subvolume `volume/name` if it is there; a failure is logged.
fn drop_subvolume(volume: &Path, name: &str) {
    if volume.join(name).exists() {
        if let Err(e) = btrfs::delete_subvolume(volume, name) {
            tracing::warn!(volume = %volume.display(), "cannot remove {name}: {e}");
        }
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

    #[tokio::test]
    async fn a_btrfs_volume_snapshot_keeps_the_files_of_its_instant() {
        let d = tempfile::tempdir().unwrap();
        let layer = Layer::new(d.path().join("sb"));
        layer.make_volume(128, VolumeFs::Btrfs).await.unwrap();
        assert!(layer.can_snapshot());
        std::fs::write(layer.upper().join("a"), "before").unwrap();
        layer.sync_volume().await.unwrap();
        layer.snapshot_volume("snap1").unwrap();
        let copy = layer.captured_upper("snap1");
        std::fs::write(layer.upper().join("a"), "after").unwrap();
        std::fs::write(layer.upper().join("b"), "new").unwrap();
        assert_eq!(std::fs::read_to_string(copy.join("a")).unwrap(), "before");
        assert!(!copy.join("b").exists());
        // Read-only: the capture cannot be changed by mistake.
        assert!(std::fs::write(copy.join("c"), "x").is_err());
        // A crash's leftovers are found and removed.
        layer.snapshot_volume("snap2").unwrap();
        layer.drop_all_snapshots().await;
        assert!(btrfs::entries_with_prefix(&layer.volume(), CAPTURE_PREFIX).is_empty());
        assert_eq!(
            std::fs::read_to_string(layer.upper().join("a")).unwrap(),
            "after"
        );
        layer.destroy().await;
        assert!(mounts_below(d.path()).is_empty());
    }

    #[tokio::test]
    async fn a_full_volume_takes_writes_again_once_a_file_is_deleted() {
        let d = tempfile::tempdir().unwrap();
        let layer = Layer::new(d.path().join("sb"));
        layer.make_volume(200, VolumeFs::Btrfs).await.unwrap();
        let full = fill(&layer.upper().join("fill"));
        std::fs::remove_file(layer.upper().join("fill")).unwrap();
        let again = std::fs::write(layer.upper().join("small"), "ok");
        layer.destroy().await;
        assert_eq!(full.0.raw_os_error(), Some(libc::ENOSPC), "{}", full.0);
        again.unwrap();
    }

    /// Writes 1 MB pieces to `path` until a write fails; the error and the
    /// MB written.
    fn fill(path: &Path) -> (std::io::Error, u64) {
        use std::io::Write;
        let chunk = vec![7u8; 1 << 20];
        let mut f = std::fs::File::create(path).unwrap();
        let mut written = 0;
        loop {
            match f.write_all(&chunk).and_then(|_| f.sync_data()) {
                Ok(()) => written += 1,
                Err(e) => return (e, written),
            }
            assert!(written <= 1 << 16, "no end to the volume");
        }
    }

    #[tokio::test]
    async fn a_volume_holds_about_its_size_and_no_more() {
        let d = tempfile::tempdir().unwrap();
        let layer = Layer::new(d.path().join("sb"));
        layer.make_volume(128, VolumeFs::Btrfs).await.unwrap();
        let (full, written) = fill(&layer.upper().join("big"));
        layer.destroy().await;
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
        assert!((110..=128).contains(&written), "{written} MB fit in 128 MB");
    }

    #[test]
    fn proc_is_found_as_a_mount() {
        assert!(mounts_below(Path::new("/proc")).contains(&PathBuf::from("/proc")));
    }
}
