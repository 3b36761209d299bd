//! Memory pressure of a sandbox, seen from the host.
//!
//! The agent kills the largest process group when what it started uses more
//! than the sandbox's memory (gVisor has no per-process OOM killer), which
//! takes looking at every process in the sandbox. Looking all the time costs
//! every sandbox CPU even when it is idle (each wake-up inside gVisor is a
//! sentry↔stub hand-off), so the host tells the agent when to look: a cgroup
//! v1 memory threshold at the sandbox's memory, notified through an eventfd,
//! fires when the cgroup's usage crosses it (either way). Usage counts more
//! than the processes' resident memory (the sentry, file cache), so below
//! it nothing in the sandbox can be over the limit.
//!
//! Under cgroup v2 there is no threshold to register: the agent watches on
//! its own (no `SBX_MEMORY_WATCH=host`).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use tokio::io::unix::AsyncFd;

/// Where the memory hierarchy of cgroup v1 is mounted.
const MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";

/// A registered threshold on one memory cgroup.
pub struct Threshold {
    dir: PathBuf,
    threshold: u64,
    event: AsyncFd<OwnedFd>,
    /// Kept open while the threshold is registered.
    _usage: std::fs::File,
}

/// The memory cgroup directory of `cgroup_path` (`/<parent>/<id>`), where
/// thresholds can be registered (cgroup v1).
pub fn memory_cgroup(cgroup_path: &str) -> Option<PathBuf> {
    let dir = Path::new(MEMORY_ROOT).join(cgroup_path.trim_start_matches('/'));
    dir.join("cgroup.event_control").exists().then_some(dir)
}

/// Whether this host can notify agents of memory pressure (cgroup v1).
pub fn supported() -> bool {
    Path::new(MEMORY_ROOT).join("cgroup.event_control").exists()
}

impl Threshold {
    /// Registers `threshold` bytes on the memory cgroup `dir`. The kernel
    /// waits for an RCU grace period to install it (~20 ms here): this runs
    /// on a blocking thread, and callers keep it off the launch path.
    pub async fn register(dir: &Path, threshold: u64) -> std::io::Result<Self> {
        let d = dir.to_path_buf();
        let (event, usage) = tokio::task::spawn_blocking(move || {
            // SAFETY: eventfd(2) with constant flags; the fd is owned at once.
            let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if raw < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `raw` is a new descriptor nothing else owns.
            let event = unsafe { OwnedFd::from_raw_fd(raw) };
            let usage = std::fs::File::open(d.join("memory.usage_in_bytes"))?;
            std::fs::write(
                d.join("cgroup.event_control"),
                format!("{} {} {threshold}", event.as_raw_fd(), usage.as_raw_fd()),
            )?;
            Ok((event, usage))
        })
        .await
        .map_err(std::io::Error::other)??;
        // SAFETY: the OwnedFd stays open and the same for the AsyncFd's life.
        let event =
            unsafe { AsyncFd::register_with_interest(event, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            threshold,
            event,
            _usage: usage,
        })
    }

    /// Whether the cgroup's usage is at or above the threshold now;
    /// `None` once the cgroup is gone.
    pub fn over(&self) -> Option<bool> {
        let usage = std::fs::read_to_string(self.dir.join("memory.usage_in_bytes")).ok()?;
        Some(usage.trim().parse::<u64>().ok()? >= self.threshold)
    }

    /// Waits for the next crossing (or the cgroup's removal); then returns
    /// where usage stands, `None` once the cgroup is gone.
    pub async fn next(&self) -> Option<bool> {
        loop {
            let mut guard = self.event.readable().await.ok()?;
            let mut buf = [0u8; 8];
            let fd = self.event.get_ref().as_raw_fd();
            // SAFETY: reading 8 bytes from our eventfd into a local buffer;
            // the File is forgotten so that it does not close the fd.
            let read = {
                let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
                f.read(&mut buf)
            };
            match read {
                Ok(_) => return self.over(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(_) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real memory cgroup (v1 hosts only): a process that fills memory
    /// past the threshold is seen crossing it, and back when it exits.
    #[tokio::test]
    async fn crossings_are_seen_both_ways() {
        if !supported() {
            eprintln!("no cgroup v1 memory hierarchy: nothing to test");
            return;
        }
        let dir = Path::new(MEMORY_ROOT).join(format!("sbx-memwatch-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let t = Threshold::register(&dir, 64 << 20).await.unwrap();
        assert_eq!(t.over(), Some(false));
        // A child moved into the cgroup fills 128 MB there, then holds it
        // until its stdin closes.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; sys.stdin.readline(); b = bytearray(128 << 20); b[::4096] = b'x' * len(b[::4096]); sys.stdin.read()",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        use std::io::Write;
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
        let up = tokio::time::timeout(std::time::Duration::from_secs(20), t.next())
            .await
            .expect("no crossing seen");
        assert_eq!(up, Some(true));
        drop(child.stdin.take());
        child.wait().unwrap();
        let down = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                if t.next().await != Some(true) {
                    return t.over();
                }
            }
        })
        .await
        .expect("no crossing back seen");
        assert_eq!(down, Some(false));
        drop(t);
        // The pages it touched may still be charged as cache: move the
        // charge away before removing the cgroup.
        let _ = std::fs::write(dir.join("memory.force_empty"), "0");
        std::fs::remove_dir(&dir).unwrap();
    }
}
