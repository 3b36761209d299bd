//! The one global child reaper.
//!
//! The agent never calls `wait` on a `Child`: a single task loops
//! `waitpid(-1, WNOHANG)` on every SIGCHLD and hands each status to whoever
//! registered that pid. Statuses of unregistered pids (orphans reparented to
//! PID 1 or to the agent as a subreaper) are dropped.
//!
//! Spawning happens under the reaper lock and the reaper holds the same lock
//! while it calls `waitpid`, so a child is always registered before it can be
//! reaped, and the `waitpid` that std (or glibc's `posix_spawn`) does on a
//! child whose `exec` failed never races with ours.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// Shell-style single number: the exit code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

#[derive(Clone, Default)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
    /// Signalled when a child is spawned (the reaper waits for one).
    spawned: Arc<Condvar>,
}

#[derive(Default)]
struct Waiters {
    by_pid: HashMap<i32, oneshot::Sender<Exit>>,
    /// How many children were ever spawned: the reaper, told "no children"
    /// by `waitpid`, sleeps only if none was spawned since it asked.
    spawns: u64,
    /// `waitpid` said there is no child, and none was spawned since.
    childless: bool,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reaping task.
    /// Reaps on a thread blocked in `waitpid`, which simply continues
    /// after a restore of the sandbox (see `blocking`).
    pub fn start(&self) -> std::io::Result<()> {
        let this = self.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || this.reap_forever())?;
        Ok(())
    }

    fn reap_forever(&self) {
        loop {
            let spawns = self.waiters.lock().unwrap().spawns;
            let (pid, exit) = match waitpid(Pid::from_raw(-1), None) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => {
                    // No children: wait until one is spawned, unless one was
                    // while `waitpid` answered (its notification is gone).
                    // Every child is spawned through `register`, and without
                    // a child no orphan can be reparented to us: no timeout,
                    // so an idle sandbox does not wake up for nothing.
                    let mut guard = self.waiters.lock().unwrap();
                    if guard.spawns == spawns {
                        guard.childless = true;
                        drop(self.spawned.wait(guard).unwrap());
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!("waitpid: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            // Spawners register under this lock, so the waiter is in place.
            let tx = self.waiters.lock().unwrap().by_pid.remove(&pid.as_raw());
            match tx {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid = pid.as_raw(), ?exit, "reaped orphan"),
            }
        }
    }

    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut waiters = self.waiters.lock().unwrap();
        let child = cmd.spawn()?;
        let rx = self.register(&mut waiters, child.id() as i32);
        Ok((child, rx))
    }

    /// Runs `spawn` (which returns the new child's pid) under the reaper lock
    /// and registers the pid; the receiver yields its exit status.
    pub fn spawn_with(
        &self,
        spawn: impl FnOnce() -> std::io::Result<i32>,
    ) -> std::io::Result<(i32, oneshot::Receiver<Exit>)> {
        let mut waiters = self.waiters.lock().unwrap();
        let pid = spawn()?;
        let rx = self.register(&mut waiters, pid);
        Ok((pid, rx))
    }

    /// Whether any child process exists (or may: until `waitpid` first
    /// says there is none, this answers yes).
    pub fn has_children(&self) -> bool {
        !self.waiters.lock().unwrap().childless
    }

    fn register(&self, waiters: &mut Waiters, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        waiters.by_pid.insert(pid, tx);
        waiters.spawns += 1;
        waiters.childless = false;
        self.spawned.notify_all();
        rx
    }
}

/// Serialises the tests that run a reaper: two reapers in one process would
/// steal each other's children.
#[cfg(test)]
pub static TEST_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reaps_registered_children() {
        let _serial = TEST_LOCK.lock().await;
        let reaper = Reaper::default();
        reaper.start().unwrap();
        let (_c, rx) = reaper
            .spawn(Command::new("sh").args(["-c", "exit 7"]))
            .unwrap();
        assert_eq!(rx.await.unwrap(), Exit::Code(7));
        let (_c, rx) = reaper
            .spawn(Command::new("sh").args(["-c", "kill -9 $$"]))
            .unwrap();
        assert_eq!(rx.await.unwrap(), Exit::Signal(9));
        assert_eq!(Exit::Signal(9).shell_code(), 137);
    }

    #[tokio::test]
    async fn knows_whether_any_child_is_left() {
        let _serial = TEST_LOCK.lock().await;
        let reaper = Reaper::default();
        reaper.start().unwrap();
        // A child that leaves an orphan behind: the orphan is ours too
        // (PID 1 or subreaper), so children remain after the child exits.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let (_c, rx) = reaper
            .spawn(Command::new("sh").args(["-c", "sleep 1 & exit 0"]))
            .unwrap();
        assert_eq!(rx.await.unwrap(), Exit::Code(0));
        assert!(reaper.has_children());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while reaper.has_children() {
            assert!(
                std::time::Instant::now() < deadline,
                "the orphan was not reaped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
