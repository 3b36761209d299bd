//! The state store: the truth about sandboxes and snapshots, in SQLite
//! (WAL; the single-host default, under the data dir) or PostgreSQL (shared
//! by the control-plane replicas of many hosts).
//!
//! One set of queries serves both, through sqlx's `Any` driver: the SQL is
//! the portable kind (`$N` parameters, `TEXT` timestamps in RFC 3339,
//! `BIGINT` counts), and the schema comes from the migrations in
//! `migrations/`, applied at open. Nothing outside this crate knows which
//! database it has.

use chrono::{DateTime, Utc};
use sbx_api::node::{NodeCapacity, NodeState, NodeUsage};
use sbx_api::sandbox::{NetworkPolicy, Resources, SandboxStatus};
use sbx_api::snapshot::{SnapshotStatus, SnapshotType};
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyQueryResult, AnyRow};
use sqlx::{AnyPool, Row};
use std::path::Path;

mod images;
mod pools;
mod secrets;
pub use images::{ImageRow, ImageState};
pub use pools::{PoolRow, PoolSpec};
pub use secrets::{Sealed, SecretMeta};

/// What does not change over a sandbox's life, stored as one JSON column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The image's name, as the create gave it.
    pub image: String,
    /// The image's id on the host (see `sbx_executor::custom_images`): what
    /// it boots, whatever the name means later. `None`: the name is the id
    /// (built-in images, and records from before ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    pub resources: Resources,
    pub timeout_secs: Option<u64>,
    pub entrypoint: Option<Vec<String>>,
    pub secret_names: Option<Vec<String>>,
    pub network: NetworkPolicy,
    pub allow_unauthenticated_access: bool,
    pub exposed_ports: Vec<u16>,
    pub auto_resume: bool,
    /// The snapshot it was restored from.
    #[serde(default)]
    pub snapshot_id: Option<String>,
    /// When it last started running (created or resumed): a named
    /// sandbox's timeout counts from here.
    #[serde(default)]
    pub active_since: Option<DateTime<Utc>>,
    /// How long it may wait `pending` for a node with room before it
    /// fails (`None`: not at all, the create is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_secs: Option<u64>,
    /// While suspended: the blob-store manifest holding its memory image
    /// and files (written when the blob store is shared), from which any
    /// node resumes it. `None`: only its node's disk has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_image: Option<String>,
}

/// The `node_id` of a sandbox no node has taken yet: it waits `pending`
/// (its `pending_reason` says why) until one has room.
pub const UNPLACED: &str = "unplaced";

#[derive(Debug, Clone)]
pub struct SandboxRow {
    pub id: String,
    pub namespace: String,
    pub name: Option<String>,
    pub status: SandboxStatus,
    pub spec: SandboxSpec,
    pub pending_reason: Option<String>,
    pub termination_reason: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub terminated_at: Option<DateTime<Utc>>,
    /// The node that runs it (`None`: a row from before nodes, which the
    /// single host's server runs).
    pub node_id: Option<String>,
    /// The warm pool it belongs to, and whether it is still warm there.
    pub pool_id: Option<String>,
    pub pool_state: Option<PoolState>,
}

/// Where a pool's sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolState {
    /// Booted by the pool, never used: only the pool hands it out.
    Warm,
    /// Handed to a user: an ordinary sandbox from now on.
    Claimed,
}

impl PoolState {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolState::Warm => "warm",
            PoolState::Claimed => "claimed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "warm" => Some(PoolState::Warm),
            "claimed" => Some(PoolState::Claimed),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    kind: Kind,
    /// What it was opened with: advisory locks take sessions of their own.
    url: String,
    /// Woken whenever a sandbox changes status (see [`Store::status_changed`]).
    changed: std::sync::Arc<tokio::sync::Notify>,
    /// Counts those changes (see [`Store::status_version`]).
    status_version: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A snapshot in the catalog.
#[derive(Debug, Clone)]
pub struct SnapshotRow {
    pub id: String,
    pub namespace: String,
    pub sandbox_id: String,
    pub snapshot_type: SnapshotType,
    pub status: SnapshotStatus,
    pub error: Option<String>,
    /// The source sandbox's spec when it was captured: what a restore inherits.
    pub spec: SandboxSpec,
    pub size_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub pause_ms: Option<u64>,
    pub created_at: DateTime<Utc>,
    /// The node that captured it (and holds it until it is `completed`).
    pub node_id: Option<String>,
}

/// The statuses in which a sandbox holds nothing and never will again.
const FINAL: &str = "('terminated', 'failed', 'timeout')";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the name {0:?} is taken in this namespace")]
    NameTaken(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Why a store did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("state store URL {0:?}: expected sqlite:PATH or postgres://USER@HOST[:PORT]/DB")]
    BadUrl(String),
    #[error("cannot open the state store {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the state store {url}: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`.
    pub async fn open(path: &Path) -> Result<Self, OpenError> {
        Self::connect(&format!("sqlite:{}", path.display())).await
    }

    /// Opens the store at `url` (`sqlite:PATH` or `postgres://…`) and
    /// brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self, OpenError> {
        sqlx::any::install_default_drivers();
        let (kind, pool) = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            if path.is_empty() {
                return Err(OpenError::BadUrl(redact(url)));
            }
            let pool = AnyPoolOptions::new()
                .max_connections(8)
                // A connection to a local file cannot go stale: no ping
                // (a round trip to the connection's thread) before each use.
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL persists in the file; the wait is per connection.
                        // synchronous = NORMAL: a commit is in the WAL, not yet
                        // fsynced (a checkpoint syncs). A killed server loses
                        // nothing; a power loss may lose the last commits but
                        // never leaves the database torn, and recovery reaps
                        // sandboxes no row knows. Every API write paid an
                        // fsync before (FULL, the default): 5-50 ms here
                        // whenever the disk was writing back something else.
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        Ok(())
                    })
                })
                .connect(&format!("sqlite://{path}?mode=rwc"))
                .await;
            (Kind::Sqlite, pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(std::time::Duration::from_secs(30))
                .connect(url)
                .await;
            (Kind::Postgres, pool)
        } else {
            return Err(OpenError::BadUrl(redact(url)));
        };
        let shown = redact(url);
        let pool = pool.map_err(|source| OpenError::Connect {
            url: shown.clone(),
            source,
        })?;
        MIGRATIONS
            .run(&pool)
            .await
            .map_err(|source| OpenError::Migrate { url: shown, source })?;
        Ok(Self {
            pool,
            kind,
            url: url.to_string(),
            changed: Default::default(),
            status_version: Default::default(),
        })
    }

    /// The database this store runs on.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub async fn insert(&self, row: &SandboxRow) -> Result<(), StoreError> {
        let r = sqlx::query(
            "INSERT INTO sandboxes (id, namespace, name, status, spec, pending_reason, created_at,
                 node_id, pool_id, pool_state)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&row.id)
        .bind(&row.namespace)
        .bind(&row.name)
        .bind(row.status.as_str())
        .bind(serde_json::to_string(&row.spec).expect("json"))
        .bind(&row.pending_reason)
        .bind(row.created_at.to_rfc3339())
        .bind(&row.node_id)
        .bind(&row.pool_id)
        .bind(row.pool_state.map(PoolState::as_str))
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::NameTaken(row.name.clone().unwrap_or_default()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A sandbox by id, or by name (the live one first, else the newest).
    pub async fn find(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<SandboxRow>, sqlx::Error> {
        self.lookup(Some(namespace), key).await
    }

    /// Like [`find`](Self::find) across namespaces (the proxy has no
    /// namespace); a name in `default` wins over the same name elsewhere.
    pub async fn find_any(&self, key: &str) -> Result<Option<SandboxRow>, sqlx::Error> {
        self.lookup(None, key).await
    }

    async fn lookup(
        &self,
        namespace: Option<&str>,
        key: &str,
    ) -> Result<Option<SandboxRow>, sqlx::Error> {
        // The key is always $1; the namespace, when given, $2.
        let scope = if namespace.is_some() {
            "namespace = $2 AND"
        } else {
            ""
        };
        let sql = format!(
            "SELECT * FROM sandboxes WHERE {scope} (id = $1 OR name = $1)
             ORDER BY (id = $1) DESC, (status IN {FINAL}) ASC, (namespace = 'default') DESC,
                      created_at DESC LIMIT 1"
        );
        let mut q = sqlx::query(&sql).bind(key);
        if let Some(ns) = namespace {
            q = q.bind(ns);
        }
        let row = q.fetch_optional(&self.pool).await?;
        row.map(|r| decode(&r)).transpose()
    }

    pub async fn get(&self, id: &str) -> Result<Option<SandboxRow>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM sandboxes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| decode(&r)).transpose()
    }

    /// Sandboxes of a namespace, newest first; final ones only with `all`.
    pub async fn list(
        &self,
        namespace: &str,
        status: Option<SandboxStatus>,
        all: bool,
    ) -> Result<Vec<SandboxRow>, sqlx::Error> {
        let mut sql = String::from("SELECT * FROM sandboxes WHERE namespace = $1");
        if status.is_some() {
            sql.push_str(" AND status = $2");
        } else if !all {
            sql.push_str(&format!(" AND status NOT IN {FINAL}"));
        }
        sql.push_str(" ORDER BY created_at DESC");
        let mut q = sqlx::query(&sql).bind(namespace);
        if let Some(s) = status {
            q = q.bind(s.as_str());
        }
        q.fetch_all(&self.pool).await?.iter().map(decode).collect()
    }

    /// Every sandbox in one of `statuses`, across namespaces.
    pub async fn with_status(
        &self,
        statuses: &[SandboxStatus],
    ) -> Result<Vec<SandboxRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT * FROM sandboxes WHERE status IN ({})",
            sql_set(statuses)
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(decode)
        .collect()
    }

    /// How many sandboxes each (status, node) pair has, across namespaces
    /// (`GET /metrics`: one grouped count, no rows decoded). The node is
    /// `None` for rows from before nodes.
    pub async fn count_by_status_and_node(
        &self,
    ) -> Result<Vec<(SandboxStatus, Option<String>, u64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT status, node_id, COUNT(*) AS n FROM sandboxes GROUP BY status, node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let status: String = r.try_get("status")?;
            let n: i64 = r.try_get("n")?;
            if let Some(status) = SandboxStatus::parse(&status) {
                out.push((status, r.try_get("node_id")?, n.max(0) as u64));
            }
        }
        Ok(out)
    }

    /// The `completed` snapshots: how many, their logical bytes and the
    /// compressed bytes each added to the blob store when it was stored.
    pub async fn completed_snapshot_bytes(&self) -> Result<(u64, u64, u64), sqlx::Error> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n,
                    CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) AS logical,
                    CAST(COALESCE(SUM(stored_bytes), 0) AS BIGINT) AS stored
             FROM snapshots WHERE status = 'completed'",
        )
        .fetch_one(&self.pool)
        .await?;
        let get =
            |c: &str| -> Result<u64, sqlx::Error> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
        Ok((get("n")?, get("logical")?, get("stored")?))
    }

    /// Ids of the images that sandboxes still holding anything, and
    /// snapshots, were made from.
    pub async fn images_in_use(&self) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT spec FROM sandboxes WHERE status NOT IN {FINAL} UNION ALL SELECT spec FROM snapshots"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut ids = std::collections::HashSet::new();
        for r in rows {
            let spec: String = r.try_get("spec")?;
            let spec: SandboxSpec =
                serde_json::from_str(&spec).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            ids.insert(spec.image_id.unwrap_or(spec.image));
        }
        Ok(ids)
    }

    /// Moves a sandbox from one of `from` to `to`; false when it was in none of them.
    pub async fn transition(
        &self,
        id: &str,
        from: &[SandboxStatus],
        to: SandboxStatus,
        reason: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let list = sql_set(from);
        let terminated_at = to.is_final().then(|| Utc::now().to_rfc3339());
        let r = sqlx::query(&format!(
            "UPDATE sandboxes SET status = $1, pending_reason = NULL,
                 termination_reason = COALESCE($2, termination_reason),
                 error = COALESCE($3, error),
                 terminated_at = COALESCE($4, terminated_at)
             WHERE id = $5 AND status IN ({list})"
        ))
        .bind(to.as_str())
        .bind(reason)
        .bind(error)
        .bind(terminated_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(self.status_moved(&r))
    }

    /// Whether an update of one sandbox's status applied; wakes the
    /// waiters for status changes when it did.
    fn status_moved(&self, r: &AnyQueryResult) -> bool {
        let moved = r.rows_affected() == 1;
        if moved {
            self.statuses_changed();
        }
        moved
    }

    fn statuses_changed(&self) {
        self.status_version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// A number that grows with every status change made through this store
    /// (read it before a read of rows: unchanged after, none of them changed
    /// status through this store since).
    pub fn status_version(&self) -> u64 {
        self.status_version
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Completes at the next status change of any sandbox made through this
    /// store after the future is enabled (`Notified::enable`) or first polled.
    pub fn status_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Sets (or, with `None`, clears) the error a sandbox reports.
    /// Places a sandbox that waits for a node ([`UNPLACED`]) on `node`;
    /// false when it was placed, started or ended meanwhile.
    pub async fn place(&self, id: &str, node: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE sandboxes SET node_id = $1, pending_reason = 'waiting_for_container'
             WHERE id = $2 AND status = $3 AND node_id = $4",
        )
        .bind(node)
        .bind(id)
        .bind(SandboxStatus::Pending.as_str())
        .bind(UNPLACED)
        .execute(&self.pool)
        .await?;
        Ok(self.status_moved(&r))
    }

    /// Records where a suspended sandbox's stored image is (`image`, or
    /// none); false unless it is still suspended on `node`.
    pub async fn set_suspend_image(
        &self,
        id: &str,
        node: &str,
        image: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let Some(mut row) = self.get(id).await? else {
            return Ok(false);
        };
        if row.status != SandboxStatus::Suspended || row.node_id.as_deref() != Some(node) {
            return Ok(false);
        }
        row.spec.suspend_image = image.map(str::to_string);
        let r = sqlx::query(
            "UPDATE sandboxes SET spec = $1 WHERE id = $2 AND status = $3 AND node_id = $4",
        )
        .bind(serde_json::to_string(&row.spec).expect("json"))
        .bind(id)
        .bind(SandboxStatus::Suspended.as_str())
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Moves a suspended sandbox from node `from` to node `to` (which
    /// resumes it from its stored image); false when it is no longer
    /// suspended on `from`.
    pub async fn move_suspended(
        &self,
        id: &str,
        from: &str,
        to: &str,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE sandboxes SET node_id = $1 WHERE id = $2 AND status = $3 AND node_id = $4",
        )
        .bind(to)
        .bind(id)
        .bind(SandboxStatus::Suspended.as_str())
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Says why a pending sandbox still waits.
    pub async fn set_pending_reason(&self, id: &str, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET pending_reason = $1 WHERE id = $2 AND status = $3")
            .bind(reason)
            .bind(id)
            .bind(SandboxStatus::Pending.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_error(&self, id: &str, error: Option<&str>) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET error = $1 WHERE id = $2")
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_name(&self, id: &str, name: Option<&str>) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE sandboxes SET name = $1 WHERE id = $2")
            .bind(name)
            .bind(id)
            .execute(&self.pool)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::NameTaken(name.unwrap_or_default().to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a suspended sandbox to running with `spec` and no error, in one
    /// statement (one commit on the resume's path); false if it was not
    /// suspended.
    pub async fn mark_resumed(&self, id: &str, spec: &SandboxSpec) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE sandboxes SET status = $1, spec = $2, error = NULL, pending_reason = NULL
             WHERE id = $3 AND status = $4",
        )
        .bind(SandboxStatus::Running.as_str())
        .bind(serde_json::to_string(spec).expect("json"))
        .bind(id)
        .bind(SandboxStatus::Suspended.as_str())
        .execute(&self.pool)
        .await?;
        Ok(self.status_moved(&r))
    }

    pub async fn set_spec(&self, id: &str, spec: &SandboxSpec) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET spec = $1 WHERE id = $2")
            .bind(serde_json::to_string(spec).expect("json"))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Store {
    pub async fn insert_snapshot(&self, s: &SnapshotRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO snapshots (id, namespace, sandbox_id, snapshot_type, status, spec,
                 created_at, node_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&s.id)
        .bind(&s.namespace)
        .bind(&s.sandbox_id)
        .bind(s.snapshot_type.as_str())
        .bind(s.status.as_str())
        .bind(serde_json::to_string(&s.spec).expect("json"))
        .bind(s.created_at.to_rfc3339())
        .bind(&s.node_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn snapshot(
        &self,
        namespace: Option<&str>,
        id: &str,
    ) -> Result<Option<SnapshotRow>, sqlx::Error> {
        let row =
            sqlx::query("SELECT * FROM snapshots WHERE id = $1 AND ($2 IS NULL OR namespace = $3)")
                .bind(id)
                .bind(namespace)
                .bind(namespace)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| decode_snapshot(&r)).transpose()
    }

    /// Snapshots of a namespace (of one sandbox with `sandbox_id`), newest first.
    pub async fn snapshots(
        &self,
        namespace: &str,
        sandbox_id: Option<&str>,
    ) -> Result<Vec<SnapshotRow>, sqlx::Error> {
        sqlx::query(
            "SELECT * FROM snapshots WHERE namespace = $1 AND ($2 IS NULL OR sandbox_id = $3)
             ORDER BY created_at DESC",
        )
        .bind(namespace)
        .bind(sandbox_id)
        .bind(sandbox_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(decode_snapshot)
        .collect()
    }

    pub async fn snapshots_with_status(
        &self,
        status: SnapshotStatus,
    ) -> Result<Vec<SnapshotRow>, sqlx::Error> {
        sqlx::query("SELECT * FROM snapshots WHERE status = $1")
            .bind(status.as_str())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(decode_snapshot)
            .collect()
    }

    /// Moves a snapshot from `from` to `to`, with what is known by then;
    /// false when it was not in `from`.
    pub async fn snapshot_transition(
        &self,
        id: &str,
        from: SnapshotStatus,
        to: SnapshotStatus,
        update: SnapshotUpdate<'_>,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE snapshots SET status = $1, error = COALESCE($2, error),
                 size_bytes = COALESCE($3, size_bytes), stored_bytes = COALESCE($4, stored_bytes),
                 pause_ms = COALESCE($5, pause_ms)
             WHERE id = $6 AND status = $7",
        )
        .bind(to.as_str())
        .bind(update.error)
        .bind(update.size_bytes.map(|v| v as i64))
        .bind(update.stored_bytes.map(|v| v as i64))
        .bind(update.pause_ms.map(|v| v as i64))
        .bind(id)
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}

/// A node in the state store.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub id: String,
    /// Where other servers' proxies reach its sandboxes; `None`: nowhere.
    pub address: Option<String>,
    /// Where other servers send lifecycle requests for its sandboxes (its
    /// server's API); `None`: nowhere.
    pub api_address: Option<String>,
    pub state: NodeState,
    pub capacity: NodeCapacity,
    pub usage: NodeUsage,
    pub registered_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
}

impl Store {
    /// Records a node starting up: new, or known (then its address and
    /// capacity are updated and its state — e.g. draining — is kept).
    pub async fn register_node(&self, node: &NodeRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO nodes (id, address, state, capacity, usage, registered_at, heartbeat_at,
                 api_address)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET address = excluded.address,
                 api_address = excluded.api_address,
                 capacity = excluded.capacity, usage = excluded.usage,
                 heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&node.id)
        .bind(&node.address)
        .bind(node.state.as_str())
        .bind(serde_json::to_string(&node.capacity).expect("json"))
        .bind(serde_json::to_string(&node.usage).expect("json"))
        .bind(node.registered_at.to_rfc3339())
        .bind(node.heartbeat_at.to_rfc3339())
        .bind(&node.api_address)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A node's periodic report; false when the node is not registered.
    pub async fn heartbeat(&self, id: &str, usage: &NodeUsage) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE nodes SET usage = $1, heartbeat_at = $2 WHERE id = $3")
            .bind(serde_json::to_string(usage).expect("json"))
            .bind(Utc::now().to_rfc3339())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every node, oldest first.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, sqlx::Error> {
        sqlx::query("SELECT * FROM nodes ORDER BY registered_at, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(decode_node)
            .collect()
    }

    pub async fn node(&self, id: &str) -> Result<Option<NodeRow>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM nodes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| decode_node(&r)).transpose()
    }

    /// Sets whether a node takes new sandboxes; false for an unknown node.
    pub async fn set_node_state(&self, id: &str, state: NodeState) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE nodes SET state = $1 WHERE id = $2")
            .bind(state.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}

fn decode_node(r: &AnyRow) -> Result<NodeRow, sqlx::Error> {
    let state: String = r.try_get("state")?;
    let json = |c: &str| -> Result<String, sqlx::Error> { r.try_get(c) };
    let bad = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
    Ok(NodeRow {
        id: r.try_get("id")?,
        address: r.try_get("address")?,
        api_address: r.try_get("api_address")?,
        state: NodeState::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("bad node state {state}").into()))?,
        capacity: serde_json::from_str(&json("capacity")?).map_err(bad)?,
        usage: serde_json::from_str(&json("usage")?).map_err(bad)?,
        registered_at: parse_time(&json("registered_at")?)?,
        heartbeat_at: parse_time(&json("heartbeat_at")?)?,
    })
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// What a cluster-wide lock guards: one key per concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum LockKey {
    /// The blob store: writers shared, garbage collection exclusive.
    Blobs = 0x5bc0_0001,
    /// The work one server does for all (finding lost nodes).
    ClusterSweep = 0x5bc0_0002,
    /// Placing the sandboxes that wait for a node with room.
    Placement = 0x5bc0_0003,
    /// Keeping warm pools filled.
    Pools = 0x5bc0_0004,
}

/// The PostgreSQL channel nodes are woken on; the payload is a node id.
pub const WAKE_CHANNEL: &str = "sbx_wake_node";

/// The ids of nodes woken (see [`Store::wake_node`]). A lost connection is
/// made again on the next [`Wakes::next`]; wakes sent meanwhile are lost,
/// so listeners keep a periodic look as well.
pub struct Wakes(sqlx::postgres::PgListener);

impl Wakes {
    /// The next node woken.
    pub async fn next(&mut self) -> Result<String, sqlx::Error> {
        Ok(self.0.recv().await?.payload().to_string())
    }
}

/// A PostgreSQL advisory lock, held by a database session of its own (not
/// one of the pool's: a lock may be held for minutes) until dropped; the
/// session's end releases it, also when the process dies. May be dropped
/// on any thread.
pub struct AdvisoryLock {
    /// `None` on SQLite, where one server is alone.
    _session: Option<sqlx::AnyConnection>,
}

impl Store {
    /// Takes `key` across every process on this database, shared or alone,
    /// waiting as long as it takes. `None` on SQLite, which only one
    /// server uses: its callers lock in-process.
    pub async fn advisory_lock(
        &self,
        key: LockKey,
        shared: bool,
    ) -> Result<Option<AdvisoryLock>, sqlx::Error> {
        if self.kind != Kind::Postgres {
            return Ok(None);
        }
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&self.url).await?;
        let sql = if shared {
            "SELECT pg_advisory_lock_shared($1)"
        } else {
            "SELECT pg_advisory_lock($1)"
        };
        sqlx::query(sql).bind(key as i64).execute(&mut conn).await?;
        Ok(Some(AdvisoryLock {
            _session: Some(conn),
        }))
    }

    /// Takes `key` alone if nobody holds it, without waiting: `None` when
    /// another process has it. Always taken on SQLite.
    pub async fn try_advisory_lock(
        &self,
        key: LockKey,
    ) -> Result<Option<AdvisoryLock>, sqlx::Error> {
        if self.kind != Kind::Postgres {
            return Ok(Some(AdvisoryLock { _session: None }));
        }
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&self.url).await?;
        let taken: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(key as i64)
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        Ok(taken.then_some(AdvisoryLock {
            _session: Some(conn),
        }))
    }

    /// Wakes node `node` to look for work placed on it (a PostgreSQL
    /// `NOTIFY` on [`WAKE_CHANNEL`]); nothing on SQLite, where one server
    /// is alone and starts its own work at once.
    pub async fn wake_node(&self, node: &str) -> Result<(), sqlx::Error> {
        if self.kind != Kind::Postgres {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The nodes woken by [`Self::wake_node`] from now on, over a session
    /// of its own; `None` on SQLite.
    pub async fn wakes(&self) -> Result<Option<Wakes>, sqlx::Error> {
        if self.kind != Kind::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(WAKE_CHANNEL).await?;
        Ok(Some(Wakes(listener)))
    }

    /// Fails the snapshots `node` was capturing (its node is gone); how many.
    pub async fn fail_node_captures(&self, node: &str, error: &str) -> Result<u64, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE snapshots SET status = $1, error = $2 WHERE node_id = $3 AND status = $4",
        )
        .bind(SnapshotStatus::Failed.as_str())
        .bind(error)
        .bind(node)
        .bind(SnapshotStatus::InProgress.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Fails every sandbox of `node` in one of `statuses` with `reason`
    /// (its node is gone); how many.
    pub async fn fail_node_sandboxes(
        &self,
        node: &str,
        statuses: &[SandboxStatus],
        reason: &str,
        error: &str,
    ) -> Result<u64, sqlx::Error> {
        let r = sqlx::query(&format!(
            "UPDATE sandboxes SET status = $1, pending_reason = NULL,
                 termination_reason = $2, error = $3, terminated_at = $4
             WHERE node_id = $5 AND status IN ({})",
            sql_set(statuses)
        ))
        .bind(SandboxStatus::Failed.as_str())
        .bind(reason)
        .bind(error)
        .bind(Utc::now().to_rfc3339())
        .bind(node)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() > 0 {
            self.statuses_changed();
        }
        Ok(r.rows_affected())
    }
}

/// Facts learnt while a snapshot is made; `None` keeps the stored value.
#[derive(Debug, Default, Clone, Copy)]
pub struct SnapshotUpdate<'a> {
    pub error: Option<&'a str>,
    pub size_bytes: Option<u64>,
    pub stored_bytes: Option<u64>,
    pub pause_ms: Option<u64>,
}

fn decode_snapshot(r: &AnyRow) -> Result<SnapshotRow, sqlx::Error> {
    let bad = |what: &str, v: &str| sqlx::Error::Decode(format!("bad {what} {v}").into());
    let kind: String = r.try_get("snapshot_type")?;
    let status: String = r.try_get("status")?;
    let spec: String = r.try_get("spec")?;
    let created: String = r.try_get("created_at")?;
    let num = |c: &str| -> Result<Option<u64>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(c)?.map(|v| v as u64))
    };
    Ok(SnapshotRow {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        sandbox_id: r.try_get("sandbox_id")?,
        snapshot_type: SnapshotType::parse(&kind).ok_or_else(|| bad("type", &kind))?,
        status: SnapshotStatus::parse(&status).ok_or_else(|| bad("status", &status))?,
        error: r.try_get("error")?,
        spec: serde_json::from_str(&spec).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        size_bytes: num("size_bytes")?,
        stored_bytes: num("stored_bytes")?,
        pause_ms: num("pause_ms")?,
        created_at: parse_time(&created)?,
        node_id: r.try_get("node_id")?,
    })
}

/// `'a','b'` for an SQL `IN (…)`: status strings are fixed identifiers, never user input.
fn sql_set(statuses: &[SandboxStatus]) -> String {
    statuses
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode(r: &AnyRow) -> Result<SandboxRow, sqlx::Error> {
    let status: String = r.try_get("status")?;
    let spec: String = r.try_get("spec")?;
    let created: String = r.try_get("created_at")?;
    let terminated: Option<String> = r.try_get("terminated_at")?;
    Ok(SandboxRow {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        name: r.try_get("name")?,
        status: SandboxStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("bad status {status}").into()))?,
        spec: serde_json::from_str(&spec).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        pending_reason: r.try_get("pending_reason")?,
        termination_reason: r.try_get("termination_reason")?,
        error: r.try_get("error")?,
        created_at: parse_time(&created)?,
        terminated_at: terminated.as_deref().map(parse_time).transpose()?,
        node_id: r.try_get("node_id")?,
        pool_id: r.try_get("pool_id")?,
        pool_state: r
            .try_get::<Option<String>, _>("pool_state")?
            .as_deref()
            .and_then(PoolState::parse),
    })
}

/// `url` without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the stores of one test run on; dropped at its end.
    struct Databases {
        _dir: tempfile::TempDir,
        _pg: sbx_testkit::postgres::Postgres,
    }

    /// A fresh store on SQLite and one on PostgreSQL: every test runs the
    /// same steps on both.
    async fn stores() -> (Vec<Store>, Databases) {
        let dir = tempfile::tempdir().unwrap();
        let pg = sbx_testkit::postgres::Postgres::start();
        let stores = vec![
            Store::open(&dir.path().join("state.db")).await.unwrap(),
            Store::connect(&pg.url("postgres")).await.unwrap(),
        ];
        assert_eq!(stores[0].kind(), Kind::Sqlite);
        assert_eq!(stores[1].kind(), Kind::Postgres);
        (stores, Databases { _dir: dir, _pg: pg })
    }

    pub(crate) fn row(id: &str, name: Option<&str>) -> SandboxRow {
        SandboxRow {
            id: id.into(),
            namespace: "default".into(),
            name: name.map(Into::into),
            status: SandboxStatus::Pending,
            spec: SandboxSpec {
                image: "default".into(),
                image_id: None,
                resources: Resources {
                    cpus: 1.0,
                    memory_mb: 1024,
                    disk_mb: 10240,
                },
                timeout_secs: None,
                entrypoint: None,
                secret_names: None,
                network: NetworkPolicy::default(),
                allow_unauthenticated_access: false,
                exposed_ports: vec![],
                auto_resume: true,
                snapshot_id: None,
                active_since: None,
                max_pending_secs: None,
                suspend_image: None,
            },
            pending_reason: None,
            termination_reason: None,
            error: None,
            created_at: Utc::now(),
            terminated_at: None,
            node_id: Some("n1".into()),
            pool_id: None,
            pool_state: None,
        }
    }

    #[tokio::test]
    async fn names_are_unique_among_live_sandboxes_only() {
        let (stores, _dbs) = stores().await;
        for s in stores {
            s.insert(&row("a", Some("web"))).await.unwrap();
            assert!(matches!(
                s.insert(&row("b", Some("web"))).await,
                Err(StoreError::NameTaken(_))
            ));
            assert!(s
                .transition(
                    "a",
                    &[SandboxStatus::Pending],
                    SandboxStatus::Terminated,
                    Some("user"),
                    None
                )
                .await
                .unwrap());
            s.insert(&row("b", Some("web"))).await.unwrap();
            // The live sandbox wins a lookup by name.
            assert_eq!(s.find("default", "web").await.unwrap().unwrap().id, "b");
            assert_eq!(
                s.find("default", "a").await.unwrap().unwrap().status,
                SandboxStatus::Terminated
            );
            assert!(s.find("other", "b").await.unwrap().is_none());
            assert_eq!(s.list("default", None, false).await.unwrap().len(), 1);
            assert_eq!(s.list("default", None, true).await.unwrap().len(), 2);
        }
    }

    #[tokio::test]
    async fn a_resume_sets_status_spec_and_error_together_only_when_suspended() {
        let (stores, _dbs) = stores().await;
        for s in stores {
            s.insert(&row("a", None)).await.unwrap();
            let mut spec = s.get("a").await.unwrap().unwrap().spec;
            spec.active_since = Some(Utc::now());
            assert!(
                !s.mark_resumed("a", &spec).await.unwrap(),
                "pending, not suspended"
            );
            let any = [SandboxStatus::Pending];
            assert!(s
                .transition("a", &any, SandboxStatus::Suspended, None, Some("x"))
                .await
                .unwrap());
            assert!(s.mark_resumed("a", &spec).await.unwrap());
            let r = s.get("a").await.unwrap().unwrap();
            assert_eq!(r.status, SandboxStatus::Running);
            assert_eq!(r.error, None);
            assert_eq!(r.spec.active_since, spec.active_since);
            assert!(
                !s.mark_resumed("a", &spec).await.unwrap(),
                "already running"
            );
        }
    }

    #[tokio::test]
    async fn transitions_only_from_the_given_states() {
        let (stores, _dbs) = stores().await;
        for s in stores {
            s.insert(&row("a", None)).await.unwrap();
            assert!(!s
                .transition(
                    "a",
                    &[SandboxStatus::Running],
                    SandboxStatus::Terminated,
                    None,
                    None
                )
                .await
                .unwrap());
            assert!(s
                .transition(
                    "a",
                    &[SandboxStatus::Pending],
                    SandboxStatus::Running,
                    None,
                    None
                )
                .await
                .unwrap());
            let r = s.get("a").await.unwrap().unwrap();
            assert_eq!(r.status, SandboxStatus::Running);
            assert!(r.terminated_at.is_none());
        }
    }

    #[tokio::test]
    async fn the_status_version_grows_with_each_status_change_only() {
        let (stores, _dbs) = stores().await;
        for s in stores {
            let v0 = s.status_version();
            s.insert(&row("a", Some("web"))).await.unwrap();
            s.set_name("a", Some("api")).await.unwrap();
            assert_eq!(s.status_version(), v0, "no status changed");
            let pending = [SandboxStatus::Pending];
            assert!(s
                .transition("a", &pending, SandboxStatus::Running, None, None)
                .await
                .unwrap());
            assert_eq!(s.status_version(), v0 + 1);
            // A transition that did not apply changes nothing.
            assert!(!s
                .transition("a", &pending, SandboxStatus::Failed, None, None)
                .await
                .unwrap());
            assert_eq!(s.status_version(), v0 + 1);
            let failed = s
                .fail_node_sandboxes("n1", &[SandboxStatus::Running], "node_lost", "gone")
                .await
                .unwrap();
            assert_eq!(failed, 1);
            assert_eq!(s.status_version(), v0 + 2);
        }
    }

    #[tokio::test]
    async fn a_database_from_before_migrations_opens_with_its_rows() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.db");
        {
            // The schema as the server created it before migrations.
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", path.display()))
                .await
                .unwrap();
            sqlx::raw_sql(include_str!(
                "../migrations/0001_sandboxes_and_snapshots.sql"
            ))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let s = Store::open(&path).await.unwrap();
        s.insert(&row("a", Some("web"))).await.unwrap();
        drop(s);
        let s = Store::open(&path).await.unwrap();
        assert_eq!(s.find("default", "web").await.unwrap().unwrap().id, "a");
    }

    #[tokio::test]
    async fn large_snapshot_sizes_round_trip() {
        let (stores, _dbs) = stores().await;
        for s in stores {
            let snap = SnapshotRow {
                id: "s1".into(),
                namespace: "default".into(),
                sandbox_id: "a".into(),
                snapshot_type: SnapshotType::Memory,
                status: SnapshotStatus::InProgress,
                error: None,
                spec: row("a", None).spec,
                size_bytes: None,
                stored_bytes: None,
                pause_ms: None,
                created_at: Utc::now(),
                node_id: None,
            };
            s.insert_snapshot(&snap).await.unwrap();
            let big = 5u64 << 40;
            let update = SnapshotUpdate {
                size_bytes: Some(big),
                ..Default::default()
            };
            assert!(s
                .snapshot_transition("s1", snap.status, SnapshotStatus::Completed, update)
                .await
                .unwrap());
            let got = s.snapshot(Some("default"), "s1").await.unwrap().unwrap();
            assert_eq!(got.size_bytes, Some(big), "{:?}", s.kind());
            assert_eq!(got.status, SnapshotStatus::Completed);
            assert!(s.snapshot(Some("other"), "s1").await.unwrap().is_none());
            // Completed: a lost node's captures under way fail, not this one.
            assert_eq!(s.fail_node_captures("n1", "gone").await.unwrap(), 0);
            assert_eq!(s.snapshots("default", Some("a")).await.unwrap().len(), 1);
            assert!(s.delete_snapshot("s1").await.unwrap());
            assert!(!s.delete_snapshot("s1").await.unwrap());
        }
    }

    #[tokio::test]
    async fn metrics_counts_group_by_status_and_node() {
        let (stores, _dbs) = stores().await;
        for s in stores {
            assert_eq!(s.completed_snapshot_bytes().await.unwrap(), (0, 0, 0));
            s.insert(&row("a", None)).await.unwrap();
            s.insert(&row("b", None)).await.unwrap();
            let mut old = row("c", None);
            old.node_id = None;
            s.insert(&old).await.unwrap();
            s.transition(
                "b",
                &[SandboxStatus::Pending],
                SandboxStatus::Running,
                None,
                None,
            )
            .await
            .unwrap();
            let mut got = s.count_by_status_and_node().await.unwrap();
            got.sort_by_key(|(st, n, _)| (st.as_str(), n.clone()));
            assert_eq!(
                got,
                vec![
                    (SandboxStatus::Pending, None, 1),
                    (SandboxStatus::Pending, Some("n1".into()), 1),
                    (SandboxStatus::Running, Some("n1".into()), 1),
                ],
                "{:?}",
                s.kind()
            );
            for (id, status, size, stored) in [
                ("s1", SnapshotStatus::Completed, 5u64 << 40, 1000u64),
                ("s2", SnapshotStatus::Completed, 300, 200),
                ("s3", SnapshotStatus::LocalReady, 7, 7),
            ] {
                let snap = SnapshotRow {
                    id: id.into(),
                    namespace: "default".into(),
                    sandbox_id: "a".into(),
                    snapshot_type: SnapshotType::Memory,
                    status: SnapshotStatus::InProgress,
                    error: None,
                    spec: row("a", None).spec,
                    size_bytes: None,
                    stored_bytes: None,
                    pause_ms: None,
                    created_at: Utc::now(),
                    node_id: None,
                };
                s.insert_snapshot(&snap).await.unwrap();
                let update = SnapshotUpdate {
                    size_bytes: Some(size),
                    stored_bytes: Some(stored),
                    ..Default::default()
                };
                s.snapshot_transition(id, snap.status, status, update)
                    .await
                    .unwrap();
            }
            assert_eq!(
                s.completed_snapshot_bytes().await.unwrap(),
                (2, (5u64 << 40) + 300, 1200),
                "{:?}",
                s.kind()
            );
        }
    }

    #[tokio::test]
    async fn a_claim_takes_a_running_warm_sandbox_once() {
        let (stores, _dbs) = stores().await;
        for s in &stores {
            let now = Utc::now();
            let pool = PoolRow {
                id: "pool1".into(),
                namespace: "default".into(),
                spec: PoolSpec {
                    sandbox: row("x", None).spec,
                    warm: 2,
                    max: Some(3),
                },
                created_at: now,
                updated_at: now,
            };
            s.insert_pool(&pool).await.unwrap();
            assert_eq!(s.pools(Some("default")).await.unwrap().len(), 1);
            assert!(s.pool(Some("other"), "pool1").await.unwrap().is_none());
            for (id, status) in [
                ("w1", SandboxStatus::Running),
                ("w2", SandboxStatus::Running),
                ("w3", SandboxStatus::Pending),
            ] {
                let mut r = row(id, None);
                r.status = status;
                r.pool_id = Some("pool1".into());
                r.pool_state = Some(PoolState::Warm);
                r.created_at = Utc::now();
                s.insert(&r).await.unwrap();
            }
            let first = s.claim_warm("pool1", Some("mine")).await.unwrap().unwrap();
            assert_eq!(
                (first.id.as_str(), first.pool_state),
                ("w1", Some(PoolState::Claimed))
            );
            assert_eq!(first.name.as_deref(), Some("mine"));
            // A name is unique among live sandboxes, claimed ones too.
            assert!(matches!(
                s.claim_warm("pool1", Some("mine")).await,
                Err(StoreError::NameTaken(_))
            ));
            let second = s.claim_warm("pool1", None).await.unwrap().unwrap();
            assert_eq!(second.id, "w2");
            // Then the one still starting; then none.
            let third = s.claim_warm("pool1", None).await.unwrap().unwrap();
            assert_eq!(
                (third.id.as_str(), third.status),
                ("w3", SandboxStatus::Pending)
            );
            assert!(s.claim_warm("pool1", None).await.unwrap().is_none());
            let live = s
                .pool_sandboxes("pool1", &[SandboxStatus::Running, SandboxStatus::Pending])
                .await
                .unwrap();
            assert_eq!(live.len(), 3);
            let spec = PoolSpec {
                warm: 1,
                ..pool.spec.clone()
            };
            assert!(s.update_pool("pool1", &spec).await.unwrap());
            assert_eq!(s.pool(None, "pool1").await.unwrap().unwrap().spec.warm, 1);
            let mut late = row("w4", None);
            late.pool_id = Some("pool1".into());
            late.pool_state = Some(PoolState::Warm);
            s.insert(&late).await.unwrap();
            assert!(s
                .orphaned_warm(&[SandboxStatus::Pending])
                .await
                .unwrap()
                .is_empty());
            assert!(s.delete_pool("pool1").await.unwrap());
            assert!(!s.delete_pool("pool1").await.unwrap());
            // A refill that raced the delete is found.
            let orphans = s.orphaned_warm(&[SandboxStatus::Pending]).await.unwrap();
            assert_eq!(
                orphans.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
                ["w4"]
            );
        }
    }

    #[tokio::test]
    async fn a_node_woken_through_one_store_is_heard_through_another() {
        let (stores, _dbs) = stores().await;
        assert!(
            stores[0].wakes().await.unwrap().is_none(),
            "SQLite: no wakes"
        );
        stores[0].wake_node("n1").await.unwrap();
        let pg = &stores[1];
        let other = Store::connect(&pg.url).await.unwrap();
        let mut wakes = other.wakes().await.unwrap().unwrap();
        pg.wake_node("n2").await.unwrap();
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), wakes.next())
            .await
            .expect("a wake")
            .unwrap();
        assert_eq!(woken, "n2");
    }

    #[tokio::test]
    async fn advisory_locks_share_or_exclude_across_stores() {
        let pg = sbx_testkit::postgres::Postgres::start();
        let a = Store::connect(&pg.url("postgres")).await.unwrap();
        let b = Store::connect(&pg.url("postgres")).await.unwrap();
        let r1 = a.advisory_lock(LockKey::Blobs, true).await.unwrap();
        let r2 = b.advisory_lock(LockKey::Blobs, true).await.unwrap();
        assert!(r1.is_some() && r2.is_some(), "shared locks coexist");
        let exclusive = tokio::spawn(async move { b.advisory_lock(LockKey::Blobs, false).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !exclusive.is_finished(),
            "exclusive waits for the shared ones"
        );
        drop(r1);
        drop(r2);
        let held = tokio::time::timeout(std::time::Duration::from_secs(10), exclusive)
            .await
            .expect("exclusive lock after the shared ones are dropped")
            .unwrap()
            .unwrap();
        assert!(held.is_some());
        let d = tempfile::tempdir().unwrap();
        let lite = Store::open(&d.path().join("s.db")).await.unwrap();
        assert!(lite
            .advisory_lock(LockKey::Blobs, false)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn nodes_register_heartbeat_and_keep_their_drain() {
        let (stores, _dbs) = stores().await;
        for s in stores {
            let mut node = NodeRow {
                id: "n1".into(),
                address: Some("10.0.0.1:8901".into()),
                api_address: Some("10.0.0.1:8900".into()),
                state: NodeState::Ready,
                capacity: NodeCapacity {
                    cpus: 2,
                    memory_mb: 24_000,
                    max_sandboxes: None,
                },
                usage: NodeUsage::default(),
                registered_at: Utc::now(),
                heartbeat_at: Utc::now(),
            };
            s.register_node(&node).await.unwrap();
            assert!(s.set_node_state("n1", NodeState::Draining).await.unwrap());
            assert!(!s.set_node_state("nope", NodeState::Draining).await.unwrap());
            // Registered again (a restart): new address, still draining.
            node.address = Some("10.0.0.2:8901".into());
            s.register_node(&node).await.unwrap();
            let usage = NodeUsage {
                sandboxes: 3,
                memory_available_mb: 1000,
                images: vec!["img-1".into()],
                snapshots: vec![],
            };
            assert!(s.heartbeat("n1", &usage).await.unwrap());
            assert!(!s.heartbeat("nope", &usage).await.unwrap());
            let got = s.node("n1").await.unwrap().unwrap();
            assert_eq!(got.state, NodeState::Draining, "{:?}", s.kind());
            assert_eq!(got.address.as_deref(), Some("10.0.0.2:8901"));
            assert_eq!(got.api_address.as_deref(), Some("10.0.0.1:8900"));
            assert_eq!(got.usage, usage);
            assert_eq!(got.capacity, node.capacity);
            assert_eq!(s.nodes().await.unwrap().len(), 1);
            // A sandbox records its node.
            s.insert(&row("a", None)).await.unwrap();
            assert_eq!(
                s.get("a").await.unwrap().unwrap().node_id.as_deref(),
                Some("n1")
            );
        }
    }

    #[tokio::test]
    async fn bad_urls_are_refused_and_passwords_never_shown() {
        for url in ["mysql://x/y", "sqlite:", "state.db"] {
            assert!(matches!(
                Store::connect(url).await,
                Err(OpenError::BadUrl(_))
            ));
        }
        assert_eq!(
            redact("postgres://sbx:hunter2@127.0.0.1:1/db"),
            "postgres://sbx:***@127.0.0.1:1/db"
        );
        assert_eq!(redact("postgres://sbx@h/db"), "postgres://sbx@h/db");
        assert_eq!(redact("sqlite:/x/state.db"), "sqlite:/x/state.db");
    }
}
