//! The agent's HTTP server: connections accepted on a thread with blocking
//! `accept(2)` and served on a tokio runtime that is replaced after every
//! restore of the sandbox.
//!
//! gVisor 2024 does not carry epoll state reliably across checkpoint and
//! restore: a listening socket registered before a checkpoint is never
//! reported again (google/gvisor#13920), and after a second restore the
//! runtime whose epoll instance went through both may stop serving at all.
//! A blocking `accept` registers afresh on every call, and a runtime built
//! after the restore has a fresh epoll instance. A restore is recognised by
//! the sandbox's address changing (every restored sandbox gets its own).

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use tokio::runtime::{Handle, Runtime};
use tower_service_compat::IntoHyper;

/// Binds `addr` and serves `app` from a thread; requests run on `first`
/// until the sandbox is restored somewhere else.
pub fn serve(addr: SocketAddr, app: Router, first: Handle) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::Builder::new()
        .name("accept".into())
        .spawn(move || accept_loop(listener, app, first))?;
    Ok(())
}

fn accept_loop(listener: TcpListener, app: Router, first: Handle) {
    let mut handle = first;
    // Runtimes made after restores live as long as the agent.
    let mut runtimes: Vec<Runtime> = Vec::new();
    let mut local: Option<IpAddr> = None;
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
        if let Ok(ip) = stream.local_addr().map(|a| a.ip()) {
            if !ip.is_loopback() {
                if local.is_some_and(|old| old != ip) {
                    match fresh_runtime() {
                        Ok(rt) => {
                            tracing::info!(%ip, "restored: serving on a fresh runtime");
                            handle = rt.handle().clone();
                            runtimes.push(rt);
                        }
                        Err(e) => tracing::error!("cannot build a runtime: {e}"),
                    }
                }
                local = Some(ip);
            }
        }
        // No Nagle: SSE events are small writes that must not wait for an ACK.
        let _ = stream.set_nodelay(true);
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let app = app.clone();
        handle.spawn(async move {
            let Ok(io) = tokio::net::TcpStream::from_std(stream) else {
                return;
            };
            let service = app.into_hyper();
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await;
        });
    }
}

fn fresh_runtime() -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agent-rt")
        .enable_all()
        .build()
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
