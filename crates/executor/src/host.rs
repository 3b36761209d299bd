//! Host limits that bound how many sandboxes fit, raised at start where
//! they are lower than sbx needs (never lowered). Measured per idle sandbox:
//! ~22 host threads (sentry, gofer, systrap stubs), which count against
//! `kernel.pid_max` (32768 on many hosts: ~1,400 sandboxes); one neighbour
//! entry per veth pair (the table overflows at `gc_thresh3`, 1024 by
//! default); two descriptors in the server for its memory watch.

/// A field of `/proc/meminfo` (`MemTotal`, `MemAvailable`, ...), in kB.
pub fn meminfo_kb(field: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): it changes at every
/// boot, so a file that records it tells whether the host rebooted since.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default()
}

/// Writes every dirty page of the file system holding `path` to disk.
pub fn syncfs(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)).map_err(std::io::Error::from)
}

/// A sysctl raised to at least `min`; what it was, when it was raised.
fn raise_sysctl(path: &str, min: u64) -> Option<u64> {
    let now: u64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    if now >= min {
        return None;
    }
    match std::fs::write(path, min.to_string()) {
        Ok(()) => Some(now),
        Err(e) => {
            tracing::warn!(path, now, wanted = min, "cannot raise: {e}");
            None
        }
    }
}

/// Raises the limits sandbox density runs into; logs each change.
pub fn raise_limits() {
    for (path, min) in [
        ("/proc/sys/kernel/pid_max", 4_194_304),
        ("/proc/sys/net/ipv4/neigh/default/gc_thresh1", 4_096),
        ("/proc/sys/net/ipv4/neigh/default/gc_thresh2", 32_768),
        ("/proc/sys/net/ipv4/neigh/default/gc_thresh3", 65_536),
    ] {
        if let Some(was) = raise_sysctl(path, min) {
            tracing::info!(
                path,
                was,
                now = min,
                "raised a host limit for sandbox density"
            );
        }
    }
    // The soft descriptor limit up to the hard one (often 1024 of 524288).
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let was = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(was, now = lim.rlim_max, "raised the open-file limit");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_by_their_exact_name() {
        let total = meminfo_kb("MemTotal").unwrap();
        let available = meminfo_kb("MemAvailable").unwrap();
        assert!(
            available > 0 && available <= total,
            "{available} of {total}"
        );
        assert_eq!(meminfo_kb("Mem"), None, "a prefix of a name is not a field");
    }
}
