//! Warm pools: their templates, and the claim that hands one of a pool's
//! warm sandboxes to a user.

use crate::{decode, parse_time, sql_set, PoolState, SandboxRow, SandboxSpec, Store, StoreError};
use chrono::{DateTime, Utc};
use sbx_api::sandbox::SandboxStatus;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

/// What a pool keeps: sandboxes of `sandbox`, `warm` of them booted and
/// unclaimed, at most `max` in all (warm and claimed) when capped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolSpec {
    pub sandbox: SandboxSpec,
    pub warm: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct PoolRow {
    pub id: String,
    pub namespace: String,
    pub spec: PoolSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn decode_pool(r: &AnyRow) -> Result<PoolRow, sqlx::Error> {
    let spec: String = r.try_get("spec")?;
    let created: String = r.try_get("created_at")?;
    let updated: String = r.try_get("updated_at")?;
    Ok(PoolRow {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        spec: serde_json::from_str(&spec).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        created_at: parse_time(&created)?,
        updated_at: parse_time(&updated)?,
    })
}

impl Store {
    pub async fn insert_pool(&self, pool: &PoolRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO pools (id, namespace, spec, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&pool.id)
        .bind(&pool.namespace)
        .bind(serde_json::to_string(&pool.spec).expect("json"))
        .bind(pool.created_at.to_rfc3339())
        .bind(pool.updated_at.to_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A pool of `namespace` (any namespace: `None`).
    pub async fn pool(
        &self,
        namespace: Option<&str>,
        id: &str,
    ) -> Result<Option<PoolRow>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM pools WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .as_ref()
            .map(decode_pool)
            .transpose()?
            .filter(|p| namespace.is_none_or(|ns| p.namespace == ns)))
    }

    /// The pools of `namespace`, oldest first (every namespace: `None`).
    pub async fn pools(&self, namespace: Option<&str>) -> Result<Vec<PoolRow>, sqlx::Error> {
        let rows = match namespace {
            Some(ns) => {
                sqlx::query("SELECT * FROM pools WHERE namespace = $1 ORDER BY created_at")
                    .bind(ns)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM pools ORDER BY created_at")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(decode_pool).collect()
    }

    /// Replaces a pool's spec; false when it is gone.
    pub async fn update_pool(&self, id: &str, spec: &PoolSpec) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE pools SET spec = $1, updated_at = $2 WHERE id = $3")
            .bind(serde_json::to_string(spec).expect("json"))
            .bind(Utc::now().to_rfc3339())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn delete_pool(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM pools WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The sandboxes of pool `id` in one of `statuses`, oldest first.
    pub async fn pool_sandboxes(
        &self,
        id: &str,
        statuses: &[SandboxStatus],
    ) -> Result<Vec<SandboxRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT * FROM sandboxes WHERE pool_id = $1 AND status IN ({}) ORDER BY created_at",
            sql_set(statuses)
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(decode)
        .collect()
    }

    /// Warm sandboxes in one of `statuses` whose pool is gone (a refill
    /// that raced the pool's delete).
    pub async fn orphaned_warm(
        &self,
        statuses: &[SandboxStatus],
    ) -> Result<Vec<SandboxRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT * FROM sandboxes WHERE pool_state = $1 AND status IN ({})
                 AND pool_id NOT IN (SELECT id FROM pools)",
            sql_set(statuses)
        ))
        .bind(PoolState::Warm.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(decode)
        .collect()
    }

    /// Hands a warm sandbox of pool `id` to a user, named `name`: the
    /// oldest running one, else the oldest still starting; `None` when it
    /// has none. Two claims never get the same one.
    pub async fn claim_warm(
        &self,
        id: &str,
        name: Option<&str>,
    ) -> Result<Option<SandboxRow>, StoreError> {
        loop {
            let candidate: Option<String> = sqlx::query(
                "SELECT id FROM sandboxes WHERE pool_id = $1 AND pool_state = $2
                     AND status IN ($3, $4)
                 ORDER BY CASE WHEN status = $3 THEN 0 ELSE 1 END, created_at LIMIT 1",
            )
            .bind(id)
            .bind(PoolState::Warm.as_str())
            .bind(SandboxStatus::Running.as_str())
            .bind(SandboxStatus::Pending.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get("id"))
            .transpose()?;
            let Some(sandbox) = candidate else {
                return Ok(None);
            };
            let claimed = sqlx::query(
                "UPDATE sandboxes SET pool_state = $1, name = $2
                 WHERE id = $3 AND pool_state = $4 AND status IN ($5, $6)",
            )
            .bind(PoolState::Claimed.as_str())
            .bind(name)
            .bind(&sandbox)
            .bind(PoolState::Warm.as_str())
            .bind(SandboxStatus::Running.as_str())
            .bind(SandboxStatus::Pending.as_str())
            .execute(&self.pool)
            .await;
            match claimed {
                Ok(r) if r.rows_affected() == 1 => return Ok(self.get(&sandbox).await?),
                // Another claim took it first (or it stopped): the next.
                Ok(_) => continue,
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    return Err(StoreError::NameTaken(name.unwrap_or_default().to_string()))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
