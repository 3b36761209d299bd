//! The agent's HTTP server: connections accepted on a thread with blocking
//! `accept(2)`, their bytes moved by blocking threads (see [`crate::blocking`])
//! and the HTTP protocol served on the runtime.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::io;
use std::net::{SocketAddr, TcpListener};
use tokio::runtime::Handle;
use tower_service_compat::IntoHyper;

/// Binds `addr` and serves `app` from a thread, on `handle`'s runtime.
pub fn serve(addr: SocketAddr, app: Router, handle: Handle) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept_loop(listener, app, handle))?;
    Ok(())
}

fn accept_loop(listener: TcpListener, app: Router, handle: Handle) {
    loop {
        let (stream, _peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                tracing::error!("accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        // No Nagle: SSE events are small writes that must not wait for an ACK.
        let _ = stream.set_nodelay(true);
        let io = match crate::blocking::socket(&handle, stream) {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!("connection: {e}");
                continue;
            }
        };
        let app = app.clone();
        handle.spawn(async move {
            let service = app.into_hyper();
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await;
        });
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    )
}

/// axum's `Router` as a hyper service.
mod tower_service_compat {
    use axum::Router;
    use hyper_util::service::TowerToHyperService;

    pub trait IntoHyper {
        fn into_hyper(self) -> TowerToHyperService<Router>;
    }

    impl IntoHyper for Router {
        fn into_hyper(self) -> TowerToHyperService<Router> {
            TowerToHyperService::new(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_are_served() {
        let app = Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        serve(addr, app, Handle::current()).unwrap();
        let body = reqwest::get(format!("http://{addr}/ping"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "pong");
    }
}
