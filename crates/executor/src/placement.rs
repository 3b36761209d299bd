//! Which host CPU a small sandbox is pinned to.
//!
//! A sandbox of at most one CPU runs on one host CPU (the runtime explains
//! why: `sbx_runtime` docs on pinning); sandboxes are spread over the CPUs
//! this server may use, each new one on the CPU with the fewest.

use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;

/// Whether a sandbox of `cpus` cores is pinned to one host CPU.
pub fn is_pinned(cpus: f64) -> bool {
    cpus <= 1.0
}

/// The CPUs this process may run on, in ascending order.
pub fn host_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The CPU of `cpus` that the fewest of `taken` (the CPUs of sandboxes
/// pinned already) are on; the lowest-numbered among equals. `None` when
/// there is no choice to make (fewer than two CPUs).
pub fn least_loaded(cpus: &[usize], taken: impl IntoIterator<Item = usize>) -> Option<usize> {
    if cpus.len() < 2 {
        return None;
    }
    let mut load = vec![0usize; cpus.len()];
    for cpu in taken {
        if let Ok(i) = cpus.binary_search(&cpu) {
            load[i] += 1;
        }
    }
    (0..cpus.len())
        .min_by_key(|&i| (load[i], i))
        .map(|i| cpus[i])
}

/// The CPU of `cpus` after `cpu` (the first after the last), to name
/// beside it in a pinned sandbox's cgroup; `None` without another.
pub fn partner(cpus: &[usize], cpu: usize) -> Option<usize> {
    let i = cpus.iter().position(|&c| c == cpu)?;
    let next = cpus[(i + 1) % cpus.len()];
    (next != cpu).then_some(next)
}

/// A cpuset list naming every CPU of `cpus`.
pub fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_is_the_next_cpu_round_the_list() {
        assert_eq!(partner(&[0, 1], 0), Some(1));
        assert_eq!(partner(&[0, 1], 1), Some(0));
        assert_eq!(partner(&[2, 5, 7], 5), Some(7));
        assert_eq!(partner(&[3], 3), None);
        assert_eq!(partner(&[0, 1], 4), None);
    }

    #[test]
    fn sandboxes_spread_over_the_cpus() {
        let cpus = [0, 1, 2];
        let mut taken = Vec::new();
        for _ in 0..6 {
            taken.push(least_loaded(&cpus, taken.clone()).unwrap());
        }
        assert_eq!(taken, [0, 1, 2, 0, 1, 2]);
        // A CPU freed by a sandbox that went away is the next one's.
        assert_eq!(least_loaded(&cpus, [0, 0, 2, 2, 1]), Some(1));
        // CPUs no longer allowed are not counted.
        assert_eq!(least_loaded(&[2, 3], [0, 0, 2]), Some(3));
    }

    #[test]
    fn one_cpu_leaves_nothing_to_choose() {
        assert_eq!(least_loaded(&[0], []), None);
        assert_eq!(least_loaded(&[], []), None);
    }

    #[test]
    fn this_process_may_run_somewhere() {
        assert!(!host_cpus().is_empty());
        assert!(is_pinned(1.0) && is_pinned(0.5) && !is_pinned(1.5));
    }
}
