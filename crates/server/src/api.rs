//! Control-plane routes, under `/v1/namespaces/{ns}` and flat (namespace `default`).

use crate::error::{ApiError, ApiResult, JsonBody, Path, Query};
use crate::images;
use crate::lifecycle::{validate_name, LaunchOutcome, Manager};
use crate::store::{SandboxRow, SnapshotRow};
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sbx_api::sandbox::{
    ArchivedSandboxInfo, CreateSandboxRequest, CreateSandboxResponse, ErrorDetails,
    ListArchivedSandboxesResponse, ListSandboxesResponse, SandboxInfo, SandboxStatus,
    UpdateSandboxRequest,
};
use sbx_api::snapshot::{
    CopySandboxResponse, CreateSnapshotRequest, CreateSnapshotResponse, ListSnapshotsResponse,
    SnapshotInfo,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct ApiState {
    pub manager: Arc<Manager>,
    pub proxy_addr: SocketAddr,
}

pub fn router(state: ApiState) -> Router {
    let routes = routes().with_state(state.clone());
    // This server's node carries out its sandboxes' lifecycle requests on
    // the same routes (the layer below sends the others' to their nodes).
    if let Some(local) = state.manager.local_node() {
        local.serve_with(routes.clone());
    }
    routes.layer(axum::middleware::from_fn_with_state(
        state,
        crate::forward::to_owner,
    ))
}

/// Every control-plane route. Generic over the state so that a test can
/// probe the route table (`openapi.rs`) without a host behind it.
pub(crate) fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    ApiState: FromRef<S>,
{
    let sandbox_routes = Router::new()
        .route("/sandboxes", get(list).post(create))
        .route(
            "/sandboxes/{id}",
            get(get_one).delete(terminate).patch(update),
        )
        .route("/sandboxes/{id}/logs", get(crate::logs::logs))
        .route("/sandboxes/{id}/processes", get(crate::logs::processes))
        .route("/sandboxes/{id}/snapshot", post(snapshot))
        .route("/sandboxes/{id}/snapshots", get(sandbox_snapshots))
        .route("/sandboxes/{id}/suspend", post(suspend))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/copy", post(copy))
        .route(
            "/sandbox-pools",
            get(crate::pools::list).post(crate::pools::create),
        )
        .route(
            "/sandbox-pools/{id}",
            get(crate::pools::get_one)
                .put(crate::pools::update)
                .delete(crate::pools::delete),
        )
        .route("/sandbox-pools/{id}/sandboxes", post(crate::pools::claim))
        .route("/archived-sandboxes", get(list_archived))
        .route("/archived-sandboxes/{id}", get(get_archived))
        .route("/snapshots", get(list_snapshots))
        .route(
            "/snapshots/{sid}",
            get(get_snapshot).delete(delete_snapshot),
        )
        .route("/images", get(images::list))
        .route("/images/import", post(images::import))
        .route("/images/import-archive", post(images::import_archive))
        .route("/images/build", post(crate::build::build))
        .route(
            "/images/{name}",
            get(images::get_one).delete(images::remove),
        )
        .route("/secrets", get(crate::secrets::list))
        .route(
            "/secrets/{name}",
            axum::routing::put(crate::secrets::put).delete(crate::secrets::remove),
        );
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::handler))
        .route("/openapi.json", get(crate::openapi::spec))
        .route("/v1/nodes", get(crate::nodes::list))
        .route("/v1/nodes/{id}", get(crate::nodes::get_one))
        .route("/v1/nodes/{id}/drain", post(crate::nodes::drain))
        .route("/v1/nodes/{id}/undrain", post(crate::nodes::undrain))
        .route("/v1/nodes/{id}/wake", post(crate::nodes::wake))
        .nest(
            "/v1/namespaces/{ns}",
            sandbox_routes
                .clone()
                .route_layer(axum::middleware::from_fn(check_namespace)),
        )
        .merge(sandbox_routes)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
}

/// The server answers; `ready` once sandboxes can start (the default
/// image is built), with the build's progress meanwhile. A server without
/// a local node is ready at once: its nodes build their own.
async fn healthz(State(state): State<ApiState>) -> Json<serde_json::Value> {
    use sbx_executor::image::BuildStatus;
    if !state.manager.runs_sandboxes() {
        return Json(serde_json::json!({"healthy": true, "ready": true, "local_node": false}));
    }
    let image = match state.manager.images().default_status() {
        BuildStatus::Ready => serde_json::json!({"status": "ready"}),
        BuildStatus::Building { progress, steps } => {
            serde_json::json!({"status": "building", "steps": steps, "progress": progress})
        }
        BuildStatus::Failed { error } => serde_json::json!({"status": "failed", "error": error}),
    };
    let ready = image["status"] == "ready";
    Json(serde_json::json!({"healthy": true, "ready": ready, "default_image": image}))
}

/// Answers 400 before any handler runs when the path's namespace is not a
/// valid one (see [`validate_namespace`]).
async fn check_namespace(
    params: axum::extract::RawPathParams,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ns = params.iter().find(|(k, _)| *k == "ns").map(|(_, v)| v);
    match ns.map(validate_namespace) {
        Some(Err(e)) => e.into_response(),
        _ => next.run(req).await,
    }
}

/// Namespaces are 1–128 letters, digits, '-', '_' or '.', and not `.`/`..`.
pub fn validate_namespace(ns: &str) -> ApiResult<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 128
        && ns != "."
        && ns != ".."
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid namespace {ns:?}: use 1–128 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// The namespace from the path, `default` for flat routes.
pub(crate) fn namespace(params: &HashMap<String, String>) -> String {
    params
        .get("ns")
        .cloned()
        .unwrap_or_else(|| "default".into())
}

fn sandbox_url(state: &ApiState, headers: &HeaderMap) -> String {
    let port = state.proxy_addr.port();
    let ip = state.proxy_addr.ip();
    let host = if ip.is_unspecified() {
        headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map(|(h, _)| h).unwrap_or(h).to_string())
            .unwrap_or_else(|| "localhost".into())
    } else if ip.is_loopback() {
        "localhost".into()
    } else {
        ip.to_string()
    };
    format!("http://{host}:{port}")
}

fn info(state: &ApiState, headers: &HeaderMap, r: &SandboxRow) -> SandboxInfo {
    SandboxInfo {
        sandbox_id: r.id.clone(),
        namespace: r.namespace.clone(),
        status: r.status,
        resources: r.spec.resources,
        name: r.name.clone(),
        image: Some(r.spec.image.clone()),
        // Every node runs gVisor.
        runtime: Some(sbx_runtime::gvisor::NAME.into()),
        timeout_secs: r.spec.timeout_secs,
        entrypoint: r.spec.entrypoint.clone(),
        secret_names: r.spec.secret_names.clone(),
        network_policy: r.spec.network.clone(),
        network: r.spec.network.clone(),
        pending_reason: r.pending_reason.clone(),
        termination_reason: r.termination_reason.clone(),
        error_details: r.error.clone().map(|message| ErrorDetails { message }),
        created_at: r.created_at,
        terminated_at: r.terminated_at,
        allow_unauthenticated_access: r.spec.allow_unauthenticated_access,
        exposed_ports: r.spec.exposed_ports.clone(),
        sandbox_url: (!r.status.is_final()).then(|| sandbox_url(state, headers)),
        auto_resume: r.spec.auto_resume,
        snapshot_id: r.spec.snapshot_id.clone(),
        pool_id: r.pool_id.clone(),
        resource_resize: None,
    }
}

fn snapshot_info(s: &SnapshotRow) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: s.id.clone(),
        namespace: s.namespace.clone(),
        sandbox_id: s.sandbox_id.clone(),
        snapshot_type: s.snapshot_type,
        status: s.status,
        base_image: Some(s.spec.image.clone()),
        error: s.error.clone(),
        size_bytes: s.size_bytes,
        stored_bytes: s.stored_bytes,
        rootfs_disk_bytes: Some(s.spec.resources.disk_mb * 1024 * 1024),
        pause_ms: s.pause_ms,
        snapshot_uri: None,
        created_at: s.created_at,
    }
}

async fn find_snapshot(state: &ApiState, ns: &str, sid: &str) -> ApiResult<SnapshotRow> {
    state
        .manager
        .store
        .snapshot(Some(ns), sid)
        .await?
        .ok_or_else(|| ApiError::not_found("snapshot", sid))
}

async fn find(state: &ApiState, ns: &str, id: &str) -> ApiResult<SandboxRow> {
    state
        .manager
        .store
        .find(ns, id)
        .await?
        .ok_or_else(|| ApiError::not_found("sandbox", id))
}

/// How long a blocking create may take: the client's budget minus its grace.
pub(crate) fn create_deadline(headers: &HeaderMap) -> Duration {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let budget = num("x-tensorlake-request-timeout-ms").unwrap_or(300_000);
    let grace = num("x-tensorlake-request-timeout-grace-ms").unwrap_or(5_000);
    Duration::from_millis(budget.saturating_sub(grace).clamp(1_000, 600_000))
}

async fn create(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateSandboxRequest>,
) -> ApiResult<Response> {
    let ns = namespace(&params);
    let deadline = tokio::time::Instant::now() + create_deadline(&headers);
    if req.wait != Some(false) && state.manager.runs_sandboxes() {
        // On a host's first start: wait for the default image before the
        // sandbox is recorded, so that a 503 leaves nothing behind.
        let image = req
            .image
            .as_deref()
            .unwrap_or(sbx_executor::image::DEFAULT_IMAGE);
        state.manager.wait_for_image(image, deadline).await?;
    }
    let (row, task) = state.manager.create(&ns, &req).await?;
    answer_create(
        &state,
        &headers,
        row,
        task,
        req.wait != Some(false),
        deadline,
    )
    .await
}

/// The answer to a create (or a claim) of `row`, whose launch is `task`:
/// with `wait`, once it runs or fails, or at `deadline` still pending;
/// without, at once (202, pending).
pub(crate) async fn answer_create(
    state: &ApiState,
    headers: &HeaderMap,
    row: SandboxRow,
    task: tokio::task::JoinHandle<LaunchOutcome>,
    wait: bool,
    deadline: tokio::time::Instant,
) -> ApiResult<Response> {
    let url = sandbox_url(state, headers);
    if !wait {
        let resp = CreateSandboxResponse {
            sandbox_id: row.id.clone(),
            status: SandboxStatus::Pending,
            sandbox_url: Some(url),
            name: row.name.clone(),
            pending_reason: row.pending_reason.clone(),
            reason: None,
            termination_reason: None,
            error_details: None,
        };
        return Ok((StatusCode::ACCEPTED, Json(resp)).into_response());
    }
    let outcome = match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(LaunchOutcome::Failed(msg))) => return Err(ApiError::unavailable(msg)),
        Ok(Ok(o)) => Some(o),
        Ok(Err(e)) => return Err(ApiError::internal(format!("launch task: {e}"))),
        Err(_) => None,
    };
    // Still pending: why, as of now.
    let row = match outcome {
        None => state.manager.store.get(&row.id).await?.unwrap_or(row),
        Some(_) => row,
    };
    Ok(Json(create_response(&row, outcome.as_ref(), url)).into_response())
}

/// The answer for a sandbox whose launch ended with `outcome` (`None`: still pending).
fn create_response(
    row: &SandboxRow,
    outcome: Option<&LaunchOutcome>,
    url: String,
) -> CreateSandboxResponse {
    let (status, reason) = match outcome {
        Some(LaunchOutcome::Running) => (SandboxStatus::Running, None),
        Some(LaunchOutcome::Failed(msg)) => (SandboxStatus::Failed, Some(msg.clone())),
        Some(LaunchOutcome::Gone) => (
            SandboxStatus::Terminated,
            Some("terminated while starting".to_string()),
        ),
        None => (SandboxStatus::Pending, None),
    };
    CreateSandboxResponse {
        sandbox_id: row.id.clone(),
        status,
        sandbox_url: Some(url),
        name: row.name.clone(),
        pending_reason: (status == SandboxStatus::Pending).then(|| {
            row.pending_reason
                .clone()
                .unwrap_or_else(|| "waiting_for_container".into())
        }),
        error_details: (status == SandboxStatus::Failed)
            .then(|| reason.clone().map(|message| ErrorDetails { message }))
            .flatten(),
        reason,
        termination_reason: None,
    }
}

async fn get_one(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Json<SandboxInfo>> {
    let row = find(&state, &namespace(&params), &params["id"]).await?;
    Ok(Json(info(&state, &headers, &row)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    all: Option<bool>,
}

async fn list(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<ListSandboxesResponse>> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(SandboxStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status {s:?}; one of pending, running, snapshotting, suspending, suspended, terminated, timeout, failed"
            ))
        })?),
    };
    let rows = state
        .manager
        .store
        .list(&namespace(&params), status, q.all.unwrap_or(false))
        .await?;
    // A pool's warm sandboxes are the pool's until claimed.
    let warm = |r: &&SandboxRow| r.pool_state == Some(crate::store::PoolState::Warm);
    Ok(Json(ListSandboxesResponse {
        sandboxes: rows
            .iter()
            .filter(|r| !warm(r))
            .map(|r| info(&state, &headers, r))
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
struct ArchivedQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    direction: Option<String>,
}

const ARCHIVED_PAGE: usize = 100;
const ARCHIVED_PAGE_MAX: usize = 1000;

/// The slice of `total` items a page shows, and the cursors around it: a
/// cursor is a position; `forward` pages start at it, `backward` pages end
/// at it. `next` (forward) and `prev` (backward) are absent at the ends.
fn archived_page(
    total: usize,
    limit: usize,
    cursor: Option<usize>,
    backward: bool,
) -> (std::ops::Range<usize>, Option<usize>, Option<usize>) {
    let limit = limit.clamp(1, ARCHIVED_PAGE_MAX);
    let range = match (cursor.map(|c| c.min(total)), backward) {
        (Some(c), true) => c.saturating_sub(limit)..c,
        (Some(c), false) => c..(c + limit).min(total),
        (None, _) => 0..limit.min(total),
    };
    let prev = (range.start > 0).then_some(range.start);
    let next = (range.end < total).then_some(range.end);
    (range, prev, next)
}

fn archived(state: &ApiState, headers: &HeaderMap, r: &SandboxRow) -> ArchivedSandboxInfo {
    ArchivedSandboxInfo {
        info: info(state, headers, r),
        archived_at: r
            .terminated_at
            .unwrap_or(r.created_at)
            .timestamp_millis()
            .max(0) as u64,
    }
}

/// Sandboxes that ended, newest first (they stay until the server forgets them).
async fn list_archived(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<ArchivedQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<ListArchivedSandboxesResponse>> {
    let backward = match q.direction.as_deref() {
        None | Some("") | Some("forward") => false,
        Some("backward") => true,
        Some(d) => {
            return Err(ApiError::bad_request(format!(
                "direction must be forward or backward (got {d:?})"
            )))
        }
    };
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            usize::from_str_radix(c, 16)
                .map_err(|_| ApiError::bad_request(format!("invalid cursor {c:?}")))?,
        ),
    };
    let mut rows: Vec<SandboxRow> = state
        .manager
        .store
        .list(&namespace(&params), None, true)
        .await?
        .into_iter()
        .filter(|r| r.status.is_final())
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.terminated_at.unwrap_or(r.created_at)));
    let (range, prev, next) = archived_page(
        rows.len(),
        q.limit.unwrap_or(ARCHIVED_PAGE),
        cursor,
        backward,
    );
    Ok(Json(ListArchivedSandboxesResponse {
        sandboxes: rows[range]
            .iter()
            .map(|r| archived(&state, &headers, r))
            .collect(),
        prev_cursor: prev.map(|p| format!("{p:x}")),
        next_cursor: next.map(|n| format!("{n:x}")),
    }))
}

async fn get_archived(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Json<ArchivedSandboxInfo>> {
    let id = &params["id"];
    let row = state
        .manager
        .store
        .find(&namespace(&params), id)
        .await?
        .filter(|r| r.status.is_final())
        .ok_or_else(|| ApiError::not_found("archived sandbox", id))?;
    Ok(Json(archived(&state, &headers, &row)))
}

async fn terminate(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let row = find(&state, &namespace(&params), &params["id"]).await?;
    state.manager.terminate(&row, "user_request").await?;
    Ok(Json(
        serde_json::json!({"sandbox_id": row.id, "status": "terminated"}),
    ))
}

/// The PATCH body as an [`UpdateSandboxRequest`].
fn update_request(raw: serde_json::Value) -> ApiResult<UpdateSandboxRequest> {
    if raw.is_null() {
        return Ok(UpdateSandboxRequest::default());
    }
    serde_json::from_value(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A PATCH of `resources` (a live resize), alone as the tensorlake client
/// sends it: applied before the answer, which says so in
/// `resource_resize` (`succeeded`, the resources asked for, and a
/// generation: the milliseconds since the epoch at which it was applied).
async fn resize(
    state: &ApiState,
    headers: &HeaderMap,
    row: &SandboxRow,
    raw: &serde_json::Value,
) -> ApiResult<Json<SandboxInfo>> {
    let req = resize_request(raw)?;
    let row = state.manager.resize(&row.id, &req).await?;
    Ok(Json(SandboxInfo {
        resource_resize: Some(sbx_api::sandbox::ResourceResize {
            generation: chrono::Utc::now().timestamp_millis(),
            status: "succeeded".into(),
            requested: row.spec.resources,
        }),
        ..info(state, headers, &row)
    }))
}

/// The `resources` of a resize PATCH body, which must hold nothing else.
fn resize_request(raw: &serde_json::Value) -> ApiResult<sbx_api::sandbox::ResourcesRequest> {
    if raw
        .as_object()
        .is_some_and(|o| o.keys().any(|k| k != "resources"))
    {
        return Err(ApiError::bad_request(
            "resources cannot be combined with other update fields: send a resize alone",
        ));
    }
    let req: sbx_api::sandbox::ResourcesRequest = match &raw["resources"] {
        r @ serde_json::Value::Object(_) => serde_json::from_value(r.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid resources: {e}")))?,
        _ => {
            return Err(ApiError::bad_request(
                "resources must be an object of cpus, memory_mb and/or disk_mb",
            ))
        }
    };
    if req.cpus.is_none() && req.memory_mb.is_none() && req.disk_mb.is_none() {
        return Err(ApiError::bad_request(
            "resources must name cpus, memory_mb or disk_mb",
        ));
    }
    Ok(req)
}

async fn update(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    JsonBody(raw): JsonBody<serde_json::Value>,
) -> ApiResult<Json<SandboxInfo>> {
    let ns = namespace(&params);
    let row = find(&state, &ns, &params["id"]).await?;
    if raw.get("resources").is_some() {
        return resize(&state, &headers, &row, &raw).await;
    }
    let req = update_request(raw)?;
    if let Some(Some(n)) = &req.name {
        validate_name(n)?;
    }
    let network = req.network.clone().map(Option::unwrap_or_default);
    if let Some(n) = &network {
        crate::lifecycle::validate_network(n)?;
        // Before anything changes: only the sandbox's node can apply it.
        state.manager.check_local(&row)?;
    }
    if let Some(ports) = &req.exposed_ports {
        if ports.contains(&sbx_api::AGENT_PORT) {
            return Err(ApiError::bad_request(
                "port 9501 is the sandbox daemon's and cannot be exposed",
            ));
        }
    }
    let named = match &req.name {
        Some(name) => name.is_some(),
        None => row.name.is_some(),
    };
    if !named && !req.auto_resume.unwrap_or(row.spec.auto_resume) {
        return Err(ApiError::bad_request(
            crate::lifecycle::AUTO_RESUME_NEEDS_NAME,
        ));
    }
    let store = &state.manager.store;
    if let Some(name) = &req.name {
        store
            .set_name(&row.id, name.as_deref())
            .await
            .map_err(|e| crate::error::name_conflict(e, &ns))?;
    }
    let mut spec = row.spec.clone();
    if let Some(v) = req.allow_unauthenticated_access {
        spec.allow_unauthenticated_access = v;
    }
    if let Some(v) = &req.exposed_ports {
        spec.exposed_ports = v.clone();
    }
    if let Some(v) = req.auto_resume {
        spec.auto_resume = v;
    }
    store.set_spec(&row.id, &spec).await?;
    if let Some(network) = network {
        state.manager.set_network(&row.id, network).await?;
    }
    let row = find(&state, &ns, &row.id).await?;
    Ok(Json(info(&state, &headers, &row)))
}

async fn snapshot(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    JsonBody(req): JsonBody<CreateSnapshotRequest>,
) -> ApiResult<Json<CreateSnapshotResponse>> {
    let row = find(&state, &namespace(&params), &params["id"]).await?;
    let kind = req.snapshot_type.unwrap_or_default();
    let (snap, _capture) = state.manager.start_snapshot(&row, kind).await?;
    Ok(Json(CreateSnapshotResponse {
        snapshot_id: snap.id,
        status: snap.status,
    }))
}

async fn list_snapshots(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<ListSnapshotsResponse>> {
    let rows = state
        .manager
        .store
        .snapshots(&namespace(&params), None)
        .await?;
    Ok(Json(ListSnapshotsResponse {
        snapshots: rows.iter().map(snapshot_info).collect(),
    }))
}

async fn sandbox_snapshots(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<ListSnapshotsResponse>> {
    let ns = namespace(&params);
    let row = find(&state, &ns, &params["id"]).await?;
    let rows = state.manager.store.snapshots(&ns, Some(&row.id)).await?;
    Ok(Json(ListSnapshotsResponse {
        snapshots: rows.iter().map(snapshot_info).collect(),
    }))
}

async fn get_snapshot(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<SnapshotInfo>> {
    let snap = find_snapshot(&state, &namespace(&params), &params["sid"]).await?;
    Ok(Json(snapshot_info(&snap)))
}

async fn delete_snapshot(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let snap = find_snapshot(&state, &namespace(&params), &params["sid"]).await?;
    state.manager.delete_snapshot(&snap).await?;
    Ok(Json(
        serde_json::json!({"snapshot_id": snap.id, "status": "deleted"}),
    ))
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    wait_ms: Option<u64>,
}

/// Most a suspend or resume call waits for its target state.
const MAX_WAIT_MS: u64 = 30_000;

/// How long a lifecycle call waits for its target state (`?wait_ms`, capped).
fn wait_limit(wait_ms: Option<u64>) -> Duration {
    Duration::from_millis(wait_ms.unwrap_or(0).min(MAX_WAIT_MS))
}

/// 200 with the sandbox once it reached `target` within `wait_ms`, else 202.
async fn lifecycle_answer(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
    target: SandboxStatus,
    wait_ms: Option<u64>,
) -> ApiResult<Response> {
    let row = state
        .manager
        .wait_for_status(id, target, wait_limit(wait_ms))
        .await?;
    let code = if row.status == target {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(info(state, headers, &row))).into_response())
}

async fn suspend(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let row = find(&state, &namespace(&params), &params["id"]).await?;
    let suspending = state.manager.suspend(&row, "user_request").await?;
    // A failed suspend is an error when the call waits for it.
    let limit = wait_limit(q.wait_ms);
    crate::snapshots::outcome(suspending, limit).await?;
    lifecycle_answer(
        &state,
        &headers,
        &row.id,
        SandboxStatus::Suspended,
        q.wait_ms,
    )
    .await
}

async fn resume(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let row = find(&state, &namespace(&params), &params["id"]).await?;
    let resuming = state.manager.resume(&row).await?;
    // The resume's outcome (a failure is an error), then where it stands.
    crate::snapshots::outcome(resuming, wait_limit(q.wait_ms)).await?;
    lifecycle_answer(&state, &headers, &row.id, SandboxStatus::Running, None).await
}

#[derive(Debug, Deserialize)]
struct CopyQuery {
    times: Option<u32>,
}

async fn copy(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<CopyQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<CopySandboxResponse>> {
    let row = find(&state, &namespace(&params), &params["id"]).await?;
    let (snap, copies) = state.manager.copy(&row, q.times.unwrap_or(1)).await?;
    let url = sandbox_url(&state, &headers);
    Ok(Json(CopySandboxResponse {
        source_sandbox_id: row.id,
        snapshot_id: Some(snap.id),
        sandboxes: copies
            .iter()
            .map(|(r, o)| create_response(r, Some(o), url.clone()))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaces() {
        for ok in ["default", "team-a", "proj_1", "a.b", "x"] {
            assert!(validate_namespace(ok).is_ok(), "{ok}");
        }
        let long = "n".repeat(129);
        for bad in ["", ".", "..", "a b", "a/b", "ns\u{7}", "é", long.as_str()] {
            assert_eq!(
                validate_namespace(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn update_bodies() {
        let req = update_request(json!({"name": "web", "auto_resume": false})).unwrap();
        assert_eq!(req.name, Some(Some("web".to_string())));
        assert_eq!(req.auto_resume, Some(false));
        let req = update_request(json!({"name": null})).unwrap();
        assert_eq!(req.name, Some(None));
        assert!(update_request(serde_json::Value::Null)
            .unwrap()
            .name
            .is_none());
        assert_eq!(
            update_request(json!({"exposed_ports": "x"}))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn archived_pages_and_cursors() {
        let page = |total, limit, cursor, back| archived_page(total, limit, cursor, back);
        assert_eq!(page(0, 10, None, false), (0..0, None, None));
        assert_eq!(page(25, 10, None, false), (0..10, None, Some(10)));
        assert_eq!(page(25, 10, Some(10), false), (10..20, Some(10), Some(20)));
        assert_eq!(page(25, 10, Some(20), false), (20..25, Some(20), None));
        assert_eq!(page(25, 10, Some(20), true), (10..20, Some(10), Some(20)));
        assert_eq!(page(25, 10, Some(10), true), (0..10, None, Some(10)));
        // A stale cursor past the end gives an empty last page.
        assert_eq!(page(5, 10, Some(9), false), (5..5, Some(5), None));
        assert_eq!(page(5, 0, None, false), (0..1, None, Some(1)));
    }

    #[test]
    fn update_bodies_are_parsed_and_a_resize_goes_alone() {
        let r = resize_request(&json!({"resources": {"memory_mb": 2048}})).unwrap();
        assert_eq!((r.memory_mb, r.cpus, r.disk_mb), (Some(2048), None, None));
        for body in [
            json!({"resources": null}),
            json!({"resources": {}}),
            json!({"resources": {"cpus": "two"}}),
            json!({"resources": {"cpus": 2}, "name": "x"}),
        ] {
            let err = resize_request(&body).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{body}");
        }
        // A network policy is applied: `null` is the default one.
        let walled = update_request(json!({"network": {"allow_internet_access": false}})).unwrap();
        assert!(!walled.network.unwrap().unwrap().allow_internet_access);
        let reset = update_request(json!({"network": null})).unwrap();
        assert_eq!(reset.network, Some(None));
        assert_eq!(update_request(json!({})).unwrap().network, None);
    }
}
