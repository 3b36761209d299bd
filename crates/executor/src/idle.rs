//! Idle sandboxes are frozen, so that they cost no CPU.
//!
//! A gVisor sandbox that does nothing still wakes up all the time: runsc's
//! systrap platform re-evaluates its fast path every 400 µs in a goroutine
//! of the sentry (`controlFastPath`), about 20 ms of CPU a second per
//! sandbox on this kind of host. `runsc pause` stops the sandbox's tasks but
//! not the sentry, so a sandbox that has no process besides its agent and
//! no request in flight for `after` is frozen with the cgroup freezer
//! (sentry, gofer and stubs stop; memory stays). Everything that reaches a
//! sandbox takes a [`Hold`] first, which thaws it (about 2 ms) and keeps it
//! thawed until dropped: proxied requests for as long as their response
//! streams, captures, signals, teardown.
//!
//! Only sandboxes with no process of their own are frozen (the agent says
//! so, and knows about orphans: it is PID 1), so no user work stops: all a
//! frozen sandbox could do is answer a request, and a request thaws it.

use crate::cgroups::CgroupParent;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a sandbox the agent called busy is left before it is asked again.
const BUSY_RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct State {
    /// Its cgroup (the name under the cgroup parent).
    cgroup: String,
    holds: usize,
    last_used: Instant,
    frozen: bool,
    /// When the agent last said it has processes.
    busy_at: Option<Instant>,
}

/// The freeze state of the sandboxes that run on this host.
pub struct Idle {
    cgroups: CgroupParent,
    /// Idle time after which a sandbox is frozen; `None`: never.
    after: Option<Duration>,
    sandboxes: Mutex<HashMap<String, State>>,
}

/// Keeps a sandbox thawed while it lives.
pub struct Hold {
    idle: Arc<Idle>,
    id: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(s) = self.idle.sandboxes.lock().unwrap().get_mut(&self.id) {
            s.holds = s.holds.saturating_sub(1);
            s.last_used = Instant::now();
        }
    }
}

impl Idle {
    pub fn new(cgroups: CgroupParent, after: Option<Duration>) -> Arc<Self> {
        let after = after.filter(|_| {
            let ok = cgroups.can_freeze();
            if !ok {
                tracing::info!("no cgroup freezer on this host: idle sandboxes are not frozen");
            }
            ok
        });
        Arc::new(Self {
            cgroups,
            after,
            sandboxes: Mutex::new(HashMap::new()),
        })
    }

    /// Starts tracking a sandbox that runs in cgroup `cgroup` (and is
    /// thawed: recovery thaws whatever a previous run left frozen).
    pub fn add(&self, id: &str, cgroup: &str) {
        self.sandboxes.lock().unwrap().insert(
            id.to_string(),
            State {
                cgroup: cgroup.to_string(),
                holds: 0,
                last_used: Instant::now(),
                frozen: false,
                busy_at: None,
            },
        );
    }

    /// Stops tracking a sandbox and thaws it (a frozen process cannot even
    /// die).
    pub fn remove(&self, id: &str) {
        let state = self.sandboxes.lock().unwrap().remove(id);
        // Also one this server did not track (left frozen before a crash).
        if self.after.is_some() {
            let cgroup = state.map_or_else(|| id.to_string(), |s| s.cgroup);
            let _ = self.cgroups.set_frozen(&cgroup, false);
        }
    }

    /// Thaws sandbox `id` if needed and keeps it thawed until the hold drops.
    pub fn hold(self: &Arc<Self>, id: &str) -> Hold {
        let mut all = self.sandboxes.lock().unwrap();
        if let Some(s) = all.get_mut(id) {
            s.holds += 1;
            s.last_used = Instant::now();
            if s.frozen {
                s.frozen = false;
                self.thaw(id, &s.cgroup);
            }
        }
        Hold {
            idle: self.clone(),
            id: id.to_string(),
        }
    }

    fn thaw(&self, id: &str, cgroup: &str) {
        if let Err(e) = self.cgroups.set_frozen(cgroup, false) {
            tracing::warn!(sandbox = id, "cannot thaw: {e}");
        }
    }

    /// Sandboxes unused for `after`, not frozen, not held, with the time of
    /// their last use.
    fn candidates(&self, after: Duration) -> Vec<(String, Instant)> {
        let now = Instant::now();
        self.sandboxes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| {
                !s.frozen
                    && s.holds == 0
                    && now.duration_since(s.last_used) >= after
                    && s.busy_at
                        .is_none_or(|b| now.duration_since(b) >= BUSY_RECHECK)
            })
            .map(|(id, s)| (id.clone(), s.last_used))
            .collect()
    }

    /// Freezes sandbox `id` unless it was used since `seen` or is held.
    fn freeze(&self, id: &str, seen: Instant) -> bool {
        let mut all = self.sandboxes.lock().unwrap();
        let Some(s) = all.get_mut(id) else {
            return false;
        };
        if s.frozen || s.holds > 0 || s.last_used != seen {
            return false;
        }
        match self.cgroups.set_frozen(&s.cgroup, true) {
            Ok(()) => {
                s.frozen = true;
                true
            }
            Err(e) => {
                tracing::warn!(sandbox = id, "cannot freeze: {e}");
                // Not again soon.
                s.busy_at = Some(Instant::now());
                false
            }
        }
    }

    fn mark_busy(&self, id: &str) {
        if let Some(s) = self.sandboxes.lock().unwrap().get_mut(id) {
            s.busy_at = Some(Instant::now());
        }
    }

    /// One round: every candidate whose agent says it has no process is
    /// frozen. `addr` gives a sandbox's agent address.
    pub async fn sweep(&self, addr: impl Fn(&str) -> Option<SocketAddr>) {
        let Some(after) = self.after else {
            return;
        };
        for (id, seen) in self.candidates(after) {
            let Some(a) = addr(&id) else { continue };
            match agent_has_processes(a).await {
                Some(false) => {
                    if self.freeze(&id, seen) {
                        tracing::debug!(sandbox = id, "idle: frozen");
                    }
                }
                // Busy, an older agent that does not say, or no answer.
                _ => self.mark_busy(&id),
            }
        }
    }
}

/// Asks the agent at `addr` whether any process besides itself exists;
/// `None` when it does not answer or does not say.
async fn agent_has_processes(addr: SocketAddr) -> Option<bool> {
    let a = crate::agent_http::request(addr, "GET", "/api/v1/info", Duration::from_secs(2)).await?;
    if a.status != 200 {
        return None;
    }
    let info: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
    info.get("has_processes")?.as_bool()
}
