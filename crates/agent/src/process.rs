//! The process table: every user process ("run") the agent started, and the
//! supervisors of background processes (restart policies, health checks).

use crate::error::AppError;
use crate::output::{pump, OutputLog};
use crate::reaper::{Exit, Reaper};
use crate::spawn::{signal_group, spawn, Io, SpawnSpec};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use sbx_api::daemon::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Exited runs kept for lookups by pid; older ones are forgotten.
const MAX_EXITED_RUNS: usize = 200;
/// A run that lived this long resets the restart backoff.
const BACKOFF_RESET: Duration = Duration::from_secs(10);

/// What to start; shared by `run`, background processes and restarts.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub working_dir: Option<String>,
    pub user: Option<ProcessUser>,
    pub stdin_pipe: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl From<&RunRequest> for RunSpec {
    fn from(r: &RunRequest) -> Self {
        Self {
            command: r.command.clone(),
            args: r.args.clone(),
            env: r.env.clone(),
            working_dir: r.working_dir.clone(),
            user: r.user.clone(),
            stdin_pipe: false,
            stdout: true,
            stderr: true,
        }
    }
}

impl From<&StartProcessRequest> for RunSpec {
    fn from(r: &StartProcessRequest) -> Self {
        Self {
            command: r.command.clone(),
            args: r.args.clone(),
            env: r.env.clone(),
            working_dir: r.working_dir.clone(),
            user: r.user.clone(),
            stdin_pipe: r.stdin_mode == Some(StdinMode::Pipe),
            stdout: r.stdout_mode != Some(OutputMode::Discard),
            stderr: r.stderr_mode != Some(OutputMode::Discard),
        }
    }
}

#[derive(Default)]
struct RunState {
    ended_at: Option<DateTime<Utc>>,
    oom_killed: bool,
    timed_out: bool,
}

/// One started process (one pid). A restarted managed process is a new run.
pub struct Run {
    pub pid: i32,
    pub command: String,
    pub args: Vec<String>,
    pub started_at: DateTime<Utc>,
    started: Instant,
    pub managed: Option<Arc<Managed>>,
    pub output: Arc<OutputLog>,
    stdin: tokio::sync::Mutex<Option<crate::blocking::Writer>>,
    stdin_open: AtomicBool,
    state: Mutex<RunState>,
    exit: watch::Sender<Option<Exit>>,
}

impl Run {
    pub fn exit_status(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    pub async fn wait_exit(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            // The sender lives in `self`, so this cannot fail.
            let _ = rx.changed().await;
        }
    }

    /// SIGKILLs the process group if the process is still running.
    pub fn kill(&self) {
        if self.is_running() {
            let _ = signal_group(self.pid, libc::SIGKILL);
        }
    }

    pub fn mark_oom_killed(&self) {
        self.state.lock().unwrap().oom_killed = true;
    }

    pub fn mark_timed_out(&self) {
        self.state.lock().unwrap().timed_out = true;
    }

    pub fn info(&self) -> ProcessInfo {
        let st = self.state.lock().unwrap();
        let exit = self.exit_status();
        let (status, exit_code, signal) = match exit {
            None => (ProcessStatus::Running, None, None),
            Some(Exit::Code(c)) => (ProcessStatus::Exited, Some(c), None),
            Some(Exit::Signal(s)) if st.oom_killed => (ProcessStatus::OomKilled, None, Some(s)),
            Some(Exit::Signal(s)) => (ProcessStatus::Signaled, None, Some(s)),
        };
        let managed = self.managed.as_ref();
        ProcessInfo {
            pid: self.pid,
            status,
            exit_code,
            signal,
            oom_killed: st.oom_killed,
            stdin_writable: exit.is_none() && self.stdin_open.load(Ordering::SeqCst),
            command: self.command.clone(),
            args: self.args.clone(),
            started_at: self.started_at,
            ended_at: st.ended_at,
            name: managed.and_then(|m| m.name.clone()),
            managed: managed.filter(|m| m.visible).map(|m| m.info()),
        }
    }

    /// The final event of a `processes/run` stream (call after exit).
    pub fn exit_event(&self) -> ExitEvent {
        let st = self.state.lock().unwrap();
        let exit = self.exit_status().unwrap_or(Exit::Signal(libc::SIGKILL));
        let (exit_code, signal) = match exit {
            Exit::Code(c) => (Some(c), None),
            Exit::Signal(s) => (None, Some(s)),
        };
        let reason = if st.timed_out {
            ExitReason::TimedOut
        } else if st.oom_killed {
            ExitReason::OomKilled
        } else if signal.is_some() {
            ExitReason::Signaled
        } else {
            ExitReason::Exited
        };
        if st.timed_out && exit_code.is_none() {
            return ExitEvent {
                exit_code: None,
                signal: Some(libc::SIGKILL),
                oom_killed: st.oom_killed,
                reason,
            };
        }
        ExitEvent {
            exit_code,
            signal,
            oom_killed: st.oom_killed,
            reason,
        }
    }

    /// Streams `body` into the process's stdin pipe.
    pub async fn write_stdin(
        &self,
        body: impl Stream<Item = Result<Bytes, axum::Error>>,
    ) -> Result<(), AppError> {
        let mut guard = self.stdin.lock().await;
        let Some(pipe) = guard.as_mut().filter(|_| self.is_running()) else {
            return Err(AppError::conflict("stdin of this process is not writable"));
        };
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| AppError::bad_request(format!("reading body: {e}")))?;
            if let Err(e) = pipe.write_all(chunk).await {
                *guard = None;
                self.stdin_open.store(false, Ordering::SeqCst);
                return Err(AppError::conflict(format!("writing stdin: {e}")));
            }
        }
        Ok(())
    }

    pub async fn close_stdin(&self) -> Result<(), AppError> {
        let had = self.stdin.lock().await.take().is_some();
        self.stdin_open.store(false, Ordering::SeqCst);
        if had {
            Ok(())
        } else {
            Err(AppError::conflict("stdin of this process is not open"))
        }
    }
}

enum Cmd {
    Restart(oneshot::Sender<Result<Arc<Run>, AppError>>),
    Stop(oneshot::Sender<()>),
}

struct ManagedState {
    status: ManagedStatus,
    restart_count: u32,
    health_status: HealthStatus,
    consecutive_health_failures: u32,
    last_exit: Option<ManagedExit>,
    last_error: Option<String>,
    next_restart_at: Option<DateTime<Utc>>,
    current_pid: i32,
}

/// Supervisor state of a background process, shared by all its runs.
pub struct Managed {
    pub id: String,
    pub name: Option<String>,
    /// Whether ProcessInfo shows `managed` (a name, restart policy or health check was given).
    visible: bool,
    req: StartProcessRequest,
    spec: RunSpec,
    restart: RestartPolicy,
    state: Mutex<ManagedState>,
    cmds: mpsc::UnboundedSender<Cmd>,
}

impl Managed {
    pub fn info(&self) -> ManagedInfo {
        let st = self.state.lock().unwrap();
        ManagedInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            status: st.status,
            restart_count: st.restart_count,
            restart: self.restart.clone(),
            health_check: self.req.health_check.clone(),
            health_status: st.health_status,
            consecutive_health_failures: st.consecutive_health_failures,
            last_exit: st.last_exit.clone(),
            last_error: st.last_error.clone(),
            next_restart_at: st.next_restart_at,
        }
    }

    fn is_live(&self) -> bool {
        self.state.lock().unwrap().status != ManagedStatus::Stopped
    }

    fn current_pid(&self) -> i32 {
        self.state.lock().unwrap().current_pid
    }

    fn on_started(&self, run: &Run) {
        let mut st = self.state.lock().unwrap();
        st.current_pid = run.pid;
        st.status = ManagedStatus::Running;
        st.next_restart_at = None;
        st.consecutive_health_failures = 0;
        st.health_status = if self.req.health_check.is_some() {
            HealthStatus::Starting
        } else {
            HealthStatus::Disabled
        };
    }

    fn record_exit(&self, run: &Run) {
        let info = run.info();
        self.state.lock().unwrap().last_exit = Some(ManagedExit {
            exit_code: info.exit_code,
            signal: info.signal,
            oom_killed: info.oom_killed,
            ended_at: info.ended_at.unwrap_or_else(Utc::now),
        });
    }

    fn set_status(&self, status: ManagedStatus) {
        let mut st = self.state.lock().unwrap();
        st.status = status;
        st.next_restart_at = None;
    }

    fn should_restart(&self, exit: Exit) -> bool {
        let st = self.state.lock().unwrap();
        if self
            .restart
            .max_restarts
            .is_some_and(|max| st.restart_count >= max)
        {
            return false;
        }
        match self.restart.policy {
            RestartPolicyKind::Never => false,
            RestartPolicyKind::Always => true,
            RestartPolicyKind::OnFailure => exit != Exit::Code(0),
        }
    }
}

#[derive(Default)]
struct Table {
    runs: BTreeMap<i32, Arc<Run>>,
    names: HashMap<String, Arc<Managed>>,
}

/// All processes of the agent.
pub struct Processes {
    reaper: Reaper,
    table: Mutex<Table>,
    /// Serialises name checks with the start that claims the name.
    start_lock: Mutex<()>,
}

impl Processes {
    pub fn new(reaper: Reaper) -> Arc<Self> {
        Arc::new(Self {
            reaper,
            table: Mutex::default(),
            start_lock: Mutex::new(()),
        })
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// Spawns one run and its pipe readers. With a `sink`, the `started`
    /// event and every output line also go to it (for `processes/run`).
    pub fn start_run(
        &self,
        spec: &RunSpec,
        managed: Option<Arc<Managed>>,
        sink: Option<mpsc::Sender<RunEvent>>,
    ) -> Result<Arc<Run>, AppError> {
        let spawned = spawn(
            &self.reaper,
            SpawnSpec {
                command: &spec.command,
                args: &spec.args,
                env: spec.env.as_ref(),
                working_dir: spec.working_dir.as_deref(),
                user: spec.user.as_ref(),
                stdin: if spec.stdin_pipe { Io::Pipe } else { Io::Null },
                stdout: spec.stdout,
                stderr: spec.stderr,
            },
        )?;
        let streams = spawned.stdout.is_some() as u8 + spawned.stderr.is_some() as u8;
        let stdin = spawned
            .stdin
            .map(|fd| crate::blocking::Writer::new(std::fs::File::from(fd)));
        let run = Arc::new(Run {
            pid: spawned.pid,
            command: spec.command.clone(),
            args: spec.args.clone(),
            started_at: Utc::now(),
            started: Instant::now(),
            managed,
            output: OutputLog::new(streams),
            stdin_open: AtomicBool::new(stdin.is_some()),
            stdin: tokio::sync::Mutex::new(stdin),
            state: Mutex::default(),
            exit: watch::Sender::new(None),
        });
        tracing::info!(pid = run.pid, command = %run.command, fast = spawned.fast, "started process");
        crate::journal::journal().started(
            run.pid,
            std::iter::once(&run.command)
                .chain(&run.args)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            run.managed.as_ref().map(|m| (m.id.clone(), m.name.clone())),
            run.started_at,
        );
        if let Some(sink) = &sink {
            let _ = sink.try_send(RunEvent::Started(StartedEvent {
                pid: run.pid,
                started_at: run.started_at,
            }));
        }
        let (exited_tx, exited_rx) = watch::channel(false);
        for (fd, stream) in [
            (spawned.stdout, OutputStream::Stdout),
            (spawned.stderr, OutputStream::Stderr),
        ] {
            if let Some(fd) = fd {
                tokio::spawn(pump(
                    fd,
                    run.pid,
                    stream,
                    run.output.clone(),
                    sink.clone(),
                    exited_rx.clone(),
                ));
            }
        }
        {
            let mut table = self.table.lock().unwrap();
            table.runs.insert(run.pid, run.clone());
            prune_exited(&mut table);
        }
        let exit_rx = spawned.exit;
        let r = run.clone();
        tokio::spawn(async move {
            let exit = exit_rx.await.unwrap_or(Exit::Signal(libc::SIGKILL));
            r.state.lock().unwrap().ended_at = Some(Utc::now());
            r.exit.send_replace(Some(exit));
            let _ = exited_tx.send(true);
            r.stdin.lock().await.take();
            r.stdin_open.store(false, Ordering::SeqCst);
            tracing::info!(pid = r.pid, ?exit, "process ended");
            // After its last line: the journal tells the end last.
            r.output.wait_done().await;
            crate::journal::journal().exited(r.pid, r.exit_event());
        });
        Ok(run)
    }

    /// Finds a run by pid digits or by managed name (following restarts).
    pub fn lookup(&self, p: &str) -> Result<Arc<Run>, AppError> {
        let table = self.table.lock().unwrap();
        let run = if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
            p.parse::<i32>().ok().and_then(|pid| table.runs.get(&pid))
        } else {
            table
                .names
                .get(p)
                .and_then(|m| table.runs.get(&m.current_pid()))
        };
        run.cloned()
            .ok_or_else(|| AppError::not_found(format!("no process `{p}`")))
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        let runs: Vec<_> = self.table.lock().unwrap().runs.values().cloned().collect();
        runs.iter().map(|r| r.info()).collect()
    }

    pub fn live_runs(&self) -> Vec<Arc<Run>> {
        let table = self.table.lock().unwrap();
        table
            .runs
            .values()
            .filter(|r| r.is_running())
            .cloned()
            .collect()
    }

    pub fn counts(&self) -> (usize, usize) {
        let table = self.table.lock().unwrap();
        let running = table.runs.values().filter(|r| r.is_running()).count();
        (running, table.runs.len())
    }

    /// Starts a background process under a supervisor.
    pub fn start_background(
        self: &Arc<Self>,
        req: StartProcessRequest,
    ) -> Result<Arc<Run>, AppError> {
        let name = req.name.clone().filter(|n| !n.is_empty());
        if let Some(n) = &name {
            if n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(AppError::bad_request(
                    "a process name must not be all digits",
                ));
            }
        }
        let _guard = self.start_lock.lock().unwrap();
        if let Some(n) = &name {
            if self
                .table
                .lock()
                .unwrap()
                .names
                .get(n)
                .is_some_and(|m| m.is_live())
            {
                return Err(AppError::conflict(format!(
                    "a process named `{n}` is already running"
                )));
            }
        }
        let visible = name.is_some() || req.restart.is_some() || req.health_check.is_some();
        let restart = req.restart.clone().unwrap_or(RestartPolicy {
            policy: RestartPolicyKind::Never,
            max_restarts: None,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let managed = Arc::new(Managed {
            id: name
                .clone()
                .unwrap_or_else(|| format!("proc-{:016x}", rand::random::<u64>())),
            name: name.clone(),
            visible,
            spec: RunSpec::from(&req),
            restart,
            state: Mutex::new(ManagedState {
                status: ManagedStatus::Starting,
                restart_count: 0,
                health_status: HealthStatus::Disabled,
                consecutive_health_failures: 0,
                last_exit: None,
                last_error: None,
                next_restart_at: None,
                current_pid: 0,
            }),
            req,
            cmds: tx,
        });
        let run = self.start_run(&managed.spec, Some(managed.clone()), None)?;
        managed.on_started(&run);
        if let Some(n) = name {
            self.table.lock().unwrap().names.insert(n, managed.clone());
        }
        tokio::spawn(supervise(self.clone(), managed, run.clone(), rx));
        Ok(run)
    }

    /// Restarts the process `p` now; answers the new run.
    pub async fn restart(self: &Arc<Self>, p: &str) -> Result<Arc<Run>, AppError> {
        let run = self.lookup(p)?;
        let Some(m) = run.managed.clone() else {
            return Err(AppError::conflict(
                "processes started with `run` cannot be restarted",
            ));
        };
        let (tx, rx) = oneshot::channel();
        if m.cmds.send(Cmd::Restart(tx)).is_ok() {
            if let Ok(result) = rx.await {
                return result;
            }
        }
        // The supervisor is gone (the process stopped for good): start afresh.
        let mut req = m.req.clone();
        req.name = m.name.clone();
        self.start_background(req)
    }

    /// Kills the process group of `p`, ends its supervision and forgets it.
    pub async fn remove(&self, p: &str) -> Result<ProcessInfo, AppError> {
        let run = self.lookup(p)?;
        if let Some(m) = &run.managed {
            if m.current_pid() == run.pid {
                let (tx, rx) = oneshot::channel();
                if m.cmds.send(Cmd::Stop(tx)).is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
                }
            }
        }
        run.kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), run.wait_exit()).await;
        let mut table = self.table.lock().unwrap();
        table.runs.remove(&run.pid);
        if let Some(m) = &run.managed {
            if let Some(n) = &m.name {
                if table.names.get(n).is_some_and(|x| Arc::ptr_eq(x, m)) {
                    table.names.remove(n);
                }
            }
        }
        Ok(run.info())
    }

    /// Signals every live process group (used at shutdown).
    pub fn signal_all(&self, sig: i32) {
        for run in self.live_runs() {
            let _ = signal_group(run.pid, sig);
        }
    }
}

fn prune_exited(table: &mut Table) {
    let exited: Vec<i32> = table
        .runs
        .values()
        .filter(|r| !r.is_running())
        .map(|r| r.pid)
        .collect();
    if exited.len() > MAX_EXITED_RUNS {
        let mut by_age: Vec<(DateTime<Utc>, i32)> = exited
            .iter()
            .map(|pid| (table.runs[pid].started_at, *pid))
            .collect();
        by_age.sort();
        for (_, pid) in by_age.iter().take(exited.len() - MAX_EXITED_RUNS) {
            table.runs.remove(pid);
        }
    }
}

/// Drives one background process: waits for exits, applies the restart
/// policy with exponential backoff, runs health checks, obeys restart/stop.
async fn supervise(
    procs: Arc<Processes>,
    m: Arc<Managed>,
    mut run: Arc<Run>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut backoff_exp: u32 = 0;
    loop {
        let hc = m
            .req
            .health_check
            .clone()
            .map(|hc| tokio::spawn(health_loop(m.clone(), run.clone(), hc)));
        let cmd = tokio::select! {
            _ = run.wait_exit() => None,
            cmd = cmds.recv() => Some(cmd),
        };
        if let Some(h) = hc {
            h.abort();
        }
        let mut reply = None;
        match cmd {
            Some(None) | Some(Some(Cmd::Stop(_))) => {
                run.kill();
                run.wait_exit().await;
                m.record_exit(&run);
                m.set_status(ManagedStatus::Stopped);
                if let Some(Some(Cmd::Stop(tx))) = cmd {
                    let _ = tx.send(());
                }
                return;
            }
            Some(Some(Cmd::Restart(tx))) => {
                run.kill();
                run.wait_exit().await;
                m.record_exit(&run);
                reply = Some(tx);
            }
            None => {
                m.record_exit(&run);
                if run.started.elapsed() >= BACKOFF_RESET {
                    backoff_exp = 0;
                }
            }
        }
        // Start the next run, retrying with backoff while spawning fails.
        loop {
            if reply.is_none() {
                let exit = run.exit_status().unwrap_or(Exit::Signal(libc::SIGKILL));
                if !m.should_restart(exit) {
                    m.set_status(ManagedStatus::Stopped);
                    return;
                }
                let delay = (m.restart.initial_backoff_ms)
                    .saturating_mul(1u64 << backoff_exp.min(20))
                    .min(m.restart.max_backoff_ms.max(m.restart.initial_backoff_ms));
                backoff_exp += 1;
                {
                    let mut st = m.state.lock().unwrap();
                    st.status = ManagedStatus::BackingOff;
                    st.next_restart_at =
                        Some(Utc::now() + chrono::Duration::milliseconds(delay as i64));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                    cmd = cmds.recv() => match cmd {
                        Some(Cmd::Restart(tx)) => reply = Some(tx),
                        Some(Cmd::Stop(tx)) => {
                            m.set_status(ManagedStatus::Stopped);
                            let _ = tx.send(());
                            return;
                        }
                        None => {
                            m.set_status(ManagedStatus::Stopped);
                            return;
                        }
                    },
                }
            }
            m.state.lock().unwrap().status = ManagedStatus::Starting;
            match procs.start_run(&m.spec, Some(m.clone()), None) {
                Ok(new) => {
                    m.state.lock().unwrap().restart_count += 1;
                    m.on_started(&new);
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(Ok(new.clone()));
                    }
                    run = new;
                    break;
                }
                Err(e) => {
                    tracing::warn!(id = %m.id, "restart failed: {}", e.message);
                    {
                        let mut st = m.state.lock().unwrap();
                        st.restart_count += 1;
                        st.last_error = Some(e.message.clone());
                    }
                    if let Some(tx) = reply.take() {
                        let _ = tx.send(Err(e));
                        m.set_status(ManagedStatus::Stopped);
                        return;
                    }
                }
            }
        }
    }
}

/// Probes the health check of one run; kills it after `failure_threshold`
/// consecutive failures unless the restart policy is `never`.
async fn health_loop(m: Arc<Managed>, run: Arc<Run>, hc: HealthCheck) {
    tokio::time::sleep(Duration::from_millis(hc.initial_delay_ms)).await;
    loop {
        if !run.is_running() {
            return;
        }
        let ok = tokio::time::timeout(Duration::from_millis(hc.timeout_ms.max(1)), probe(&hc))
            .await
            .unwrap_or(false);
        let kill = {
            let mut st = m.state.lock().unwrap();
            if ok {
                st.health_status = HealthStatus::Healthy;
                st.consecutive_health_failures = 0;
                false
            } else {
                st.consecutive_health_failures += 1;
                if st.consecutive_health_failures >= hc.failure_threshold.max(1) {
                    st.health_status = HealthStatus::Unhealthy;
                    m.restart.policy != RestartPolicyKind::Never
                } else {
                    false
                }
            }
        };
        if kill {
            tracing::warn!(id = %m.id, pid = run.pid, "unhealthy, restarting");
            run.kill();
            return;
        }
        tokio::time::sleep(Duration::from_millis(hc.interval_ms.max(10))).await;
    }
}

/// One TCP connect, or one HTTP/1.0 GET expecting a 2xx status, on a
/// blocking thread (the agent does no I/O through epoll; see `blocking`).
async fn probe(hc: &HealthCheck) -> bool {
    let hc = hc.clone();
    tokio::task::spawn_blocking(move || probe_blocking(&hc))
        .await
        .unwrap_or(false)
}

fn probe_blocking(hc: &HealthCheck) -> bool {
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(hc.timeout_ms.max(1));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], hc.port));
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    if hc.kind == HealthCheckKind::Tcp {
        return true;
    }
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let path = hc.path.as_deref().unwrap_or("/");
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        hc.port
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    parse_status(&buf).is_some_and(|c| (200..300).contains(&c))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_status() {
        assert_eq!(parse_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status(b"HTTP/1.0 500 x\r\n"), Some(500));
        assert_eq!(parse_status(b"garbage"), None);
    }
}
