//! Whether this host can hold another sandbox. Memory is what limits an
//! idle host (CPU is oversubscribed: sandboxes are mostly idle, frozen), so
//! admission counts what sandboxes really use — the host's available memory
//! — and keeps a reserve for the host and for sandboxes to grow into; host
//! threads (each sandbox has ~22, against `kernel.pid_max`) and an optional
//! cap on the count bound it too. A create that does not fit is refused with
//! 503 `no_resources_available` (clients retry 503s) and creates nothing.

/// What a starting sandbox is counted as until it runs (it settles at
/// ~15 MB idle; more while it boots).
const STARTING_MB: u64 = 64;
/// Host threads a sandbox needs, with room to grow.
const TASKS_PER_SANDBOX: u64 = 64;

/// Admission settings (`--memory-reserve-mb`, `--max-sandboxes`).
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Memory kept free: no sandbox is started into it.
    pub memory_reserve_mb: u64,
    /// At most this many sandboxes running and starting.
    pub max_sandboxes: Option<usize>,
    /// How long a create that gives no `max_pending_secs` may wait for a
    /// node with room (`--max-pending-secs`); `None`: it is refused at once.
    pub default_pending_secs: Option<u64>,
}

/// What the host has now.
#[derive(Debug, Clone, Copy)]
pub struct HostUse {
    pub available_mb: u64,
    pub tasks: u64,
    pub pid_max: u64,
}

impl HostUse {
    pub fn read() -> Option<Self> {
        let available_kb = sbx_executor::meminfo_kb("MemAvailable")?;
        // The 4th field of loadavg is running/total scheduling entities.
        let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
        let tasks = loadavg
            .split_whitespace()
            .nth(3)?
            .split('/')
            .nth(1)?
            .parse()
            .ok()?;
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Self {
            available_mb: available_kb / 1024,
            tasks,
            pid_max,
        })
    }
}

impl Admission {
    /// The default reserve: 5% of the host's memory, at least 512 MB.
    pub fn default_reserve_mb(host_memory_mb: u64) -> u64 {
        (host_memory_mb / 20).max(512)
    }

    /// Whether one more sandbox fits beside `live` ones (running or
    /// starting), `starting` of which are not running yet; why not if not.
    pub fn check(&self, host: HostUse, live: usize, starting: usize) -> Result<(), String> {
        if let Some(max) = self.max_sandboxes {
            if live >= max {
                return Err(format!(
                    "this host holds at most {max} sandboxes (--max-sandboxes) and {live} are running or starting"
                ));
            }
        }
        let pending_mb = (starting as u64 + 1) * STARTING_MB;
        if host.available_mb < self.memory_reserve_mb + pending_mb {
            return Err(format!(
                "this host has {} MB of memory available and keeps {} MB in reserve (--memory-reserve-mb); \
                 {starting} sandboxes are starting",
                host.available_mb, self.memory_reserve_mb
            ));
        }
        if host.tasks + (starting as u64 + 1) * TASKS_PER_SANDBOX > host.pid_max {
            return Err(format!(
                "this host runs {} threads of at most {} (kernel.pid_max)",
                host.tasks, host.pid_max
            ));
        }
        Ok(())
    }

    /// Whether a running sandbox's memory may grow by `grow_mb` (a live
    /// resize): what the host has available must hold the growth above the
    /// reserve, as a create must hold a starting sandbox; why not if not.
    pub fn check_growth(&self, host: HostUse, grow_mb: u64) -> Result<(), String> {
        if host.available_mb < self.memory_reserve_mb + grow_mb {
            return Err(format!(
                "this host has {} MB of memory available and keeps {} MB in reserve (--memory-reserve-mb); \
                 {grow_mb} MB more do not fit",
                host.available_mb, self.memory_reserve_mb
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: HostUse = HostUse {
        available_mb: 20_000,
        tasks: 1_000,
        pid_max: 4_194_304,
    };

    #[test]
    fn memory_counts_what_is_available_and_what_is_starting() {
        let a = Admission {
            memory_reserve_mb: 1_000,
            max_sandboxes: None,
            default_pending_secs: None,
        };
        assert!(a.check(ROOMY, 500, 0).is_ok());
        let tight = HostUse {
            available_mb: 1_100,
            ..ROOMY
        };
        assert!(a.check(tight, 10, 0).is_ok());
        let e = a.check(tight, 10, 2).unwrap_err();
        assert!(e.contains("1100 MB of memory available"), "{e}");
    }

    #[test]
    fn the_count_and_host_threads_bound_it_too() {
        let a = Admission {
            memory_reserve_mb: 0,
            max_sandboxes: Some(2),
            default_pending_secs: None,
        };
        assert!(a.check(ROOMY, 1, 0).is_ok());
        assert!(a.check(ROOMY, 2, 0).unwrap_err().contains("at most 2"));
        let a = Admission {
            memory_reserve_mb: 0,
            max_sandboxes: None,
            default_pending_secs: None,
        };
        let crowded = HostUse {
            tasks: 32_720,
            pid_max: 32_768,
            ..ROOMY
        };
        assert!(a.check(crowded, 0, 0).unwrap_err().contains("pid_max"));
    }

    #[test]
    fn a_memory_increase_must_fit_above_the_reserve() {
        let a = Admission {
            memory_reserve_mb: 1_000,
            max_sandboxes: Some(1),
            default_pending_secs: None,
        };
        let host = HostUse {
            available_mb: 3_000,
            ..ROOMY
        };
        assert!(a.check_growth(host, 2_000).is_ok());
        let e = a.check_growth(host, 2_001).unwrap_err();
        assert!(e.contains("3000 MB of memory available"), "{e}");
        assert!(e.contains("2001 MB more"), "{e}");
    }

    #[test]
    fn this_host_can_be_read() {
        let h = HostUse::read().unwrap();
        assert!(h.available_mb > 0 && h.tasks > 0 && h.pid_max > 0, "{h:?}");
    }
}
