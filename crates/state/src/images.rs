//! The catalog of custom images, shared by every host on the store: which
//! images exist (and under which name), which are removed but still used,
//! and which are gone for good. The files live on the hosts and in the blob
//! store; this is what every host agrees on.

use crate::{parse_time, Store, FINAL};
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::{HashMap, HashSet};

/// Where an image is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageState {
    /// Listed under its name: creates may name it.
    Ready,
    /// Off the list; its files stay while a sandbox or snapshot uses it.
    Removed,
    /// Nothing uses it: its manifest and files go (the row stays, so that
    /// no host brings the image back from its disk).
    Deleted,
}

impl ImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Ready => "ready",
            ImageState::Removed => "removed",
            ImageState::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(ImageState::Ready),
            "removed" => Some(ImageState::Removed),
            "deleted" => Some(ImageState::Deleted),
            _ => None,
        }
    }
}

/// An image in the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    /// `img-` + hex digits, fixed at import.
    pub id: String,
    pub name: String,
    pub state: ImageState,
    /// The image's record (source, config, sizes) as JSON; the store does
    /// not read it.
    pub record: String,
    /// Compressed bytes its files added to the blob store, once there.
    pub stored_bytes: Option<u64>,
    pub created_at: DateTime<Utc>,
}

fn decode_image(r: &AnyRow) -> Result<ImageRow, sqlx::Error> {
    let state: String = r.try_get("state")?;
    let created: String = r.try_get("created_at")?;
    let stored: Option<i64> = r.try_get("stored_bytes")?;
    Ok(ImageRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        state: ImageState::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown image state {state:?}").into()))?,
        record: r.try_get("record")?,
        stored_bytes: stored.map(|b| b.max(0) as u64),
        created_at: parse_time(&created)?,
    })
}

/// One text form for every timestamp of the table, so that text order is
/// time order.
fn time_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// How often a commit is tried when another host commits the same name at
/// the same moment.
const COMMIT_TRIES: usize = 5;

impl Store {
    /// Records image `row` as the ready image of its name; a ready image
    /// that had the name is removed in the same transaction.
    pub async fn commit_image(&self, row: &ImageRow) -> Result<(), sqlx::Error> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.try_commit_image(row).await {
                // Another host's commit of the name won the race: take the
                // name from it.
                Err(sqlx::Error::Database(e))
                    if e.is_unique_violation() && tries < COMMIT_TRIES =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    async fn try_commit_image(&self, row: &ImageRow) -> Result<(), sqlx::Error> {
        let now = time_text(&Utc::now());
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE images SET state = $1, removed_at = $2
             WHERE name = $3 AND state = $4 AND id <> $5",
        )
        .bind(ImageState::Removed.as_str())
        .bind(&now)
        .bind(&row.name)
        .bind(ImageState::Ready.as_str())
        .bind(&row.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO images (id, name, state, record, stored_bytes, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(ImageState::Ready.as_str())
        .bind(&row.record)
        .bind(row.stored_bytes.map(|b| b as i64))
        .bind(time_text(&row.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Records an image a host holds with no row (one from before the
    /// catalog) in `row.state`, or removed when a ready image has its name;
    /// false when the id has a row already.
    pub async fn adopt_image(&self, row: &ImageRow) -> Result<bool, sqlx::Error> {
        let insert = |state: ImageState| {
            sqlx::query(
                "INSERT INTO images (id, name, state, record, stored_bytes, created_at, removed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&row.id)
            .bind(&row.name)
            .bind(state.as_str())
            .bind(&row.record)
            .bind(row.stored_bytes.map(|b| b as i64))
            .bind(time_text(&row.created_at))
            .bind((state != ImageState::Ready).then(|| time_text(&Utc::now())))
            .execute(&self.pool)
        };
        let r = match insert(row.state).await {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                insert(ImageState::Removed).await?
            }
            other => other?,
        };
        Ok(r.rows_affected() == 1)
    }

    /// Image `id`, in whatever state.
    pub async fn image(&self, id: &str) -> Result<Option<ImageRow>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM images WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_image).transpose()
    }

    /// The ready image named `name`.
    pub async fn image_named(&self, name: &str) -> Result<Option<ImageRow>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM images WHERE name = $1 AND state = $2")
            .bind(name)
            .bind(ImageState::Ready.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_image).transpose()
    }

    /// The ready images, newest first.
    pub async fn images(&self) -> Result<Vec<ImageRow>, sqlx::Error> {
        sqlx::query("SELECT * FROM images WHERE state = $1 ORDER BY created_at DESC, id DESC")
            .bind(ImageState::Ready.as_str())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(decode_image)
            .collect()
    }

    /// The states of those of images `ids` that have a row.
    pub async fn image_states(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, ImageState>, sqlx::Error> {
        let mut states = HashMap::new();
        // A bounded number of parameters per query.
        for chunk in ids.chunks(500) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, state FROM images WHERE id IN ({})",
                params.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.pool).await? {
                let state: String = r.try_get("state")?;
                if let Some(state) = ImageState::parse(&state) {
                    states.insert(r.try_get("id")?, state);
                }
            }
        }
        Ok(states)
    }

    /// Takes the ready image named `name` off the list (one statement: two
    /// removals never both get it); `None` when there is none.
    pub async fn remove_image(&self, name: &str) -> Result<Option<ImageRow>, sqlx::Error> {
        let row = sqlx::query(
            "UPDATE images SET state = $1, removed_at = $2 WHERE name = $3 AND state = $4
             RETURNING *",
        )
        .bind(ImageState::Removed.as_str())
        .bind(time_text(&Utc::now()))
        .bind(name)
        .bind(ImageState::Ready.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode_image).transpose()
    }

    /// Takes image `id` off the list when it is there (a commit that did
    /// not complete); false when it was not.
    pub async fn withdraw_image(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE images SET state = $1, removed_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(ImageState::Removed.as_str())
        .bind(time_text(&Utc::now()))
        .bind(id)
        .bind(ImageState::Ready.as_str())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Records that image `id`'s files are in the blob store (`bytes` added
    /// there); false when it is deleted or unknown (its manifest should go).
    pub async fn set_image_stored(&self, id: &str, bytes: u64) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE images SET stored_bytes = $1 WHERE id = $2 AND state <> $3")
            .bind(bytes as i64)
            .bind(id)
            .bind(ImageState::Deleted.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks deleted the removed images no sandbox still holding anything
    /// and no snapshot uses; their ids (each returned to one caller only).
    pub async fn delete_unused_images(&self) -> Result<Vec<String>, sqlx::Error> {
        let removed: Vec<String> = sqlx::query("SELECT id FROM images WHERE state = $1")
            .bind(ImageState::Removed.as_str())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        if removed.is_empty() {
            return Ok(removed);
        }
        let in_use = self.images_in_use().await?;
        let mut deleted = Vec::new();
        for id in removed.into_iter().filter(|id| !in_use.contains(id)) {
            let r = sqlx::query("UPDATE images SET state = $1 WHERE id = $2 AND state = $3")
                .bind(ImageState::Deleted.as_str())
                .bind(&id)
                .bind(ImageState::Removed.as_str())
                .execute(&self.pool)
                .await?;
            if r.rows_affected() == 1 {
                deleted.push(id);
            }
        }
        Ok(deleted)
    }

    /// Ids of the images that sandboxes of node `node` still holding
    /// anything, and its snapshots, were made from (rows from before nodes
    /// count as every node's).
    pub async fn images_in_use_on(&self, node: &str) -> Result<HashSet<String>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT spec FROM sandboxes WHERE status NOT IN {FINAL}
                 AND (node_id = $1 OR node_id IS NULL)
             UNION ALL SELECT spec FROM snapshots WHERE node_id = $1 OR node_id IS NULL"
        ))
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        let mut ids = HashSet::new();
        for r in rows {
            let spec: String = r.try_get("spec")?;
            let spec: crate::SandboxSpec =
                serde_json::from_str(&spec).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            ids.insert(spec.image_id.unwrap_or(spec.image));
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    fn image(id: &str, name: &str, secs: i64) -> ImageRow {
        ImageRow {
            id: id.into(),
            name: name.into(),
            state: ImageState::Ready,
            record: format!(r#"{{"id":"{id}","name":"{name}"}}"#),
            stored_bytes: None,
            created_at: DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap(),
        }
    }

    async fn stores() -> (
        Vec<Store>,
        tempfile::TempDir,
        sbx_testkit::postgres::Postgres,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let pg = sbx_testkit::postgres::Postgres::start();
        let stores = vec![
            Store::open(&dir.path().join("state.db")).await.unwrap(),
            Store::connect(&pg.url("postgres")).await.unwrap(),
        ];
        assert_eq!(stores[1].kind(), Kind::Postgres);
        (stores, dir, pg)
    }

    fn names(rows: &[ImageRow]) -> Vec<(&str, &str)> {
        rows.iter()
            .map(|r| (r.id.as_str(), r.name.as_str()))
            .collect()
    }

    #[tokio::test]
    async fn a_commit_takes_the_name_and_a_removal_takes_it_off_the_list() {
        let (stores, _dir, _pg) = stores().await;
        for s in stores {
            let kind = s.kind();
            s.commit_image(&image("img-01", "app", 1)).await.unwrap();
            s.commit_image(&image("img-02", "tools", 2)).await.unwrap();
            assert_eq!(
                names(&s.images().await.unwrap()),
                [("img-02", "tools"), ("img-01", "app")],
                "{kind:?}"
            );
            // A new image of the name takes it; the old one is removed.
            s.commit_image(&image("img-03", "app", 3)).await.unwrap();
            assert_eq!(s.image_named("app").await.unwrap().unwrap().id, "img-03");
            let old = s.image("img-01").await.unwrap().unwrap();
            assert_eq!(old.state, ImageState::Removed, "{kind:?}");
            assert_eq!(old.record, image("img-01", "app", 1).record);
            assert_eq!(old.created_at, image("img-01", "app", 1).created_at);
            assert_eq!(s.images().await.unwrap().len(), 2);
            // Stored bytes, large ones too.
            assert!(s.set_image_stored("img-03", 5 << 32).await.unwrap());
            assert_eq!(
                s.image("img-03").await.unwrap().unwrap().stored_bytes,
                Some(5 << 32)
            );
            assert!(!s.set_image_stored("img-99", 1).await.unwrap());
            // Removed once: off the list; a second removal finds nothing.
            let gone = s.remove_image("app").await.unwrap().unwrap();
            assert_eq!(
                (gone.id.as_str(), gone.state),
                ("img-03", ImageState::Removed)
            );
            assert!(s.remove_image("app").await.unwrap().is_none());
            assert!(s.image_named("app").await.unwrap().is_none());
            assert_eq!(names(&s.images().await.unwrap()), [("img-02", "tools")]);
            let states = s
                .image_states(&["img-01".into(), "img-02".into(), "img-99".into()])
                .await
                .unwrap();
            assert_eq!(states.len(), 2, "{kind:?}");
            assert_eq!(states["img-01"], ImageState::Removed);
            assert_eq!(states["img-02"], ImageState::Ready);
            // The name is free again; a commit that did not complete gives
            // it back.
            s.commit_image(&image("img-04", "app", 4)).await.unwrap();
            assert!(s.withdraw_image("img-04").await.unwrap());
            assert!(!s.withdraw_image("img-04").await.unwrap());
            assert!(s.image_named("app").await.unwrap().is_none());
            s.commit_image(&image("img-05", "app", 4)).await.unwrap();
            assert_eq!(s.image_named("app").await.unwrap().unwrap().id, "img-05");
            // An id is committed once.
            assert!(s.commit_image(&image("img-05", "other", 5)).await.is_err());
        }
    }

    #[tokio::test]
    async fn removed_images_are_deleted_once_nothing_uses_them() {
        let (stores, _dir, _pg) = stores().await;
        for s in stores {
            let kind = s.kind();
            s.commit_image(&image("img-0a", "app", 1)).await.unwrap();
            s.commit_image(&image("img-0b", "lib", 2)).await.unwrap();
            // A sandbox on node n1 uses img-0a; a snapshot of n2 img-0b.
            let mut sandbox = crate::tests::row("s1", None);
            sandbox.spec.image = "app".into();
            sandbox.spec.image_id = Some("img-0a".into());
            s.insert(&sandbox).await.unwrap();
            let mut spec = sandbox.spec.clone();
            spec.image_id = Some("img-0b".into());
            s.insert_snapshot(&crate::SnapshotRow {
                id: "snap-1".into(),
                namespace: "default".into(),
                sandbox_id: "gone".into(),
                snapshot_type: sbx_api::snapshot::SnapshotType::Filesystem,
                status: sbx_api::snapshot::SnapshotStatus::Completed,
                error: None,
                spec,
                size_bytes: None,
                stored_bytes: None,
                pause_ms: None,
                created_at: Utc::now(),
                node_id: Some("n2".into()),
            })
            .await
            .unwrap();
            let on = |node: &str| {
                let s = s.clone();
                let node = node.to_string();
                async move {
                    let mut ids: Vec<String> = s
                        .images_in_use_on(&node)
                        .await
                        .unwrap()
                        .into_iter()
                        .collect();
                    ids.sort();
                    ids
                }
            };
            assert_eq!(on("n1").await, ["img-0a"], "{kind:?}");
            assert_eq!(on("n2").await, ["img-0b"], "{kind:?}");
            // Nothing removed: nothing deleted.
            assert!(s.delete_unused_images().await.unwrap().is_empty());
            s.remove_image("app").await.unwrap().unwrap();
            s.remove_image("lib").await.unwrap().unwrap();
            assert!(s.delete_unused_images().await.unwrap().is_empty());
            // The sandbox ends: its image goes, the snapshot's stays.
            s.transition(
                "s1",
                &[sbx_api::sandbox::SandboxStatus::Pending],
                sbx_api::sandbox::SandboxStatus::Terminated,
                None,
                None,
            )
            .await
            .unwrap();
            assert!(on("n1").await.is_empty());
            assert_eq!(s.delete_unused_images().await.unwrap(), ["img-0a"]);
            assert!(s.delete_unused_images().await.unwrap().is_empty());
            assert_eq!(
                s.image("img-0a").await.unwrap().unwrap().state,
                ImageState::Deleted
            );
            // A deleted image's manifest is not recorded as stored.
            assert!(!s.set_image_stored("img-0a", 1).await.unwrap());
            s.delete_snapshot("snap-1").await.unwrap();
            assert_eq!(
                s.delete_unused_images().await.unwrap(),
                ["img-0b"],
                "{kind:?}"
            );
        }
    }

    #[tokio::test]
    async fn images_from_before_the_catalog_are_adopted_once() {
        let (stores, _dir, _pg) = stores().await;
        for s in stores {
            let kind = s.kind();
            s.commit_image(&image("img-1a", "app", 5)).await.unwrap();
            // Its name is taken: adopted as removed.
            assert!(s.adopt_image(&image("img-1b", "app", 1)).await.unwrap());
            assert_eq!(
                s.image("img-1b").await.unwrap().unwrap().state,
                ImageState::Removed,
                "{kind:?}"
            );
            let mut stored = image("img-1c", "tools", 2);
            stored.stored_bytes = Some(7);
            assert!(s.adopt_image(&stored).await.unwrap());
            let mut removed = image("img-1d", "old", 3);
            removed.state = ImageState::Removed;
            assert!(s.adopt_image(&removed).await.unwrap());
            // Known ids keep their row, whatever the host says.
            assert!(!s.adopt_image(&image("img-1d", "old", 3)).await.unwrap());
            assert!(!s.adopt_image(&image("img-1a", "x", 3)).await.unwrap());
            assert_eq!(
                names(&s.images().await.unwrap()),
                [("img-1a", "app"), ("img-1c", "tools")],
                "{kind:?}"
            );
            assert_eq!(s.image_named("tools").await.unwrap().unwrap(), stored);
        }
    }

    #[tokio::test]
    async fn two_stores_committing_one_name_leave_one_ready_image() {
        let pg = sbx_testkit::postgres::Postgres::start();
        let a = Store::connect(&pg.url("postgres")).await.unwrap();
        let b = Store::connect(&pg.url("postgres")).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                s.commit_image(&image(&format!("img-2{i}"), "app", i)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let ready = a.images().await.unwrap();
        assert_eq!(ready.len(), 1, "{ready:?}");
        let ids: Vec<String> = (0..8).map(|i| format!("img-2{i}")).collect();
        let states = b.image_states(&ids).await.unwrap();
        assert_eq!(states.len(), 8);
        assert_eq!(
            states
                .values()
                .filter(|s| **s == ImageState::Removed)
                .count(),
            7
        );
    }
}
