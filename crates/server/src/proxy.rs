//! The sandbox proxy (data plane): routes each request by
//! `X-Tensorlake-Sandbox-Id` or `Host: {id}.local` to that sandbox's agent,
//! and `Host: {port}-{id}.local` to a user port the sandbox exposes,
//! streaming bodies both ways and splicing WebSocket upgrades.

use crate::error::ApiError;
use crate::lifecycle::Manager;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sbx_api::sandbox::SandboxStatus;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct ProxyState {
    pub manager: Arc<Manager>,
    /// Accepted bearer keys (empty: loopback peers only).
    keys: Arc<Vec<String>>,
    running: Arc<RunningRows>,
}

/// Rows of running sandboxes the proxy read lately, by id, so that a burst
/// of requests to one sandbox does not read the database for each (a
/// quarter of a command's round trip here). An entry serves while no
/// sandbox changed status through this server's store since it was read,
/// and for at most [`RunningRows::TTL`]. Used only on SQLite, whose one
/// writer is this server; on PostgreSQL other servers change rows too.
#[derive(Default)]
struct RunningRows(Mutex<HashMap<String, (crate::store::SandboxRow, u64, Instant)>>);

impl RunningRows {
    const TTL: Duration = Duration::from_secs(1);
    /// Past this many entries the cache starts over.
    const MAX: usize = 4096;

    /// The row of sandbox `id` if it was read at status version `version`.
    fn get(&self, id: &str, version: u64) -> Option<crate::store::SandboxRow> {
        let mut rows = self.0.lock().unwrap();
        match rows.get(id) {
            Some((row, v, at)) if *v == version && at.elapsed() < Self::TTL => Some(row.clone()),
            Some(_) => {
                rows.remove(id);
                None
            }
            None => None,
        }
    }

    /// Remembers `row`, read at status version `version`, if it is running.
    fn put(&self, row: &crate::store::SandboxRow, version: u64) {
        if row.status != SandboxStatus::Running {
            return;
        }
        let mut rows = self.0.lock().unwrap();
        if rows.len() >= Self::MAX {
            rows.clear();
        }
        rows.insert(row.id.clone(), (row.clone(), version, Instant::now()));
    }
}

/// The proxy checks auth itself: a user port of a sandbox with
/// `allow_unauthenticated_access` is reachable without a key.
pub fn router(manager: Arc<Manager>, keys: Arc<Vec<String>>) -> Router {
    Router::new().fallback(forward).with_state(ProxyState {
        manager,
        keys,
        running: Default::default(),
    })
}

/// The HTTP client of the proxy and of the servers' requests to other
/// nodes: pooled connections, no Nagle.
pub(crate) fn client() -> &'static Client<HttpConnector, Body> {
    static CLIENT: std::sync::OnceLock<Client<HttpConnector, Body>> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector)
    })
}

/// The sandbox a request is for: the header wins over the Host label.
pub fn target(req: &Request) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get("x-tensorlake-sandbox-id")
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.trim().to_string()).filter(|s| !s.is_empty());
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let label = host.strip_suffix(".local")?;
    (!label.is_empty() && !label.contains('.')).then(|| label.to_string())
}

/// A Host label of the form `{port}-{sandbox}`: a user port of that sandbox.
/// (A sandbox whose whole name is the label wins; the caller checks that.)
pub fn user_port(label: &str) -> Option<(u16, &str)> {
    let (port, sandbox) = label.split_once('-')?;
    let valid = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && !port.starts_with('0')
        && !sandbox.is_empty();
    let port: u16 = port.parse().ok().filter(|_| valid)?;
    Some((port, sandbox))
}

/// The sandbox a request names and, for a user-port request, the port.
async fn resolve(
    manager: &Manager,
    key: Option<String>,
    by_header: bool,
) -> Result<(crate::store::SandboxRow, Option<u16>), ApiError> {
    let Some(key) = key else {
        return Err(ApiError::bad_request(
            "name the sandbox with the X-Tensorlake-Sandbox-Id header or Host: {id}.local",
        ));
    };
    if let Some(row) = manager.store.find_any(&key).await? {
        return Ok((row, None));
    }
    if let Some((port, sandbox)) = user_port(&key).filter(|_| !by_header) {
        if let Some(row) = manager.store.find_any(sandbox).await? {
            return Ok((row, Some(port)));
        }
    }
    Err(ApiError::not_found("sandbox", &key))
}

/// [`resolve`], answered from [`RunningRows`] for a running sandbox named
/// by its id when it can be.
async fn resolve_cached(
    state: &ProxyState,
    key: Option<String>,
    by_header: bool,
) -> Result<(crate::store::SandboxRow, Option<u16>), ApiError> {
    let store = &state.manager.store;
    if store.kind() != crate::store::Kind::Sqlite {
        return resolve(&state.manager, key, by_header).await;
    }
    // Read before the row: a change after it shows as a new version.
    let version = store.status_version();
    if let Some(row) = key.as_deref().and_then(|k| state.running.get(k, version)) {
        return Ok((row, None));
    }
    let by_id = key.clone();
    let found = resolve(&state.manager, key, by_header).await?;
    if found.1.is_none() && by_id.as_deref() == Some(found.0.id.as_str()) {
        state.running.put(&found.0, version);
    }
    Ok(found)
}

/// Whether a user port may be reached: listed in `exposed_ports`, never the daemon's.
fn check_user_port(row: &crate::store::SandboxRow, port: u16) -> Result<(), ApiError> {
    if port == sbx_api::AGENT_PORT || !row.spec.exposed_ports.contains(&port) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "port_not_exposed",
            format!(
                "port {port} of sandbox {} is not exposed; add it to exposed_ports",
                row.id
            ),
        ));
    }
    Ok(())
}

const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

async fn forward(State(state): State<ProxyState>, req: Request) -> Response {
    // Without a key nobody is told which sandboxes exist.
    let authorized = crate::auth::authorize(&state.keys, &req);
    let by_header = req.headers().contains_key("x-tensorlake-sandbox-id");
    let (row, port) = match resolve_cached(&state, target(&req), by_header).await {
        Ok(found) => found,
        Err(e) => return authorized.err().unwrap_or(e).into_response(),
    };
    let public = port.is_some() && row.spec.allow_unauthenticated_access;
    if let (Err(e), false) = (authorized, public) {
        return e.into_response();
    }
    if let Some(port) = port {
        if let Err(e) = check_user_port(&row, port) {
            return e.into_response();
        }
    }
    forward_to(state, req, row, port, !public).await
}

async fn forward_to(
    state: ProxyState,
    req: Request,
    row: crate::store::SandboxRow,
    port: Option<u16>,
    strip_auth: bool,
) -> Response {
    // A suspended sandbox its node cannot resume moves to one that can.
    let row = match row.spec.auto_resume {
        true => match state.manager.relocate_if_stranded(&row).await {
            Ok(moved) => moved.unwrap_or(row),
            Err(e) => return e.into_response(),
        },
        false => row,
    };
    state
        .manager
        .node(row.node_id.as_deref())
        .proxy(req, row, port, strip_auth)
        .await
}

/// Sends a request on to the agent (or `port`) of a sandbox of this host:
/// the in-process node's proxy.
pub(crate) async fn to_agent(
    manager: &Arc<Manager>,
    mut req: Request,
    row: crate::store::SandboxRow,
    port: Option<u16>,
    strip_auth: bool,
) -> Response {
    let row = match auto_resume(manager, row).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if row.status != SandboxStatus::Running {
        return ApiError::conflict(format!("sandbox {} is {}, not running", row.id, row.status))
            .into_response();
    }
    manager.touch(&row.id);
    // Thawed (if it was frozen for being idle) until the response has
    // streamed out, and for as long as an upgraded connection stays open.
    let hold = manager.host().hold(&row.id);
    let Some(mut addr) = manager.host().agent_addr(&row.id) else {
        return ApiError::unavailable(format!("sandbox {} is not reachable on this host", row.id))
            .into_response();
    };
    if let Some(port) = port {
        addr.set_port(port);
    }
    let uri = match uri_at(&addr.to_string(), req.uri()) {
        Ok(u) => u,
        Err(e) => return ApiError::bad_request(format!("bad path: {e}")).into_response(),
    };
    let is_upgrade = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.headers.remove(RELAYED);
    if strip_auth {
        parts.headers.remove(header::AUTHORIZATION);
    }
    if !is_upgrade {
        parts.headers.remove(header::CONNECTION);
        parts.headers.remove(header::UPGRADE);
    }
    for h in HOP_BY_HOP {
        parts.headers.remove(*h);
    }
    // A user's server sees the Host it was asked for; the daemon its own address.
    if port.is_none() {
        if let Ok(v) = HeaderValue::from_str(&addr.to_string()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    // A second hold for as long as an upgraded connection stays open.
    let upgrade_hold = is_upgrade.then(|| manager.host().hold(&row.id));
    let holds = (Some(hold), upgrade_hold);
    send(client(), parts, body, client_upgrade, holds, &row.id).await
}

/// Sends a request on to a sandbox's agent or another node's proxy and
/// streams the answer back, splicing an upgraded connection; `holds` keep
/// a local sandbox thawed while the answer streams and while the upgraded
/// connection lasts.
async fn send(
    client: &Client<HttpConnector, Body>,
    parts: axum::http::request::Parts,
    body: Body,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    holds: (Option<sbx_executor::Hold>, Option<sbx_executor::Hold>),
    sandbox: &str,
) -> Response {
    let (hold, upgrade_hold) = holds;
    // A request without a body can be sent again: the first attempt may
    // meet a pooled connection that a capture cut (gVisor drops open TCP
    // connections when it checkpoints).
    let is_upgrade = client_upgrade.is_some();
    let replay = (!is_upgrade && has_no_body(&parts.headers)).then(|| parts.clone());
    let backend_req = Request::from_parts(parts, body);
    let first = client.request(backend_req).await;
    let result = match (first, replay) {
        (Err(e), Some(parts)) if !e.is_connect() => {
            tracing::debug!(sandbox, "retrying on a fresh connection: {e}");
            client
                .request(Request::from_parts(parts, Body::empty()))
                .await
        }
        (r, _) => r,
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "sandbox_unreachable",
                format!("sandbox {sandbox} did not answer: {e}"),
            )
            .into_response()
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let _hold = upgrade_hold;
                let (Ok(client), Ok(backend)) = tokio::join!(client_upgrade, backend_upgrade)
                else {
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut backend = TokioIo::new(backend);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
            });
        }
    }
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::map_frame(body, move |frame| {
        let _ = &hold;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

/// Marks a request one proxy relayed to another: the second never relays.
const RELAYED: &str = "x-sbx-relayed";

/// Relays a request for a sandbox that runs on another node to that node's
/// proxy, which checks it and forwards it as its own (auth included: the
/// servers share their keys).
pub(crate) async fn relay(
    manager: &Manager,
    mut req: Request,
    row: crate::store::SandboxRow,
) -> Response {
    let node = row.node_id.clone().unwrap_or_default();
    if req.headers().contains_key(RELAYED) {
        return ApiError::unavailable(format!(
            "sandbox {} is not on node {} any more",
            row.id, manager.node_id
        ))
        .into_response();
    }
    let address = match manager.store.node(&node).await {
        Ok(Some(n)) => n.address,
        Ok(None) => None,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(address) = address else {
        return ApiError::unavailable(format!(
            "sandbox {} runs on node {node}, which has no address this server can reach",
            row.id
        ))
        .into_response();
    };
    let uri = match uri_at(&address, req.uri()) {
        Ok(u) => u,
        Err(e) => {
            return ApiError::unavailable(format!("node {node}'s address {address:?}: {e}"))
                .into_response()
        }
    };
    let is_upgrade = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = is_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    if !is_upgrade {
        parts.headers.remove(header::CONNECTION);
        parts.headers.remove(header::UPGRADE);
    }
    for h in HOP_BY_HOP {
        parts.headers.remove(*h);
    }
    parts.headers.insert(RELAYED, HeaderValue::from_static("1"));
    send(client(), parts, body, client_upgrade, (None, None), &row.id).await
}

/// `uri`'s path and query at `http://{address}`.
pub(crate) fn uri_at(address: &str, uri: &Uri) -> Result<Uri, axum::http::uri::InvalidUri> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("http://{address}{path}").parse()
}

fn has_no_body(headers: &axum::http::HeaderMap) -> bool {
    !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// A suspended sandbox with `auto_resume` is resumed for the request
/// (waiting out a suspend that is under way first).
async fn auto_resume(
    manager: &Arc<Manager>,
    row: crate::store::SandboxRow,
) -> Result<crate::store::SandboxRow, ApiError> {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);
    let waiting = matches!(
        row.status,
        SandboxStatus::Suspended | SandboxStatus::Suspending
    );
    if !waiting || !row.spec.auto_resume {
        return Ok(row);
    }
    let row = if row.status == SandboxStatus::Suspending {
        manager
            .wait_for_status(&row.id, SandboxStatus::Suspended, LIMIT)
            .await?
    } else {
        row
    };
    if row.status != SandboxStatus::Suspended {
        return Ok(row);
    }
    tracing::info!(
        sandbox = row.id,
        "request for a suspended sandbox: resuming it"
    );
    let started = std::time::Instant::now();
    let resuming = manager.resume(&row).await?;
    crate::snapshots::outcome(resuming, LIMIT).await?;
    // One limit for both waits: an outcome still unknown has used it up.
    let left = LIMIT.saturating_sub(started.elapsed());
    manager
        .wait_for_status(&row.id, SandboxStatus::Running, left)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pools::tests::member;

    #[test]
    fn a_running_row_serves_until_a_status_changes() {
        let rows = RunningRows::default();
        let running = member(SandboxStatus::Running, "n1");
        rows.put(&running, 7);
        assert_eq!(
            rows.get("s", 7).map(|r| r.status),
            Some(SandboxStatus::Running)
        );
        assert!(rows.get("other", 7).is_none());
        // Any status change since the read: read again, and the entry goes.
        assert!(rows.get("s", 8).is_none());
        assert!(rows.0.lock().unwrap().is_empty());
        // Only running sandboxes are remembered.
        rows.put(&member(SandboxStatus::Suspended, "n1"), 8);
        assert!(rows.get("s", 8).is_none());
    }

    #[test]
    fn running_rows_expire_and_stay_bounded() {
        let rows = RunningRows::default();
        let mut row = member(SandboxStatus::Running, "n1");
        rows.put(&row, 1);
        rows.0.lock().unwrap().get_mut("s").unwrap().2 -= RunningRows::TTL;
        assert!(rows.get("s", 1).is_none(), "older than the TTL");
        for i in 0..RunningRows::MAX + 1 {
            row.id = format!("s{i}");
            rows.put(&row, 1);
        }
        assert!(rows.0.lock().unwrap().len() <= RunningRows::MAX);
        assert!(rows.get(&row.id, 1).is_some(), "the newest is kept");
    }

    fn req(headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().uri("/api/v1/health");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn target_comes_from_header_or_host() {
        assert_eq!(
            target(&req(&[("host", "sbxabc.local:9443")])).as_deref(),
            Some("sbxabc")
        );
        assert_eq!(
            target(&req(&[("host", "web.local")])).as_deref(),
            Some("web")
        );
        assert_eq!(
            target(&req(&[
                ("host", "localhost:9443"),
                ("x-tensorlake-sandbox-id", "box1")
            ]))
            .as_deref(),
            Some("box1")
        );
        assert_eq!(target(&req(&[("host", "localhost:9443")])), None);
        assert_eq!(target(&req(&[("host", "a.b.local")])), None);
        assert_eq!(
            target(&req(&[("host", "8080-sbxabc.local:9443")])).as_deref(),
            Some("8080-sbxabc")
        );
    }

    #[test]
    fn user_port_labels() {
        assert_eq!(user_port("8080-sbxabc"), Some((8080, "sbxabc")));
        assert_eq!(user_port("3000-my-box"), Some((3000, "my-box")));
        assert_eq!(user_port("65535-a"), Some((65535, "a")));
        assert_eq!(user_port("65536-a"), None);
        assert_eq!(user_port("0-a"), None);
        assert_eq!(user_port("080-a"), None);
        assert_eq!(user_port("8080-"), None);
        assert_eq!(user_port("web-8080"), None);
        assert_eq!(user_port("sbxabc"), None);
        assert_eq!(user_port("+80-a"), None);
    }
}
