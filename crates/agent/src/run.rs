//! `POST /processes/run`: run to completion, streamed as server-sent events.

use crate::error::AppError;
use crate::process::{Processes, RunSpec};
use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use bytes::Bytes;
use sbx_api::daemon::{RunEvent, RunRequest};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// Renders one SSE event.
pub fn sse_event<T: serde::Serialize>(ev: &T) -> Bytes {
    let json = serde_json::to_string(ev).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("data: {json}\n\n"))
}

pub fn sse_response(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .expect("static headers")
}

pub async fn run(procs: Arc<Processes>, req: RunRequest) -> Result<Response, AppError> {
    let timeout = match req.timeout {
        Some(t) if !t.is_finite() || t < 0.0 => {
            return Err(AppError::bad_request(
                "timeout must be a non-negative number",
            ))
        }
        Some(t) if t > 0.0 => Some(Duration::from_secs_f64(t.min(1e9))),
        _ => None,
    };
    let (tx, rx) = mpsc::channel::<RunEvent>(256);
    let run = procs.start_run(&RunSpec::from(&req), None, Some(tx.clone()))?;
    tokio::spawn(async move {
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = run.wait_exit() => {}
            _ = sleep => {
                tracing::info!(pid = run.pid, "run timed out");
                run.mark_timed_out();
                run.kill();
            }
            _ = tx.closed() => {
                tracing::info!(pid = run.pid, "run client went away");
                run.kill();
                return;
            }
        }
        run.wait_exit().await;
        run.output.wait_done().await;
        let _ = tx.send(RunEvent::Exit(run.exit_event())).await;
    });
    let stream = ReceiverStream::new(rx).map(|ev| Ok::<_, Infallible>(sse_event(&ev)));
    Ok(sse_response(Body::from_stream(stream)))
}
