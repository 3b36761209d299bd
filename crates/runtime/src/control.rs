//! The sandbox's control socket: runsc's `pause` and `resume` are each a
//! `runsc` process (~25 ms, mostly its start) that sends one call to the
//! sentry over `<root>/runsc-<id>.sock`. Sending the call ourselves takes
//! ~0.5 ms, which is most of what a memory snapshot adds to a checkpoint.
//!
//! The protocol (gVisor's `pkg/urpc`): over a stream socket, one JSON object
//! `{"method": ..., "arg": ...}` per call, answered with one JSON object
//! `{"success": bool, "err": string, "result": ...}`.

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PAUSE: &str = "containerManager.Pause";
pub const RESUME: &str = "containerManager.Resume";
/// Argument: `{"CID", "Signo", "PID", "Mode"}` (`Mode` 1: every process of
/// the container).
pub const SIGNAL: &str = "containerManager.Signal";

/// Longest answer read (the calls used here answer with a few bytes).
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing was sent: the socket is not there or refused the connection.
    #[error("control socket {path}: {source}")]
    Unreachable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The call was sent; its outcome is unknown or it failed.
    #[error("{method}: {reason}")]
    Failed { method: String, reason: String },
}

#[derive(Deserialize)]
struct Answer {
    success: bool,
    #[serde(default)]
    err: String,
}

/// Sends `method` (without argument) to the sandbox listening on `socket`
/// and waits up to `limit` for its answer.
pub async fn call(socket: &Path, method: &str, limit: Duration) -> Result<(), ControlError> {
    call_with(socket, method, serde_json::Value::Null, limit).await
}

/// [`call`] with an argument.
pub async fn call_with(
    socket: &Path,
    method: &str,
    arg: serde_json::Value,
    limit: Duration,
) -> Result<(), ControlError> {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ControlError::Unreachable {
            path: socket.display().to_string(),
            source,
        })?;
    let failed = |reason: String| ControlError::Failed {
        method: method.to_string(),
        reason,
    };
    let request = serde_json::json!({ "method": method, "arg": arg }).to_string();
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the sandbox closed the connection without an answer",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            // The answer is one JSON object, not delimited: complete once it parses.
            let mut values = serde_json::Deserializer::from_slice(&buf).into_iter::<Answer>();
            match values.next() {
                Some(Ok(answer)) => return Ok(answer),
                Some(Err(e)) if e.is_eof() && buf.len() < MAX_ANSWER => continue,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => continue,
            }
        }
    };
    let answer = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {limit:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    if answer.success {
        Ok(())
    } else {
        Err(failed(answer.err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A stand-in for the sentry's end: reads one request, answers `reply`
    /// in two writes (answers need not arrive in one read).
    async fn serve_once(listener: UnixListener, reply: &'static str) -> String {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        let (a, b) = reply.split_at(reply.len() / 2);
        s.write_all(a.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.write_all(b.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn a_call_is_one_json_object_and_its_answer_may_come_in_pieces() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.sock");
        let server = tokio::spawn(serve_once(
            UnixListener::bind(&path).unwrap(),
            r#"{"success":true,"err":"","result":{}}"#,
        ));
        call(&path, PAUSE, Duration::from_secs(5)).await.unwrap();
        let sent: serde_json::Value = serde_json::from_str(&server.await.unwrap()).unwrap();
        assert_eq!(sent["method"], PAUSE);
        assert!(sent["arg"].is_null());
    }

    #[tokio::test]
    async fn a_refused_call_says_why_and_a_missing_socket_is_unreachable() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.sock");
        let server = tokio::spawn(serve_once(
            UnixListener::bind(&path).unwrap(),
            r#"{"success":false,"err":"not paused","result":null}"#,
        ));
        let e = call(&path, RESUME, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ControlError::Failed { reason, .. } if reason == "not paused"),
            "{e}"
        );
        server.await.unwrap();
        let e = call(&d.path().join("none.sock"), PAUSE, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ControlError::Unreachable { .. }), "{e}");
    }
}
