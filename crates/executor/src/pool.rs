//! Spare writable volumes, made ahead of time so that creating a sandbox
//! does not wait for `mkfs` and a loop mount (about 30 ms of its start).
//! Only volumes of the default size are kept; other sizes are made on demand.

use crate::layer::{self, Layer, VolumeFs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct VolumePool {
    dir: PathBuf,
    disk_mb: u64,
    fs: VolumeFs,
    target: usize,
    ready: Mutex<Vec<Layer>>,
    filling: AtomicBool,
    /// Set by [`Self::drain`]: no volume is made after it.
    closed: AtomicBool,
    counter: AtomicU64,
    /// Sandbox starts under way ([`Self::starting`]): a refill waits for
    /// them (see [`REFILL_WAITS_AT_MOST`]).
    starting: Arc<AtomicUsize>,
}

/// How long a refill lets sandbox starts go first. A burst of starts (a
/// copy of ten takes ten volumes at once) shares two CPUs with the `mkfs`
/// and mounts that replace what it took: made after it, they no longer slow
/// it (~50 ms of a copy of ten here). Under a steady stream of starts the
/// pool is still refilled, only later.
const REFILL_WAITS_AT_MOST: Duration = Duration::from_secs(2);

/// Held while a sandbox starts: see [`VolumePool::starting`].
pub struct Starting(Arc<AtomicUsize>);

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl VolumePool {
    /// A pool under `dir` keeping `target` spare volumes of `disk_mb`.
    /// Whatever an earlier run left in `dir` is removed.
    pub async fn new(dir: PathBuf, disk_mb: u64, target: usize, fs: VolumeFs) -> Arc<Self> {
        for m in layer::mounts_below(&dir) {
            let s = m.to_string_lossy().to_string();
            if crate::cmd::run("umount", &[&s]).await.is_err() {
                let _ = crate::cmd::run("umount", &["-l", &s]).await;
            }
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let pool = Arc::new(Self {
            dir,
            disk_mb,
            fs,
            target,
            ready: Mutex::new(Vec::new()),
            filling: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            counter: AtomicU64::new(0),
            starting: Arc::new(AtomicUsize::new(0)),
        });
        pool.refill();
        pool
    }

    /// A spare volume of `disk_mb`, if one is ready; starts a refill.
    pub fn take(self: &Arc<Self>, disk_mb: u64) -> Option<Layer> {
        if disk_mb != self.disk_mb || self.target == 0 {
            return None;
        }
        let spare = self.ready.lock().unwrap().pop();
        self.refill();
        spare
    }

    /// Marks a sandbox start under way until the guard is dropped; the
    /// pool's refill waits for such starts.
    pub fn starting(&self) -> Starting {
        self.starting.fetch_add(1, Ordering::SeqCst);
        Starting(self.starting.clone())
    }

    /// Waits until no sandbox start is under way, at most
    /// [`REFILL_WAITS_AT_MOST`].
    async fn after_starts(&self) {
        let deadline = tokio::time::Instant::now() + REFILL_WAITS_AT_MOST;
        while self.starting.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes volumes in the background until `target` are ready.
    fn refill(self: &Arc<Self>) {
        if self.filling.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            while !me.closed.load(Ordering::SeqCst) && me.ready.lock().unwrap().len() < me.target {
                me.after_starts().await;
                if me.closed.load(Ordering::SeqCst) {
                    break;
                }
                let n = me.counter.fetch_add(1, Ordering::Relaxed);
                let spare = Layer::new(me.dir.join(n.to_string()));
                match spare.make_volume(me.disk_mb, me.fs).await {
                    Ok(()) => me.ready.lock().unwrap().push(spare),
                    Err(e) => {
                        tracing::warn!("cannot make a spare volume: {e}");
                        break;
                    }
                }
            }
            me.filling.store(false, Ordering::SeqCst);
        });
    }

    /// Removes every spare volume (on shutdown).
    pub async fn drain(&self) {
        // A volume being made now is finished first, then removed with the
        // others (removing them before left its mount behind).
        self.closed.store(true, Ordering::SeqCst);
        for _ in 0..3000 {
            if !self.filling.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let spares: Vec<Layer> = std::mem::take(&mut *self.ready.lock().unwrap());
        for s in spares {
            s.destroy().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(pool: &VolumePool) -> usize {
        pool.ready.lock().unwrap().len()
    }

    async fn wait_ready(pool: &VolumePool, n: usize) {
        for _ in 0..1500 {
            if ready(pool) == n && !pool.filling.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} of {n} spare volumes ready", ready(pool));
    }

    /// What a start takes is made again after the starts under way, and
    /// anyway once they have gone on for too long.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refill_waits_for_the_starts_under_way() {
        let d = tempfile::tempdir().unwrap();
        let pool = VolumePool::new(d.path().join("pool"), 128, 2, VolumeFs::Btrfs).await;
        wait_ready(&pool, 2).await;

        let starting = pool.starting();
        let taken = pool.take(128).expect("a spare volume");
        tokio::time::sleep(REFILL_WAITS_AT_MOST / 4).await;
        assert_eq!(ready(&pool), 1, "none made while a start is under way");
        drop(starting);
        wait_ready(&pool, 2).await;

        // A start that never ends holds a refill back no longer than that.
        let _stuck = pool.starting();
        let again = pool.take(128).expect("a spare volume");
        wait_ready(&pool, 2).await;

        for l in [taken, again] {
            l.destroy().await;
        }
        pool.drain().await;
        assert!(layer::mounts_below(d.path()).is_empty());
    }
}
