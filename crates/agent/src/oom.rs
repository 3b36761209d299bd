//! Memory watcher: when the RSS of everything the agent started exceeds
//! `SBX_MEMORY_LIMIT_MB`, SIGKILL the session (= process group of a user
//! process) using the most memory. The host's cgroup limit is the backstop.

use crate::process::Processes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const INTERVAL: Duration = Duration::from_millis(50);

/// `(pid, ppid, session, rss_bytes)` of one /proc/<pid>/stat.
fn parse_stat(text: &str, page: u64) -> Option<(i32, i32, i32, u64)> {
    // The command name may hold spaces and parens: split after the last ')'.
    let pid = text.split_whitespace().next()?.parse().ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid=4, session=6, rss=24.
    let ppid = f.get(1)?.parse().ok()?;
    let session = f.get(3)?.parse().ok()?;
    let rss: u64 = f.get(21)?.parse().ok()?;
    Some((pid, ppid, session, rss * page))
}

/// RSS per session of all descendants of `root`.
fn usage_by_session(root: i32) -> HashMap<i32, u64> {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let mut procs = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{name}/stat")) {
                if let Some(p) = parse_stat(&text, page) {
                    procs.push(p);
                }
            }
        }
    }
    let parent: HashMap<i32, i32> = procs.iter().map(|p| (p.0, p.1)).collect();
    let descends = |mut pid: i32| {
        for _ in 0..256 {
            match parent.get(&pid) {
                Some(&pp) if pp == root => return true,
                Some(&pp) if pp > 0 => pid = pp,
                _ => return false,
            }
        }
        false
    };
    let mut by_session = HashMap::new();
    for (pid, _, session, rss) in procs {
        if pid != root && (root == 1 || descends(pid)) {
            *by_session.entry(session).or_insert(0) += rss;
        }
    }
    by_session
}

/// Watches memory: every [`INTERVAL`], or, given `pressure` (the host's
/// word that the sandbox's memory is over its limit), only while it is on:
/// below the limit on the host nothing in the sandbox can be over it, and an
/// idle sandbox then never wakes up for this.
///
/// `limit_mb` may change while it runs (a live resize of the sandbox).
pub fn start(
    limit_mb: Arc<AtomicU64>,
    procs: Arc<Processes>,
    mut pressure: Option<watch::Receiver<bool>>,
) {
    let me = std::process::id() as i32;
    tracing::info!(
        limit_mb = limit_mb.load(Relaxed),
        host_notified = pressure.is_some(),
        "memory watcher on"
    );
    tokio::spawn(async move {
        loop {
            if let Some(rx) = pressure.as_mut() {
                if rx.wait_for(|on| *on).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(INTERVAL).await;
            let usage = tokio::task::spawn_blocking(move || usage_by_session(me))
                .await
                .unwrap_or_default();
            let total: u64 = usage.values().sum();
            let limit_mb = limit_mb.load(Relaxed);
            if total <= limit_mb.saturating_mul(1 << 20) {
                continue;
            }
            let Some((&session, &rss)) = usage.iter().max_by_key(|(_, rss)| **rss) else {
                continue;
            };
            tracing::warn!(
                total_mb = total >> 20,
                limit_mb,
                session,
                rss_mb = rss >> 20,
                "memory limit exceeded, killing the largest process group"
            );
            if let Some(run) = procs.live_runs().into_iter().find(|r| r.pid == session) {
                run.mark_oom_killed();
            }
            // SAFETY: plain kill(2) of a process group.
            unsafe {
                if libc::kill(-session, libc::SIGKILL) != 0 {
                    libc::kill(session, libc::SIGKILL);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "4242 (my (weird) cmd) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 100 123456 300 18446744073709551615 0 0";
        assert_eq!(parse_stat(line, 4096), Some((4242, 17, 4242, 300 * 4096)));
    }

    #[test]
    fn own_children_are_counted() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sleep")
            .arg("2")
            .spawn()
            .unwrap();
        // A freshly exec'd child may briefly show no resident pages.
        let mut total = 0;
        for _ in 0..100 {
            total = usage_by_session(me).values().sum::<u64>();
            if total > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(total > 0);
        let _ = child.kill();
        let _ = child.wait();
    }
}
