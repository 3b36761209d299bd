//! The HTTP router: `/api/v1/...`.

use crate::error::{parse_json, AppError};
use crate::process::Processes;
use crate::pty::{self, Ptys};
use crate::run::{sse_event, sse_response};
use crate::{files, run, tunnel};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sbx_api::daemon::*;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::StreamExt;

#[derive(Clone)]
pub struct AppState {
    pub procs: Arc<Processes>,
    pub ptys: Arc<Ptys>,
    pub started: Instant,
    /// The memory watcher's limit in MB, when it runs.
    pub memory_limit: Option<Arc<std::sync::atomic::AtomicU64>>,
}

type Q = Query<HashMap<String, String>>;
type R<T> = Result<T, AppError>;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/health",
            get(|| async { Json(HealthResponse { healthy: true }) }),
        )
        .route("/info", get(info))
        .route("/sync", post(sync_files))
        .route("/memory-limit", axum::routing::put(set_memory_limit))
        .route("/logs", get(journal))
        .route("/processes/run", post(run_process))
        .route("/processes", get(list_processes).post(start_process))
        .route("/processes/{p}", get(get_process).delete(delete_process))
        .route("/processes/{p}/restart", post(restart_process))
        .route("/processes/{p}/signal", post(signal_process))
        .route("/processes/{p}/stdin", post(write_stdin))
        .route("/processes/{p}/stdin/close", post(close_stdin))
        .route("/processes/{p}/{stream}", get(get_output))
        .route("/processes/{p}/{stream}/follow", get(follow_output))
        .route(
            "/files",
            get(|q: Q| files::read(path_of(q)))
                .put(|q: Q, body: Body| files::write(path_of(q), body))
                .delete(|q: Q| files::delete(path_of(q))),
        )
        .route("/files/list", get(|q: Q| files::list(path_of(q))))
        .route("/pty", get(list_ptys).post(create_pty))
        .route("/pty/{sid}", axum::routing::delete(delete_pty))
        .route("/pty/{sid}/ws", get(pty_ws))
        .route("/tunnels/tcp", get(tunnel_ws));
    Router::new()
        .nest("/api/v1", api)
        .fallback(|| async { AppError::not_found("no such route") })
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn path_of(Query(q): Q) -> Option<String> {
    q.get("path").cloned()
}

async fn info(State(s): State<AppState>) -> Json<DaemonInfo> {
    let (running, total) = s.procs.counts();
    Json(DaemonInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_secs: s.started.elapsed().as_secs(),
        running_processes: running,
        total_processes: total,
        has_processes: s.procs.reaper().has_children(),
    })
}

/// Flushes the sandbox's file caches to its writable layer (`sync(2)`), as
/// the host does before it captures the layer.
/// `PUT /memory-limit?mb=N`: the host's word that the sandbox was resized;
/// the memory watcher keeps to N MB from now on. (A process in the sandbox
/// calling it changes only when the agent steps in: the host's cgroup
/// limit stays the bound.)
async fn set_memory_limit(State(s): State<AppState>, q: Q) -> R<StatusCode> {
    let mb: u64 = q
        .get("mb")
        .and_then(|v| v.parse().ok())
        .filter(|mb| *mb > 0)
        .ok_or_else(|| AppError::bad_request("mb must be a positive number of megabytes"))?;
    let Some(limit) = &s.memory_limit else {
        return Ok(StatusCode::NOT_FOUND);
    };
    limit.store(mb, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(limit_mb = mb, "memory limit changed");
    Ok(StatusCode::NO_CONTENT)
}

async fn sync_files() -> StatusCode {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    let _ = tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await;
    StatusCode::NO_CONTENT
}

async fn run_process(State(s): State<AppState>, body: Bytes) -> R<Response> {
    run::run(s.procs.clone(), parse_json(&body)?).await
}

async fn start_process(State(s): State<AppState>, body: Bytes) -> R<Json<ProcessInfo>> {
    let req: StartProcessRequest = parse_json(&body)?;
    Ok(Json(s.procs.start_background(req)?.info()))
}

async fn list_processes(State(s): State<AppState>) -> Json<ProcessList> {
    Json(ProcessList {
        processes: s.procs.list(),
    })
}

async fn get_process(State(s): State<AppState>, Path(p): Path<String>) -> R<Json<ProcessInfo>> {
    Ok(Json(s.procs.lookup(&p)?.info()))
}

async fn delete_process(State(s): State<AppState>, Path(p): Path<String>) -> R<Json<ProcessInfo>> {
    Ok(Json(s.procs.remove(&p).await?))
}

async fn restart_process(State(s): State<AppState>, Path(p): Path<String>) -> R<Json<ProcessInfo>> {
    Ok(Json(s.procs.restart(&p).await?.info()))
}

async fn signal_process(
    State(s): State<AppState>,
    Path(p): Path<String>,
    body: Bytes,
) -> R<Json<SignalResponse>> {
    let req: SignalRequest = parse_json(&body)?;
    let run = s.procs.lookup(&p)?;
    if !(0..=64).contains(&req.signal) {
        return Err(AppError::bad_request(format!(
            "invalid signal {}",
            req.signal
        )));
    }
    if !run.is_running() {
        return Err(AppError::conflict(format!(
            "process {} is not running",
            run.pid
        )));
    }
    crate::spawn::signal_group(run.pid, req.signal)
        .map_err(|e| AppError::bad_request(format!("signal {}: {e}", req.signal)))?;
    Ok(Json(SignalResponse { success: true }))
}

async fn write_stdin(
    State(s): State<AppState>,
    Path(p): Path<String>,
    body: Body,
) -> R<Json<SignalResponse>> {
    let run = s.procs.lookup(&p)?;
    run.write_stdin(body.into_data_stream()).await?;
    Ok(Json(SignalResponse { success: true }))
}

async fn close_stdin(State(s): State<AppState>, Path(p): Path<String>) -> R<Json<SignalResponse>> {
    s.procs.lookup(&p)?.close_stdin().await?;
    Ok(Json(SignalResponse { success: true }))
}

fn stream_filter(name: &str) -> R<Option<OutputStream>> {
    match name {
        "stdout" => Ok(Some(OutputStream::Stdout)),
        "stderr" => Ok(Some(OutputStream::Stderr)),
        "output" => Ok(None),
        _ => Err(AppError::not_found(format!("no such route `{name}`"))),
    }
}

/// The journal from `from` on; with `wait_ms`, waits that long (at most a
/// minute) for a first entry, then `linger_ms` (at most a second) more.
async fn journal(Query(q): Q) -> R<Json<sbx_api::logs::JournalBatch>> {
    let num = |k: &str, default: u64| -> R<u64> {
        q.get(k).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| AppError::bad_request(format!("{k} must be a number")))
        })
    };
    let from = num("from", 0)?;
    let max = num("max", 5000)?.clamp(1, crate::journal::MAX_ENTRIES as u64) as usize;
    let wait = std::time::Duration::from_millis(num("wait_ms", 0)?.min(60_000));
    let linger = std::time::Duration::from_millis(num("linger_ms", 0)?.min(1000));
    Ok(Json(
        crate::journal::journal()
            .wait(from, max, wait, linger)
            .await,
    ))
}

async fn get_output(
    State(s): State<AppState>,
    Path((p, stream)): Path<(String, String)>,
) -> R<Json<OutputResponse>> {
    let filter = stream_filter(&stream)?;
    let run = s.procs.lookup(&p)?;
    let lines = run.output.snapshot(filter);
    Ok(Json(OutputResponse {
        pid: run.pid,
        line_count: lines.len(),
        lines,
    }))
}

async fn follow_output(
    State(s): State<AppState>,
    Path((p, stream)): Path<(String, String)>,
) -> R<Response> {
    let filter = stream_filter(&stream)?;
    let run = s.procs.lookup(&p)?;
    let events = run
        .output
        .clone()
        .follow(filter)
        .map(|ev| Ok::<_, Infallible>(sse_event(&ev)));
    Ok(sse_response(Body::from_stream(events)))
}

async fn create_pty(State(s): State<AppState>, body: Bytes) -> R<Json<CreatePtyResponse>> {
    let req: CreatePtyRequest = parse_json(&body)?;
    Ok(Json(s.ptys.create(s.procs.reaper(), req)?))
}

async fn list_ptys(State(s): State<AppState>) -> Json<pty::PtyList> {
    Json(s.ptys.list())
}

async fn delete_pty(State(s): State<AppState>, Path(sid): Path<String>) -> R<StatusCode> {
    s.ptys.kill(&sid)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pty_ws(
    State(s): State<AppState>,
    Path(sid): Path<String>,
    Query(q): Q,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> R<Response> {
    let token = q
        .get("token")
        .map(String::as_str)
        .or_else(|| headers.get("x-pty-token").and_then(|v| v.to_str().ok()));
    let session = s.ptys.authorize(&sid, token)?;
    let ws = ws.map_err(|e| AppError::bad_request(e.body_text()))?;
    let ptys = s.ptys.clone();
    Ok(ws
        .on_upgrade(move |socket| pty::serve_ws(ptys, session, socket))
        .into_response())
}

async fn tunnel_ws(Query(q): Q, ws: WebSocketUpgrade) -> R<Response> {
    let port: u16 = q
        .get("port")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| AppError::bad_request("query parameter `port` must be 1..65535"))?;
    Ok(ws
        .on_upgrade(move |socket| tunnel::serve(port, socket))
        .into_response())
}
