//! gVisor: sandboxes run by `runsc` (systrap platform).

use crate::control::{self, ControlError};
use crate::{oci, runs, Result, Runtime, RuntimeError, SandboxSpec, SandboxState};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::process::Command;
use tokio::sync::watch;

/// How long a pause or resume through the control socket may take (a pause
/// waits for every task to stop).
const CONTROL_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Runs of a sandbox looked for on disk by [`Gvisor::runs_of`] beyond the
/// ones this process knows (new runs take the smallest free number, so a
/// sandbox rarely has more than two).
const PROBED_RUNS: u32 = 8;

/// The runtime's name, as sandboxes report it (`runtime`).
pub const NAME: &str = "gvisor";

/// Drives the `runsc` binary with its own state directory. Each boot or
/// restore of a sandbox is a runsc container of its own ([`runs`]); callers
/// name sandboxes only.
#[derive(Debug, Clone)]
pub struct Gvisor {
    runsc: PathBuf,
    root: PathBuf,
    runs: Arc<Mutex<Runs>>,
}

/// What this process knows of its sandboxes' runs (see [`runs`]).
#[derive(Debug, Default)]
struct Runs {
    /// Sandbox id → the run that is the sandbox now.
    current: HashMap<String, String>,
    /// Sandbox id → earlier runs not deleted yet: stopped by a checkpoint,
    /// or found beside the current one by [`Runtime::list`].
    stopped: HashMap<String, Vec<String>>,
    /// Runs being deleted; each receiver sees `true` when that is done.
    deleting: HashMap<String, watch::Receiver<bool>>,
    /// The cgroup path of each run this process started.
    cgroups: HashMap<String, String>,
    /// Sandbox id → its run made by `prepare_restore`, not restored yet
    /// (not its current run until then).
    prepared: HashMap<String, String>,
}

impl Runs {
    /// Makes run `name` sandbox `id`'s current run.
    fn make_current(&mut self, id: &str, name: String) {
        // Not expected (a run stops before the next one starts), but what
        // is current would otherwise be lost.
        if let Some(old) = self.current.insert(id.to_string(), name) {
            self.stopped.entry(id.to_string()).or_default().push(old);
        }
    }

    /// Forgets run `name` of sandbox `id`, deleted.
    fn forget(&mut self, id: &str, name: &str) {
        if self.current.get(id).is_some_and(|c| c == name) {
            self.current.remove(id);
        }
        if let Some(stopped) = self.stopped.get_mut(id) {
            stopped.retain(|s| s != name);
            if stopped.is_empty() {
                self.stopped.remove(id);
            }
        }
        self.cgroups.remove(name);
        if self.prepared.get(id).is_some_and(|p| p == name) {
            self.prepared.remove(id);
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RunscState {
    id: String,
    #[serde(default)]
    pid: i32,
    status: String,
    #[serde(default)]
    bundle: PathBuf,
}

impl Gvisor {
    /// `root` holds runsc's container state (its `--root`).
    pub fn new(runsc: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Self {
            runsc: runsc.into(),
            root: root.into(),
            runs: Arc::default(),
        }
    }

    /// The sentry's control socket of run `name` (where runsc puts it for
    /// a short root).
    fn control_socket(&self, name: &str) -> PathBuf {
        self.root.join(format!("runsc-{name}.sock"))
    }

    /// Present while a pause through the control socket may hold run `name`.
    /// Run `name` of sandbox `id` no longer runs: it is no longer the
    /// sandbox's current run, and goes with `destroy_stopped`.
    fn run_stopped(&self, id: &str, name: String) {
        let mut all = self.runs.lock().unwrap();
        if all.current.get(id).is_none_or(|c| *c == name) {
            all.current.remove(id);
            let stopped = all.stopped.entry(id.to_string()).or_default();
            if !stopped.contains(&name) {
                stopped.push(name);
            }
        }
    }

    fn pause_marker(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.sbx-paused"))
    }

    /// runsc's state of run `name` (a sandbox's root container: its
    /// sandbox and container ids are the same).
    fn state_file(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}_sandbox:{name}.state"))
    }

    /// The run that is sandbox `id` now: its runsc container id.
    fn current(&self, id: &str) -> String {
        self.runs
            .lock()
            .unwrap()
            .current
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// Begins a new run of `spec`'s sandbox under the first free name (see
    /// [`runs`]) and makes it the sandbox's current run (with `prepared`:
    /// its prepared run, current once restored into); returns its name and
    /// the spec it runs with (its cgroup).
    fn new_run(&self, spec: &SandboxSpec, prepared: bool) -> Result<(String, SandboxSpec)> {
        if !runs::is_valid_id(&spec.id) {
            return Err(RuntimeError::InvalidId(spec.id.clone()));
        }
        let mut all = self.runs.lock().unwrap();
        for n in 0..1000 {
            let name = runs::name(&spec.id, n);
            let cgroup = runs::cgroup_path(&spec.cgroup_path, &name, n);
            let taken = all.deleting.contains_key(&name)
                || all.current.get(&spec.id) == Some(&name)
                || all.prepared.get(&spec.id) == Some(&name)
                || all.stopped.get(&spec.id).is_some_and(|s| s.contains(&name))
                || self.state_file(&name).exists()
                || !cgroup_dirs(&cgroup).is_empty();
            if taken {
                continue;
            }
            if n > 0 {
                tracing::debug!(sandbox = spec.id, run = name, "beside an earlier run");
            }
            if prepared {
                // As for the current run: one prepared earlier is not lost.
                if let Some(old) = all.prepared.insert(spec.id.clone(), name.clone()) {
                    all.stopped.entry(spec.id.clone()).or_default().push(old);
                }
            } else {
                all.make_current(&spec.id, name.clone());
            }
            all.cgroups.insert(name.clone(), cgroup.clone());
            let run = SandboxSpec {
                cgroup_path: cgroup,
                ..spec.clone()
            };
            return Ok((name, run));
        }
        Err(RuntimeError::Unavailable(format!(
            "no free runsc container name for sandbox {}",
            spec.id
        )))
    }

    /// Every run of sandbox `id` there may be: the ones this process knows,
    /// and ones whose runsc state is on disk.
    fn runs_of(&self, id: &str) -> Vec<String> {
        let all = self.runs.lock().unwrap();
        let mut names: Vec<String> = all
            .current
            .get(id)
            .into_iter()
            .chain(all.prepared.get(id))
            .chain(all.stopped.get(id).into_iter().flatten())
            .cloned()
            .collect();
        drop(all);
        for n in 0..PROBED_RUNS {
            let name = runs::name(id, n);
            if !names.contains(&name) && self.state_file(&name).exists() {
                names.push(name);
            }
        }
        names
    }

    /// Deletes run `name` (`runsc delete --force`) and whatever cgroup of
    /// it runsc left. A deletion of it already under way is waited for
    /// instead. Until it is over, the name is not given to a new run.
    async fn delete_run(&self, name: &str) -> Result<()> {
        let (id, _) = runs::parse(name);
        let begun = {
            let mut all = self.runs.lock().unwrap();
            match all.deleting.get(name) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(false);
                    all.deleting.insert(name.to_string(), rx);
                    Ok(tx)
                }
            }
        };
        let done = match begun {
            Ok(tx) => tx,
            Err(mut rx) => {
                let _ = rx.wait_for(|done| *done).await;
                return Ok(());
            }
        };
        let deleted = match self
            .run(&["delete".into(), "--force".into(), name.into()])
            .await
        {
            Ok(_) => Ok(()),
            Err(RuntimeError::Command { stderr, .. }) if is_not_found(&stderr) => Ok(()),
            Err(e) => Err(e),
        };
        let cgroup = self.runs.lock().unwrap().cgroups.get(name).cloned();
        if deleted.is_ok() {
            let _ = tokio::fs::remove_file(self.pause_marker(name)).await;
            // runsc removes the cgroups it made; any it left (a crash of
            // its own) would keep the name from a later run.
            if let Some(cgroup) = cgroup {
                for dir in cgroup_dirs(&cgroup) {
                    if let Err(e) = std::fs::remove_dir(&dir) {
                        tracing::debug!(cgroup = %dir.display(), "cannot remove: {e}");
                    }
                }
            }
        }
        {
            let mut all = self.runs.lock().unwrap();
            if deleted.is_ok() {
                all.forget(id, name);
            }
            all.deleting.remove(name);
        }
        let _ = done.send(true);
        deleted
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
        crate::dies_with_server(&mut cmd);
        // SAFETY: the hook makes one async-signal-safe system call.
        unsafe {
            cmd.pre_exec(batch_scheduling);
        }
        cmd
    }

    async fn run(&self, args: &[String]) -> Result<String> {
        let mut cmd = Command::new(&self.runsc);
        crate::dies_with_server(&mut cmd);
        let out = cmd
            .args(self.base())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("cannot run runsc: {e}")))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let command = format!("runsc {}", args.first().map(String::as_str).unwrap_or(""));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let (message, trace) = split_go_trace(stderr.trim());
        if let Some(trace) = trace {
            tracing::warn!(command, "{message}\n{trace}");
        }
        Err(RuntimeError::Command {
            command,
            stderr: message.to_string(),
        })
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

    /// Runs `runsc run` or `runsc restore` (which start the sandbox's
    /// processes: they inherit its pin), under a private mount
    /// namespace with a fresh `/proc/sys/net` when the sandbox has a network
    /// namespace: runsc otherwise believes every netns is the host's on this
    /// kernel family and refuses ("cannot run with network enabled in root
    /// network namespace").
    async fn run_in_netns_workaround(&self, args: &[String], spec: &SandboxSpec) -> Result<()> {
        let command = args.iter().find(|a| !a.starts_with("--"));
        let what = format!("runsc {}", command.map(String::as_str).unwrap_or(""));
        let log = spec.bundle_dir.join("console.log");
        let mut cmd = self.sandbox_command();
        cmd.args(args);
        pin(&mut cmd, spec);
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

    /// A new run of `spec` started by `runsc COMMAND --detach EXTRA…`
    /// (`run` or `restore`, each of which creates the sandbox itself).
    async fn detached_run(
        &self,
        spec: &SandboxSpec,
        command: &str,
        extra: &[String],
    ) -> Result<SandboxState> {
        let mut head = vec![command.to_string(), "--detach".into()];
        head.extend(extra.iter().cloned());
        self.new_launch(spec, head, false)
            .await
            .map(|(_, state)| state)
    }

    /// A new run of `spec` begun by `runsc HEAD… --bundle --pid-file NAME`
    /// (HEAD: the command and its own flags), the sandbox's current or
    /// `prepared` run (see [`Self::new_run`]); its name and state. On
    /// failure the run is deleted.
    async fn new_launch(
        &self,
        spec: &SandboxSpec,
        head: Vec<String>,
        prepared: bool,
    ) -> Result<(String, SandboxState)> {
        let (name, spec) = self.new_run(spec, prepared)?;
        let spec = &spec;
        if let Err(e) = prepare_bundle(spec).await {
            let _ = self.delete_run(&name).await;
            return Err(e);
        }
        let mut args = vec![panic_log_flag(spec)];
        args.extend(head);
        args.extend([
            format!("--bundle={}", spec.bundle_dir.display()),
            format!("--pid-file={}", pid_file(spec).display()),
            name.clone(),
        ]);
        let state = self.launch(spec, &name, &args).await?;
        Ok((name, state))
    }

    /// Runs a start-like command of run `name` (whose spec is `spec`),
    /// deleting the run when it fails.
    async fn launch(
        &self,
        spec: &SandboxSpec,
        name: &str,
        args: &[String],
    ) -> Result<SandboxState> {
        let run = self.run_in_netns_workaround(args, spec);
        if let Err(e) = self.with_gofer_released(spec, run).await {
            let _ = self.delete_run(name).await;
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
        NAME
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

    async fn state(&self, id: &str) -> Result<Option<SandboxState>> {
        match self.run(&["state".into(), self.current(id)]).await {
            Ok(out) => {
                let s: RunscState =
                    serde_json::from_str(&out).map_err(|e| RuntimeError::Parse(e.to_string()))?;
                Ok(Some(s.into()))
            }
            Err(RuntimeError::Command { stderr, .. }) if is_not_found(&stderr) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One state per sandbox, of its current run: the one this process
    /// started, else one that runs (after a restart: learnt as current).
    /// The sandbox's other runs are remembered as stopped, for
    /// [`Runtime::destroy_stopped`].
    async fn list(&self) -> Result<Vec<SandboxState>> {
        let out = self.run(&["list".into(), "--format=json".into()]).await?;
        let trimmed = out.trim();
        if trimmed.is_empty() || trimmed == "null" {
            return Ok(Vec::new());
        }
        let found: Vec<RunscState> =
            serde_json::from_str(trimmed).map_err(|e| RuntimeError::Parse(e.to_string()))?;
        let launched = launched_pids(&found);
        let mut all = self.runs.lock().unwrap();
        Ok(pick_current(&mut all, found, &launched))
    }

    async fn destroy(&self, id: &str) -> Result<()> {
        let mut names = self.runs_of(id);
        // Nothing known of it (or runsc keeps its state elsewhere than
        // expected): runsc itself says whether it knows the first run.
        if names.is_empty() {
            names.push(id.to_string());
        }
        let mut result = Ok(());
        for name in names {
            if let Err(e) = self.delete_run(&name).await {
                result = Err(e);
            }
        }
        result
    }

    async fn destroy_stopped(&self, id: &str) -> Result<()> {
        let (current, prepared) = {
            let all = self.runs.lock().unwrap();
            (all.current.get(id).cloned(), all.prepared.get(id).cloned())
        };
        let mut result = Ok(());
        for name in self.runs_of(id) {
            if current.as_ref() != Some(&name) && prepared.as_ref() != Some(&name) {
                if let Err(e) = self.delete_run(&name).await {
                    result = Err(e);
                }
            }
        }
        result
    }

    fn cgroup_name(&self, id: &str) -> String {
        self.current(id)
    }

    fn prepared_cgroup_name(&self, id: &str) -> Option<String> {
        self.runs.lock().unwrap().prepared.get(id).cloned()
    }

    /// Through the sandbox's control socket (see [`control`]), falling back
    /// to `runsc pause` where it cannot be reached. runsc's own state then
    /// still says "running": a marker beside it records that the pause may
    /// hold, from before the call until its resume is done.
    async fn pause(&self, id: &str) -> Result<()> {
        let name = self.current(id);
        let marker = self.pause_marker(&name);
        tokio::fs::write(&marker, b"").await?;
        match control::call(&self.control_socket(&name), control::PAUSE, CONTROL_LIMIT).await {
            Ok(()) => Ok(()),
            Err(ControlError::Unreachable { .. }) => {
                let _ = tokio::fs::remove_file(&marker).await;
                self.run(&["pause".into(), name]).await.map(drop)
            }
            // Sent: whether it took is unknown, the marker stays.
            Err(e) => Err(RuntimeError::Command {
                command: format!("pause {id}"),
                stderr: e.to_string(),
            }),
        }
    }

    async fn resume(&self, id: &str) -> Result<()> {
        let name = self.current(id);
        let marker = self.pause_marker(&name);
        if !marker.exists() {
            return self.run(&["resume".into(), name]).await.map(drop);
        }
        control::call(&self.control_socket(&name), control::RESUME, CONTROL_LIMIT)
            .await
            .map_err(|e| RuntimeError::Command {
                command: format!("resume {id}"),
                stderr: e.to_string(),
            })?;
        let _ = tokio::fs::remove_file(&marker).await;
        Ok(())
    }

    fn may_be_paused(&self, id: &str) -> bool {
        self.pause_marker(&self.current(id)).exists()
    }

    async fn forget_pause(&self, id: &str) {
        let _ = tokio::fs::remove_file(self.pause_marker(&self.current(id))).await;
    }

    async fn signal(&self, id: &str, signal: i32) -> Result<()> {
        self.run(&["kill".into(), self.current(id), signal.to_string()])
            .await
            .map(drop)
    }

    async fn exec(&self, id: &str, argv: &[String]) -> Result<()> {
        let mut args = vec!["exec".to_string(), self.current(id)];
        args.extend(argv.iter().cloned());
        self.run(&args).await.map(drop)
    }

    /// Uncompressed pages (`pages.img`): fast to write and good input for
    /// content-defined chunking in the store. Without `leave_running`, the
    /// run it stopped is no longer the sandbox's current one: a restore
    /// starts another beside it while it is deleted.
    async fn checkpoint(&self, id: &str, image_dir: &Path, leave_running: bool) -> Result<()> {
        let name = self.current(id);
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
        args.push(name.clone());
        self.run(&args).await?;
        if !leave_running {
            self.run_stopped(id, name);
        }
        Ok(())
    }

    /// As gVisor ends a sandbox after a checkpoint without `--leave-running`:
    /// every process is killed while the kernel is still paused, and the
    /// kernel resumed to carry it out (a task handles a pending SIGKILL
    /// before it runs again). The sandbox then exits on its own, closing
    /// its connections: a SIGKILL of the sentry, the fallback, would leave
    /// their peers waiting for an answer.
    async fn stop_saved(&self, id: &str, pid: i32) -> Result<()> {
        let name = self.current(id);
        let socket = self.control_socket(&name);
        let arg = serde_json::json!({"CID": name, "Signo": libc::SIGKILL, "PID": 0, "Mode": 1});
        let ended = async {
            control::call_with(&socket, control::SIGNAL, arg, CONTROL_LIMIT).await?;
            control::call(&socket, control::RESUME, CONTROL_LIMIT).await
        }
        .await;
        if let Err(e) = ended {
            tracing::warn!(sandbox = id, "ending the saved sandbox: {e}; killing it");
            // SAFETY: a signal to a process id; no memory is involved.
            if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e.into());
                }
            }
        }
        self.run_stopped(id, name);
        Ok(())
    }

    /// One `runsc run --detach`: a `create` and a `start` are two runsc
    /// processes, each ~15-20 ms of its own start-up (measured here).
    async fn create_and_start(&self, spec: &SandboxSpec) -> Result<SandboxState> {
        self.detached_run(spec, "run", &[]).await
    }

    async fn restore(&self, spec: &SandboxSpec, image_dir: &Path) -> Result<SandboxState> {
        let image = format!("--image-path={}", image_dir.display());
        let prepared = {
            let mut all = self.runs.lock().unwrap();
            let name = all.prepared.remove(&spec.id);
            if let Some(name) = &name {
                all.make_current(&spec.id, name.clone());
            }
            name
        };
        let Some(name) = prepared else {
            // One `runsc restore` creates and restores: a separate `create`
            // first costs another ~100 ms of sandbox setup (measured here).
            return self.detached_run(spec, "restore", &[image]).await;
        };
        let cgroup = self.runs.lock().unwrap().cgroups.get(&name).cloned();
        let spec = SandboxSpec {
            cgroup_path: cgroup.unwrap_or_else(|| spec.cgroup_path.clone()),
            ..spec.clone()
        };
        let args = [
            panic_log_flag(&spec),
            "restore".into(),
            "--detach".into(),
            image,
            format!("--bundle={}", spec.bundle_dir.display()),
            name.clone(),
        ];
        self.launch(&spec, &name, &args).await
    }

    /// `runsc create`: the gofer and the sentry start and wait.
    async fn prepare_restore(&self, spec: &SandboxSpec) -> Result<()> {
        self.new_launch(spec, vec!["create".into()], true)
            .await
            .map(drop)
    }

    async fn discard_prepared(&self, id: &str) {
        let prepared = self.runs.lock().unwrap().prepared.remove(id);
        if let Some(name) = prepared {
            if let Err(e) = self.delete_run(&name).await {
                tracing::warn!(sandbox = id, run = name, "removing a prepared run: {e}");
            }
        }
    }
}

/// The state of a run, as the state of its sandbox.
impl From<RunscState> for SandboxState {
    fn from(s: RunscState) -> Self {
        SandboxState {
            id: runs::parse(&s.id).0.to_string(),
            pid: (s.pid > 0).then_some(s.pid),
            status: s.status,
        }
    }
}

/// The pid the latest launch in each bundle wrote (see [`pid_file`]), by
/// bundle: the sandbox process of a sandbox's current run.
fn launched_pids(found: &[RunscState]) -> HashMap<PathBuf, i32> {
    let mut pids = HashMap::new();
    for s in found {
        if !pids.contains_key(&s.bundle) {
            let pid = std::fs::read_to_string(s.bundle.join(PID_FILE))
                .ok()
                .and_then(|t| t.trim().parse().ok());
            if let Some(pid) = pid {
                pids.insert(s.bundle.clone(), pid);
            }
        }
    }
    pids
}

/// Groups runsc's containers by sandbox: the state of each sandbox's
/// current run (the one `all` names, else one that runs or is paused, which
/// becomes current: of several, the one whose sandbox process the latest
/// launch in its bundle wrote down, `launched`); its other runs are
/// remembered as stopped.
fn pick_current(
    all: &mut Runs,
    found: Vec<RunscState>,
    launched: &HashMap<PathBuf, i32>,
) -> Vec<SandboxState> {
    let mut by_sandbox: HashMap<String, Vec<RunscState>> = HashMap::new();
    for s in found {
        let id = runs::parse(&s.id).0.to_string();
        by_sandbox.entry(id).or_default().push(s);
    }
    let mut states = Vec::new();
    for (id, mut found) in by_sandbox {
        let known = all.current.get(&id).cloned();
        let live = |s: &RunscState| s.status == "running" || s.status == "paused";
        let pick = found
            .iter()
            .position(|s| Some(&s.id) == known.as_ref())
            .or_else(|| {
                found
                    .iter()
                    .position(|s| live(s) && launched.get(&s.bundle) == Some(&s.pid))
            })
            .or_else(|| found.iter().position(live));
        let chosen = match pick {
            Some(i) => {
                let chosen = found.swap_remove(i);
                all.current.insert(id.clone(), chosen.id.clone());
                chosen
            }
            // Nothing of it runs: all of it is stopped, and what is said
            // of it is the state of one of them.
            None => found[0].clone(),
        };
        let stopped = all.stopped.entry(id.clone()).or_default();
        for other in found {
            if !stopped.contains(&other.id) {
                stopped.push(other.id);
            }
        }
        if stopped.is_empty() {
            all.stopped.remove(&id);
        }
        states.push(chosen.into());
    }
    states
}

/// The directories of cgroup `path` (`/<parent>/<name>`) that exist, in
/// any hierarchy (one per cgroup v1 controller, or the unified one).
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    let root = Path::new(CGROUP_ROOT);
    let mut dirs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let dir = e.path().join(relative);
            if dir.is_dir() {
                dirs.push(dir);
            }
        }
    }
    let unified = root.join(relative);
    if unified.is_dir() && !dirs.contains(&unified) {
        dirs.push(unified);
    }
    dirs
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
    // Owner-only: its environment may hold the sandbox's secrets.
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .await?;
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .await?;
    tokio::io::AsyncWriteExt::write_all(
        &mut file,
        &serde_json::to_vec_pretty(&config).expect("json"),
    )
    .await?;
    match tokio::fs::remove_file(pid_file(spec)).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Where runsc writes the sandbox's host pid (in its bundle, which every
/// run of a sandbox shares: the latest launch's).
const PID_FILE: &str = "runsc.pid";

fn pid_file(spec: &SandboxSpec) -> PathBuf {
    spec.bundle_dir.join(PID_FILE)
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
/// `O_DIRECT` (tmpfs and some other filesystems refuse it). Probed once per
/// filesystem, by making and removing a file: a checkpoint asks while its
/// sandbox is paused, and under heavy writeback each such change of a
/// directory can wait milliseconds for the filesystem's journal.
async fn supports_direct_io(dir: &Path) -> bool {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    static PROBED: std::sync::OnceLock<Mutex<HashMap<u64, bool>>> = std::sync::OnceLock::new();
    if tokio::fs::create_dir_all(dir).await.is_err() {
        return false;
    }
    let Ok(device) = tokio::fs::metadata(dir).await.map(|m| m.dev()) else {
        return false;
    };
    let probed = PROBED.get_or_init(Default::default);
    if let Some(&known) = probed.lock().unwrap().get(&device) {
        return known;
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
    probed.lock().unwrap().insert(device, opened);
    opened
}

/// A runsc error's message and the Go stack trace that may follow it
/// (gVisor's state encoder adds one to a failed save): the trace is for
/// the log, not for an API answer.
fn split_go_trace(stderr: &str) -> (&str, Option<&str>) {
    match stderr.find("\ngoroutine ") {
        Some(at) => (
            stderr[..at].trim_end().trim_end_matches(':'),
            Some(&stderr[at + 1..]),
        ),
        None => (stderr, None),
    }
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

    #[test]
    fn a_go_trace_is_split_from_the_message() {
        let text = "checkpoint failed: runtime error: nil pointer dereference:\ngoroutine 121 [running]:\ngvisor.dev/gvisor/pkg/state.safely.func1()";
        let (message, trace) = split_go_trace(text);
        assert_eq!(
            message,
            "checkpoint failed: runtime error: nil pointer dereference"
        );
        assert!(trace.unwrap().starts_with("goroutine 121 [running]:"));
        assert_eq!(split_go_trace("plain error"), ("plain error", None));
    }

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

    fn spec(id: &str) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            bundle_dir: "/nonexistent".into(),
            rootfs: "/nonexistent/rootfs".into(),
            netns: None,
            // No such cgroup parent: no run's cgroup exists.
            cgroup_path: format!("/sbx-no-such-parent-{}/{id}", std::process::id()),
            cpus: 1.0,
            pin: None,
            memory_limit_bytes: 1 << 30,
            args: vec![],
            env: vec![],
            binds: vec![],
            hostname: "sandbox".into(),
        }
    }

    /// A runsc that logs its command lines to `<root>/log` and, for a
    /// `delete`, removes the container's state file after `delay`.
    fn fake_runsc(root: &Path, delay: &str) -> Gvisor {
        let script = root.join("fake-runsc");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nfor last; do :; done\necho \"$*\" >> {root}/log\n\
                 case \"$*\" in *' delete '*) sleep {delay}; \
                 rm -f \"{root}/${{last}}_sandbox:${{last}}.state\";; esac\n",
                root = root.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Gvisor::new(script, root)
    }

    fn logged(root: &Path) -> Vec<String> {
        std::fs::read_to_string(root.join("log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').skip(3).collect::<Vec<_>>().join(" "))
            .collect()
    }

    fn retire(g: &Gvisor, id: &str) {
        let mut all = g.runs.lock().unwrap();
        let name = all.current.remove(id).unwrap();
        all.stopped.entry(id.into()).or_default().push(name);
    }

    #[test]
    fn a_run_started_beside_a_stopped_one_gets_its_own_name_and_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let g = Gvisor::new("/bin/false", root.path());
        let base = spec("sbxa");
        let (name, run) = g.new_run(&base, false).unwrap();
        assert_eq!(name, "sbxa");
        assert_eq!(run.cgroup_path, base.cgroup_path);
        assert_eq!(g.cgroup_name("sbxa"), "sbxa");
        // Stopped by a checkpoint, not deleted yet: the restore goes beside it.
        retire(&g, "sbxa");
        let (name, run) = g.new_run(&base, false).unwrap();
        assert_eq!(name, "r1-sbxa");
        assert!(run.cgroup_path.ends_with("/r1-sbxa"), "{}", run.cgroup_path);
        assert_eq!(
            Path::new(&run.cgroup_path).parent(),
            Path::new(&base.cgroup_path).parent()
        );
        assert_eq!(g.cgroup_name("sbxa"), "r1-sbxa");
        assert_eq!(g.current("sbxa"), "r1-sbxa");
        // Once the first is gone, the next quick resume takes its name again.
        g.runs.lock().unwrap().forget("sbxa", "sbxa");
        retire(&g, "sbxa");
        assert_eq!(g.new_run(&base, false).unwrap().0, "sbxa");
        // A run runsc still has state of (a crash left it) is not reused.
        std::fs::write(g.state_file("sbxb"), b"{}").unwrap();
        assert_eq!(g.new_run(&spec("sbxb"), false).unwrap().0, "r1-sbxb");
        // Nor one whose cgroup is still there (runsc would not give a
        // cgroup it did not make any limits).
        let hierarchy = Path::new(CGROUP_ROOT).join("pids");
        if hierarchy.join("cgroup.procs").exists() {
            let parent = format!("sbx-runs-test-{}", std::process::id());
            let left = hierarchy.join(&parent).join("sbxc");
            std::fs::create_dir_all(&left).unwrap();
            let sbxc = SandboxSpec {
                cgroup_path: format!("/{parent}/sbxc"),
                ..spec("sbxc")
            };
            let got = g
                .new_run(&sbxc, false)
                .map(|(name, run)| (name, run.cgroup_path));
            std::fs::remove_dir(&left).unwrap();
            std::fs::remove_dir(hierarchy.join(&parent)).unwrap();
            assert_eq!(
                got.unwrap(),
                ("r1-sbxc".into(), format!("/{parent}/r1-sbxc"))
            );
        }
        assert!(matches!(
            g.new_run(&spec("r2-sbxc"), false),
            Err(RuntimeError::InvalidId(_))
        ));
    }

    #[tokio::test]
    async fn a_suspended_run_is_deleted_beside_the_next_and_destroy_takes_all() {
        let root = tempfile::tempdir().unwrap();
        let g = fake_runsc(root.path(), "0");
        let base = spec("sbxa");
        g.new_run(&base, false).unwrap();
        std::fs::write(g.state_file("sbxa"), b"{}").unwrap();
        retire(&g, "sbxa");
        g.new_run(&base, false).unwrap();
        std::fs::write(g.state_file("r1-sbxa"), b"{}").unwrap();
        g.destroy_stopped("sbxa").await.unwrap();
        assert_eq!(logged(root.path()), vec!["delete --force sbxa"]);
        assert_eq!(g.current("sbxa"), "r1-sbxa", "the new run stays");
        g.destroy_stopped("sbxa").await.unwrap();
        assert_eq!(logged(root.path()).len(), 1, "nothing more to delete");
        g.destroy("sbxa").await.unwrap();
        assert_eq!(
            logged(root.path()),
            vec!["delete --force sbxa", "delete --force r1-sbxa"]
        );
        assert!(g.runs.lock().unwrap().current.is_empty());
        assert!(g.runs.lock().unwrap().stopped.is_empty());
        // Nothing known of it: runsc is asked about the first run all the same.
        g.destroy("sbxz").await.unwrap();
        assert_eq!(logged(root.path()).last().unwrap(), "delete --force sbxz");
    }

    #[tokio::test]
    async fn a_prepared_run_waits_beside_the_current_one() {
        let root = tempfile::tempdir().unwrap();
        let g = fake_runsc(root.path(), "0");
        let base = spec("sbxa");
        g.new_run(&base, false).unwrap();
        std::fs::write(g.state_file("sbxa"), b"{}").unwrap();
        // Made while the sandbox still runs (its suspend's checkpoint).
        assert_eq!(g.new_run(&base, true).unwrap().0, "r1-sbxa");
        std::fs::write(g.state_file("r1-sbxa"), b"{}").unwrap();
        assert_eq!(g.current("sbxa"), "sbxa");
        assert_eq!(g.cgroup_name("sbxa"), "sbxa");
        assert_eq!(g.prepared_cgroup_name("sbxa").as_deref(), Some("r1-sbxa"));
        // The suspended run goes; the prepared one stays for the resume.
        retire(&g, "sbxa");
        g.destroy_stopped("sbxa").await.unwrap();
        assert_eq!(logged(root.path()), vec!["delete --force sbxa"]);
        assert_eq!(g.prepared_cgroup_name("sbxa").as_deref(), Some("r1-sbxa"));
        g.destroy("sbxa").await.unwrap();
        assert_eq!(
            logged(root.path()),
            vec!["delete --force sbxa", "delete --force r1-sbxa"]
        );
        assert_eq!(g.prepared_cgroup_name("sbxa"), None);
    }

    #[tokio::test]
    async fn a_run_is_deleted_once_and_its_name_is_taken_meanwhile() {
        let root = tempfile::tempdir().unwrap();
        let g = fake_runsc(root.path(), "0.3");
        let base = spec("sbxa");
        g.new_run(&base, false).unwrap();
        std::fs::write(g.state_file("sbxa"), b"{}").unwrap();
        retire(&g, "sbxa");
        let (a, b) = (g.clone(), g.clone());
        let first = tokio::spawn(async move { a.destroy_stopped("sbxa").await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // Deleting: neither its state nor the record of it is gone yet, and
        // a resume now gets the other name.
        g.runs.lock().unwrap().stopped.clear();
        std::fs::remove_file(g.state_file("sbxa")).unwrap();
        assert_eq!(g.new_run(&base, false).unwrap().0, "r1-sbxa");
        let second = tokio::spawn(async move { b.destroy("sbxa").await });
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        let deletes: Vec<String> = logged(root.path());
        assert_eq!(
            deletes
                .iter()
                .filter(|l| *l == "delete --force sbxa")
                .count(),
            1,
            "{deletes:?}"
        );
        assert!(deletes.contains(&"delete --force r1-sbxa".to_string()));
    }

    #[test]
    fn a_list_after_a_restart_names_each_sandbox_once_by_its_running_run() {
        let state = |id: &str, status: &str, pid: i32| RunscState {
            id: id.into(),
            pid,
            status: status.into(),
            bundle: format!("/data/sandboxes/{}", runs::parse(id).0).into(),
        };
        let mut all = Runs::default();
        // An earlier run of sbxd not quite gone yet: the pid its bundle
        // has tells the current one.
        let launched = [("/data/sandboxes/sbxd".into(), 9)].into_iter().collect();
        let mut states = pick_current(
            &mut all,
            vec![
                state("sbxa", "stopped", 0),
                state("r1-sbxa", "running", 42),
                state("sbxb", "paused", 7),
                state("r1-sbxc", "stopped", 0),
                state("sbxd", "running", 8),
                state("r1-sbxd", "running", 9),
            ],
            &launched,
        );
        states.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<(&str, &str, Option<i32>)> = states
            .iter()
            .map(|s| (s.id.as_str(), s.status.as_str(), s.pid))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("sbxa", "running", Some(42)),
                ("sbxb", "paused", Some(7)),
                ("sbxc", "stopped", None),
                ("sbxd", "running", Some(9)),
            ]
        );
        assert_eq!(all.current["sbxd"], "r1-sbxd");
        assert_eq!(all.stopped["sbxd"], vec!["sbxd".to_string()]);
        assert_eq!(all.current["sbxa"], "r1-sbxa");
        assert_eq!(all.current["sbxb"], "sbxb");
        assert!(!all.current.contains_key("sbxc"));
        assert_eq!(all.stopped["sbxa"], vec!["sbxa".to_string()]);
        assert_eq!(all.stopped["sbxc"], vec!["r1-sbxc".to_string()]);
        assert!(!all.stopped.contains_key("sbxb"));
    }

    #[tokio::test]
    async fn direct_io_probe_makes_the_dir_and_leaves_nothing() {
        let base = tempfile::tempdir_in("/var/tmp").unwrap();
        let dir = base.path().join("image");
        // /var/tmp is on an ordinary disk filesystem, which takes O_DIRECT.
        assert!(supports_direct_io(&dir).await);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        // Known for that filesystem now: another directory on it is made,
        // and answered alike.
        let other = base.path().join("other");
        assert!(supports_direct_io(&other).await);
        assert!(other.is_dir());
        assert!(!supports_direct_io(Path::new("/proc/no/such/dir")).await);
    }
}
