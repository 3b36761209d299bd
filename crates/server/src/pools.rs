//! Warm pools (`…/sandbox-pools`). A pool is a template (image, resources,
//! timeout, entrypoint, network) and a count: `warm_containers` sandboxes
//! of it are kept booted and unclaimed (`pool_state` warm: nothing has run
//! in them but the template's entrypoint), at most `max_containers` of the
//! pool at once. A claim hands the oldest running warm one to the caller —
//! from then on an ordinary sandbox (`pool_state` claimed, its timeout
//! counted from the claim) — or, with none warm, starts one cold; at the cap
//! it waits `pending` (`pool_at_capacity`) until a sandbox of the pool ends.
//! The keeper (every sweep, one server at a time) refills pools on any node
//! with room and recycles warm sandboxes of a template that changed.

use crate::api::{answer_create, create_deadline, namespace, ApiState};
use crate::error::{ApiError, ApiResult, JsonBody};
use crate::lifecycle::{validate, LaunchOutcome, Manager, LIVE};
use crate::store::{LockKey, PoolRow, PoolSpec, PoolState, SandboxRow, SandboxSpec, UNPLACED};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::Utc;
use sbx_api::pool::{
    ClaimRequest, CreatePoolResponse, ListPoolsResponse, PoolContainer, PoolInfo, PoolRequest,
};
use sbx_api::sandbox::{CreateSandboxRequest, SandboxStatus};
use std::collections::HashMap;
use std::sync::Arc;

/// Warm sandboxes a pool keeps unless told.
const DEFAULT_WARM: u32 = 1;
/// At most this many warm sandboxes per pool.
const MAX_WARM: u32 = 100;
/// At most this many warm sandboxes a pool starts per sweep.
const REFILL_PER_SWEEP: u32 = 4;
/// How long a claim at the pool's cap waits for room.
const CLAIM_WAIT_SECS: u64 = 300;

/// The pool a request makes, on `base` (an update's current spec).
async fn pool_spec(
    manager: &Manager,
    req: &PoolRequest,
    base: Option<&PoolSpec>,
) -> ApiResult<PoolSpec> {
    let network = match &req.network {
        Some(n) => n.clone(),
        None => base.map(|b| b.sandbox.network.clone()),
    };
    let create = CreateSandboxRequest {
        image: req.image.clone(),
        resources: req.resources.clone(),
        timeout_secs: req.timeout_secs,
        entrypoint: req.entrypoint.clone(),
        network,
        ..Default::default()
    };
    let (_, mut sandbox) = validate(&create, manager.host, &manager.known_images().await?)?;
    sandbox.image_id = manager
        .resolve_image(&sandbox.image)
        .await?
        .filter(|id| *id != sandbox.image);
    let warm = req.warm_containers.unwrap_or(DEFAULT_WARM);
    if warm > MAX_WARM {
        return Err(ApiError::bad_request(format!(
            "warm_containers must be at most {MAX_WARM} (got {warm})"
        )));
    }
    if let Some(max) = req.max_containers {
        if max == 0 || max < warm {
            return Err(ApiError::bad_request(format!(
                "max_containers ({max}) must be at least 1 and at least warm_containers ({warm})"
            )));
        }
    }
    Ok(PoolSpec {
        sandbox,
        warm,
        max: req.max_containers,
    })
}

/// Whether a sandbox of spec `s` is what template `t` makes now.
fn made_from(s: &SandboxSpec, t: &SandboxSpec) -> bool {
    let key = |x: &SandboxSpec| {
        serde_json::json!([
            x.image,
            x.image_id,
            x.resources,
            x.timeout_secs,
            x.entrypoint,
            x.network
        ])
    };
    key(s) == key(t)
}

fn info(pool: &PoolRow, members: Option<&[SandboxRow]>) -> PoolInfo {
    let s = &pool.spec.sandbox;
    PoolInfo {
        id: pool.id.clone(),
        namespace: pool.namespace.clone(),
        image: s.image.clone(),
        resources: s.resources,
        timeout_secs: s.timeout_secs.unwrap_or(0),
        entrypoint: s.entrypoint.clone(),
        max_containers: pool.spec.max,
        warm_containers: pool.spec.warm,
        network_policy: s.network.clone(),
        containers: members.map(|rows| {
            rows.iter()
                .map(|r| {
                    let warm = r.pool_state == Some(PoolState::Warm);
                    PoolContainer {
                        id: r.id.clone(),
                        state: if warm { "Idle" } else { "Running" }.into(),
                        sandbox_id: (!warm).then(|| r.id.clone()),
                        executor_id: r.node_id.clone().unwrap_or_default(),
                    }
                })
                .collect()
        }),
        created_at: pool.created_at,
        updated_at: pool.updated_at,
    }
}

async fn find(manager: &Manager, ns: &str, id: &str) -> ApiResult<PoolRow> {
    manager
        .store
        .pool(Some(ns), id)
        .await?
        .ok_or_else(|| ApiError::not_found("sandbox pool", id))
}

pub async fn create(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    JsonBody(req): JsonBody<PoolRequest>,
) -> ApiResult<Json<CreatePoolResponse>> {
    let ns = namespace(&params);
    let spec = pool_spec(&state.manager, &req, None).await?;
    let now = Utc::now();
    let pool = PoolRow {
        id: format!("pool{}", crate::lifecycle::random_hex(10)),
        namespace: ns.clone(),
        spec,
        created_at: now,
        updated_at: now,
    };
    state.manager.store.insert_pool(&pool).await?;
    tracing::info!(pool = pool.id, warm = pool.spec.warm, "pool created");
    state.manager.wake.notify_one();
    Ok(Json(CreatePoolResponse {
        pool_id: pool.id,
        namespace: ns,
    }))
}

pub async fn list(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<ListPoolsResponse>> {
    let pools = state.manager.store.pools(Some(&namespace(&params))).await?;
    Ok(Json(ListPoolsResponse {
        pools: pools.iter().map(|p| info(p, None)).collect(),
    }))
}

pub async fn get_one(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<PoolInfo>> {
    let pool = find(&state.manager, &namespace(&params), &params["id"]).await?;
    let members = state.manager.store.pool_sandboxes(&pool.id, &LIVE).await?;
    Ok(Json(info(&pool, Some(&members))))
}

pub async fn update(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    JsonBody(req): JsonBody<PoolRequest>,
) -> ApiResult<Json<PoolInfo>> {
    let manager = &state.manager;
    let pool = find(manager, &namespace(&params), &params["id"]).await?;
    let spec = pool_spec(manager, &req, Some(&pool.spec)).await?;
    if !manager.store.update_pool(&pool.id, &spec).await? {
        return Err(ApiError::not_found("sandbox pool", &pool.id));
    }
    // Warm sandboxes of the old template go now; the keeper makes new ones.
    manager.recycle_stale(&pool.id, &spec).await?;
    manager.wake.notify_one();
    let pool = find(manager, &pool.namespace, &pool.id).await?;
    Ok(Json(info(&pool, None)))
}

pub async fn delete(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let manager = &state.manager;
    let pool = find(manager, &namespace(&params), &params["id"]).await?;
    let members = manager.store.pool_sandboxes(&pool.id, &LIVE).await?;
    let claimed = members
        .iter()
        .filter(|r| r.pool_state != Some(PoolState::Warm))
        .count();
    if claimed > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "pool_in_use",
            format!(
                "pool {} has {claimed} claimed sandbox(es) that have not ended: terminate them first",
                pool.id
            ),
        ));
    }
    manager.store.delete_pool(&pool.id).await?;
    for r in members {
        manager.terminate(&r, "pool_deleted").await?;
    }
    tracing::info!(pool = pool.id, "pool deleted");
    Ok(StatusCode::OK)
}

/// `POST …/sandbox-pools/{id}/sandboxes`: a running sandbox of the pool.
pub async fn claim(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ClaimRequest>,
) -> ApiResult<Response> {
    let manager = state.manager.clone();
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + create_deadline(&headers);
    let pool = find(&manager, &namespace(&params), &params["id"]).await?;
    if req.file_systems.as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(ApiError::bad_request(
            "file_systems: sbx has no file-system service to mount from",
        ));
    }
    if let Some(name) = &req.name {
        crate::lifecycle::validate_name(name)?;
    }
    let claimed = manager
        .store
        .claim_warm(&pool.id, req.name.as_deref())
        .await
        .map_err(|e| crate::error::name_conflict(e, &pool.namespace))?;
    // The pool refills behind the claim.
    manager.wake.notify_one();
    let (row, task) = match claimed {
        Some(mut row) => {
            tracing::info!(pool = pool.id, sandbox = row.id, "claimed a warm sandbox");
            // Its timeout counts from now.
            row.spec.active_since = Some(Utc::now());
            manager.store.set_spec(&row.id, &row.spec).await?;
            manager.touch(&row.id);
            let task = match row.status {
                SandboxStatus::Running => tokio::spawn(async { LaunchOutcome::Running }),
                // Still starting: it runs sooner than one started now.
                _ => {
                    let (m, id) = (manager.clone(), row.id.clone());
                    tokio::spawn(async move { m.launched_elsewhere(&id).await })
                }
            };
            (row, task)
        }
        None => manager.claim_cold(&pool, req.name).await?,
    };
    let m = manager.clone();
    let task = tokio::spawn(async move {
        let outcome = task.await.unwrap_or(LaunchOutcome::Gone);
        if matches!(outcome, LaunchOutcome::Running) {
            m.metrics.pool_claimed(started.elapsed());
        }
        outcome
    });
    answer_create(&state, &headers, row, task, true, deadline).await
}

impl Manager {
    /// A claim with no warm sandbox to hand out: one started now, or, at
    /// the pool's cap, one that waits for room (`pool_at_capacity`).
    async fn claim_cold(
        self: &Arc<Self>,
        pool: &PoolRow,
        name: Option<String>,
    ) -> ApiResult<(SandboxRow, tokio::task::JoinHandle<LaunchOutcome>)> {
        let claimed = Some((pool.id.clone(), PoolState::Claimed));
        let mut spec = pool.spec.sandbox.clone();
        spec.active_since = Some(Utc::now());
        spec.max_pending_secs = Some(CLAIM_WAIT_SECS);
        if self.pool_has_room(pool).await? {
            tracing::info!(
                pool = pool.id,
                "no warm sandbox: starting one for the claim"
            );
            return self
                .place_and_start(&pool.namespace, name, spec, None, claimed)
                .await;
        }
        tracing::info!(pool = pool.id, "pool at capacity: the claim waits");
        let row = SandboxRow {
            id: crate::lifecycle::new_sandbox_id(),
            namespace: pool.namespace.clone(),
            name,
            status: SandboxStatus::Pending,
            spec,
            pending_reason: Some("pool_at_capacity".into()),
            termination_reason: None,
            error: None,
            created_at: Utc::now(),
            terminated_at: None,
            node_id: Some(UNPLACED.into()),
            pool_id: Some(pool.id.clone()),
            pool_state: Some(PoolState::Claimed),
        };
        self.store
            .insert(&row)
            .await
            .map_err(|e| crate::error::name_conflict(e, &pool.namespace))?;
        let me = self.clone();
        let id = row.id.clone();
        Ok((
            row,
            tokio::spawn(async move { me.launched_elsewhere(&id).await }),
        ))
    }

    /// Whether pool `pool` is under its cap (claims still waiting for
    /// room do not count).
    pub(crate) async fn pool_has_room(&self, pool: &PoolRow) -> ApiResult<bool> {
        let Some(max) = pool.spec.max else {
            return Ok(true);
        };
        let members = self.store.pool_sandboxes(&pool.id, &LIVE).await?;
        Ok(occupying(&members) < max as usize)
    }

    /// Terminates the warm sandboxes of pool `id` that `spec` would not make.
    async fn recycle_stale(self: &Arc<Self>, id: &str, spec: &PoolSpec) -> ApiResult<()> {
        for r in self.store.pool_sandboxes(id, &LIVE).await? {
            if r.pool_state == Some(PoolState::Warm) && !made_from(&r.spec, &spec.sandbox) {
                tracing::info!(pool = id, sandbox = r.id, "template changed: recycling it");
                self.terminate(&r, "pool_updated").await?;
            }
        }
        Ok(())
    }

    /// Refills every pool to its warm count (within its cap), on whichever
    /// nodes have room; one server at a time. From the sweep.
    pub(crate) async fn keep_pools(self: &Arc<Self>) {
        // A refill that raced its pool's delete leaves a warm orphan.
        if let Ok(orphans) = self.store.orphaned_warm(&LIVE).await {
            for r in orphans {
                let _ = self.terminate(&r, "pool_deleted").await;
            }
        }
        let Ok(pools) = self.store.pools(None).await else {
            return;
        };
        if pools.is_empty() {
            return;
        }
        let Ok(Some(_alone)) = self.store.try_advisory_lock(LockKey::Pools).await else {
            return;
        };
        for pool in pools {
            if let Err(e) = self.keep_pool(&pool).await {
                tracing::debug!(pool = pool.id, "refilling: {}", e.body.message);
            }
        }
    }

    async fn keep_pool(self: &Arc<Self>, pool: &PoolRow) -> ApiResult<()> {
        self.recycle_stale(&pool.id, &pool.spec).await?;
        let members = self.store.pool_sandboxes(&pool.id, &LIVE).await?;
        let warm = members
            .iter()
            .filter(|r| r.pool_state == Some(PoolState::Warm) && !r.status.is_final())
            .filter(|r| matches!(r.status, SandboxStatus::Pending | SandboxStatus::Running))
            .count() as u32;
        let mut missing = pool.spec.warm.saturating_sub(warm);
        if let Some(max) = pool.spec.max {
            missing = missing.min((max as usize).saturating_sub(occupying(&members)) as u32);
        }
        // A few at a time: the pool fills over some sweeps, without a burst
        // of boots beside everything else on the nodes.
        for _ in 0..missing.min(REFILL_PER_SWEEP) {
            let warm = Some((pool.id.clone(), PoolState::Warm));
            // Refused (no node has room): the next sweep tries again.
            self.place_and_start(&pool.namespace, None, pool.spec.sandbox.clone(), None, warm)
                .await?;
        }
        Ok(())
    }
}

/// The sandboxes of a pool that count against its cap: all but claims
/// still waiting for room.
fn occupying(members: &[SandboxRow]) -> usize {
    members
        .iter()
        .filter(|r| !(r.status == SandboxStatus::Pending && r.node_id.as_deref() == Some(UNPLACED)))
        .count()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pool member with id `s` (also a plain row for other tests).
    pub(crate) fn member(status: SandboxStatus, node: &str) -> SandboxRow {
        SandboxRow {
            id: "s".into(),
            namespace: "default".into(),
            name: None,
            status,
            spec: serde_json::from_value(serde_json::json!({
                "image": "default",
                "resources": {"cpus": 1.0, "memory_mb": 1024, "disk_mb": 10240},
                "timeout_secs": null, "entrypoint": null, "secret_names": null,
                "network": {"allow_internet_access": true},
                "allow_unauthenticated_access": false, "exposed_ports": [], "auto_resume": true
            }))
            .unwrap(),
            pending_reason: None,
            termination_reason: None,
            error: None,
            created_at: Utc::now(),
            terminated_at: None,
            node_id: Some(node.into()),
            pool_id: Some("p".into()),
            pool_state: Some(PoolState::Warm),
        }
    }

    #[test]
    fn claims_waiting_for_room_do_not_count_against_the_cap() {
        let rows = [
            member(SandboxStatus::Running, "n1"),
            member(SandboxStatus::Pending, "n1"),
            member(SandboxStatus::Pending, UNPLACED),
        ];
        assert_eq!(occupying(&rows), 2);
    }

    #[test]
    fn a_template_change_is_seen_and_a_claim_time_is_not() {
        let a = member(SandboxStatus::Running, "n1").spec;
        let mut b = a.clone();
        b.active_since = Some(Utc::now());
        b.max_pending_secs = Some(10);
        assert!(made_from(&b, &a));
        b.resources.memory_mb = 2048;
        assert!(!made_from(&b, &a));
    }
}
