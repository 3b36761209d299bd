//! The server adopts and reaps its sandboxes' processes.
//!
//! `runsc run --detach` starts a sandbox's sentry and gofer and exits, so they are
//! orphans: the kernel gives them to the nearest subreaper, else to PID 1.
//! When they die, `runsc delete` waits until they are reaped, polling
//! every 100 ms. Left to PID 1 that wait is as long as the host's init takes
//! to reap: ~1.1 s on a host whose init reaps lazily (it was most of a
//! suspend's teardown and of every delete there). The server is therefore a
//! child subreaper and reaps them itself, at once.
//!
//! Its own children (each program it runs) are reaped by tokio; so that the
//! two never race, only zombies named `exe` (runsc re-executes itself as
//! `/proc/self/exe` for the sentry and the gofer; the server never runs such
//! a program) are reaped at once, and any other zombie child only after it
//! has stayed one for a minute (a program whose handle was dropped, or an
//! orphan of something else).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long another zombie child is left to whoever waits for it.
const GRACE: Duration = Duration::from_secs(60);

/// Makes this process a child subreaper and reaps its adopted orphans in
/// the background, for as long as it runs.
pub fn adopt_and_reap() {
    // SAFETY: prctl with an integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        tracing::warn!(
            "cannot become a child subreaper: {}; sandboxes are reaped by the host's init",
            std::io::Error::last_os_error()
        );
        return;
    }
    tokio::spawn(async {
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("no SIGCHLD stream: {e}; orphans are reaped every second");
                return reap_every(Duration::from_secs(1)).await;
            }
        };
        let mut zombies = HashMap::new();
        loop {
            // SIGCHLD coalesces: also look now and then.
            let _ = tokio::time::timeout(Duration::from_secs(1), sigchld.recv()).await;
            reap(&mut zombies);
        }
    });
}

/// Waits until process `pid` is gone (exited and reaped), for at most
/// `limit`.
pub async fn wait_gone(pid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    let proc_dir = format!("/proc/{pid}");
    while std::path::Path::new(&proc_dir).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn reap_every(period: Duration) {
    let mut zombies = HashMap::new();
    loop {
        tokio::time::sleep(period).await;
        reap(&mut zombies);
    }
}

/// One pass; `zombies` remembers when each other zombie child was first seen.
fn reap(zombies: &mut HashMap<i32, Instant>) {
    let now = Instant::now();
    let mut still = HashMap::new();
    for pid in children() {
        let Some((comm, state)) = comm_and_state(pid) else {
            continue;
        };
        if state != 'Z' {
            continue;
        }
        let first = zombies.get(&pid).copied().unwrap_or(now);
        if comm == "exe" || now.duration_since(first) >= GRACE {
            // SAFETY: waitpid on one specific pid, no status pointer.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        } else {
            still.insert(pid, first);
        }
    }
    *zombies = still;
}

/// This process's children (of all its threads: an orphan is given to any).
fn children() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// A process's name and state letter, from `/proc/<pid>/stat`.
fn comm_and_state(pid: i32) -> Option<(String, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<(String, char)> {
    // `pid (comm) S ...`; comm may hold spaces and parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((comm, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_until_a_process_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let reaper = std::thread::spawn(move || child.wait());
        let t0 = Instant::now();
        wait_gone(pid, Duration::from_secs(5)).await;
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(t0.elapsed() < Duration::from_secs(5));
        reaper.join().unwrap().unwrap();
        // Gone already: returns at once; still there: gives up at the limit.
        wait_gone(pid, Duration::from_secs(5)).await;
        let own = std::process::id() as i32;
        let t0 = Instant::now();
        wait_gone(own, Duration::from_millis(50)).await;
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn stat_lines_give_name_and_state() {
        assert_eq!(
            parse_stat("123 (exe) Z 1 2 3"),
            Some(("exe".to_string(), 'Z'))
        );
        assert_eq!(
            parse_stat("7 (a (b) c) S 1"),
            Some(("a (b) c".to_string(), 'S'))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_child_of_this_process_is_listed() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let listed = children().contains(&pid);
        let (comm, _) = comm_and_state(pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(listed);
        assert_eq!(comm, "sleep");
    }
}
