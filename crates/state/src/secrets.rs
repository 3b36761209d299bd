//! Secrets of a namespace, as the server sealed them: this store never
//! sees a plaintext value.

use crate::{parse_time, Store};
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A secret's name and dates (what may be shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A sealed value: opaque text made by the server's secrets key.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub String);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealed(..)")
    }
}

fn meta(r: &AnyRow) -> Result<SecretMeta, sqlx::Error> {
    let created: String = r.try_get("created_at")?;
    let updated: String = r.try_get("updated_at")?;
    Ok(SecretMeta {
        name: r.try_get("name")?,
        created_at: parse_time(&created)?,
        updated_at: parse_time(&updated)?,
    })
}

impl Store {
    /// Sets a secret (new, or a new value for an existing one: its
    /// `created_at` stays); returns its dates.
    pub async fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        sealed: &Sealed,
    ) -> Result<SecretMeta, sqlx::Error> {
        let now = Utc::now().to_rfc3339();
        sqlx::query(
            "INSERT INTO secrets (namespace, name, sealed, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (namespace, name) DO UPDATE SET sealed = excluded.sealed,
                 updated_at = excluded.updated_at",
        )
        .bind(namespace)
        .bind(name)
        .bind(&sealed.0)
        .bind(&now)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "SELECT name, created_at, updated_at FROM secrets WHERE namespace = $1 AND name = $2",
        )
        .bind(namespace)
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        meta(&row)
    }

    /// The secrets of a namespace, by name: names and dates only.
    pub async fn secrets(&self, namespace: &str) -> Result<Vec<SecretMeta>, sqlx::Error> {
        sqlx::query(
            "SELECT name, created_at, updated_at FROM secrets WHERE namespace = $1 ORDER BY name",
        )
        .bind(namespace)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(meta)
        .collect()
    }

    /// The sealed values of `names` in a namespace that exist (in no order).
    pub async fn sealed_secrets(
        &self,
        namespace: &str,
        names: &[String],
    ) -> Result<Vec<(String, Sealed)>, sqlx::Error> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let params: Vec<String> = (0..names.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT name, sealed FROM secrets WHERE namespace = $1 AND name IN ({})",
            params.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(namespace);
        for n in names {
            q = q.bind(n);
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("name")?, Sealed(r.try_get("sealed")?))))
            .collect()
    }

    /// Deletes a secret; false when there was none.
    pub async fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM secrets WHERE namespace = $1 AND name = $2")
            .bind(namespace)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    #[tokio::test]
    async fn secrets_are_set_listed_updated_and_deleted_per_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let pg = sbx_testkit::postgres::Postgres::start();
        let stores = vec![
            Store::open(&dir.path().join("state.db")).await.unwrap(),
            Store::connect(&pg.url("postgres")).await.unwrap(),
        ];
        assert_eq!(stores[1].kind(), Kind::Postgres);
        for s in stores {
            let kind = s.kind();
            let a = s
                .put_secret("default", "B_KEY", &Sealed("v1:one".into()))
                .await
                .unwrap();
            assert_eq!(a.name, "B_KEY");
            assert_eq!(a.created_at, a.updated_at);
            s.put_secret("default", "A_KEY", &Sealed("v1:two".into()))
                .await
                .unwrap();
            s.put_secret("other", "B_KEY", &Sealed("v1:three".into()))
                .await
                .unwrap();
            // A new value: same created_at, later updated_at.
            let again = s
                .put_secret("default", "B_KEY", &Sealed("v1:four".into()))
                .await
                .unwrap();
            assert_eq!(again.created_at, a.created_at, "{kind:?}");
            assert!(again.updated_at >= a.updated_at);
            let names: Vec<String> = s
                .secrets("default")
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.name)
                .collect();
            assert_eq!(names, ["A_KEY", "B_KEY"], "{kind:?}");
            let mut got = s
                .sealed_secrets("default", &["B_KEY".into(), "NOPE".into(), "A_KEY".into()])
                .await
                .unwrap();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(
                got,
                [
                    ("A_KEY".to_string(), Sealed("v1:two".into())),
                    ("B_KEY".to_string(), Sealed("v1:four".into()))
                ]
            );
            assert!(s.sealed_secrets("default", &[]).await.unwrap().is_empty());
            assert!(s.delete_secret("default", "B_KEY").await.unwrap());
            assert!(!s.delete_secret("default", "B_KEY").await.unwrap());
            assert_eq!(s.secrets("default").await.unwrap().len(), 1);
            assert_eq!(
                s.sealed_secrets("other", &["B_KEY".into()]).await.unwrap(),
                [("B_KEY".to_string(), Sealed("v1:three".into()))]
            );
        }
    }
}
