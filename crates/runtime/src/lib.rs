//! The runtime an executor drives to run sandboxes.
//!
//! [`Runtime`] is what the executor sees: create a sandbox from a prepared
//! root filesystem and network namespace, ask about it, destroy it. Nothing
//! above this trait knows which isolation technology runs underneath; today
//! that is gVisor ([`gvisor::Gvisor`]).

mod control;
pub mod gvisor;
pub mod oci;
pub mod pinning;
pub mod runs;

use async_trait::async_trait;
use std::path::{Path, PathBuf};

/// Everything a runtime needs to boot one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Unique id of the sandbox. The runtime names what it runs after it
    /// (with gVisor: never `r<n>-…`, the name of a later run, see [`runs`]).
    pub id: String,
    /// Directory the runtime may write its bundle (config.json) into.
    pub bundle_dir: PathBuf,
    /// Prepared, writable root filesystem.
    pub rootfs: PathBuf,
    /// Network namespace to run in (`/var/run/netns/NAME`); `None` = no network.
    pub netns: Option<PathBuf>,
    /// cgroup path for the sandbox, e.g. `/sbx/<id>` (ending in its id). A
    /// run restored while an earlier one of the same sandbox is still being
    /// removed gets a sibling of it instead: see [`Runtime::cgroup_name`].
    pub cgroup_path: String,
    /// CPU quota in cores (1.5 = one and a half cores).
    pub cpus: f64,
    /// The one host CPU a small sandbox runs on; `None`: any CPU. See
    /// [`pinning`] for why and how.
    pub pin: Option<Pin>,
    /// Hard memory limit in bytes.
    pub memory_limit_bytes: u64,
    /// PID 1 of the sandbox and its arguments.
    pub args: Vec<String>,
    /// Environment of PID 1, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Host paths bound into the sandbox.
    pub binds: Vec<Bind>,
    pub hostname: String,
}

/// Where a pinned sandbox runs: see [`pinning`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The host CPU the sentry and its stubs run on.
    pub cpu: usize,
    /// Another host CPU, which only the sandbox's cgroup names beside `cpu`:
    /// runsc sizes the sentry's Go scheduler by the cgroup's CPUs. `None`
    /// where the kernel would not keep the narrower affinity (see
    /// [`pinning::affinity_survives_cpusets`]): the cgroup then names `cpu`
    /// alone.
    pub partner: Option<usize>,
}

impl Pin {
    /// The cpuset list of the sandbox's cgroup.
    pub fn cpuset(&self) -> String {
        match self.partner {
            Some(p) if p != self.cpu => {
                format!("{},{}", self.cpu.min(p), self.cpu.max(p))
            }
            _ => self.cpu.to_string(),
        }
    }
}

/// A host path bound into the sandbox.
#[derive(Debug, Clone)]
pub struct Bind {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// What the runtime knows of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxState {
    pub id: String,
    /// Runtime-specific status, e.g. `running`, `stopped`, `created`.
    pub status: String,
    /// Host pid of the sandbox's root process, when it runs.
    pub pid: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("unexpected runtime output: {0}")]
    Parse(String),
    #[error("invalid sandbox id {0:?}: it names a later run of another sandbox")]
    InvalidId(String),
    #[error("the checkpoint: {0}")]
    CheckpointNotReady(String),
}

/// Resolves once a checkpoint being written is whole (`Err`: it never will
/// be, and why); see [`Runtime::restore_when`].
pub type CheckpointReady =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<(), String>> + Send>>;

pub type Result<T> = std::result::Result<T, RuntimeError>;

#[async_trait]
pub trait Runtime: Send + Sync {
    /// A short name shown in SandboxInfo (`gvisor`).
    fn name(&self) -> &'static str;
    /// Checks the runtime can run sandboxes on this host.
    async fn check(&self) -> Result<String>;
    /// Creates and starts the sandbox (its network namespace must be
    /// configured already); returns once its PID 1 runs. On failure nothing
    /// is left.
    async fn create_and_start(&self, spec: &SandboxSpec) -> Result<SandboxState>;
    /// The sandbox's state, or `None` when the runtime does not know it.
    async fn state(&self, id: &str) -> Result<Option<SandboxState>>;
    /// Every sandbox the runtime knows (also ones a crashed server left),
    /// once each, with the state of its current run.
    async fn list(&self) -> Result<Vec<SandboxState>>;
    /// Kills and forgets the sandbox, whatever of it runs or was stopped.
    /// Idempotent.
    async fn destroy(&self, id: &str) -> Result<()>;
    /// Forgets what earlier runs of the sandbox left: the one a
    /// [`checkpoint`](Self::checkpoint) stopped, or ones a crash left
    /// behind; what a later [`restore`](Self::restore) started is left
    /// alone. A restore need not wait for it. Idempotent.
    async fn destroy_stopped(&self, id: &str) -> Result<()>;
    /// The name of the cgroup the sandbox's processes are in now, a child
    /// of the parent of its [`SandboxSpec::cgroup_path`]: `id` (that path's
    /// last component), unless it was restored while an earlier run of it
    /// was still being removed ([`destroy_stopped`](Self::destroy_stopped)).
    fn cgroup_name(&self, id: &str) -> String {
        id.to_string()
    }
    /// The name of the cgroup of the run [`prepare_restore`](Self::prepare_restore)
    /// made for sandbox `id`, while it waits for its restore.
    fn prepared_cgroup_name(&self, _id: &str) -> Option<String> {
        None
    }
    /// Freezes every process of the sandbox (its files stop changing).
    async fn pause(&self, id: &str) -> Result<()>;
    /// Runs `argv` in the running sandbox and waits for it; a non-zero exit
    /// is an error.
    async fn exec(&self, id: &str, argv: &[String]) -> Result<()>;
    /// Thaws a paused sandbox.
    async fn resume(&self, id: &str) -> Result<()>;
    /// Whether the sandbox may be paused although [`list`](Self::list) and
    /// [`state`](Self::state) say it runs: a pause whose resume a crash cut
    /// short, which only the sandbox itself can tell (its agent does not
    /// answer). Settle it with [`resume`](Self::resume) or
    /// [`forget_pause`](Self::forget_pause).
    fn may_be_paused(&self, _id: &str) -> bool {
        false
    }
    /// Forgets a pause [`may_be_paused`](Self::may_be_paused) reported: the
    /// sandbox is known to run.
    async fn forget_pause(&self, _id: &str) {}
    /// Sends `signal` to the sandbox's init process (its agent).
    async fn signal(&self, id: &str, signal: i32) -> Result<()>;
    /// Saves memory and processes into `image_dir` (which must not exist
    /// yet or be empty). With `leave_running` the sandbox continues (paused
    /// ones stay paused); otherwise it stops once saved, and what is left
    /// of it goes with [`destroy_stopped`](Self::destroy_stopped) (or
    /// [`destroy`](Self::destroy)).
    ///
    /// A checkpoint that fails stops the sandbox too unless `leave_running`
    /// (gVisor: "Save failed: exiting"): a caller that must not lose the
    /// sandbox pauses it, checkpoints with `leave_running` and then
    /// [`stop_saved`](Self::stop_saved)s it.
    async fn checkpoint(&self, id: &str, image_dir: &Path, leave_running: bool) -> Result<()>;
    /// Stops a sandbox that was paused and then saved by a
    /// [`checkpoint`](Self::checkpoint) with `leave_running`: none of its
    /// processes runs again (they would change what the image holds); its
    /// process `pid` ([`SandboxState::pid`]) exits. What is left of it goes with
    /// [`destroy_stopped`](Self::destroy_stopped) as after a checkpoint
    /// without `leave_running`.
    async fn stop_saved(&self, id: &str, pid: i32) -> Result<()>;
    /// Creates the sandbox and starts it from a checkpoint instead of booting
    /// it, as [`create_and_start`](Self::create_and_start) boots one (its
    /// network namespace must be configured), or into the run
    /// [`prepare_restore`](Self::prepare_restore) made for it: processes continue where they were. A run of
    /// the same sandbox that a checkpoint stopped may still be being
    /// removed. On failure what it started is destroyed.
    async fn restore(&self, spec: &SandboxSpec, image_dir: &Path) -> Result<SandboxState>;
    /// Makes the sandbox's next run without starting it, for a
    /// [`restore`](Self::restore) to come (its network namespace must be
    /// configured), so that the restore has less to do. It may be made
    /// while the sandbox still runs (its current run, which it does not
    /// touch, and which [`destroy_stopped`](Self::destroy_stopped) removes
    /// once stopped, leaving it); it becomes the current run when restored
    /// into. [`discard_prepared`](Self::discard_prepared) or
    /// [`destroy`](Self::destroy) removes it. On failure nothing is left.
    /// Default: nothing (the restore makes the run).
    async fn prepare_restore(&self, _spec: &SandboxSpec) -> Result<()> {
        Ok(())
    }
    /// Removes a run [`prepare_restore`](Self::prepare_restore) made and no
    /// restore used. Idempotent.
    async fn discard_prepared(&self, _id: &str) {}
    /// [`restore`](Self::restore) of a checkpoint still being written into
    /// `image_dir`: the run is prepared meanwhile, and the checkpoint
    /// restored into it once `ready` resolves. On failure, also `ready`'s
    /// ([`RuntimeError::CheckpointNotReady`]), nothing is left.
    async fn restore_when(
        &self,
        spec: &SandboxSpec,
        image_dir: &Path,
        ready: CheckpointReady,
    ) -> Result<SandboxState> {
        let (prepared, ready) = tokio::join!(self.prepare_restore(spec), ready);
        if let Err(e) = prepared.and(ready.map_err(RuntimeError::CheckpointNotReady)) {
            self.discard_prepared(&spec.id).await;
            return Err(e);
        }
        self.restore(spec, image_dir).await
    }
}

/// Makes the program `cmd` starts die (SIGKILL) when the server does: a
/// host tool or a runsc command in flight must not run on after a kill -9
/// of the server (a `cp` of a capture ran on; a `runsc restore` finished
/// while the next start's recovery was removing its run). What runsc
/// starts (the sandbox, the gofer) does not inherit it.
pub fn dies_with_server(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl with integer arguments, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
