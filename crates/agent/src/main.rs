//! sbx-agent: PID 1 of every sandbox. Reaps zombies, starts the entrypoint
//! and serves the daemon API (`/api/v1`, port 9501).

mod blocking;
mod error;
mod files;
mod journal;
mod listener;
mod oom;
mod output;
mod process;
mod pty;
mod reaper;
mod routes;
mod run;
mod spawn;
mod tunnel;
mod users;

use clap::Parser;
use process::Processes;
use reaper::Reaper;
use sbx_api::daemon::{RestartPolicy, RestartPolicyKind, StartProcessRequest};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "sbx-agent", version, about = "The sbx in-sandbox daemon")]
struct Args {
    /// Address to serve the daemon API on.
    #[arg(long, env = "SBX_AGENT_LISTEN", default_value = "0.0.0.0:9501")]
    listen: SocketAddr,
    /// Soft memory limit: above it the largest process group is SIGKILLed.
    #[arg(long, env = "SBX_MEMORY_LIMIT_MB")]
    memory_limit_mb: Option<u64>,
    /// `host`: the host signals memory pressure (SIGUSR1 when the sandbox's
    /// memory crosses its limit, SIGUSR2 when it falls back) and processes
    /// are looked at only meanwhile; otherwise they are looked at always.
    #[arg(long, env = "SBX_MEMORY_WATCH")]
    memory_watch: Option<String>,
    /// Flush the sandbox's file caches to its layer (`sync(2)`) and exit:
    /// run by the executor through the runtime, not through the API, before
    /// a capture.
    #[arg(long)]
    sync: bool,
    /// The entrypoint, started as the managed process `entrypoint`.
    #[arg(last = true)]
    entrypoint: Vec<String>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SBX_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.sync {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        return std::process::ExitCode::SUCCESS;
    }
    // Timers but no I/O driver: nothing the agent does goes through epoll
    // (see `blocking`), so no epoll state has to survive a restore.
    // One thread runs every task: everything that blocks is on the blocking
    // pool already, a sandbox gets one CPU by default, and under gVisor a
    // second worker only added wake-ups (tokio's workers hand tasks to each
    // other and yield while parking): a command's round trip was ~0.2 ms
    // shorter with one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4096)
        .enable_time()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(serve(args));
    // Blocking threads may sit in read(2) on pipes of processes that outlive
    // us; do not wait for them.
    rt.shutdown_background();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Receives the first SIGTERM or SIGINT, and the host's memory-pressure
/// signals into `pressure` (SIGUSR1 on, SIGUSR2 off), on a thread of its
/// own: tokio's signal handling needs the I/O driver the agent does without.
fn on_signals(
    pressure: tokio::sync::watch::Sender<bool>,
) -> std::io::Result<tokio::sync::oneshot::Receiver<i32>> {
    let mut signals = signal_hook::iterator::Signals::new([
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ])?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut terminated = Some(tx);
            for sig in signals.forever() {
                match sig {
                    libc::SIGUSR1 => {
                        pressure.send_replace(true);
                    }
                    libc::SIGUSR2 => {
                        pressure.send_replace(false);
                    }
                    _ => {
                        if let Some(tx) = terminated.take() {
                            let _ = tx.send(sig);
                        }
                    }
                }
            }
        })?;
    Ok(rx)
}

async fn serve(args: Args) -> std::io::Result<()> {
    let pid1 = std::process::id() == 1;
    if !pid1 {
        // Adopt orphaned grandchildren like PID 1 would, so they get reaped too.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    // Read the environment (and, if HOME is unset, /etc/passwd) once, now.
    spawn::init();
    let reaper = Reaper::default();
    reaper.start()?;
    let (pressure, pressure_rx) = tokio::sync::watch::channel(false);
    let terminated = on_signals(pressure)?;

    let procs = Processes::new(reaper);
    let ptys = Arc::new(pty::Ptys::default());
    let memory_limit = args.memory_limit_mb.map(|mb| {
        let limit = Arc::new(std::sync::atomic::AtomicU64::new(mb));
        let host_notified = args.memory_watch.as_deref() == Some("host");
        oom::start(
            limit.clone(),
            procs.clone(),
            host_notified.then_some(pressure_rx),
        );
        limit
    });
    if let Some((command, rest)) = args.entrypoint.split_first() {
        let req = StartProcessRequest {
            command: command.clone(),
            args: rest.to_vec(),
            name: Some("entrypoint".into()),
            restart: Some(RestartPolicy {
                policy: RestartPolicyKind::Never,
                max_restarts: None,
                initial_backoff_ms: 500,
                max_backoff_ms: 30_000,
            }),
            ..Default::default()
        };
        match procs.start_background(req) {
            Ok(run) => tracing::info!(pid = run.pid, "entrypoint started"),
            Err(e) => tracing::error!("entrypoint failed to start: {}", e.message),
        }
    }

    listener::serve(
        args.listen,
        routes::router(routes::AppState {
            procs: procs.clone(),
            ptys: ptys.clone(),
            started: Instant::now(),
            memory_limit,
        }),
        tokio::runtime::Handle::current(),
    )?;
    tracing::info!(addr = %args.listen, pid1, "sbx-agent listening");
    let _ = terminated.await;
    tracing::info!("shutting down: terminating all processes");
    procs.signal_all(libc::SIGTERM);
    ptys.signal_all(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && procs.counts().0 > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    procs.signal_all(libc::SIGKILL);
    ptys.signal_all(libc::SIGKILL);
    if pid1 {
        // Everything left in the sandbox is ours to end.
        // SAFETY: kill(-1) signals every process but ourselves.
        unsafe { libc::kill(-1, libc::SIGKILL) };
    }
    Ok(())
}
