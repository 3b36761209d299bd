//! Nodes: the hosts that run sandboxes. `sbx server` runs one itself (the
//! local node, in-process); each node is a row in the state store, which
//! it registers at start and keeps alive with a heartbeat. Sandboxes and
//! snapshots record the node they are on, so a server's recovery and
//! sweeps touch only its own.

use crate::api::ApiState;
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::Manager;
use crate::store::{LockKey, NodeRow, SandboxRow, SandboxSpec, UNPLACED};
use axum::extract::{Path, State};
use axum::Json;
use chrono::Utc;
use sbx_api::node::{ListNodesResponse, NodeCapacity, NodeInfo, NodeState, NodeUsage};
use sbx_api::sandbox::SandboxStatus;
use sbx_api::snapshot::SnapshotStatus;
use std::sync::Arc;
use std::time::Duration;

/// The node a server runs.
pub struct LocalNode {
    pub id: String,
    /// Where other servers' proxies reach it.
    pub advertise: Option<String>,
    /// Where other servers send lifecycle requests for its sandboxes.
    pub advertise_api: Option<String>,
    pub timing: Timing,
    /// The key this server presents to other nodes' servers.
    pub peer_key: Option<String>,
}

/// How often nodes report, and when one is given up.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A node reports this often: a quarter of `lost_after`, at most 10 s.
    pub heartbeat: Duration,
    /// A node silent this long is lost.
    pub lost_after: Duration,
}

impl Timing {
    pub fn new(lost_after: Duration) -> Self {
        Timing {
            heartbeat: (lost_after / 4).min(Duration::from_secs(10)),
            lost_after,
        }
    }

    /// A node silent longer than this (three missed reports) gets no work.
    pub fn alive_within(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// The sandboxes of a lost node that fail: what is not suspended.
const LOST_WITH_NODE: [SandboxStatus; 4] = [
    SandboxStatus::Pending,
    SandboxStatus::Running,
    SandboxStatus::Snapshotting,
    SandboxStatus::Suspending,
];

/// This host's node id, kept in `data_dir/node-id` (made at first start).
pub fn local_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if is_valid_id(id.trim()) => return Ok(id.trim().to_string()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a node id", path.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = format!("node-{}", crate::lifecycle::random_hex(12));
    let tmp = data_dir.join(".node-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Manager {
    /// What this host can hold and uses now.
    fn local_report(&self) -> (NodeCapacity, NodeUsage) {
        let capacity = NodeCapacity {
            cpus: self.host.cpus as u32,
            memory_mb: self.host.memory_mb,
            max_sandboxes: self.admission.max_sandboxes.map(|n| n as u64),
        };
        let snapshots = self
            .host()
            .local_snapshots()
            .into_iter()
            .filter(|id| crate::snapshots::is_snapshot_id(id))
            .collect();
        let usage = NodeUsage {
            sandboxes: self.host().running().len() as u64,
            memory_available_mb: crate::admission::HostUse::read()
                .map(|h| h.available_mb)
                .unwrap_or(0),
            images: self
                .images()
                .custom()
                .list()
                .into_iter()
                .map(|r| r.id)
                .collect(),
            snapshots,
        };
        (capacity, usage)
    }

    /// Registers the local node (at start).
    pub async fn register_local_node(&self) -> Result<(), sqlx::Error> {
        let (capacity, usage) = self.local_report();
        let now = Utc::now();
        self.store
            .register_node(&NodeRow {
                id: self.node_id.clone(),
                address: self.advertise.clone(),
                api_address: self.advertise_api.clone(),
                state: NodeState::Ready,
                capacity,
                usage,
                registered_at: now,
                heartbeat_at: now,
            })
            .await
    }

    /// Reports the local node's use every heartbeat.
    pub fn start_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.node_timing.heartbeat);
            tick.tick().await;
            loop {
                tick.tick().await;
                me.drop_deleted_snapshot_copies().await;
                me.drop_moved_suspended().await;
                // Images removed through any server, once unused here.
                me.collect_images().await;
                let (_, usage) = me.local_report();
                match me.store.heartbeat(&me.node_id, &usage).await {
                    Ok(true) => {}
                    // Its row was removed: register again.
                    Ok(false) => {
                        if let Err(e) = me.register_local_node().await {
                            tracing::warn!("cannot register node {}: {e}", me.node_id);
                        }
                    }
                    Err(e) => tracing::warn!("node heartbeat: {e}"),
                }
            }
        })
    }

    /// Removes this host's copies of snapshots deleted through another
    /// server (each server removes its own at the delete).
    async fn drop_deleted_snapshot_copies(&self) {
        let held = self.host().local_snapshots();
        for id in held
            .iter()
            .filter(|id| crate::snapshots::is_snapshot_id(id))
        {
            if let Ok(None) = self.store.snapshot(None, id).await {
                tracing::info!(
                    snapshot = id,
                    "deleted elsewhere: removing this host's copy"
                );
                self.host().delete_snapshot(id).await;
            }
        }
    }

    /// Sweeps at once when another server wakes this node (it placed work
    /// here); without PostgreSQL there is nobody to wake it.
    pub fn start_wake_listener(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if !self.runs_sandboxes() {
            return None;
        }
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut wakes = match me.store.wakes().await {
                Ok(Some(w)) => w,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(
                        "cannot listen for work placed here (the sweep still finds it): {e}"
                    );
                    return;
                }
            };
            loop {
                match wakes.next().await {
                    Ok(node) if node == me.node_id => me.wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("waiting for wakes: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }))
    }

    /// Watches the other nodes every heartbeat: one server at a time (an
    /// advisory lock) fails the sandboxes of nodes silent past the timeout.
    pub fn start_node_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.node_timing.heartbeat);
            loop {
                tick.tick().await;
                if let Err(e) = me.fail_lost_nodes().await {
                    tracing::warn!("watching nodes: {e}");
                }
            }
        })
    }

    async fn fail_lost_nodes(&self) -> Result<(), sqlx::Error> {
        let Some(_alone) = self.store.try_advisory_lock(LockKey::ClusterSweep).await? else {
            return Ok(());
        };
        if self.store.kind() == crate::store::Kind::Postgres {
            self.drop_unrecorded_suspend_images().await;
        }
        let lost_after = self.node_timing.lost_after;
        for node in self.store.nodes().await? {
            let silent = (Utc::now() - node.heartbeat_at)
                .to_std()
                .unwrap_or_default();
            if node.id == self.node_id || silent < lost_after {
                continue;
            }
            let msg = format!(
                "node {} stopped reporting {}s ago; its sandboxes are lost",
                node.id,
                silent.as_secs()
            );
            let failed = self
                .store
                .fail_node_sandboxes(&node.id, &LOST_WITH_NODE, "node_lost", &msg)
                .await?;
            let captures = self.store.fail_node_captures(&node.id, &msg).await?;
            if failed + captures > 0 {
                tracing::warn!(node = node.id, sandboxes = failed, captures, "node lost");
            }
        }
        Ok(())
    }

    /// Whether a sandbox or snapshot recorded on `node` is this server's
    /// (rows from before nodes are).
    pub fn is_local(&self, node: Option<&str>) -> bool {
        node.is_none_or(|n| n == self.node_id)
    }

    /// Another node that can run a sandbox of `spec` (alive, not draining,
    /// reachable, under its cap, with the sandbox's memory available):
    /// one that has its snapshot or image on disk first, then the one with
    /// the most memory available; `None` when there is none.
    /// `only`: the one node that may take it (a restore of a snapshot
    /// that is on its node's disk only).
    pub async fn place_elsewhere(
        &self,
        spec: &SandboxSpec,
        only: Option<&str>,
    ) -> ApiResult<Option<String>> {
        let nodes = self
            .store
            .nodes()
            .await?
            .into_iter()
            .filter(|n| only.is_none_or(|o| n.id == o))
            .collect();
        let best = choose(nodes, spec, &self.node_id, self.node_timing);
        if let Some(n) = &best {
            tracing::info!(
                node = n.id,
                "this node takes no more sandboxes: placed on another"
            );
        }
        Ok(best.map(|n| n.id))
    }

    /// The node that takes a sandbox of `spec` now: this one when it can,
    /// else the best other; `only_on`: the one node that may (a restore of
    /// a snapshot not yet stored). The refusal says why none can.
    pub async fn choose_node(
        &self,
        spec: &SandboxSpec,
        only_on: Option<&str>,
    ) -> ApiResult<String> {
        let here = match only_on {
            Some(node) if node != self.node_id => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "no_executors_available",
                format!(
                    "its snapshot is on node {node} only until it is stored, and that node cannot take it now"
                ),
            )),
            _ => match self.check_node_accepts().await {
                Ok(()) => self.admit(),
                Err(e) => Err(e),
            },
        };
        match here {
            Ok(()) => Ok(self.node_id.clone()),
            Err(refused) => self.place_elsewhere(spec, only_on).await?.ok_or(refused),
        }
    }

    /// Places the sandboxes that wait for a node with room ([`UNPLACED`]),
    /// oldest first, one server at a time; fails those that waited past
    /// their `max_pending_secs`, with why they waited as the reason.
    /// `live`: every live row.
    pub async fn place_waiting(self: &Arc<Self>, live: &[SandboxRow]) {
        let mut waiting: Vec<&SandboxRow> = live
            .iter()
            .filter(|r| {
                r.status == SandboxStatus::Pending && r.node_id.as_deref() == Some(UNPLACED)
            })
            .collect();
        if waiting.is_empty() {
            return;
        }
        let Ok(Some(_alone)) = self.store.try_advisory_lock(LockKey::Placement).await else {
            return;
        };
        waiting.sort_by_key(|r| r.created_at);
        for row in waiting {
            let reason = row
                .pending_reason
                .clone()
                .unwrap_or_else(|| "no_resources_available".into());
            let limit = row.spec.max_pending_secs.unwrap_or(0);
            if Utc::now() >= row.created_at + chrono::Duration::seconds(limit as i64) {
                let msg = format!("no node could take it within {limit}s ({reason})");
                tracing::warn!(sandbox = row.id, "{msg}");
                let _ = self
                    .store
                    .transition(
                        &row.id,
                        &[SandboxStatus::Pending],
                        SandboxStatus::Failed,
                        Some(&reason),
                        Some(&msg),
                    )
                    .await;
                continue;
            }
            // A claim at its pool's cap waits for a sandbox of the pool to end.
            if let Some(pool) = &row.pool_id {
                match self.store.pool(None, pool).await {
                    Ok(Some(p)) => {
                        if !self.pool_has_room(&p).await.unwrap_or(false) {
                            continue;
                        }
                    }
                    Ok(None) => {
                        let _ = self
                            .store
                            .transition(
                                &row.id,
                                &[SandboxStatus::Pending],
                                SandboxStatus::Failed,
                                Some("pool_deleted"),
                                Some("its pool was deleted"),
                            )
                            .await;
                        continue;
                    }
                    Err(_) => continue,
                }
            }
            let only_on = match &row.spec.snapshot_id {
                Some(sid) => match self.store.snapshot(None, sid).await {
                    Ok(Some(s)) if s.status != SnapshotStatus::Completed => {
                        Some(s.node_id.unwrap_or_else(|| self.node_id.clone()))
                    }
                    _ => None,
                },
                None => None,
            };
            match self.choose_node(&row.spec, only_on.as_deref()).await {
                Ok(node) => {
                    if let Ok(true) = self.store.place(&row.id, &node).await {
                        tracing::info!(sandbox = row.id, node, "room found: placed");
                        self.node(Some(&node)).wake().await;
                    }
                }
                Err(e) if waits_for_room(&e) && e.body.code != reason => {
                    let _ = self.store.set_pending_reason(&row.id, &e.body.code).await;
                }
                Err(_) => {}
            }
        }
    }

    /// Refuses work on another node's sandbox (409 `sandbox_on_other_node`):
    /// only its own node's server can snapshot, suspend, resume or copy it.
    pub fn check_local(&self, row: &crate::store::SandboxRow) -> ApiResult<()> {
        match row.node_id.as_deref() {
            Some(node) if !self.is_local(Some(node)) => Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "sandbox_on_other_node",
                format!(
                    "sandbox {} runs on node {node}: send this request to that node's server",
                    row.id
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses a create when the local node takes no new sandboxes (503
    /// `no_executors_available`).
    pub async fn check_node_accepts(&self) -> ApiResult<()> {
        if !self.runs_sandboxes() {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "no_executors_available",
                "no node can take it: none is alive and ready with room \
                 (this server runs no sandboxes itself; start one with \
                 `sbx node --server URL --node-token TOKEN`)",
            ));
        }
        let node = self.store.node(&self.node_id).await?;
        match node.map(|n| n.state) {
            Some(NodeState::Draining) => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "no_executors_available",
                format!(
                    "node {} is draining and takes no new sandboxes (sbx node undrain {0})",
                    self.node_id
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Whether a create refused with `e` may wait for room instead.
pub fn waits_for_room(e: &ApiError) -> bool {
    matches!(
        e.body.code.as_str(),
        "no_resources_available" | "no_executors_available"
    )
}

/// The node [`Manager::place_elsewhere`] picks among `nodes`, not `me`.
fn choose(nodes: Vec<NodeRow>, spec: &SandboxSpec, me: &str, timing: Timing) -> Option<NodeRow> {
    let has_files = |n: &NodeRow| match (&spec.snapshot_id, &spec.image_id) {
        (Some(sid), _) => n.usage.snapshots.contains(sid),
        (None, Some(image)) => n.usage.images.contains(image),
        (None, None) => false,
    };
    nodes
        .into_iter()
        .filter(|n| n.id != me && n.state == NodeState::Ready)
        .filter(|n| n.address.is_some() && is_alive(n, timing))
        .filter(|n| {
            n.capacity
                .max_sandboxes
                .is_none_or(|m| n.usage.sandboxes < m)
        })
        .filter(|n| n.usage.memory_available_mb >= spec.resources.memory_mb)
        .max_by_key(|n| (has_files(n), n.usage.memory_available_mb))
}

/// Whether a node reported recently enough to be given work.
pub(crate) fn is_alive(node: &NodeRow, timing: Timing) -> bool {
    (Utc::now() - node.heartbeat_at)
        .to_std()
        .map_or(true, |age| age <= timing.alive_within())
}

/// A node as the API shows it; the local node's use is read now.
fn info(m: &Manager, mut row: NodeRow) -> NodeInfo {
    if row.id == m.node_id {
        row.usage = m.local_report().1;
    }
    NodeInfo {
        alive: is_alive(&row, m.node_timing),
        id: row.id,
        address: row.address,
        api_address: row.api_address,
        state: row.state,
        capacity: row.capacity,
        usage: row.usage,
        registered_at: row.registered_at.to_rfc3339(),
        heartbeat_at: row.heartbeat_at.to_rfc3339(),
    }
}

/// `GET /v1/nodes`
pub async fn list(State(state): State<ApiState>) -> ApiResult<Json<ListNodesResponse>> {
    let nodes = state
        .manager
        .store
        .nodes()
        .await?
        .into_iter()
        .map(|n| info(&state.manager, n))
        .collect();
    Ok(Json(ListNodesResponse { nodes }))
}

/// `GET /v1/nodes/{id}`
pub async fn get_one(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeInfo>> {
    let row = state
        .manager
        .store
        .node(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("node", &id))?;
    Ok(Json(info(&state.manager, row)))
}

/// `POST /v1/nodes/{id}/drain`: the node runs what it has and takes no
/// new sandboxes.
pub async fn drain(m: State<ApiState>, id: Path<String>) -> ApiResult<Json<NodeInfo>> {
    set_state(m, id, NodeState::Draining).await
}

/// `POST /v1/nodes/{id}/undrain`: the node takes new sandboxes again.
pub async fn undrain(m: State<ApiState>, id: Path<String>) -> ApiResult<Json<NodeInfo>> {
    set_state(m, id, NodeState::Ready).await
}

/// `POST /v1/nodes/{id}/wake`: this server's node looks now for work
/// recorded for it (other servers send this after placing a sandbox on it
/// or ending one of its sandboxes).
pub async fn wake(
    State(api): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<axum::http::StatusCode> {
    match api.manager.local_node() {
        Some(local) if id == api.manager.node_id => {
            crate::node::Node::wake(local.as_ref()).await;
            Ok(axum::http::StatusCode::NO_CONTENT)
        }
        _ => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "not_this_node",
            format!("node {id} is not this server's: wake it at its own server"),
        )),
    }
}

async fn set_state(
    State(api): State<ApiState>,
    Path(id): Path<String>,
    state: NodeState,
) -> ApiResult<Json<NodeInfo>> {
    if !api.manager.store.set_node_state(&id, state).await? {
        return Err(ApiError::not_found("node", &id));
    }
    tracing::info!(node = id, state = state.as_str(), "node state changed");
    get_one(State(api), Path(id)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, free_mb: u64, images: &[&str]) -> NodeRow {
        NodeRow {
            id: id.into(),
            address: Some(format!("{id}:9443")),
            api_address: None,
            state: NodeState::Ready,
            capacity: NodeCapacity {
                cpus: 2,
                memory_mb: 24_000,
                max_sandboxes: Some(2),
            },
            usage: NodeUsage {
                sandboxes: 0,
                memory_available_mb: free_mb,
                images: images.iter().map(|s| s.to_string()).collect(),
                snapshots: vec![],
            },
            registered_at: Utc::now(),
            heartbeat_at: Utc::now(),
        }
    }

    #[test]
    fn placement_prefers_a_node_with_the_image_then_free_memory() {
        let timing = Timing::new(Duration::from_secs(60));
        let spec = |image: Option<&str>| SandboxSpec {
            image: "x".into(),
            image_id: image.map(Into::into),
            resources: sbx_api::sandbox::Resources {
                cpus: 1.0,
                memory_mb: 1024,
                disk_mb: 1024,
            },
            timeout_secs: None,
            entrypoint: None,
            secret_names: None,
            network: Default::default(),
            allow_unauthenticated_access: false,
            exposed_ports: vec![],
            auto_resume: true,
            snapshot_id: None,
            active_since: None,
            max_pending_secs: None,
            suspend_image: None,
        };
        let pick = |nodes: Vec<NodeRow>, image: Option<&str>| {
            choose(nodes, &spec(image), "me", timing).map(|n| n.id)
        };
        let nodes = || {
            vec![
                node("me", 20_000, &[]),
                node("roomy", 9_000, &[]),
                node("cached", 3_000, &["img-1"]),
                node("tight", 500, &["img-1"]),
            ]
        };
        assert_eq!(pick(nodes(), Some("img-1")).as_deref(), Some("cached"));
        assert_eq!(pick(nodes(), None).as_deref(), Some("roomy"));
        let mut full = nodes();
        full[1].usage.sandboxes = 2;
        full[2].state = NodeState::Draining;
        assert_eq!(
            pick(full, Some("img-1")),
            None,
            "at its cap, draining, too small"
        );
        let mut silent = nodes();
        silent[1].heartbeat_at = Utc::now() - chrono::Duration::seconds(120);
        silent[2].address = None;
        assert_eq!(pick(silent, None), None);
    }

    #[test]
    fn nodes_report_four_times_per_timeout_at_most_every_ten_seconds() {
        let t = Timing::new(Duration::from_secs(60));
        assert_eq!(t.heartbeat, Duration::from_secs(10));
        assert_eq!(t.alive_within(), Duration::from_secs(30));
        let t = Timing::new(Duration::from_secs(4));
        assert_eq!(t.heartbeat, Duration::from_secs(1));
        assert!(t.alive_within() < t.lost_after);
    }

    #[test]
    fn a_node_id_is_made_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let id = local_id(d.path()).unwrap();
        assert!(id.starts_with("node-") && is_valid_id(&id), "{id}");
        assert_eq!(local_id(d.path()).unwrap(), id);
        std::fs::write(d.path().join("node-id"), "../etc\n").unwrap();
        assert!(local_id(d.path()).is_err());
    }
}
