//! The seam between the control plane and the hosts that run sandboxes.
//!
//! Everything the control plane asks of the node that runs a sandbox goes
//! through [`Node`]: [`InProcess`] when that node is this server's own host
//! (its executor, in this process) and [`Remote`] when it is another node,
//! reached over HTTP — its server's API for lifecycle work, its proxy for
//! the sandbox's traffic. [`Manager::node`] picks one; its callers
//! (placement, terminate, the lifecycle routes, the proxy) never know which.

use crate::error::ApiError;
use crate::lifecycle::{LaunchOutcome, Manager};
use crate::store::SandboxRow;
use async_trait::async_trait;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::{Arc, OnceLock, Weak};
use tokio::task::JoinHandle;

/// Marks a lifecycle request one server sent to another node's server: it
/// is carried out there, never sent on again.
pub const FORWARDED: &str = "x-sbx-forwarded";

/// A host that runs sandboxes, as the control plane drives it.
#[async_trait]
pub trait Node: Send + Sync {
    /// Starts `row`, just recorded `pending` on this node (the caller
    /// makes sure nothing else launches it); the handle tells what became
    /// of it.
    fn launch(&self, row: &SandboxRow) -> JoinHandle<LaunchOutcome>;

    /// Asks the node to look now for work recorded for it: sandboxes
    /// placed on it to launch, ended ones to remove from its host. (It
    /// also looks every sweep, so a wake that is lost only delays.)
    async fn wake(&self);

    /// Removes from its host a sandbox whose row just became final.
    async fn reap(&self, row: &SandboxRow, reason: &str);

    /// Carries out a lifecycle request for one of its sandboxes (snapshot,
    /// suspend, resume, copy, update, logs, processes), as the API
    /// received it.
    async fn lifecycle(&self, req: Request) -> Response;

    /// Sends a request on to one of its sandboxes' agent, or to `port` of
    /// the sandbox; `strip_auth`: the user's key is not passed on.
    async fn proxy(
        &self,
        req: Request,
        row: SandboxRow,
        port: Option<u16>,
        strip_auth: bool,
    ) -> Response;
}

/// This server's own host: the work runs in this process.
pub struct InProcess {
    manager: Weak<Manager>,
    /// The control-plane routes, without the layer that sends requests to
    /// other nodes (set once the router is made).
    routes: OnceLock<Router>,
}

impl InProcess {
    pub fn new(manager: Weak<Manager>) -> Self {
        InProcess {
            manager,
            routes: OnceLock::new(),
        }
    }

    /// Gives the node the routes its lifecycle requests run on.
    pub fn serve_with(&self, routes: Router) {
        let _ = self.routes.set(routes);
    }

    fn manager(&self) -> Arc<Manager> {
        self.manager
            .upgrade()
            .expect("the manager outlives its node")
    }
}

#[async_trait]
impl Node for InProcess {
    fn launch(&self, row: &SandboxRow) -> JoinHandle<LaunchOutcome> {
        let m = self.manager();
        m.launch_here(row)
    }

    async fn wake(&self) {
        self.manager().wake.notify_one();
    }

    async fn reap(&self, row: &SandboxRow, reason: &str) {
        self.manager().destroy_later(&row.id, reason);
    }

    async fn lifecycle(&self, req: Request) -> Response {
        let Some(routes) = self.routes.get() else {
            return ApiError::unavailable("the server is still starting").into_response();
        };
        match tower::ServiceExt::oneshot(routes.clone(), req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }

    async fn proxy(
        &self,
        req: Request,
        row: SandboxRow,
        port: Option<u16>,
        strip_auth: bool,
    ) -> Response {
        crate::proxy::to_agent(&self.manager(), req, row, port, strip_auth).await
    }
}

/// Another node, reached through its server: lifecycle requests at its API
/// (`api_address`), sandbox traffic at its proxy (`address`), both as
/// recorded in its row; launches are recorded in the state store and the
/// node woken to take them.
#[derive(Clone)]
pub struct Remote {
    id: String,
    manager: Arc<Manager>,
}

impl Remote {
    pub fn new(id: &str, manager: Arc<Manager>) -> Self {
        Remote {
            id: id.to_string(),
            manager,
        }
    }

    /// Its server's API address, if it has one this server can reach.
    async fn api_address(&self) -> Option<String> {
        match self.manager.store.node(&self.id).await {
            Ok(Some(n)) => n.api_address,
            _ => None,
        }
    }

    /// `POST /v1/nodes/{id}/wake` at its server; whether it was taken.
    async fn wake_over_http(&self) -> bool {
        let Some(api) = self.api_address().await else {
            return false;
        };
        let url = format!("http://{api}/v1/nodes/{}/wake", self.id);
        let mut req = Request::post(url).header(FORWARDED, "1");
        if let Some(key) = &self.manager.peer_key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let Ok(req) = req.body(Body::empty()) else {
            return false;
        };
        let sent = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            crate::proxy::client().request(req),
        )
        .await;
        match sent {
            Ok(Ok(resp)) if resp.status().is_success() => true,
            Ok(Ok(resp)) => {
                tracing::debug!(node = self.id, status = %resp.status(), "wake refused");
                false
            }
            Ok(Err(e)) => {
                tracing::debug!(node = self.id, "wake not delivered: {e}");
                false
            }
            Err(_) => false,
        }
    }
}

#[async_trait]
impl Node for Remote {
    fn launch(&self, row: &SandboxRow) -> JoinHandle<LaunchOutcome> {
        let me = self.clone();
        let id = row.id.clone();
        tokio::spawn(async move {
            me.wake().await;
            me.manager.launched_elsewhere(&id).await
        })
    }

    async fn wake(&self) {
        if self.wake_over_http().await {
            return;
        }
        // No API to reach: through the state store (PostgreSQL `NOTIFY`).
        if let Err(e) = self.manager.store.wake_node(&self.id).await {
            tracing::debug!(
                node = self.id,
                "cannot wake the node (its sweep finds the work): {e}"
            );
        }
    }

    async fn reap(&self, _row: &SandboxRow, _reason: &str) {
        // Its sweep removes what no live row wants (`reap_unwanted`); the
        // terminate that called this does not wait for the wake.
        let me = self.clone();
        tokio::spawn(async move { me.wake().await });
    }

    async fn lifecycle(&self, req: Request) -> Response {
        let Some(api) = self.api_address().await else {
            return ApiError::new(
                StatusCode::CONFLICT,
                "sandbox_on_other_node",
                format!(
                    "the sandbox runs on node {}, whose server has no API address this \
                     server can reach: send this request to that node's server",
                    self.id
                ),
            )
            .into_response();
        };
        let uri = match crate::proxy::uri_at(&api, req.uri()) {
            Ok(u) => u,
            Err(e) => {
                return ApiError::unavailable(format!(
                    "node {}'s API address {api:?}: {e}",
                    self.id
                ))
                .into_response()
            }
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        parts.headers.remove(header::HOST);
        parts
            .headers
            .insert(FORWARDED, HeaderValue::from_static("1"));
        match crate::proxy::client()
            .request(Request::from_parts(parts, body))
            .await
        {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, Body::new(body))
            }
            Err(e) => ApiError::unavailable(format!(
                "the sandbox runs on node {}, whose server did not answer: {e}",
                self.id
            ))
            .into_response(),
        }
    }

    async fn proxy(
        &self,
        req: Request,
        row: SandboxRow,
        _port: Option<u16>,
        _strip_auth: bool,
    ) -> Response {
        // Its proxy resolves the port and checks the auth itself.
        crate::proxy::relay(&self.manager, req, row).await
    }
}
