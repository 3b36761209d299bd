//! The state store: the truth about sandboxes, in SQLite (WAL).

use chrono::{DateTime, Utc};
use sbx_api::sandbox::{NetworkPolicy, Resources, SandboxStatus};
use sbx_api::snapshot::{SnapshotStatus, SnapshotType};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::str::FromStr;

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
}

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
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Woken whenever a sandbox changes status (see [`Store::status_changed`]).
    changed: std::sync::Arc<tokio::sync::Notify>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    pending_reason TEXT,
    termination_reason TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    terminated_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS sandboxes_live_name ON sandboxes(namespace, name)
    WHERE name IS NOT NULL AND status NOT IN ('terminated', 'failed', 'timeout');
CREATE INDEX IF NOT EXISTS sandboxes_status ON sandboxes(status);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    snapshot_type TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    spec TEXT NOT NULL,
    size_bytes INTEGER,
    stored_bytes INTEGER,
    pause_ms INTEGER,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_sandbox ON snapshots(namespace, sandbox_id);
"#;

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

impl Store {
    pub async fn open(path: &Path) -> Result<Self, sqlx::Error> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Self {
            pool,
            changed: Default::default(),
        })
    }

    pub async fn insert(&self, row: &SandboxRow) -> Result<(), StoreError> {
        let r = sqlx::query(
            "INSERT INTO sandboxes (id, namespace, name, status, spec, pending_reason, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&row.id)
        .bind(&row.namespace)
        .bind(&row.name)
        .bind(row.status.as_str())
        .bind(serde_json::to_string(&row.spec).expect("json"))
        .bind(&row.pending_reason)
        .bind(row.created_at.to_rfc3339())
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
        let scope = if namespace.is_some() {
            "namespace = ? AND"
        } else {
            ""
        };
        let sql = format!(
            "SELECT * FROM sandboxes WHERE {scope} (id = ? OR name = ?)
             ORDER BY (id = ?) DESC, (status IN {FINAL}) ASC, (namespace = 'default') DESC,
                      created_at DESC LIMIT 1"
        );
        let mut q = sqlx::query(&sql);
        if let Some(ns) = namespace {
            q = q.bind(ns);
        }
        let row = q
            .bind(key)
            .bind(key)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| decode(&r)).transpose()
    }

    pub async fn get(&self, id: &str) -> Result<Option<SandboxRow>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM sandboxes WHERE id = ?")
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
        let mut sql = String::from("SELECT * FROM sandboxes WHERE namespace = ?");
        if status.is_some() {
            sql.push_str(" AND status = ?");
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
            "UPDATE sandboxes SET status = ?, pending_reason = NULL,
                 termination_reason = COALESCE(?, termination_reason),
                 error = COALESCE(?, error),
                 terminated_at = COALESCE(?, terminated_at)
             WHERE id = ? AND status IN ({list})"
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
    fn status_moved(&self, r: &sqlx::sqlite::SqliteQueryResult) -> bool {
        let moved = r.rows_affected() == 1;
        if moved {
            self.changed.notify_waiters();
        }
        moved
    }

    /// Completes at the next status change of any sandbox made through this
    /// store after the future is enabled (`Notified::enable`) or first polled.
    pub fn status_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Sets (or, with `None`, clears) the error a sandbox reports.
    pub async fn set_error(&self, id: &str, error: Option<&str>) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET error = ? WHERE id = ?")
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_name(&self, id: &str, name: Option<&str>) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE sandboxes SET name = ? WHERE id = ?")
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
            "UPDATE sandboxes SET status = ?, spec = ?, error = NULL, pending_reason = NULL
             WHERE id = ? AND status = ?",
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
        sqlx::query("UPDATE sandboxes SET spec = ? WHERE id = ?")
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
            "INSERT INTO snapshots (id, namespace, sandbox_id, snapshot_type, status, spec, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(&s.namespace)
        .bind(&s.sandbox_id)
        .bind(s.snapshot_type.as_str())
        .bind(s.status.as_str())
        .bind(serde_json::to_string(&s.spec).expect("json"))
        .bind(s.created_at.to_rfc3339())
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
            sqlx::query("SELECT * FROM snapshots WHERE id = ? AND (? IS NULL OR namespace = ?)")
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
            "SELECT * FROM snapshots WHERE namespace = ? AND (? IS NULL OR sandbox_id = ?)
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
        sqlx::query("SELECT * FROM snapshots WHERE status = ?")
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
            "UPDATE snapshots SET status = ?, error = COALESCE(?, error),
                 size_bytes = COALESCE(?, size_bytes), stored_bytes = COALESCE(?, stored_bytes),
                 pause_ms = COALESCE(?, pause_ms)
             WHERE id = ? AND status = ?",
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
        let r = sqlx::query("DELETE FROM snapshots WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
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

fn decode_snapshot(r: &sqlx::sqlite::SqliteRow) -> Result<SnapshotRow, sqlx::Error> {
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
        created_at: DateTime::parse_from_rfc3339(&created)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
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

fn decode(r: &sqlx::sqlite::SqliteRow) -> Result<SandboxRow, sqlx::Error> {
    let status: String = r.try_get("status")?;
    let spec: String = r.try_get("spec")?;
    let created: String = r.try_get("created_at")?;
    let terminated: Option<String> = r.try_get("terminated_at")?;
    let parse_time = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: Option<&str>) -> SandboxRow {
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
            },
            pending_reason: None,
            termination_reason: None,
            error: None,
            created_at: Utc::now(),
            terminated_at: None,
        }
    }

    #[tokio::test]
    async fn names_are_unique_among_live_sandboxes_only() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).await.unwrap();
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

    #[tokio::test]
    async fn a_resume_sets_status_spec_and_error_together_only_when_suspended() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).await.unwrap();
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

    #[tokio::test]
    async fn transitions_only_from_the_given_states() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("state.db")).await.unwrap();
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
