//! A small sandbox pinned to one host CPU, with two Go processors, and its
//! gofer left free.
//!
//! A sandbox of at most one CPU runs fastest on one host CPU: its sentry
//! (the Go kernel) and the systrap stub processes that run its code hand
//! control to each other on every system call and fault, and a hand-off
//! that stays on one CPU costs a fraction of one that wakes another (on a
//! virtual machine, an inter-processor interrupt is a trip through the
//! hypervisor). systrap spins while waiting for the other side (its "fast
//! path") unless the sentry starts seeing one CPU, and spinning on one CPU
//! only delays the other side. Measured here, spawn+wait of `/bin/true`
//! inside a 1-CPU sandbox: ~15 ms on two CPUs, ~7 ms on one.
//!
//! But a sentry with one Go processor (`GOMAXPROCS=1`, which runsc sets
//! from the number of CPUs in the sandbox's cgroup cpuset) answers late:
//! its network dispatcher and several other goroutines wait in host system
//! calls that keep the processor, so whatever they wake waits for Go's
//! system monitor to take it back, which after ~10 ms of quiet checks only
//! every 10 ms. A request arriving after a pause waited 10–20 ms before the
//! sandbox saw it; a `true` through the API took 16.5 ms over a 7 ms floor.
//!
//! So a pinned sandbox gets both, from two different places runsc reads:
//! its cgroup's cpuset names two CPUs ([`crate::Pin::cpuset`]: runsc then
//! starts the sentry with two Go processors, and the sandbox sees two
//! CPUs), while `runsc run` and `runsc restore` themselves run with the
//! CPU affinity of the one CPU ([`affinity_hook`]), which the sentry and
//! its stubs inherit: Go counts one CPU, systrap never turns on its fast
//! path, and the kernel keeps a mask set with `sched_setaffinity` when a
//! process moves between cpusets (Linux ≥ 6.2 intersects them; on older
//! kernels the pin is the cgroup's cpuset of one CPU, as before). The same
//! `true` takes ~10 ms, a request after a pause is seen within 0.4 ms, and a
//! memory checkpoint no longer needs the sandbox unpinned.
//!
//! The gofer (the file server runsc starts beside the sentry) inherits the
//! mask too, and does its own start-up work at the same time: on the
//! sentry's one CPU the two take turns (sandboxes booted ~30 ms slower). So
//! while runsc starts the sandbox, [`release_gofer`] gives the gofer every
//! CPU the server may use and, under cgroup v1, moves it into the parent
//! cpuset cgroup. Its cpu and memory cgroups stay the sandbox's.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where cgroup v1 mounts its cpuset hierarchy; under cgroup v2 the
/// unified hierarchy is the cgroup root itself.
const CPUSET_ROOT: &str = "/sys/fs/cgroup/cpuset";
const UNIFIED_ROOT: &str = "/sys/fs/cgroup";

/// What a runsc process in the sandbox's cgroup is, by its command line.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    Gofer,
    Sentry,
    Other,
}

fn role(cmdline: &[u8]) -> Role {
    // Flags come first (`runsc --root=… boot …`): the subcommand is the
    // first argument after the program that is not a flag.
    let mut args = cmdline.split(|b| *b == 0).skip(1);
    match args.find(|a| !a.starts_with(b"-")) {
        Some(b"gofer") => Role::Gofer,
        Some(b"boot") => Role::Sentry,
        _ => Role::Other,
    }
}

/// Whether this kernel keeps a CPU affinity set with `sched_setaffinity`
/// across cpuset changes (Linux 6.2, "sched: Always preserve the user
/// requested cpumask"); older kernels reset it to the cpuset's CPUs.
pub fn affinity_survives_cpusets() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    kernel_at_least(&release, (6, 2))
}

fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= want
}

/// A set of host CPUs, as `sched_setaffinity` takes it.
#[derive(Clone, Copy)]
struct CpuMask(libc::cpu_set_t);

impl CpuMask {
    fn one(cpu: usize) -> Self {
        // SAFETY: cpu_set_t is plain data; all zeroes is the empty set, and
        // CPU_SET ignores CPUs beyond the set's size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        CpuMask(set)
    }

    /// The CPUs this process may use.
    fn own() -> std::io::Result<Self> {
        // SAFETY: plain data, then our own mask into a set of its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(CpuMask(set))
    }

    /// Applies the mask to thread `tid` (0: the caller). A thread that has
    /// just exited (ESRCH) needs nothing.
    fn apply(&self, tid: libc::pid_t) -> std::io::Result<()> {
        // SAFETY: a plain system call on a set we borrow.
        let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&self.0), &self.0) };
        match rc {
            0 => Ok(()),
            _ => match std::io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                e => Err(e),
            },
        }
    }
}

/// A `pre_exec` hook that restricts the child (and everything it starts)
/// to host CPU `cpu`. The set is built before the fork; the hook makes one
/// async-signal-safe system call. A CPU the child may not use (taken
/// offline since the server started) leaves it unpinned rather than
/// failing the launch: the sandbox then only runs slower.
pub fn affinity_hook(cpu: usize) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    let mask = CpuMask::one(cpu);
    move || {
        let _ = mask.apply(0);
        Ok(())
    }
}

/// The sandbox's processes in the cpuset hierarchy (cgroup v1) or the
/// unified one, and, under v1, the parent cpuset cgroup.
fn cgroup_dirs(cgroup_path: &str) -> (PathBuf, Option<PathBuf>) {
    let relative = cgroup_path.trim_start_matches('/');
    if Path::new(CPUSET_ROOT).is_dir() {
        let dir = Path::new(CPUSET_ROOT).join(relative);
        let parent = dir.parent().map(Path::to_path_buf);
        (dir, parent)
    } else {
        (Path::new(UNIFIED_ROOT).join(relative), None)
    }
}

/// Frees the gofer of the sandbox in cgroup `cgroup_path` (e.g. `/sbx/ID`)
/// from the sandbox's CPU (see the module docs), polling until runsc has
/// started the sentry: the gofer is started first, so by then it has been
/// seen. Run it beside `runsc run` or `runsc restore` and drop it when
/// they end. Failures are logged and otherwise ignored: the sandbox only
/// starts slower.
///
/// The sentry itself stays pinned while it restores: given every CPU
/// meanwhile it restored no faster here, and ran commands twice as slowly
/// afterwards, pinned again or not.
pub async fn release_gofer(cgroup_path: &str) {
    let (dir, parent) = cgroup_dirs(cgroup_path);
    let Ok(wide) = CpuMask::own() else { return };
    let mut released = Vec::new();
    loop {
        match scan(&dir, parent.as_deref(), &wide, &mut released) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::debug!(cgroup = cgroup_path, "cannot release the gofer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One look at the cgroup's processes; true once the sentry is among them.
fn scan(
    dir: &Path,
    parent: Option<&Path>,
    wide: &CpuMask,
    released: &mut Vec<String>,
) -> std::io::Result<bool> {
    let procs = match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(p) => p,
        // runsc has not made the cgroup yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut sentry = false;
    for pid in procs.lines() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        match role(&cmdline) {
            Role::Gofer if !released.iter().any(|p| p == pid) => {
                if let Some(parent) = parent {
                    std::fs::write(parent.join("cgroup.procs"), pid)?;
                }
                set_threads(pid, wide)?;
                released.push(pid.to_string());
            }
            Role::Sentry => sentry = true,
            _ => {}
        }
    }
    Ok(sentry)
}

/// Applies `mask` to every thread of process `pid`, again until a pass
/// finds no thread it had not seen (a thread started meanwhile by one not
/// yet changed would keep the old mask). A process that is gone needs
/// nothing.
fn set_threads(pid: &str, mask: &CpuMask) -> std::io::Result<()> {
    let tasks = PathBuf::from(format!("/proc/{pid}/task"));
    let mut done: Vec<libc::pid_t> = Vec::new();
    loop {
        let entries = match std::fs::read_dir(&tasks) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut new = false;
        for entry in entries {
            let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if !done.contains(&tid) {
                new = true;
                mask.apply(tid)?;
                done.push(tid);
            }
        }
        if !new {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_are_compared_by_major_and_minor() {
        assert!(kernel_at_least("6.18.44-fc-v1300\n", (6, 2)));
        assert!(kernel_at_least("6.2.0", (6, 2)));
        assert!(!kernel_at_least("6.1.0-28-amd64", (6, 2)));
        assert!(!kernel_at_least("5.19.17", (6, 2)));
        assert!(!kernel_at_least("", (6, 2)));
    }

    #[test]
    fn the_hook_pins_the_child_to_one_cpu() {
        let own = CpuMask::own().unwrap();
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .rev()
            // SAFETY: a lookup in a set we own.
            .find(|&c| unsafe { libc::CPU_ISSET(c, &own.0) })
            .unwrap();
        let mut cmd = std::process::Command::new("grep");
        cmd.args(["Cpus_allowed_list", "/proc/self/status"]);
        // SAFETY: the hook makes one async-signal-safe system call.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, affinity_hook(cpu));
        }
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        assert_eq!(
            out.split_whitespace().last(),
            Some(cpu.to_string().as_str())
        );
    }

    #[test]
    fn runsc_processes_are_told_apart_by_their_subcommand() {
        assert_eq!(
            role(b"runsc\0--root=/r\0--overlay2=none\0gofer\0--bundle=/b\0"),
            Role::Gofer
        );
        assert_eq!(
            role(b"/usr/bin/runsc\0boot\0--cpu-num=1\0id\0"),
            Role::Sentry
        );
        assert_eq!(
            role(b"runsc\0--root=/r\0create\0--bundle=/b\0id\0"),
            Role::Other
        );
        // A flag's value that happens to read "boot" is not the subcommand.
        assert_eq!(role(b"runsc\0--root=boot\0gofer\0"), Role::Gofer);
        assert_eq!(role(b""), Role::Other);
    }
}
