//! Suspended sandboxes that move between nodes. Where the blob store is
//! shared (state in PostgreSQL), a suspend also writes the sandbox's memory
//! image and files to it, as a manifest `suspend-<id>-<n>` recorded in its
//! spec (`suspend_image`). A resume its node cannot carry out — the node is
//! lost, draining or full — then moves it to a node that can
//! (`relocate_if_stranded`), which restores it from that manifest under the
//! same id. Its old node drops its own copy (`drop_moved_suspended`, or its
//! recovery after a restart). A resume anywhere forgets the manifest.

use crate::error::ApiResult;
use crate::lifecycle::Manager;
use crate::store::{Kind, SandboxRow};
use sbx_api::node::NodeState;
use sbx_api::sandbox::SandboxStatus;
use std::path::PathBuf;
use std::sync::Arc;

/// How long a stored suspend image may stay unrecorded before it goes.
const UNRECORDED_GRACE: std::time::Duration = std::time::Duration::from_secs(120);
/// How often the stored suspend images are listed for that (a listing of
/// every manifest in the bucket).
const UNRECORDED_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Stored suspend images seen unrecorded, since when, and when they were
/// last looked for (see `drop_unrecorded_suspend_images`).
#[derive(Default)]
pub(crate) struct Unrecorded {
    seen: std::collections::HashMap<String, std::time::Instant>,
    last_sweep: Option<std::time::Instant>,
}

impl Manager {
    /// Whether other nodes read this node's blob store (then suspends are
    /// written to it).
    fn shares_blobs(&self) -> bool {
        self.store.kind() == Kind::Postgres
    }

    /// For a suspend of `id` on a shared blob store: the manifest its image
    /// is stored under and the temporary directory it is exported to.
    pub(crate) fn suspend_export(&self, id: &str) -> Option<(String, PathBuf)> {
        if !self.shares_blobs() {
            return None;
        }
        let manifest = format!("suspend-{id}-{}", crate::lifecycle::random_hex(6));
        // `.tmp-` names in the snapshot directory are swept at recovery.
        let dir = self.host().snapshot_dir(&format!(".tmp-{manifest}"));
        Some((manifest, dir))
    }

    /// Stores the export of a suspended sandbox in `dir` as `manifest`, in
    /// the background, and records it when the sandbox is still suspended
    /// here (else the manifest goes again).
    pub(crate) fn store_suspend_image(self: &Arc<Self>, id: &str, manifest: String, dir: PathBuf) {
        if !dir.join("layer").is_dir() {
            return;
        }
        let me = self.clone();
        let id = id.to_string();
        self.tasks.spawn(async move {
            let (blobs, m, d) = (me.blobs.clone(), manifest.clone(), dir.clone());
            let stored =
                tokio::task::spawn_blocking(move || crate::snapshots::ingest(&blobs, &m, &d))
                    .await
                    .unwrap_or_else(|e| Err(format!("store task: {e}")));
            let _ = sbx_executor::gently::remove(&dir).await;
            match stored {
                Ok((logical, stored)) => {
                    let recorded = me
                        .store
                        .set_suspend_image(&id, &me.node_id, Some(&manifest))
                        .await
                        .unwrap_or(false);
                    if recorded {
                        tracing::info!(sandbox = id, logical, stored, "suspended sandbox stored");
                    } else {
                        me.drop_suspend_image(Some(manifest));
                    }
                }
                Err(e) => tracing::warn!(
                    sandbox = id,
                    "storing the suspended sandbox failed (it resumes on this node only): {e}"
                ),
            }
        });
    }

    /// Deletes stored suspend images no sandbox records (a node killed
    /// between storing one and recording it, or a record that moved on):
    /// each once it has been seen unrecorded for [`UNRECORDED_GRACE`], so
    /// that one being recorded right now is left alone. One server at a
    /// time (from the node watch).
    pub(crate) async fn drop_unrecorded_suspend_images(&self) {
        {
            let mut unrecorded = self.unrecorded_images.lock().unwrap();
            if unrecorded
                .last_sweep
                .is_some_and(|t| t.elapsed() < UNRECORDED_SWEEP_EVERY)
            {
                return;
            }
            unrecorded.last_sweep = Some(std::time::Instant::now());
        }
        let blobs = self.blobs.clone();
        let Ok(Ok(manifests)) = tokio::task::spawn_blocking(move || blobs.list_manifests()).await
        else {
            return;
        };
        let now = std::time::Instant::now();
        let mut doomed = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for m in manifests.iter().filter(|m| m.starts_with("suspend-")) {
            listed.insert(m.clone());
            let Some(sandbox) = m
                .strip_prefix("suspend-")
                .and_then(|rest| rest.rsplit_once('-'))
                .map(|(id, _)| id)
            else {
                continue;
            };
            let recorded = match self.store.get(sandbox).await {
                Ok(Some(r)) => r.spec.suspend_image.as_deref() == Some(m.as_str()),
                Ok(None) => false,
                Err(_) => continue,
            };
            let unrecorded = &mut self.unrecorded_images.lock().unwrap().seen;
            if recorded {
                unrecorded.remove(m);
            } else {
                let since = *unrecorded.entry(m.clone()).or_insert(now);
                if now.duration_since(since) >= UNRECORDED_GRACE {
                    unrecorded.remove(m);
                    doomed.push(m.clone());
                }
            }
        }
        self.unrecorded_images
            .lock()
            .unwrap()
            .seen
            .retain(|m, _| listed.contains(m));
        if doomed.is_empty() {
            return;
        }
        tracing::info!(?doomed, "deleting suspend images no sandbox records");
        let blobs = self.blobs.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for m in &doomed {
                let _ = blobs.delete_manifest(m);
            }
            if let Err(e) = blobs.gc() {
                tracing::warn!("store gc: {e}");
            }
        })
        .await;
    }

    /// Removes a stored suspend image from the blob store, in the
    /// background.
    pub(crate) fn drop_suspend_image(&self, manifest: Option<String>) {
        let Some(manifest) = manifest else { return };
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            let _ = blobs.delete_manifest(&manifest);
            if let Err(e) = blobs.gc() {
                tracing::warn!("store gc: {e}");
            }
        });
    }

    /// Resumes suspended sandbox `row` on this node: from its files here,
    /// or, when they are elsewhere, from its stored image.
    pub(crate) async fn resume_here(&self, row: &SandboxRow) -> Result<(), String> {
        let image = match &row.spec.suspend_image {
            Some(image) if !self.host().holds_suspended(&row.id).await => image,
            _ => {
                return self
                    .host()
                    .resume(&row.id)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        };
        tracing::info!(sandbox = row.id, image, "resuming from the blob store");
        self.images().wait_ready(&row.spec.image).await?;
        if let Some(id) = &row.spec.image_id {
            self.ensure_image(id).await?;
        }
        let (layer, checkpoint) = self
            .snapshot_files(image)
            .await
            .map_err(|e| format!("its stored image {image}: {e}"))?;
        let mut launch = crate::lifecycle::launch_spec(&row.id, &row.spec);
        launch.layer = Some(layer);
        launch.checkpoint = checkpoint;
        let launched = self.host().launch(&launch).await.map(drop);
        // Its files stay while it runs on them (they are its lower layer).
        self.host().delete_snapshot(image).await;
        launched.map_err(|e| e.to_string())
    }

    /// A suspended sandbox whose node cannot resume it now (lost,
    /// draining, full, or this server running none) moves to a node that
    /// can, when its image is in the blob store: the moved row, or `None`
    /// when it stays. No node with room: the refusal.
    pub async fn relocate_if_stranded(&self, row: &SandboxRow) -> ApiResult<Option<SandboxRow>> {
        if row.status != SandboxStatus::Suspended || row.spec.suspend_image.is_none() {
            return Ok(None);
        }
        let from = row.node_id.clone().unwrap_or_else(|| self.node_id.clone());
        let stranded = if from == self.node_id {
            self.check_node_accepts().await.is_err() || self.admit().is_err()
        } else {
            match self.store.node(&from).await? {
                Some(n) => {
                    n.state != NodeState::Ready || !crate::nodes::is_alive(&n, self.node_timing)
                }
                None => true,
            }
        };
        if !stranded {
            return Ok(None);
        }
        let to = self.choose_node(&row.spec, None).await?;
        if to == from {
            return Ok(None);
        }
        if self.store.move_suspended(&row.id, &from, &to).await? {
            tracing::info!(
                sandbox = row.id,
                from,
                to,
                "its node cannot resume it: moved"
            );
        }
        Ok(self.store.get(&row.id).await?)
    }

    /// Removes the local copies of suspended sandboxes that moved to
    /// another node or ended meanwhile (from the heartbeat).
    pub(crate) async fn drop_moved_suspended(&self) {
        for id in self.host().suspended().await {
            let mine = match self.store.get(&id).await {
                Ok(Some(r)) => !r.status.is_final() && self.is_local(r.node_id.as_deref()),
                Ok(None) => false,
                Err(_) => continue,
            };
            if !mine {
                let lock = self.lock_for(&id);
                let _guard = lock.lock().await;
                tracing::info!(
                    sandbox = id,
                    "moved to another node or ended: removing it here"
                );
                if let Err(e) = self.host().destroy(&id).await {
                    tracing::warn!(sandbox = id, "destroy: {e}");
                }
            }
        }
    }
}
