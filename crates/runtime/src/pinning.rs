//! A sandbox pinned to one host CPU, with its gofer left free.
//!
//! A sandbox of at most one CPU runs fastest on one host CPU: its sentry
//! (the Go kernel) and the systrap stub processes that run its code hand
//! control to each other on every system call and fault, and a hand-off
//! that stays on one CPU costs a fraction of one that wakes another (on a
//! virtual machine, an inter-processor interrupt is a trip through the
//! hypervisor). runsc gives a sandbox whose cgroup cpuset holds one CPU a
//! sentry with `GOMAXPROCS=1`, and Go, seeing one CPU, does not spin in
//! its locks; systrap then never turns on its spinning "fast path" either
//! (both spin while waiting for the other side, which on one CPU only
//! delays it). Measured here, spawn+wait of `/bin/true` inside a 1-CPU
//! sandbox: ~8.7 ms unpinned, ~3.3 ms pinned.
//!
//! The cpuset has to be in place before `runsc create` starts the sentry:
//! it decides both numbers once, at start-up. But the gofer (the file
//! server runsc starts beside the sentry, in the same cgroup) does its own
//! start-up work at the same time, and on the sentry's one CPU the two
//! take turns: sandboxes booted ~30 ms slower. So while runsc starts the
//! sandbox, [`release_gofer`] moves the gofer into the parent cpuset
//! cgroup, where it may run on any CPU. Its cpu and memory cgroups (other
//! hierarchies under cgroup v1) stay the sandbox's.

use std::path::Path;
use std::time::Duration;

/// Where cgroup v1 mounts its cpuset hierarchy. Under cgroup v2 there is no
/// such directory and the gofer stays where runsc put it.
const CPUSET_ROOT: &str = "/sys/fs/cgroup/cpuset";

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

/// Moves the gofer of the sandbox in cgroup `cgroup_path` (e.g. `/sbx/ID`)
/// into the parent cpuset cgroup, polling until runsc has started the
/// sentry: the gofer is started first, so by then it has been seen. Run it
/// beside `runsc create` or `runsc restore` and drop it when they end.
/// Failures are logged and otherwise ignored: the sandbox only boots slower.
pub async fn release_gofer(cgroup_path: &str) {
    let dir = Path::new(CPUSET_ROOT).join(cgroup_path.trim_start_matches('/'));
    let Some(parent) = dir.parent().map(Path::to_path_buf) else {
        return;
    };
    if !Path::new(CPUSET_ROOT).is_dir() {
        return;
    }
    loop {
        match scan(&dir, &parent) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::debug!(cgroup = cgroup_path, "cannot release the gofer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One look at the cgroup's processes; true once the sentry is among them.
fn scan(dir: &Path, parent: &Path) -> std::io::Result<bool> {
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
            Role::Gofer => std::fs::write(parent.join("cgroup.procs"), pid)?,
            Role::Sentry => sentry = true,
            Role::Other => {}
        }
    }
    Ok(sentry)
}

#[cfg(test)]
mod tests {
    use super::*;

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
