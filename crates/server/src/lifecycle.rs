//! Sandbox lifecycle: validation, launch, termination, timeouts, health
//! watch and recovery after a restart. Decides; the executor acts.

use crate::error::{ApiError, ApiResult};
use crate::store::{SandboxRow, SandboxSpec, SnapshotRow, Store};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use sbx_api::sandbox::{
    CreateSandboxRequest, NetworkPolicy, Resources, ResourcesRequest, SandboxStatus,
};
use sbx_api::snapshot::SnapshotType;
use sbx_executor::image::BuildStatus;
use sbx_executor::{net::Egress, Executor, LaunchSpec};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

pub const DEFAULT_CPUS: f64 = 1.0;
pub const DEFAULT_MEMORY_MB: u64 = 1024;
pub const DEFAULT_DISK_MB: u64 = 10240;
pub const MIN_DISK_MB: u64 = 128;
pub const MAX_DISK_MB: u64 = 1024 * 1024;
/// Longest `timeout_secs`: ten years (beyond it the clock arithmetic overflows).
pub const MAX_TIMEOUT_SECS: u64 = 10 * 365 * 24 * 3600;
/// Memory per CPU, in MB.
pub const MEMORY_PER_CPU: (u64, u64) = (1024, 8192);

/// Host capacity that bounds what one sandbox may ask for.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    pub cpus: f64,
    pub memory_mb: u64,
}

impl HostLimits {
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let memory_mb = sbx_executor::meminfo_kb("MemTotal")
            .map(|kb| kb / 1024)
            .unwrap_or(1024);
        Self { cpus, memory_mb }
    }
}

/// Checks a restore from `snap` and merges the request into what the
/// snapshot fixes. Changes nothing.
pub fn restore_request(
    req: &CreateSandboxRequest,
    snap: &SnapshotRow,
) -> ApiResult<CreateSandboxRequest> {
    if !snap.status.is_restorable() {
        return Err(ApiError::conflict(format!(
            "snapshot {} is {}: only local_ready or completed snapshots can be restored{}",
            snap.id,
            snap.status,
            snap.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )));
    }
    let base = &snap.spec;
    if req.image.as_ref().is_some_and(|i| *i != base.image) {
        return Err(ApiError::bad_request(format!(
            "a restore boots the snapshot's image {:?}; leave image out",
            base.image
        )));
    }
    let r = req.resources.clone().unwrap_or_default();
    let memory = snap.snapshot_type == SnapshotType::Memory;
    if memory {
        let changed = r.cpus.is_some_and(|c| c != base.resources.cpus)
            || r.memory_mb.is_some_and(|m| m != base.resources.memory_mb)
            || r.disk_mb.is_some_and(|d| d != base.resources.disk_mb);
        if changed {
            return Err(ApiError::bad_request(format!(
                "a memory snapshot restores its processes as they were, so its resources are fixed \
                 (cpus {}, memory_mb {}, disk_mb {}); leave resources out or take a filesystem snapshot",
                base.resources.cpus, base.resources.memory_mb, base.resources.disk_mb
            )));
        }
        if req
            .entrypoint
            .as_ref()
            .is_some_and(|e| Some(e) != base.entrypoint.as_ref())
        {
            return Err(ApiError::bad_request(
                "a memory snapshot restores its processes as they were: its entrypoint cannot change",
            ));
        }
        let names = |n: &Option<Vec<String>>| n.clone().unwrap_or_default();
        if req
            .secret_names
            .as_ref()
            .is_some_and(|n| *n != names(&base.secret_names))
        {
            return Err(ApiError::bad_request(
                "a memory snapshot restores its processes with the environment they had: its secret_names cannot change (take a filesystem snapshot to get current secrets)",
            ));
        }
    }
    if let Some(d) = r.disk_mb {
        if d < base.resources.disk_mb {
            return Err(ApiError::bad_request(format!(
                "disk_mb can only grow on restore: the snapshot has {} MB (asked for {d})",
                base.resources.disk_mb
            )));
        }
    }
    let mut merged = req.clone();
    merged.snapshot_id = None;
    merged.image = Some(base.image.clone());
    merged.resources = Some(ResourcesRequest {
        cpus: Some(r.cpus.unwrap_or(base.resources.cpus)),
        memory_mb: Some(r.memory_mb.unwrap_or(base.resources.memory_mb)),
        disk_mb: Some(r.disk_mb.unwrap_or(base.resources.disk_mb)),
        gpus: None,
    });
    if merged.entrypoint.is_none() {
        merged.entrypoint = base.entrypoint.clone();
    }
    if merged.secret_names.is_none() {
        merged.secret_names = base.secret_names.clone();
    }
    if merged.network.is_none() {
        merged.network = Some(base.network.clone());
    }
    if merged.timeout_secs.is_none() {
        merged.timeout_secs = base.timeout_secs;
    }
    if merged.allow_unauthenticated_access.is_none() {
        merged.allow_unauthenticated_access = Some(base.allow_unauthenticated_access);
    }
    if merged.exposed_ports.is_none() {
        merged.exposed_ports = Some(base.exposed_ports.clone());
    }
    Ok(merged)
}

/// Why `auto_resume: false` is refused for an ephemeral sandbox.
pub const AUTO_RESUME_NEEDS_NAME: &str =
    "auto_resume false needs a named sandbox: an ephemeral one is never suspended, so there is nothing to resume";

/// Checks a create request and fills in defaults. Changes nothing.
pub fn validate(
    req: &CreateSandboxRequest,
    host: HostLimits,
    images: &[String],
) -> ApiResult<(Option<String>, SandboxSpec)> {
    let r = req.resources.clone().unwrap_or_default();
    let cpus = r.cpus.unwrap_or(DEFAULT_CPUS);
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(ApiError::bad_request(format!(
            "resources.cpus must be greater than 0 (got {cpus})"
        )));
    }
    if cpus > host.cpus {
        return Err(ApiError::bad_request(format!(
            "resources.cpus {cpus} exceeds this host's {} cores",
            host.cpus
        )));
    }
    let memory_mb = r.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
    let per_cpu = memory_mb as f64 / cpus;
    if per_cpu < MEMORY_PER_CPU.0 as f64 - 1e-9 || per_cpu > MEMORY_PER_CPU.1 as f64 + 1e-9 {
        return Err(ApiError::bad_request(format!(
            "resources.memory_mb must be {}–{} MB per CPU: {:.0}–{:.0} MB for {cpus} cpus (got {memory_mb})",
            MEMORY_PER_CPU.0,
            MEMORY_PER_CPU.1,
            MEMORY_PER_CPU.0 as f64 * cpus,
            MEMORY_PER_CPU.1 as f64 * cpus,
        )));
    }
    if memory_mb > host.memory_mb {
        return Err(ApiError::bad_request(format!(
            "resources.memory_mb {memory_mb} exceeds this host's {} MB",
            host.memory_mb
        )));
    }
    let disk_mb = r.disk_mb.unwrap_or(DEFAULT_DISK_MB);
    if !(MIN_DISK_MB..=MAX_DISK_MB).contains(&disk_mb) {
        return Err(ApiError::bad_request(format!(
            "resources.disk_mb must be between {MIN_DISK_MB} and {MAX_DISK_MB} (got {disk_mb})"
        )));
    }
    if r.gpus
        .as_ref()
        .is_some_and(|g| !g.is_null() && g != &serde_json::json!(0) && g != &serde_json::json!([]))
    {
        return Err(ApiError::bad_request("GPUs are not available on this host"));
    }
    let image = req
        .image
        .clone()
        .unwrap_or_else(|| sbx_executor::image::DEFAULT_IMAGE.into());
    if !images.contains(&image) {
        return Err(ApiError::bad_request(format!(
            "unknown image {image:?}; available images: {}",
            if images.is_empty() {
                "(none)".to_string()
            } else {
                images.join(", ")
            }
        )));
    }
    if let Some(ep) = &req.entrypoint {
        if ep.is_empty() || ep[0].is_empty() {
            return Err(ApiError::bad_request("entrypoint must name a command"));
        }
    }
    let ports = req.exposed_ports.clone().unwrap_or_default();
    if ports.contains(&sbx_api::AGENT_PORT) {
        return Err(ApiError::bad_request(
            "port 9501 is the sandbox daemon's and cannot be exposed",
        ));
    }
    if let Some(name) = &req.name {
        validate_name(name)?;
    }
    if req.auto_resume == Some(false) && req.name.is_none() {
        return Err(ApiError::bad_request(AUTO_RESUME_NEEDS_NAME));
    }
    if let Some(t) = req.timeout_secs.filter(|t| *t > MAX_TIMEOUT_SECS) {
        return Err(ApiError::bad_request(format!(
            "timeout_secs must be at most {MAX_TIMEOUT_SECS} (ten years; got {t}); 0 or none = no timeout"
        )));
    }
    let timeout_secs = req.timeout_secs.filter(|t| *t > 0);
    if let Some(names) = &req.secret_names {
        crate::secrets::check_names(names)?;
    }
    let network = req.network.clone().unwrap_or_default();
    validate_network(&network)?;
    let spec = SandboxSpec {
        image,
        image_id: None,
        resources: Resources {
            cpus,
            memory_mb,
            disk_mb,
        },
        timeout_secs,
        entrypoint: req.entrypoint.clone(),
        secret_names: req.secret_names.clone(),
        network,
        allow_unauthenticated_access: req.allow_unauthenticated_access.unwrap_or(false),
        exposed_ports: ports,
        auto_resume: req.auto_resume.unwrap_or(true),
        snapshot_id: None,
        active_since: None,
        max_pending_secs: match req.max_pending_secs {
            Some(s) if s > MAX_PENDING_SECS => {
                return Err(ApiError::bad_request(format!(
                    "max_pending_secs must be at most {MAX_PENDING_SECS} (got {s})"
                )))
            }
            s => s.filter(|s| *s > 0),
        },
        suspend_image: None,
    };
    Ok((req.name.clone(), spec))
}

/// What the executor launches for sandbox `id` of `spec`: no snapshot
/// files and no secrets yet.
pub(crate) fn launch_spec(id: &str, spec: &SandboxSpec) -> LaunchSpec {
    LaunchSpec {
        id: id.to_string(),
        image: spec.image_id.clone().unwrap_or_else(|| spec.image.clone()),
        cpus: spec.resources.cpus,
        memory_mb: spec.resources.memory_mb,
        disk_mb: spec.resources.disk_mb,
        entrypoint: spec.entrypoint.clone().unwrap_or_default(),
        egress: egress(&spec.network),
        layer: None,
        checkpoint: None,
        aliases: Vec::new(),
        secrets: Default::default(),
    }
}

/// Longest a create may wait `pending` for a node with room.
const MAX_PENDING_SECS: u64 = 86_400;

/// How many entries `allow_out` and `deny_out` may each have.
const MAX_DESTINATIONS: usize = 256;

/// Every `allow_out`/`deny_out` entry must be an IPv4 address or CIDR block.
pub(crate) fn validate_network(network: &NetworkPolicy) -> ApiResult<()> {
    for (field, entries) in [
        ("allow_out", &network.allow_out),
        ("deny_out", &network.deny_out),
    ] {
        if entries.len() > MAX_DESTINATIONS {
            return Err(ApiError::bad_request(format!(
                "network.{field}: at most {MAX_DESTINATIONS} entries (got {})",
                entries.len()
            )));
        }
        for entry in entries {
            sbx_executor::net::parse_destination(entry)
                .map_err(|e| ApiError::bad_request(format!("network.{field}: {e}")))?;
        }
    }
    Ok(())
}

/// The executor's form of a validated policy. Only a sandbox stored before
/// entries were checked can hold a bad one: it is left out, and logged.
fn egress(network: &NetworkPolicy) -> Egress {
    let good = |entries: &[String]| -> Vec<String> {
        entries
            .iter()
            .filter(|e| match sbx_executor::net::parse_destination(e) {
                Ok(_) => true,
                Err(why) => {
                    tracing::warn!("egress entry left out: {why}");
                    false
                }
            })
            .cloned()
            .collect()
    };
    Egress::from_entries(
        network.allow_internet_access,
        &good(&network.allow_out),
        &good(&network.deny_out),
    )
    .unwrap_or_default()
}

/// Names are DNS-label-like and never look like a sandbox id.
pub fn validate_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(ApiError::bad_request(format!(
            "invalid name {name:?}: use 1–63 letters, digits, '-' or '_', starting with a letter or digit"
        )));
    }
    if looks_like_id(name) {
        return Err(ApiError::bad_request(format!(
            "invalid name {name:?}: it has the form of a sandbox id"
        )));
    }
    Ok(())
}

/// Every status in which a sandbox holds something on its node.
pub(crate) const LIVE: [SandboxStatus; 5] = [
    SandboxStatus::Pending,
    SandboxStatus::Running,
    SandboxStatus::Snapshotting,
    SandboxStatus::Suspending,
    SandboxStatus::Suspended,
];

pub fn new_sandbox_id() -> String {
    format!("sbx{}", random_hex(20))
}

fn looks_like_id(s: &str) -> bool {
    s.len() == 23 && s.starts_with("sbx") && s[3..].chars().all(|c| c.is_ascii_hexdigit())
}

pub fn random_hex(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| std::char::from_digit(rng.gen_range(0..16), 16).unwrap())
        .collect()
}

/// Runs lifecycle operations; one lock per sandbox serialises launch and destroy.
pub struct Manager {
    pub store: Store,
    /// This host's sandboxes, networks and volumes; `None` on a server
    /// that runs no sandboxes (`--no-local-node`), which needs neither
    /// runsc nor privileges.
    pub executor: Option<Arc<Executor>>,
    /// The images this server knows: its own on disk and the catalog.
    images: sbx_executor::image::Images,
    pub host: HostLimits,
    /// Content-addressed store of snapshots.
    pub blobs: Arc<sbx_store::Store>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Last proxy traffic per sandbox: a named sandbox's timeout counts
    /// from its last activity.
    activity: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Work that changes the host in the background (launches, teardowns,
    /// captures, suspends, resumes): shutdown waits for it, so that a
    /// server stopped right after a request leaves no half-done host state.
    pub tasks: tokio_util::task::TaskTracker,
    /// Whether the host can hold another sandbox.
    pub admission: crate::admission::Admission,
    /// Sandboxes whose launch is under way (admitted, not running yet).
    /// (A count per sandbox: the create that reserves it and the launch
    /// task both hold it.)
    starting: Mutex<HashMap<String, usize>>,
    /// The node this server runs (`nodes::local_id`).
    pub node_id: String,
    /// Where other servers' proxies reach this node's sandboxes (its proxy).
    pub advertise: Option<String>,
    /// Where other servers send lifecycle requests for them (its API).
    pub advertise_api: Option<String>,
    /// Heartbeat period and loss timeout of nodes.
    pub node_timing: crate::nodes::Timing,
    /// This server's own node, when it has an executor (see [`Self::node`]).
    local: Option<Arc<crate::node::InProcess>>,
    /// The key this server presents to other nodes' servers (they share
    /// the keys); `None`: they take requests without one.
    pub(crate) peer_key: Option<String>,
    /// Runs the sweep now (work was placed on this node).
    pub(crate) wake: tokio::sync::Notify,
    /// Stored suspend images seen unrecorded, since when (see
    /// `drop_unrecorded_suspend_images`).
    pub(crate) unrecorded_images: Mutex<crate::relocate::Unrecorded>,
    /// Seals and opens secret values (`secrets`).
    pub secrets_key: Arc<crate::secrets::SecretsKey>,
    /// The sandboxes' persisted logs (`logs`).
    pub logs: Arc<crate::logs::Logs>,
    /// What `GET /metrics` shows besides what it reads at scrape time.
    pub metrics: crate::metrics::Metrics,
}

/// Counts a launch as starting while it lives.
struct Starting(Arc<Manager>, String);

impl Starting {
    fn new(m: Arc<Manager>, id: &str) -> Self {
        *m.starting
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default() += 1;
        Starting(m, id.to_string())
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        let mut starting = self.0.starting.lock().unwrap();
        if let Some(n) = starting.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                starting.remove(&self.1);
            }
        }
    }
}

pub enum LaunchOutcome {
    Running,
    Failed(String),
    /// Terminated while it was starting.
    Gone,
}

impl Manager {
    // One argument per service the manager holds; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        executor: Option<Arc<Executor>>,
        images: sbx_executor::image::Images,
        host: HostLimits,
        blobs: Arc<sbx_store::Store>,
        admission: crate::admission::Admission,
        node: crate::nodes::LocalNode,
        secrets_key: Arc<crate::secrets::SecretsKey>,
        logs: Arc<crate::logs::Logs>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            local: executor
                .is_some()
                .then(|| Arc::new(crate::node::InProcess::new(me.clone()))),
            peer_key: node.peer_key,
            logs,
            metrics: crate::metrics::Metrics::new(),
            secrets_key,
            node_id: node.id,
            advertise: node.advertise,
            advertise_api: node.advertise_api,
            node_timing: node.timing,
            wake: tokio::sync::Notify::new(),
            unrecorded_images: Mutex::default(),
            store,
            executor,
            images,
            host,
            blobs,
            admission,
            starting: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            activity: Mutex::new(HashMap::new()),
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Whether this server runs sandboxes (`false`: `--no-local-node`,
    /// no executor): a node of its own.
    pub fn runs_sandboxes(&self) -> bool {
        self.executor.is_some()
    }

    pub fn images(&self) -> &sbx_executor::image::Images {
        &self.images
    }

    /// This host's executor. Only a node's own work reaches it: sandboxes
    /// and captures recorded on this node, which a server without one
    /// never has.
    pub(crate) fn host(&self) -> &Arc<Executor> {
        self.executor
            .as_ref()
            .expect("work for this host on a server that runs no sandboxes")
    }

    /// The sandboxes running on this host (none without a local node).
    pub(crate) fn running_here(&self) -> Vec<String> {
        self.executor
            .as_ref()
            .map(|e| e.running())
            .unwrap_or_default()
    }

    /// Notes traffic to a sandbox (it is in use: no idle timeout now).
    pub fn touch(&self, id: &str) {
        self.activity
            .lock()
            .unwrap()
            .insert(id.to_string(), Utc::now());
    }

    pub(crate) fn last_activity(&self, id: &str) -> Option<DateTime<Utc>> {
        self.activity.lock().unwrap().get(id).copied()
    }

    pub(crate) fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Records a new sandbox and starts it in the background.
    pub async fn create(
        self: &Arc<Self>,
        namespace: &str,
        req: &CreateSandboxRequest,
    ) -> ApiResult<(SandboxRow, JoinHandle<LaunchOutcome>)> {
        let images = self.known_images().await?;
        // Which other nodes could run it: a restore needs its snapshot in
        // the blob store (`completed`), else only its own node has it.
        let mut only_on: Option<String> = None;
        let (name, spec) = match &req.snapshot_id {
            Some(sid) => {
                let snap = self
                    .store
                    .snapshot(Some(namespace), sid)
                    .await?
                    .ok_or_else(|| ApiError::not_found("snapshot", sid))?;
                let merged = restore_request(req, &snap)?;
                // The snapshot's image, even if it is no longer listed.
                let mut images = images;
                images.push(snap.spec.image.clone());
                let (name, mut spec) = validate(&merged, self.host, &images)?;
                // A memory restore keeps the values its memory holds.
                if snap.snapshot_type != SnapshotType::Memory {
                    self.check_secrets(namespace, &spec).await?;
                }
                if snap.status != sbx_api::snapshot::SnapshotStatus::Completed {
                    only_on = Some(snap.node_id.clone().unwrap_or(self.node_id.clone()));
                }
                spec.snapshot_id = Some(snap.id.clone());
                spec.image_id = snap.spec.image_id.clone();
                (name, spec)
            }
            None => {
                let (name, mut spec) = validate(req, self.host, &images)?;
                self.check_secrets(namespace, &spec).await?;
                spec.image_id = self
                    .resolve_image(&spec.image)
                    .await?
                    .filter(|id| *id != spec.image);
                (name, spec)
            }
        };
        let mut spec = spec;
        if req.max_pending_secs.is_none() {
            spec.max_pending_secs = self.admission.default_pending_secs;
        }
        self.place_and_start(namespace, name, spec, only_on.as_deref(), None)
            .await
    }

    /// Records a sandbox of a valid `spec` on the node that takes it and
    /// starts it there (`only_on`: the one node that may; `pool`: the pool
    /// it belongs to, and how).
    pub(crate) async fn place_and_start(
        self: &Arc<Self>,
        namespace: &str,
        name: Option<String>,
        spec: SandboxSpec,
        only_on: Option<&str>,
        pool: Option<(String, crate::store::PoolState)>,
    ) -> ApiResult<(SandboxRow, JoinHandle<LaunchOutcome>)> {
        // Here when this node takes it; else on the roomiest other node.
        // With `max_pending_secs`, one no node can take now waits for room.
        let (node, pending_reason) = match self.choose_node(&spec, only_on).await {
            Ok(node) => (node, "waiting_for_container".to_string()),
            Err(refused)
                if spec.max_pending_secs.is_some() && crate::nodes::waits_for_room(&refused) =>
            {
                tracing::info!(
                    reason = refused.body.code,
                    "no node can take it now: it waits"
                );
                (crate::store::UNPLACED.to_string(), refused.body.code)
            }
            Err(refused) => return Err(refused),
        };
        let local = node == self.node_id;
        let row = SandboxRow {
            id: new_sandbox_id(),
            namespace: namespace.to_string(),
            name,
            status: SandboxStatus::Pending,
            spec,
            pending_reason: Some(pending_reason),
            termination_reason: None,
            error: None,
            created_at: Utc::now(),
            terminated_at: None,
            node_id: Some(node.clone()),
            pool_id: pool.as_ref().map(|(id, _)| id.clone()),
            pool_state: pool.map(|(_, state)| state),
        };
        // Counted as starting before it is recorded: the sweep must not
        // take it for a pending sandbox of this node nobody launches (the
        // launch counts it again for as long as it runs).
        let starting = local.then(|| Starting::new(self.clone(), &row.id));
        self.store
            .insert(&row)
            .await
            .map_err(|e| crate::error::name_conflict(e, namespace))?;
        let task = if node == crate::store::UNPLACED {
            // Placed once a node has room (`place_waiting`); this waits.
            let me = self.clone();
            let id = row.id.clone();
            tokio::spawn(async move { me.launched_elsewhere(&id).await })
        } else {
            self.node(Some(&node)).launch(&row)
        };
        drop(starting);
        Ok((row, task))
    }

    /// Launches the sandboxes other servers placed on this node (from the
    /// sweep): `pending` rows of this node that no launch here has taken.
    fn launch_placed(self: &Arc<Self>, rows: &[SandboxRow]) {
        for row in rows {
            if row.status != SandboxStatus::Pending
                || self.starting.lock().unwrap().contains_key(&row.id)
            {
                continue;
            }
            tracing::info!(sandbox = row.id, "placed on this node: launching it");
            self.launch_here(row);
        }
    }

    /// Launches `row` on this host in the background (the in-process
    /// node's launch): counted as starting until it runs or fails.
    pub(crate) fn launch_here(self: &Arc<Self>, row: &SandboxRow) -> JoinHandle<LaunchOutcome> {
        self.log_created(row);
        let starting = Starting::new(self.clone(), &row.id);
        let me = self.clone();
        let (id, spec) = (row.id.clone(), row.spec.clone());
        self.tasks.spawn(async move {
            let _starting = starting;
            me.launch(&id, &spec).await
        })
    }

    /// The node that runs what is recorded on `node` (`None`: rows from
    /// before nodes, this host's): this server's own, in-process, or
    /// another, reached through its server.
    pub fn node(self: &Arc<Self>, node: Option<&str>) -> Arc<dyn crate::node::Node> {
        match (&self.local, node) {
            (Some(local), n) if self.is_local(n) => local.clone(),
            (_, n) => Arc::new(crate::node::Remote::new(
                n.unwrap_or(&self.node_id),
                self.clone(),
            )),
        }
    }

    /// This server's own node; `None` with `--no-local-node`.
    pub fn local_node(&self) -> Option<&Arc<crate::node::InProcess>> {
        self.local.as_ref()
    }

    /// What became of a sandbox placed on another node, as its node
    /// records it.
    pub(crate) async fn launched_elsewhere(&self, id: &str) -> LaunchOutcome {
        loop {
            match self.store.get(id).await {
                Ok(Some(r)) if r.status == SandboxStatus::Running => return LaunchOutcome::Running,
                Ok(Some(r)) if r.status == SandboxStatus::Failed => {
                    return LaunchOutcome::Failed(r.error.unwrap_or_else(|| "failed".into()))
                }
                Ok(Some(r)) if r.status == SandboxStatus::Pending => {}
                Ok(_) => return LaunchOutcome::Gone,
                Err(e) => tracing::debug!(sandbox = id, "placed sandbox: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Refuses a create the host cannot hold (503 `no_resources_available`).
    pub(crate) fn admit(&self) -> ApiResult<()> {
        let Some(host) = crate::admission::HostUse::read() else {
            return Ok(());
        };
        // A launch under way is in both once it has claimed its network.
        let (live, starting) = {
            let starting = self.starting.lock().unwrap();
            let mut live: HashSet<String> = self.running_here().into_iter().collect();
            live.extend(starting.keys().cloned());
            (live.len(), starting.len())
        };
        self.admission.check(host, live, starting).map_err(|why| {
            tracing::warn!("create refused: {why}");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "no_resources_available",
                format!("no room for another sandbox: {why}"),
            )
        })
    }

    /// Waits until image `name` can be used, up to `deadline`: a 503 saying
    /// the default image is being built (or why its build failed) after it.
    pub async fn wait_for_image(
        &self,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> ApiResult<()> {
        let images = self.images();
        match tokio::time::timeout_at(deadline, images.wait_ready(name)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "image_unavailable",
                format!("{why}; the server tries again shortly"),
            )),
            Err(_) => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "image_building",
                format!(
                    "the default image is being built (first start of this host, about a minute; now: {}); try again shortly",
                    match images.default_status() {
                        BuildStatus::Building { progress, steps } => format!("step {steps}: {progress}"),
                        other => format!("{other:?}"),
                    }
                ),
            )),
        }
    }

    async fn launch(&self, id: &str, spec: &SandboxSpec) -> LaunchOutcome {
        // A sandbox created while the default image is built waits here,
        // `pending`, without holding its lock (a terminate goes through).
        if let Err(why) = self.images().wait_ready(&spec.image).await {
            return self.launch_failed(id, why).await;
        }
        if let Some(image) = &spec.image_id {
            if let Err(why) = self.ensure_image(image).await {
                return self.launch_failed(id, why).await;
            }
        }
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let (namespace, created_at, warm, network) = match self.store.get(id).await {
            Ok(Some(r)) if r.status == SandboxStatus::Pending => (
                r.namespace,
                r.created_at,
                r.pool_state == Some(crate::store::PoolState::Warm),
                r.spec.network,
            ),
            _ => return LaunchOutcome::Gone,
        };
        let mut launch = launch_spec(id, spec);
        // What a PATCH made of the policy while the sandbox waited.
        launch.egress = egress(&network);
        let started = std::time::Instant::now();
        let launched = async {
            let mut launch = launch;
            // A memory image fetched from the blob store is written while
            // the sandbox's layer and network are made.
            let mut memory_fetch = None;
            if let Some(sid) = &spec.snapshot_id {
                let (layer, checkpoint, fetch) = self
                    .snapshot_files_early(sid)
                    .await
                    .map_err(|e| format!("snapshot {sid}: {e}"))?;
                launch.layer = Some(layer);
                launch.checkpoint = checkpoint;
                memory_fetch = fetch.map(|f| (sid.clone(), f));
            }
            // The current values; a memory image keeps those it had.
            let names = spec.secret_names.as_deref().unwrap_or_default();
            if launch.checkpoint.is_none() && !names.is_empty() {
                launch.secrets =
                    crate::secrets::resolve(&self.store, &self.secrets_key, &namespace, names)
                        .await?;
            }
            let ready = memory_fetch
                .clone()
                .map(|(sid, f)| -> sbx_executor::CheckpointReady {
                    Box::pin(async move { f.await.map_err(|e| format!("snapshot {sid}: {e}")) })
                });
            let launched = self.host().launch_when(&launch, ready).await;
            launched.map_err(|e| {
                // A failed fetch is why, whatever the launch tripped over
                // first (its files went with it).
                let fetch = memory_fetch.and_then(|(sid, f)| Some((sid, f.now_or_never()?)));
                match fetch {
                    Some((sid, Err(why))) => format!("snapshot {sid}: {why}"),
                    _ => e.to_string(),
                }
            })
        };
        match launched.await {
            Ok(_) => {
                let promoted = self
                    .store
                    .transition(
                        id,
                        &[SandboxStatus::Pending],
                        SandboxStatus::Running,
                        None,
                        None,
                    )
                    .await
                    .unwrap_or(false);
                if promoted {
                    tracing::info!(
                        sandbox = id,
                        ms = started.elapsed().as_millis() as u64,
                        "sandbox running"
                    );
                    self.logs.info(id, "running", "sandbox running");
                    // A pool's refill is nobody's create.
                    if !warm {
                        self.metrics
                            .sandbox_started(spec.snapshot_id.is_some(), created_at);
                    }
                    LaunchOutcome::Running
                } else {
                    let _ = self.host().destroy(id).await;
                    LaunchOutcome::Gone
                }
            }
            Err(e) => self.launch_failed(id, e).await,
        }
    }

    /// 400 unless every secret `spec` names exists in `namespace`.
    async fn check_secrets(&self, namespace: &str, spec: &SandboxSpec) -> ApiResult<()> {
        match spec.secret_names.as_deref() {
            Some(names) if !names.is_empty() => {
                crate::secrets::check_known(&self.store, namespace, names).await
            }
            _ => Ok(()),
        }
    }

    /// Records that the launch of `id` failed and why.
    async fn launch_failed(&self, id: &str, why: String) -> LaunchOutcome {
        let msg = format!("sandbox failed to start: {why}");
        tracing::warn!(sandbox = id, "{msg}");
        self.log_failed(id, "startup_failed", &msg);
        let _ = self
            .store
            .transition(
                id,
                &[SandboxStatus::Pending],
                SandboxStatus::Failed,
                Some("startup_failed"),
                Some(&msg),
            )
            .await;
        LaunchOutcome::Failed(msg)
    }

    /// Gives sandbox `id` a new network policy: recorded in its spec (what
    /// a later launch, resume elsewhere, snapshot or copy uses) and applied
    /// at once by the executor when the sandbox is here (running: its
    /// firewall now, connections it forbids closed; suspended: on resume).
    /// Under the sandbox's lock, so no launch, suspend or resume of it runs
    /// meanwhile. When the executor fails the spec keeps the old policy.
    pub async fn set_network(&self, id: &str, network: NetworkPolicy) -> ApiResult<()> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let Some(row) = self.store.get(id).await? else {
            return Err(ApiError::not_found("sandbox", id));
        };
        self.check_local(&row)?;
        let mut spec = row.spec.clone();
        spec.network = network;
        self.store.set_spec(id, &spec).await?;
        if row.status.is_final() {
            return Ok(());
        }
        if let Err(e) = self.host().set_egress(id, &egress(&spec.network)).await {
            tracing::warn!(sandbox = id, "network policy update: {e}");
            let _ = self.store.set_spec(id, &row.spec).await;
            return Err(ApiError::internal(format!(
                "the network policy could not be applied, the sandbox keeps its old one: {e}"
            )));
        }
        self.logs.info(id, "network", "network policy updated");
        Ok(())
    }

    /// Gives running sandbox `id` new resources at once (a live resize):
    /// what `req` names changes, the rest stays. Checked like a create
    /// (bounds, memory per CPU, this host's size), a memory increase
    /// admitted like a create (503 `no_resources_available` when it does
    /// not fit), a disk shrink and a memory decrease below what the
    /// sandbox holds refused (409). The executor applies it (see
    /// `sbx_executor::resize`); only then does the spec get the new
    /// resources, in one write, so a refusal or failure changes nothing.
    /// Under the sandbox's lock, so no launch, suspend or resume of it runs
    /// meanwhile. A suspended sandbox is refused: resume it first.
    pub async fn resize(&self, id: &str, req: &ResourcesRequest) -> ApiResult<SandboxRow> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let Some(row) = self.store.get(id).await? else {
            return Err(ApiError::not_found("sandbox", id));
        };
        self.check_local(&row)?;
        if row.status != SandboxStatus::Running {
            let hint = match row.status {
                SandboxStatus::Suspended | SandboxStatus::Suspending => "; resume it first",
                _ => "",
            };
            return Err(ApiError::conflict(format!(
                "a live resize needs a running sandbox; {id} is {}{hint}",
                row.status
            )));
        }
        let old = row.spec.resources;
        let asked = ResourcesRequest {
            cpus: req.cpus.or(Some(old.cpus)),
            memory_mb: req.memory_mb.or(Some(old.memory_mb)),
            disk_mb: req.disk_mb.or(Some(old.disk_mb)),
            gpus: req.gpus.clone(),
        };
        let create = CreateSandboxRequest {
            image: Some(row.spec.image.clone()),
            resources: Some(asked),
            ..Default::default()
        };
        let new = validate(&create, self.host, std::slice::from_ref(&row.spec.image))?
            .1
            .resources;
        if new.disk_mb < old.disk_mb {
            return Err(ApiError::conflict(format!(
                "resources.disk_mb cannot shrink a live sandbox's volume: it has {} MB (got {}); a volume only grows",
                old.disk_mb, new.disk_mb
            )));
        }
        if new == old {
            return Ok(row);
        }
        if new.memory_mb > old.memory_mb {
            self.admit_growth(new.memory_mb - old.memory_mb)?;
        }
        let changed = |a: f64, b: f64| (a != b).then_some(b);
        let to = sbx_executor::Resize {
            cpus: changed(old.cpus, new.cpus),
            memory_mb: (old.memory_mb != new.memory_mb).then_some(new.memory_mb),
            disk_mb: (old.disk_mb != new.disk_mb).then_some(new.disk_mb),
        };
        self.host().resize(id, to).await.map_err(|e| {
            use sbx_executor::ResizeError as E;
            match e {
                E::BelowUse { .. } | E::Shrink { .. } => {
                    ApiError::conflict(format!("resources.{e}; nothing changed"))
                }
                E::NotRunning(_) => {
                    ApiError::conflict(format!("a live resize needs a running sandbox: {e}"))
                }
                E::Host(e) => {
                    tracing::warn!(sandbox = id, "resize: {e}");
                    ApiError::internal(format!(
                        "the resize could not be applied, the sandbox keeps its resources: {e}"
                    ))
                }
            }
        })?;
        let mut spec = row.spec.clone();
        spec.resources = new;
        if let Err(e) = self.store.set_spec(id, &spec).await {
            // Back to what the spec says (a grown volume stays grown).
            let back = sbx_executor::Resize {
                cpus: to.cpus.map(|_| old.cpus),
                memory_mb: to.memory_mb.map(|_| old.memory_mb),
                disk_mb: None,
            };
            if let Err(e) = self.host().resize(id, back).await {
                tracing::warn!(sandbox = id, "cannot undo a resize: {e}");
            }
            return Err(e.into());
        }
        self.logs.info(
            id,
            "resize",
            format!(
                "resized: cpus {} -> {}, memory_mb {} -> {}, disk_mb {} -> {}",
                old.cpus, new.cpus, old.memory_mb, new.memory_mb, old.disk_mb, new.disk_mb
            ),
        );
        Ok(SandboxRow { spec, ..row })
    }

    /// Refuses a memory increase of a running sandbox by `grow_mb` that
    /// the host cannot hold (503 `no_resources_available`), as [`Self::admit`]
    /// refuses a create.
    fn admit_growth(&self, grow_mb: u64) -> ApiResult<()> {
        let Some(host) = crate::admission::HostUse::read() else {
            return Ok(());
        };
        self.admission.check_growth(host, grow_mb).map_err(|why| {
            tracing::warn!("resize refused: {why}");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "no_resources_available",
                format!("no room for the sandbox to grow: {why}"),
            )
        })
    }

    /// Marks the sandbox terminated now and removes it from the host in the
    /// background. Idempotent.
    pub async fn terminate(self: &Arc<Self>, row: &SandboxRow, reason: &str) -> ApiResult<()> {
        if row.status.is_final() {
            return Ok(());
        }
        self.store
            .transition(
                &row.id,
                &LIVE,
                SandboxStatus::Terminated,
                Some(reason),
                None,
            )
            .await?;
        self.drop_suspend_image(row.spec.suspend_image.clone());
        if row.node_id.as_deref() != Some(crate::store::UNPLACED) {
            self.node(row.node_id.as_deref()).reap(row, reason).await;
        }
        Ok(())
    }

    /// Removes a sandbox of this host whose row just became final, in the
    /// background (the in-process node's reap).
    pub(crate) fn destroy_later(self: &Arc<Self>, id: &str, reason: &str) {
        self.logs.event(
            id,
            sbx_api::logs::level::INFO,
            "terminated",
            format!("sandbox terminated ({reason})"),
            serde_json::json!({ "reason": reason }),
        );
        let me = self.clone();
        let id = id.to_string();
        self.tasks.spawn(async move { me.destroy(&id).await });
    }

    async fn destroy(&self, id: &str) {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        // The last lines it printed, before it goes.
        self.logs.collectors.finish(id).await;
        if let Err(e) = self.host().destroy(id).await {
            tracing::warn!(sandbox = id, "destroy: {e}");
        }
        tracing::info!(sandbox = id, "sandbox removed from host");
        drop(_guard);
        self.locks.lock().unwrap().remove(id);
        self.collect_images().await;
    }

    /// Terminates sandboxes whose time ran out and those whose runtime
    /// died, and removes from this host those the store no longer wants
    /// (ended through another server sharing the store).
    pub async fn sweep(self: &Arc<Self>) {
        let Ok(rows) = self.store.with_status(&LIVE).await else {
            return;
        };
        self.place_waiting(&rows).await;
        self.keep_pools().await;
        if !self.runs_sandboxes() {
            // No node here: nothing of this host to sweep.
            return;
        }
        let rows: Vec<SandboxRow> = rows
            .into_iter()
            .filter(|r| self.is_local(r.node_id.as_deref()))
            .collect();
        self.reap_unwanted(&rows).await;
        self.launch_placed(&rows);
        let now = Utc::now();
        for row in rows {
            if row.status != SandboxStatus::Running {
                continue;
            }
            // Warm in a pool: no timeout until claimed.
            let warm = row.pool_state == Some(crate::store::PoolState::Warm);
            if let Some(t) = row.spec.timeout_secs.filter(|_| !warm) {
                // Ephemeral: from creation. Named: from the last start or
                // resume, or the last proxy traffic, whichever is later.
                let since = match &row.name {
                    // A pool's: from its claim.
                    None if row.pool_id.is_some() => {
                        row.spec.active_since.unwrap_or(row.created_at)
                    }
                    None => row.created_at,
                    Some(_) => [
                        Some(row.created_at),
                        row.spec.active_since,
                        self.last_activity(&row.id),
                    ]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(row.created_at),
                };
                if now >= since + chrono::Duration::seconds(t as i64) {
                    if row.name.is_some() {
                        tracing::info!(sandbox = row.id, "timeout reached: suspending");
                        let _ = self.suspend(&row, "timeout").await;
                    } else {
                        tracing::info!(sandbox = row.id, "timeout reached: terminating");
                        let _ = self.terminate(&row, "timeout").await;
                    }
                    continue;
                }
            }
            if !self.host().is_alive(&row.id) {
                tracing::warn!(sandbox = row.id, "sandbox process exited: marking failed");
                self.log_failed(
                    &row.id,
                    "sandbox_exited",
                    "the sandbox stopped unexpectedly (out of memory or crashed)",
                );
                let _ = self
                    .store
                    .transition(
                        &row.id,
                        &[SandboxStatus::Running],
                        SandboxStatus::Failed,
                        Some("sandbox_exited"),
                        Some("the sandbox stopped unexpectedly (out of memory or crashed)"),
                    )
                    .await;
                let me = self.clone();
                let id = row.id.clone();
                self.tasks.spawn(async move { me.destroy(&id).await });
            }
        }
    }

    /// Destroys sandboxes running here whose row is gone or final; `live`:
    /// this node's live rows.
    async fn reap_unwanted(self: &Arc<Self>, live: &[SandboxRow]) {
        let wanted: HashSet<&str> = live.iter().map(|r| r.id.as_str()).collect();
        let suspects: Vec<String> = self
            .running_here()
            .into_iter()
            // Builder sandboxes have no row; a starting one has one already.
            .filter(|id| looks_like_id(id) && !wanted.contains(id.as_str()))
            .collect();
        for id in suspects {
            // Read again: it may have been created since the list was read.
            let unwanted = match self.store.get(&id).await {
                Ok(None) => true,
                Ok(Some(row)) => row.status.is_final(),
                Err(_) => false,
            };
            if unwanted && self.host().is_alive(&id) {
                tracing::info!(sandbox = id, "ended elsewhere: removing it from this host");
                let me = self.clone();
                self.tasks.spawn(async move { me.destroy(&id).await });
            }
        }
    }

    pub fn start_sweeper(self: &Arc<Self>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = me.wake.notified() => {}
                }
                me.sweep().await;
            }
        })
    }

    /// Logs the creation of a sandbox this node runs.
    fn log_created(&self, row: &SandboxRow) {
        let s = &row.spec;
        let from = match &s.snapshot_id {
            Some(sid) => format!("snapshot {sid}"),
            None => format!("image {}", s.image),
        };
        self.logs.event(
            &row.id,
            sbx_api::logs::level::INFO,
            "created",
            format!(
                "sandbox created from {from} ({} cpus, {} MB memory, {} MB disk)",
                s.resources.cpus, s.resources.memory_mb, s.resources.disk_mb
            ),
            serde_json::json!({"image": s.image, "snapshotId": s.snapshot_id, "name": row.name}),
        );
    }

    /// Logs that a sandbox failed (or ended unexpectedly), and why.
    pub(crate) fn log_failed(&self, id: &str, reason: &str, message: &str) {
        self.logs.event(
            id,
            sbx_api::logs::level::ERROR,
            "failed",
            message.to_string(),
            serde_json::json!({ "reason": reason }),
        );
    }

    /// After a restart: adopt what still runs, keep what is suspended,
    /// fail what was mid-start, and clean the host of everything else.
    /// Nothing stays `snapshotting` or `suspending`: each ends running,
    /// suspended or terminated.
    pub async fn recover(self: &Arc<Self>) -> Result<(), crate::Error> {
        let Some(executor) = self.executor.clone() else {
            return Ok(());
        };
        let rows = self
            .store
            .with_status(&LIVE)
            .await?
            .into_iter()
            .filter(|r| self.is_local(r.node_id.as_deref()))
            .collect::<Vec<_>>();
        let keep: HashSet<String> = rows
            .iter()
            .filter(|r| r.status != SandboxStatus::Pending)
            .map(|r| r.id.clone())
            .collect();
        let report = executor.recover(&keep).await?;
        let adopted: HashSet<&String> = report.adopted.iter().collect();
        let suspended: HashSet<&String> = report.suspended.iter().collect();
        for r in &rows {
            let (to, reason, msg) = if adopted.contains(&r.id) {
                (SandboxStatus::Running, None, None)
            } else if suspended.contains(&r.id) {
                (SandboxStatus::Suspended, None, None)
            } else if r.status == SandboxStatus::Pending {
                (
                    SandboxStatus::Failed,
                    Some("startup_failed"),
                    Some("the server restarted while the sandbox was starting"),
                )
            } else {
                (
                    SandboxStatus::Terminated,
                    Some("host_lost"),
                    Some("the sandbox did not survive a server restart"),
                )
            };
            if to != r.status {
                self.store
                    .transition(&r.id, &[r.status], to, reason, msg)
                    .await?;
            }
            match (to, reason, msg) {
                (SandboxStatus::Running, _, _) => self.logs.info(
                    &r.id,
                    "adopted",
                    "sandbox adopted again after a server restart",
                ),
                (SandboxStatus::Failed | SandboxStatus::Terminated, Some(why), Some(msg)) => {
                    self.log_failed(&r.id, why, msg)
                }
                _ => {}
            }
        }
        self.recover_snapshots().await?;
        tracing::info!(
            adopted = report.adopted.len(),
            suspended = report.suspended.len(),
            cleaned = report.cleaned.len(),
            "recovered host state"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostLimits = HostLimits {
        cpus: 2.0,
        memory_mb: 24_000,
    };

    fn images() -> Vec<String> {
        vec!["default".into()]
    }

    fn req(json: &str) -> CreateSandboxRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_fill_an_empty_request() {
        let (name, spec) = validate(&req("{}"), HOST, &images()).unwrap();
        assert!(name.is_none());
        assert_eq!(spec.resources.cpus, 1.0);
        assert_eq!(spec.resources.memory_mb, 1024);
        assert_eq!(spec.resources.disk_mb, 10240);
        assert!(spec.network.allow_internet_access);
        assert!(spec.auto_resume);
    }

    #[test]
    fn resources_are_checked() {
        for (body, needle) in [
            (r#"{"resources":{"cpus":0}}"#, "greater than 0"),
            (r#"{"resources":{"cpus":3}}"#, "exceeds"),
            (r#"{"resources":{"memory_mb":512}}"#, "per CPU"),
            (r#"{"resources":{"memory_mb":9000}}"#, "per CPU"),
            (r#"{"resources":{"cpus":2,"memory_mb":1024}}"#, "per CPU"),
            (r#"{"resources":{"disk_mb":10}}"#, "disk_mb"),
            (r#"{"image":"nope"}"#, "available images: default"),
            (r#"{"exposed_ports":[9501]}"#, "9501"),
            (r#"{"name":"bad name"}"#, "invalid name"),
            (
                r#"{"name":"sbx0123456789abcdef0123"}"#,
                "form of a sandbox id",
            ),
            (r#"{"entrypoint":[]}"#, "entrypoint"),
            (r#"{"auto_resume":false}"#, "named sandbox"),
            (r#"{"timeout_secs":10000000000000000}"#, "timeout_secs"),
            (
                r#"{"network":{"allow_out":["example..com"]}}"#,
                "network.allow_out: \"example..com\" is not an IPv4 address, CIDR block",
            ),
            (
                r#"{"network":{"deny_out":["10.0.0.0/33"]}}"#,
                "network.deny_out",
            ),
            (r#"{"network":{"deny_out":["2001:db8::/32"]}}"#, "IPv6"),
            (
                r#"{"secret_names":["OK","BAD-NAME"]}"#,
                "invalid secret name \"BAD-NAME\"",
            ),
            (r#"{"secret_names":["SBX_X"]}"#, "invalid secret name"),
        ] {
            let e = validate(&req(body), HOST, &images()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(
                e.body.message.contains(needle),
                "{body}: {}",
                e.body.message
            );
        }
        assert!(validate(
            &req(r#"{"resources":{"cpus":2,"memory_mb":4096}}"#),
            HOST,
            &images()
        )
        .is_ok());
        assert!(validate(
            &req(r#"{"resources":{"cpus":0.5,"memory_mb":1024}}"#),
            HOST,
            &images()
        )
        .is_ok());
    }

    #[test]
    fn a_network_policy_reaches_the_executor_as_blocks() {
        let (_, spec) = validate(
            &req(r#"{"network":{"allow_internet_access":false,"allow_out":["198.18.0.7"],"deny_out":["198.18.0.0/15"]}}"#),
            HOST,
            &images(),
        )
        .unwrap();
        assert_eq!(spec.network.allow_out, ["198.18.0.7"], "kept as given");
        let e = egress(&spec.network);
        assert!(!e.allow_internet);
        assert_eq!(e.allow_out, ["198.18.0.7/32".parse().unwrap()]);
        assert_eq!(e.deny_out, ["198.18.0.0/15".parse().unwrap()]);
        assert_eq!(egress(&NetworkPolicy::default()), Egress::default());
    }

    #[test]
    fn a_restore_inherits_port_access() {
        let (_, mut spec) = validate(&req("{}"), HOST, &images()).unwrap();
        spec.exposed_ports = vec![8080];
        spec.allow_unauthenticated_access = true;
        let snap = SnapshotRow {
            id: "snap1".into(),
            namespace: "default".into(),
            sandbox_id: "sbx1".into(),
            snapshot_type: SnapshotType::Filesystem,
            status: sbx_api::snapshot::SnapshotStatus::Completed,
            error: None,
            spec,
            size_bytes: None,
            stored_bytes: None,
            pause_ms: None,
            created_at: chrono::Utc::now(),
            node_id: None,
        };
        let merged = restore_request(&req(r#"{"snapshot_id":"snap1"}"#), &snap).unwrap();
        assert_eq!(merged.exposed_ports, Some(vec![8080]));
        assert_eq!(merged.allow_unauthenticated_access, Some(true));
        let merged = restore_request(
            &req(r#"{"snapshot_id":"snap1","exposed_ports":[],"allow_unauthenticated_access":false}"#),
            &snap,
        )
        .unwrap();
        assert_eq!(merged.exposed_ports, Some(vec![]));
        assert_eq!(merged.allow_unauthenticated_access, Some(false));

        // A memory image keeps the environment it had: its secrets are fixed.
        let mut snap = snap;
        snap.snapshot_type = SnapshotType::Memory;
        snap.spec.secret_names = Some(vec!["TOKEN".into()]);
        let merged = restore_request(&req(r#"{"snapshot_id":"snap1"}"#), &snap).unwrap();
        assert_eq!(merged.secret_names, Some(vec!["TOKEN".to_string()]));
        assert!(restore_request(
            &req(r#"{"snapshot_id":"snap1","secret_names":["TOKEN"]}"#),
            &snap
        )
        .is_ok());
        let e = restore_request(
            &req(r#"{"snapshot_id":"snap1","secret_names":["OTHER"]}"#),
            &snap,
        )
        .unwrap_err();
        assert!(
            e.body.message.contains("secret_names"),
            "{}",
            e.body.message
        );
    }

    #[test]
    fn ids_are_recognised_and_unique() {
        let a = new_sandbox_id();
        assert!(looks_like_id(&a));
        assert_ne!(a, new_sandbox_id());
        assert!(validate_name("my-box_1").is_ok());
    }
}
