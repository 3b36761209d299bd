//! Spare writable volumes, made ahead of time so that creating a sandbox
//! does not wait for `mkfs` and a loop mount (about 30 ms of its start).
//! Only volumes of the default size are kept; other sizes are made on demand.

use crate::layer::{self, Layer, VolumeFs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

    /// Makes volumes in the background until `target` are ready.
    fn refill(self: &Arc<Self>) {
        if self.filling.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            while !me.closed.load(Ordering::SeqCst) && me.ready.lock().unwrap().len() < me.target {
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
