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
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
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
    waiters: Arc<Mutex<HashMap<i32, oneshot::Sender<Exit>>>>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reaping task.
    pub fn start(&self) -> std::io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                // The periodic tick is a safety net for coalesced signals.
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                this.reap();
            }
        });
        Ok(())
    }

    /// Spawns `cmd` and registers its pid; the receiver yields its exit status.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut waiters = self.waiters.lock().unwrap();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(child.id() as i32, tx);
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
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Reaps every exited child without blocking.
    pub fn reap(&self) {
        let mut waiters = self.waiters.lock().unwrap();
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            match waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid = pid.as_raw(), ?exit, "reaped orphan"),
            }
        }
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
}
