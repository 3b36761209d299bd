//! Live resize of a running sandbox: new CPU and memory limits on its
//! cgroup at once, and a bigger writable volume, grown online.
//!
//! - memory: the cgroup's limit becomes [`hard_memory_limit_mb`] of the new
//!   size (as at launch), and the host's memory watch ([`crate::memwatch`])
//!   moves its threshold to the new size. A decrease below what the sandbox
//!   holds now (its working set) is refused before anything changes.
//! - cpus: the cgroup's CPU quota, over the period the launch set. A pinned
//!   sandbox (at most one CPU, see [`crate::placement`]) that grows past one
//!   CPU is unpinned: its cpuset gets every CPU of the server, its sentry
//!   and stubs their affinity back. One that shrinks to one CPU or less
//!   stays unpinned (the quota bounds it) until its next resume.
//! - disk: the volume's image file grows (sparse), its loop device is told
//!   (`losetup -c`), then the filesystem grows online (btrfs: `btrfs
//!   filesystem resize max`; ext4: `resize2fs`). A volume never shrinks.
//!
//! What changed is recorded in the sandbox's launch record, which a resume
//! and a recovery read. A step that fails undoes the steps before it (the
//! volume is grown last: a grown filesystem cannot be undone).

use crate::cmd::run;
use crate::layer::Layer;
use crate::{btrfs, hard_memory_limit_mb, placement, read_meta, write_meta, Error, Executor};

/// New resources; `None` keeps what the sandbox has.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resize {
    pub cpus: Option<f64>,
    pub memory_mb: Option<u64>,
    pub disk_mb: Option<u64>,
}

/// Why a resize was refused or failed. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("sandbox {0} is not running on this host")]
    NotRunning(String),
    #[error(
        "memory_mb {asked} is below what the sandbox holds now ({used} MB): free memory in it first"
    )]
    BelowUse { asked: u64, used: u64 },
    #[error("disk_mb {asked} is below the volume's {size} MB: a live volume only grows")]
    Shrink { asked: u64, size: u64 },
    #[error(transparent)]
    Host(#[from] Error),
}

fn host(what: &str) -> impl FnOnce(std::io::Error) -> ResizeError + '_ {
    move |e| {
        ResizeError::Host(Error::Host {
            what: what.to_string(),
            reason: e.to_string(),
        })
    }
}

impl Executor {
    /// Gives the running sandbox `id` new resources at once (see the module
    /// docs). The caller keeps launches, suspends and resumes of `id` out
    /// meanwhile.
    pub async fn resize(&self, id: &str, to: Resize) -> Result<(), ResizeError> {
        let not_running = || ResizeError::NotRunning(id.to_string());
        let pinned = {
            let live = self.live.lock().unwrap();
            live.get(id).ok_or_else(not_running)?.cpu
        };
        let dir = self.sandbox_dir(id);
        let mut meta = read_meta(&dir)
            .await
            .filter(|m| !m.suspended && m.spec.is_some())
            .ok_or_else(not_running)?;
        let old = meta.spec.clone().expect("filtered");
        let cgroup = self.runtime.cgroup_name(id);
        let layer = Layer::new(&dir);

        // Refusals first: nothing changes when one applies.
        let size_mb = match to.disk_mb {
            Some(_) => {
                tokio::fs::metadata(layer.image_file())
                    .await
                    .map_err(host("the sandbox's volume"))?
                    .len()
                    >> 20
            }
            None => 0,
        };
        if let Some(asked) = to.disk_mb.filter(|d| *d < size_mb) {
            return Err(ResizeError::Shrink {
                asked,
                size: size_mb,
            });
        }
        let memory = to.memory_mb.filter(|m| *m != old.memory_mb);
        if let Some(asked) = memory.filter(|m| *m < old.memory_mb) {
            let used = self
                .cgroups
                .memory_in_use(&cgroup)
                .map_err(host("the sandbox's memory cgroup"))?;
            let used = used.div_ceil(1 << 20);
            if used > asked {
                return Err(ResizeError::BelowUse { asked, used });
            }
        }

        // Memory, then CPUs, then the disk; a failure undoes what came before.
        let set_memory = |mb: u64| {
            self.cgroups
                .set_memory_limit(&cgroup, hard_memory_limit_mb(mb) << 20)
        };
        if let Some(asked) = memory {
            if let Err(e) = set_memory(asked) {
                return Err(match e.raw_os_error() {
                    Some(libc::EBUSY) => ResizeError::BelowUse {
                        asked,
                        used: self
                            .cgroups
                            .memory_in_use(&cgroup)
                            .unwrap_or(0)
                            .div_ceil(1 << 20),
                    },
                    _ => host("the sandbox's memory limit")(e),
                });
            }
        }
        let undo_memory = || {
            if memory.is_some() {
                if let Err(e) = set_memory(old.memory_mb) {
                    tracing::warn!(sandbox = id, "cannot restore the memory limit: {e}");
                }
            }
        };
        let cpus = to.cpus.filter(|c| *c != old.cpus);
        if let Some(c) = cpus {
            if let Err(e) = self.cgroups.set_cpu_quota(&cgroup, c) {
                undo_memory();
                return Err(host("the sandbox's CPU quota")(e));
            }
            if pinned.is_some() && !placement::is_pinned(c) {
                self.unpin_for_good(id, &cgroup).await;
            }
        }
        if let Some(disk_mb) = to.disk_mb.filter(|d| *d > size_mb) {
            if let Err(e) = grow_volume(&layer, disk_mb).await {
                if let Some(_c) = cpus {
                    if let Err(e) = self.cgroups.set_cpu_quota(&cgroup, old.cpus) {
                        tracing::warn!(sandbox = id, "cannot restore the CPU quota: {e}");
                    }
                }
                undo_memory();
                return Err(e.into());
            }
        }

        if let Some(spec) = meta.spec.as_mut() {
            spec.cpus = to.cpus.unwrap_or(old.cpus);
            spec.memory_mb = to.memory_mb.unwrap_or(old.memory_mb);
            spec.disk_mb = to.disk_mb.unwrap_or(old.disk_mb).max(old.disk_mb);
        }
        write_meta(&dir, &meta).await?;
        if let Some(mb) = memory {
            // The new threshold; the agent hears where usage stands now,
            // and keeps its own watch to the new size.
            self.watch_memory(id, mb, true);
            self.tell_agent_memory_limit(id, mb).await;
        }
        tracing::info!(
            sandbox = id,
            cpus = to.cpus,
            memory_mb = to.memory_mb,
            disk_mb = to.disk_mb,
            "resized"
        );
        Ok(())
    }

    /// Tells sandbox `id`'s agent its new memory limit (it kills the
    /// largest process group past it); logged when it does not hear.
    async fn tell_agent_memory_limit(&self, id: &str, mb: u64) {
        let Some(addr) = self.agent_addr(id) else {
            return;
        };
        let _awake = self.hold(id);
        let path = format!("/api/v1/memory-limit?mb={mb}");
        let answer =
            crate::agent_http::request(addr, "PUT", &path, std::time::Duration::from_secs(5)).await;
        match answer {
            Some(a) if a.status == 204 || a.status == 404 => {}
            other => tracing::warn!(
                sandbox = id,
                status = other.map(|a| a.status),
                "the agent did not take the new memory limit: it kills down to the old one"
            ),
        }
    }

    /// Lets pinned sandbox `id` (cgroup `cgroup`) run on every CPU of the
    /// server from now on: its cpuset first (an affinity cannot leave it),
    /// then the affinity of its sentry and stubs (a pin by affinity).
    async fn unpin_for_good(&self, id: &str, cgroup: &str) {
        if let Err(e) = self.set_cpus(id, &placement::list(&self.cpus)).await {
            tracing::warn!(sandbox = id, "cannot unpin: {e}");
            return;
        }
        if self.pin_by_affinity {
            // SAFETY: an all-zero cpu_set_t is a valid empty set.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            for cpu in &self.cpus {
                // SAFETY: CPU_SET on a local set; a CPU number past the
                // set's size is ignored by libc.
                unsafe { libc::CPU_SET(*cpu, &mut set) };
            }
            for pid in self.cgroups.cpuset_procs(cgroup) {
                let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                    continue;
                };
                for task in tasks.flatten() {
                    let Ok(tid) = task.file_name().to_string_lossy().parse::<i32>() else {
                        continue;
                    };
                    // SAFETY: sched_setaffinity(2) of a thread of the
                    // sandbox with a set that lives across the call.
                    unsafe {
                        libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set);
                    }
                }
            }
        }
        if let Some(l) = self.live.lock().unwrap().get_mut(id) {
            l.cpu = None;
        }
        tracing::info!(sandbox = id, "unpinned: it has more than one CPU now");
    }
}

/// Grows the mounted volume of `layer` to `disk_mb`: its image file, its
/// loop device, then its filesystem, online. The file goes back to its old
/// size when the loop device cannot follow.
async fn grow_volume(layer: &Layer, disk_mb: u64) -> Result<(), Error> {
    let img = layer.image_file();
    let img_s = img.to_string_lossy();
    let device = run("losetup", &["-n", "-O", "NAME", "-j", &img_s]).await?;
    let Some(device) = device.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Err(Error::Host {
            what: format!("volume {img_s}"),
            reason: "no loop device backs it (is it mounted?)".into(),
        });
    };
    let file = tokio::fs::OpenOptions::new().write(true).open(&img).await?;
    let old_len = file.metadata().await?.len();
    file.set_len(disk_mb << 20).await?;
    if let Err(e) = run("losetup", &["-c", device]).await {
        let _ = file.set_len(old_len).await;
        return Err(e);
    }
    let volume = layer.volume();
    if btrfs::is_btrfs(&volume) {
        run(
            "btrfs",
            &["filesystem", "resize", "max", &volume.to_string_lossy()],
        )
        .await?;
    } else {
        run("resize2fs", &[device]).await?;
    }
    Ok(())
}
