//! gVisor: sandboxes run by `runsc` (systrap platform).

use crate::control::{self, ControlError};
use crate::{oci, Result, Runtime, RuntimeError, SandboxSpec, SandboxState};
use async_trait::async_trait;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// How long a pause or resume through the control socket may take (a pause
/// waits for every task to stop).
const CONTROL_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Drives the `runsc` binary with its own state directory.
#[derive(Debug, Clone)]
pub struct Gvisor {
    runsc: PathBuf,
    root: PathBuf,
}

#[derive(Debug, Deserialize)]
struct RunscState {
    id: String,
    #[serde(default)]
    pid: i32,
    status: String,
}

impl Gvisor {
    /// `root` holds runsc's container state (its `--root`).
    pub fn new(runsc: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Self {
            runsc: runsc.into(),
            root: root.into(),
        }
    }

    /// The sentry's control socket (where runsc puts it for a short root).
    fn control_socket(&self, id: &str) -> PathBuf {
        self.root.join(format!("runsc-{id}.sock"))
    }

    /// Present while a pause through the control socket may hold.
    fn pause_marker(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.sbx-paused"))
    }

    /// Finds `runsc` on PATH.
    pub fn from_path(root: impl Into<PathBuf>) -> Self {
        Self::new(
            find_in_path("runsc").unwrap_or_else(|| "runsc".into()),
            root,
        )
    }

    /// Global flags, identical for every command touching a sandbox.
    ///
    /// `--overlay2=none` keeps the writable layer on the host (our overlay
    /// upper dir), where disk limits and snapshots can see it.
    /// `--net-disconnect-ok` lets a checkpoint cut open TCP connections.
    ///
    /// With `SBX_RUNSC_DEBUG_LOG=DIR` in the server's environment, runsc
    /// writes its debug logs there (one file per command and process).
    fn base(&self) -> Vec<String> {
        let mut flags = vec![
            format!("--root={}", self.root.display()),
            "--overlay2=none".into(),
            "--net-disconnect-ok".into(),
        ];
        if let Some(dir) = std::env::var_os("SBX_RUNSC_DEBUG_LOG").filter(|d| !d.is_empty()) {
            flags.push("--debug".into());
            flags.push(format!(
                "--debug-log={}/%ID%.%TIMESTAMP%.%COMMAND%.txt",
                Path::new(&dir).display()
            ));
        }
        flags
    }

    /// A `runsc` command that starts a sandbox (`create`, `start`,
    /// `restore`). It runs under `SCHED_BATCH`, which the sandbox's
    /// processes inherit: see [`batch_scheduling`].
    fn sandbox_command(&self) -> Command {
        let mut cmd = Command::new(&self.runsc);
        cmd.args(self.base());
        // SAFETY: the hook makes one async-signal-safe system call.
        unsafe {
            cmd.pre_exec(batch_scheduling);
        }
        cmd
    }

    async fn run(&self, args: &[String]) -> Result<String> {
        let out = Command::new(&self.runsc)
            .args(self.base())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("cannot run runsc: {e}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(RuntimeError::Command {
                command: format!("runsc {}", args.first().map(String::as_str).unwrap_or("")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Runs a command whose children outlive it (`create`, `start`): the
    /// sandbox inherits its stdio, so output goes to `log` (the sandbox's
    /// console log) instead of pipes nobody would ever close.
    async fn run_detached(&self, mut cmd: Command, what: &str, log: &Path) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let start = file.metadata()?.len();
        let status = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("cannot run runsc: {e}")))?;
        if status.success() {
            return Ok(());
        }
        let text = std::fs::read(log).unwrap_or_default();
        let tail = String::from_utf8_lossy(&text[(start as usize).min(text.len())..]);
        Err(RuntimeError::Command {
            command: what.into(),
            stderr: tail.trim().to_string(),
        })
    }

    /// Runs `runsc start` or `runsc restore`, under a private mount
    /// namespace with a fresh `/proc/sys/net` when the sandbox has a network
    /// namespace: runsc otherwise believes every netns is the host's on this
    /// kernel family and refuses ("cannot run with network enabled in root
    /// network namespace").
    /// `starts_processes`: the command starts the sandbox's processes
    /// (`restore`), which then inherit its pin.
    async fn run_in_netns_workaround(
        &self,
        args: &[String],
        spec: &SandboxSpec,
        starts_processes: bool,
    ) -> Result<()> {
        let command = args.iter().find(|a| !a.starts_with("--"));
        let what = format!("runsc {}", command.map(String::as_str).unwrap_or(""));
        let log = spec.bundle_dir.join("console.log");
        let mut cmd = self.sandbox_command();
        cmd.args(args);
        if starts_processes {
            pin(&mut cmd, spec);
        }
        if spec.netns.is_some() {
            // In the child, before exec: what `unshare -m sh -c 'mount -t
            // tmpfs none /proc/sys/net && exec runsc …'` did, without
            // starting two more programs per launch.
            // SAFETY: the hook only makes async-signal-safe system calls
            // on strings allocated before the fork.
            unsafe {
                cmd.pre_exec(private_proc_sys_net);
            }
        }
        self.run_detached(cmd, &what, &log).await
    }

    /// Runs `starting` (a runsc command that starts the sandbox's processes)
    /// and, for a pinned sandbox, frees its gofer from the pin meanwhile:
    /// see [`crate::pinning`].
    async fn with_gofer_released(
        &self,
        spec: &SandboxSpec,
        starting: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()> {
        if spec.pin.is_none() {
            return starting.await;
        }
        tokio::pin!(starting);
        tokio::select! {
            result = &mut starting => result,
            () = crate::pinning::release_gofer(&spec.cgroup_path) => starting.await,
        }
    }

    /// Runs a start-like command, destroying the sandbox when it fails.
    async fn launch(
        &self,
        spec: &SandboxSpec,
        args: &[String],
        starts_processes: bool,
    ) -> Result<SandboxState> {
        let run = self.run_in_netns_workaround(args, spec, starts_processes);
        if let Err(e) = self.with_gofer_released(spec, run).await {
            let _ = self.destroy(&spec.id).await;
            return Err(e);
        }
        // The pid file spares a `runsc state` (a ~15 ms process) per launch.
        let pid = tokio::fs::read_to_string(pid_file(spec))
            .await
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok());
        match pid {
            Some(pid) => Ok(SandboxState {
                id: spec.id.clone(),
                pid: Some(pid),
                status: "running".into(),
            }),
            None => self.state(&spec.id).await?.ok_or_else(|| {
                RuntimeError::Parse(format!("sandbox {} vanished after start", spec.id))
            }),
        }
    }
}

#[async_trait]
impl Runtime for Gvisor {
    fn name(&self) -> &'static str {
        "gvisor"
    }

    async fn check(&self) -> Result<String> {
        tokio::fs::create_dir_all(&self.root).await?;
        let out = Command::new(&self.runsc)
            .arg("--version")
            .output()
            .await
            .map_err(|e| {
                RuntimeError::Unavailable(format!(
                    "runsc not found ({e}); install it: apt-get install -t bookworm-backports runsc"
                ))
            })?;
        let version = String::from_utf8_lossy(&out.stdout);
        Ok(version.lines().next().unwrap_or("").to_string())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<()> {
        prepare_bundle(spec).await?;
        let log = spec.bundle_dir.join("console.log");
        let mut create = self.sandbox_command();
        create
            .arg(panic_log_flag(spec))
            .arg("create")
            .arg(format!("--bundle={}", spec.bundle_dir.display()))
            .arg(format!("--pid-file={}", pid_file(spec).display()))
            .arg(&spec.id);
        pin(&mut create, spec);
        let created = self
            .with_gofer_released(spec, self.run_detached(create, "runsc create", &log))
            .await;
        if let Err(e) = created {
            let _ = self.destroy(&spec.id).await;
            return Err(e);
        }
        Ok(())
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<SandboxState> {
        self.launch(spec, &["start".into(), spec.id.clone()], false)
            .await
    }

    async fn state(&self, id: &str) -> Result<Option<SandboxState>> {
        match self.run(&["state".into(), id.into()]).await {
            Ok(out) => {
                let s: RunscState =
                    serde_json::from_str(&out).map_err(|e| RuntimeError::Parse(e.to_string()))?;
                Ok(Some(s.into()))
            }
            Err(RuntimeError::Command { stderr, .. }) if is_not_found(&stderr) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> Result<Vec<SandboxState>> {
        let out = self.run(&["list".into(), "--format=json".into()]).await?;
        let trimmed = out.trim();
        if trimmed.is_empty() || trimmed == "null" {
            return Ok(Vec::new());
        }
        let all: Vec<RunscState> =
            serde_json::from_str(trimmed).map_err(|e| RuntimeError::Parse(e.to_string()))?;
        Ok(all.into_iter().map(Into::into).collect())
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        match self
            .run(&["delete".into(), "--force".into(), id.into()])
            .await
        {
            Ok(_) => {
                self.forget_pause(id).await;
                Ok(())
            }
            Err(RuntimeError::Command { stderr, .. }) if is_not_found(&stderr) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Through the sandbox's control socket (see [`control`]), falling back
    /// to `runsc pause` where it cannot be reached. runsc's own state then
    /// still says "running": a marker beside it records that the pause may
    /// hold, from before the call until its resume is done.
    async fn pause(&self, id: &str) -> Result<()> {
        let marker = self.pause_marker(id);
        tokio::fs::write(&marker, b"").await?;
        match control::call(&self.control_socket(id), control::PAUSE, CONTROL_LIMIT).await {
            Ok(()) => Ok(()),
            Err(ControlError::Unreachable { .. }) => {
                let _ = tokio::fs::remove_file(&marker).await;
                self.run(&["pause".into(), id.into()]).await.map(drop)
            }
            // Sent: whether it took is unknown, the marker stays.
            Err(e) => Err(RuntimeError::Command {
                command: format!("pause {id}"),
                stderr: e.to_string(),
            }),
        }
    }

    async fn resume(&self, id: &str) -> Result<()> {
        let marker = self.pause_marker(id);
        if !marker.exists() {
            return self.run(&["resume".into(), id.into()]).await.map(drop);
        }
        control::call(&self.control_socket(id), control::RESUME, CONTROL_LIMIT)
            .await
            .map_err(|e| RuntimeError::Command {
                command: format!("resume {id}"),
                stderr: e.to_string(),
            })?;
        let _ = tokio::fs::remove_file(&marker).await;
        Ok(())
    }

    fn may_be_paused(&self, id: &str) -> bool {
        self.pause_marker(id).exists()
    }

    async fn forget_pause(&self, id: &str) {
        let _ = tokio::fs::remove_file(self.pause_marker(id)).await;
    }

    async fn signal(&self, id: &str, signal: i32) -> Result<()> {
        self.run(&["kill".into(), id.into(), signal.to_string()])
            .await
            .map(drop)
    }

    /// Uncompressed pages (`pages.img`): fast to write and good input for
    /// content-defined chunking in the store.
    async fn exec(&self, id: &str, argv: &[String]) -> Result<()> {
        let mut args = vec!["exec".to_string(), id.to_string()];
        args.extend(argv.iter().cloned());
        self.run(&args).await.map(drop)
    }

    async fn checkpoint(&self, id: &str, image_dir: &Path, leave_running: bool) -> Result<()> {
        let mut args = vec![
            "checkpoint".to_string(),
            "--compression=none".into(),
            format!("--image-path={}", image_dir.display()),
        ];
        // Written through the page cache, the memory image competes with
        // whatever dirty data the host is flushing (a previous snapshot
        // going into the store): measured here, pauses then jump from
        // ~150 ms to ~800 ms for 256 MB. O_DIRECT keeps them steady.
        if supports_direct_io(image_dir).await {
            args.push("--direct".into());
        }
        if leave_running {
            args.push("--leave-running".into());
        }
        args.push(id.into());
        self.run(&args).await.map(drop)
    }

    async fn restore(&self, spec: &SandboxSpec, image_dir: &Path) -> Result<SandboxState> {
        // One `runsc restore` creates and restores: a separate `create`
        // first costs another ~100 ms of sandbox setup (measured here).
        prepare_bundle(spec).await?;
        let args = [
            panic_log_flag(spec),
            "restore".to_string(),
            "--detach".into(),
            format!("--image-path={}", image_dir.display()),
            format!("--bundle={}", spec.bundle_dir.display()),
            format!("--pid-file={}", pid_file(spec).display()),
            spec.id.clone(),
        ];
        self.launch(spec, &args, true).await
    }
}

impl From<RunscState> for SandboxState {
    fn from(s: RunscState) -> Self {
        SandboxState {
            id: s.id,
            pid: (s.pid > 0).then_some(s.pid),
            status: s.status,
        }
    }
}

/// Puts the calling process under `SCHED_BATCH`: a sandbox thread that
/// wakes up then waits for a free CPU or the next tick instead of
/// preempting the thread that woke it.
///
/// gVisor's systrap platform runs the sentry's host system calls for an
/// address space (every `mmap`/`munmap` an `exec` or a page fault needs) on
/// a stub thread that, once done, calls `FUTEX_WAKE` in a loop until the
/// sentry thread is asleep in `FUTEX_WAIT`. Woken on the sentry thread's
/// CPU, the stub preempted it and spun for the rest of its time slice,
/// keeping the sentry from the wait it was about to enter: measured here
/// at ~240,000 `futex` calls a second while a sandbox spawned processes,
/// half of the sandbox's CPU time. Under `SCHED_BATCH`, spawn+wait of
/// `/bin/true` inside a 1-CPU sandbox went from ~10.5 to ~6.5 ms (median;
/// p90 ~21 to ~11 ms), and `fork` from ~4 to ~2 ms.
///
/// Failure is ignored: the sandbox is then only slower.
fn batch_scheduling() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call on a value on the stack.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    Ok(())
}

/// Runs `cmd` (a runsc command that starts the sandbox's sentry and gofer)
/// on the sandbox's one CPU, when it is pinned: see [`crate::pinning`].
fn pin(cmd: &mut Command, spec: &SandboxSpec) {
    if let Some(pin) = spec.pin.as_ref().filter(|p| p.partner.is_some()) {
        // SAFETY: the hook makes one async-signal-safe system call on a set
        // built before the fork.
        unsafe {
            cmd.pre_exec(crate::pinning::affinity_hook(pin.cpu));
        }
    }
}

/// Moves the calling process into a private mount namespace (mounts no
/// longer propagate to the host's) with an empty tmpfs on `/proc/sys/net`.
fn private_proc_sys_net() -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls with NUL-terminated static strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            c"none".as_ptr(),
            c"/proc/sys/net".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        ))
    }
}

/// Writes the sandbox's OCI `config.json` into its bundle and removes the
/// pid file an earlier run of it left.
async fn prepare_bundle(spec: &SandboxSpec) -> Result<()> {
    let config = oci::config(spec);
    let path = spec.bundle_dir.join("config.json");
    tokio::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).await?;
    match tokio::fs::remove_file(pid_file(spec)).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Where runsc writes the sandbox's host pid.
fn pid_file(spec: &SandboxSpec) -> PathBuf {
    spec.bundle_dir.join("runsc.pid")
}

/// The sandbox process's Go panics and fatal errors land beside its console
/// log (they would otherwise be lost with a detached stderr).
fn panic_log_flag(spec: &SandboxSpec) -> String {
    format!(
        "--panic-log={}",
        spec.bundle_dir.join("panic.log").display()
    )
}

/// Whether files in `dir` (created if missing) can be opened with
/// `O_DIRECT` (tmpfs and some other filesystems refuse it).
async fn supports_direct_io(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    if tokio::fs::create_dir_all(dir).await.is_err() {
        return false;
    }
    let probe = dir.join(".direct-io-probe");
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    opened
}

fn is_not_found(stderr: &str) -> bool {
    stderr.contains("does not exist") || stderr.contains("not found")
}

/// Finds an executable `name` on PATH (or in /usr/sbin, /usr/bin).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy in `/proc/<pid>/stat` (field 41).
    fn policy_in(stat: &str) -> u32 {
        let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
        after_comm
            .split_whitespace()
            .nth(38)
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn batch_scheduling_applies_to_the_child_only() {
        let own = || policy_in(&std::fs::read_to_string("/proc/self/stat").unwrap());
        let before = own();
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/stat");
        // SAFETY: as in `sandbox_command`, which installs the same hook.
        unsafe {
            cmd.pre_exec(batch_scheduling);
        }
        let out = cmd.output().await.unwrap();
        let stat = String::from_utf8(out.stdout).unwrap();
        assert_eq!(policy_in(&stat), libc::SCHED_BATCH as u32, "{stat}");
        assert_eq!(own(), before, "only the child changes policy");
    }

    #[test]
    fn missing_containers_are_recognised() {
        assert!(is_not_found(
            "loading container: container \"x\" does not exist"
        ));
        assert!(!is_not_found("permission denied"));
    }

    #[tokio::test]
    async fn direct_io_probe_makes_the_dir_and_leaves_nothing() {
        let base = tempfile::tempdir_in("/var/tmp").unwrap();
        let dir = base.path().join("image");
        // /var/tmp is on an ordinary disk filesystem, which takes O_DIRECT.
        assert!(supports_direct_io(&dir).await);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert!(!supports_direct_io(Path::new("/proc/no/such/dir")).await);
    }
}
