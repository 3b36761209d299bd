//! Snapshots, suspend/resume and live copies: the control plane's side.
//! The executor captures and restores; this decides, keeps the catalog and
//! moves finished snapshots into the content-addressed store.

use crate::error::{ApiError, ApiResult};
use crate::lifecycle::{LaunchOutcome, Manager};
use crate::store::{SandboxRow, SnapshotRow, SnapshotUpdate};
use chrono::Utc;
use futures::FutureExt;
use sbx_api::sandbox::{CreateSandboxRequest, SandboxStatus};
use sbx_api::snapshot::{SnapshotStatus, SnapshotType};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Most copies one `copy` call makes.
pub const MAX_COPIES: u32 = 32;

pub fn new_snapshot_id() -> String {
    format!("snap{}", crate::lifecycle::random_hex(20))
}

/// Whether `s` is what [`new_snapshot_id`] makes.
pub fn is_snapshot_id(s: &str) -> bool {
    s.len() == 24 && s.starts_with("snap") && s[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The outcome of a resume or suspend under way: `Err` says why it failed.
pub type Outcome = tokio::sync::oneshot::Receiver<Result<(), String>>;

/// Waits up to `limit` for a resume's or suspend's outcome; `Err` when it
/// failed, `Ok` when it succeeded or the outcome is not known yet.
pub async fn outcome(under_way: Option<Outcome>, limit: Duration) -> ApiResult<()> {
    match under_way {
        Some(rx) => match tokio::time::timeout(limit, rx).await {
            Ok(Ok(Err(why))) => Err(ApiError::unavailable(why)),
            _ => Ok(()),
        },
        None => Ok(()),
    }
}

impl Manager {
    /// Starts a snapshot of a running sandbox; the task ends when the
    /// capture did (the snapshot is then `local_ready` or `failed`).
    pub async fn start_snapshot(
        self: &Arc<Self>,
        row: &SandboxRow,
        kind: SnapshotType,
    ) -> ApiResult<(SnapshotRow, JoinHandle<Result<(), String>>)> {
        self.check_local(row)?;
        let moved = self
            .store
            .transition(
                &row.id,
                &[SandboxStatus::Running],
                SandboxStatus::Snapshotting,
                None,
                None,
            )
            .await?;
        if !moved {
            return Err(ApiError::conflict(format!(
                "sandbox {} is {}: only a running sandbox can be snapshotted",
                row.id, row.status
            )));
        }
        let snap = SnapshotRow {
            id: new_snapshot_id(),
            namespace: row.namespace.clone(),
            sandbox_id: row.id.clone(),
            snapshot_type: kind,
            status: SnapshotStatus::InProgress,
            error: None,
            spec: row.spec.clone(),
            size_bytes: None,
            stored_bytes: None,
            pause_ms: None,
            created_at: Utc::now(),
            node_id: Some(self.node_id.clone()),
        };
        if let Err(e) = self.store.insert_snapshot(&snap).await {
            self.back_to_running(&row.id).await;
            return Err(e.into());
        }
        self.logs.event(
            &row.id,
            sbx_api::logs::level::INFO,
            "snapshot",
            format!("{} snapshot {} started", kind_name(kind), snap.id),
            serde_json::json!({"snapshotId": snap.id, "snapshotType": kind_name(kind)}),
        );
        let me = self.clone();
        let s = snap.clone();
        let task = self.tasks.spawn(async move { me.capture(&s).await });
        Ok((snap, task))
    }

    async fn back_to_running(&self, id: &str) {
        let _ = self
            .store
            .transition(
                id,
                &[SandboxStatus::Snapshotting],
                SandboxStatus::Running,
                None,
                None,
            )
            .await;
    }

    async fn capture(self: &Arc<Self>, snap: &SnapshotRow) -> Result<(), String> {
        let lock = self.lock_for(&snap.sandbox_id);
        let guard = lock.lock().await;
        let memory = snap.snapshot_type == SnapshotType::Memory;
        if memory {
            // As for a suspend: no poll of it under way during the save.
            self.logs.collectors.hold(&snap.sandbox_id);
        }
        let result = self
            .host()
            .capture(&snap.sandbox_id, &snap.id, memory)
            .await;
        self.logs.collectors.release(&snap.sandbox_id);
        self.back_to_running(&snap.sandbox_id).await;
        drop(guard);
        match result {
            Ok(c) => {
                tracing::info!(
                    snapshot = snap.id,
                    sandbox = snap.sandbox_id,
                    pause_ms = c.pause_ms,
                    layer_bytes = c.layer_bytes,
                    memory_bytes = c.checkpoint_bytes,
                    "snapshot captured"
                );
                self.metrics.snapshot_paused(snap.snapshot_type, c.pause_ms);
                self.logs.event(
                    &snap.sandbox_id,
                    sbx_api::logs::level::INFO,
                    "snapshot_captured",
                    format!(
                        "{} snapshot {} captured (paused {} ms)",
                        kind_name(snap.snapshot_type),
                        snap.id,
                        c.pause_ms
                    ),
                    serde_json::json!({"snapshotId": snap.id, "pauseMs": c.pause_ms}),
                );
                let update = SnapshotUpdate {
                    size_bytes: Some(c.layer_bytes + c.checkpoint_bytes),
                    pause_ms: Some(c.pause_ms),
                    ..Default::default()
                };
                let ok = self
                    .store
                    .snapshot_transition(
                        &snap.id,
                        SnapshotStatus::InProgress,
                        SnapshotStatus::LocalReady,
                        update,
                    )
                    .await
                    .unwrap_or(false);
                if !ok {
                    // Deleted while it was captured.
                    self.host().delete_snapshot(&snap.id).await;
                    return Err("the snapshot was deleted while it was captured".into());
                }
                let me = self.clone();
                let id = snap.id.clone();
                tokio::spawn(async move { me.store_snapshot(&id, &c.dir).await });
                Ok(())
            }
            Err(e) => {
                let msg = format!("capture failed: {e}");
                tracing::warn!(snapshot = snap.id, sandbox = snap.sandbox_id, "{msg}");
                self.logs.event(
                    &snap.sandbox_id,
                    sbx_api::logs::level::WARN,
                    "snapshot_failed",
                    format!("snapshot {}: {msg}", snap.id),
                    serde_json::json!({"snapshotId": snap.id}),
                );
                let _ = self
                    .store
                    .snapshot_transition(
                        &snap.id,
                        SnapshotStatus::InProgress,
                        SnapshotStatus::Failed,
                        SnapshotUpdate {
                            error: Some(&msg),
                            ..Default::default()
                        },
                    )
                    .await;
                Err(msg)
            }
        }
    }

    /// Puts a captured snapshot into the content-addressed store:
    /// `local_ready` → `completed`, or `failed` (nothing partial stays).
    pub(crate) async fn store_snapshot(&self, id: &str, dir: &Path) {
        let blobs = self.blobs.clone();
        let (sid, d) = (id.to_string(), dir.to_path_buf());
        let result = tokio::task::spawn_blocking(move || ingest(&blobs, &sid, &d))
            .await
            .unwrap_or_else(|e| Err(format!("store task: {e}")));
        match result {
            Ok((logical, stored)) => {
                tracing::info!(snapshot = id, logical, stored, "snapshot stored");
                self.metrics
                    .blob_put(crate::metrics::BlobKind::Snapshot, logical, stored);
                let _ = self
                    .store
                    .snapshot_transition(
                        id,
                        SnapshotStatus::LocalReady,
                        SnapshotStatus::Completed,
                        SnapshotUpdate {
                            size_bytes: Some(logical),
                            stored_bytes: Some(stored),
                            ..Default::default()
                        },
                    )
                    .await;
            }
            Err(e) => {
                let msg = format!("storing the snapshot failed: {e}");
                tracing::warn!(snapshot = id, "{msg}");
                let failed = self
                    .store
                    .snapshot_transition(
                        id,
                        SnapshotStatus::LocalReady,
                        SnapshotStatus::Failed,
                        SnapshotUpdate {
                            error: Some(&msg),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap_or(false);
                if failed {
                    self.host().delete_snapshot(id).await;
                }
            }
        }
    }

    /// The snapshot's layer and, for memory snapshots, checkpoint on this
    /// host, fetched from the store when they are not here.
    pub(crate) async fn snapshot_files(
        &self,
        sid: &str,
    ) -> Result<(PathBuf, Option<PathBuf>), String> {
        let (layer, checkpoint, rest) = self.snapshot_files_early(sid).await?;
        if let Some(rest) = rest {
            rest.await?;
        }
        Ok((layer, checkpoint))
    }

    /// [`snapshot_files`](Self::snapshot_files) that answers as soon as all
    /// but the memory image is here, with a future that resolves once that
    /// is whole too: a restore prepares its sandbox meanwhile.
    pub(crate) async fn snapshot_files_early(
        &self,
        sid: &str,
    ) -> Result<(PathBuf, Option<PathBuf>, Option<MemoryFetch>), String> {
        let dir = self.host().snapshot_dir(sid);
        let paths = |dir: &Path| {
            let ck = dir.join("checkpoint");
            (dir.join("layer"), ck.is_dir().then_some(ck))
        };
        if is_whole(&dir) && !fetched_before_reboot(&dir) {
            let (layer, ck) = paths(&dir);
            return Ok((layer, ck, None));
        }
        // Held until the fetch is whole: a second restore of it waits.
        let guard = self.lock_for(&format!("snapshot:{sid}")).lock_owned().await;
        if fetched_before_reboot(&dir) {
            tracing::info!(
                snapshot = sid,
                "fetched before a reboot, maybe not whole on disk: fetched again"
            );
        } else if is_whole(&dir) {
            let (layer, ck) = paths(&dir);
            return Ok((layer, ck, None));
        }
        // Absent, or left half-fetched by a crash.
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let started = std::time::Instant::now();
        let (blobs, s, d) = (self.blobs.clone(), sid.to_string(), dir.clone());
        let memory = tokio::task::spawn_blocking(move || fetch_all_but_memory(&blobs, &s, &d))
            .await
            .map_err(|e| e.to_string())?;
        let memory = match memory {
            Ok(m) => m,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
        };
        let (layer, ck) = paths(&dir);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sid = sid.to_string();
        tokio::spawn(async move {
            let _guard = guard;
            let d = dir.clone();
            let fetched = tokio::task::spawn_blocking(move || match memory {
                Some(fetch) => fetch
                    .join()
                    .unwrap_or_else(|_| Err("its fetch panicked".into())),
                None => Ok(0),
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            .and_then(|bytes| {
                std::fs::remove_file(d.join(FETCHING_MARK)).map_err(|e| e.to_string())?;
                Ok(bytes)
            });
            match &fetched {
                Ok(bytes) => {
                    tracing::info!(
                        snapshot = sid,
                        bytes,
                        ms = started.elapsed().as_millis() as u64,
                        "snapshot fetched from the blob store"
                    );
                    // On disk later, well off the restore's path: the
                    // kernel writes it back meanwhile, and the syncfs (which
                    // waits for every dirty page of the file system) then
                    // only confirms it. Run at once, it competed with the
                    // restore for the disk and CPUs (~100 ms slower here).
                    tokio::spawn(async move {
                        tokio::time::sleep(SYNC_FETCHED_AFTER).await;
                        let synced = tokio::task::spawn_blocking(move || {
                            if !dir.exists() {
                                return Ok(()); // deleted meanwhile
                            }
                            sbx_executor::syncfs(&dir)?;
                            std::fs::remove_file(dir.join(FETCHED_MARK))
                        });
                        if let Ok(Err(e)) = synced.await {
                            tracing::warn!("syncing a fetched snapshot: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(snapshot = sid, "fetching its memory image: {e}");
                    // The restore waiting for it learns why before the
                    // files go (its launch may trip over their going).
                    let _ = tx.send(fetched.map(drop));
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                    return;
                }
            }
            let _ = tx.send(fetched.map(drop));
        });
        let fetch = async move {
            rx.await
                .unwrap_or_else(|_| Err("the fetch of its memory image stopped".into()))
        };
        Ok((layer, ck, Some(fetch.boxed().shared())))
    }

    /// Deletes a snapshot from the catalog, the store and this host.
    /// Sandboxes restored from it keep running.
    pub async fn delete_snapshot(&self, snap: &SnapshotRow) -> ApiResult<()> {
        if snap.status == SnapshotStatus::InProgress {
            return Err(ApiError::conflict(format!(
                "snapshot {} is still being captured; delete it once it is done",
                snap.id
            )));
        }
        self.store.delete_snapshot(&snap.id).await?;
        // Other nodes drop their copies at their next heartbeat.
        if let Some(executor) = &self.executor {
            executor.delete_snapshot(&snap.id).await;
        }
        self.collect_images().await;
        let blobs = self.blobs.clone();
        let id = snap.id.clone();
        tokio::task::spawn_blocking(move || {
            let _ = blobs.delete_manifest(&id);
            if let Err(e) = blobs.gc() {
                tracing::warn!("store gc: {e}");
            }
        });
        Ok(())
    }

    /// Starts suspending a named, running sandbox (idempotent for one that
    /// is suspending or suspended).
    /// The receiver gets the outcome: a failed suspend leaves the sandbox
    /// running when it still runs (a failed checkpoint does not stop it).
    pub async fn suspend(
        self: &Arc<Self>,
        row: &SandboxRow,
        reason: &str,
    ) -> ApiResult<Option<Outcome>> {
        self.check_local(row)?;
        if row.name.is_none() {
            return Err(ApiError::bad_request(format!(
                "sandbox {} is ephemeral (it has no name) and cannot be suspended; name it first (PATCH name) or terminate it",
                row.id
            )));
        }
        match row.status {
            SandboxStatus::Suspending | SandboxStatus::Suspended => return Ok(None),
            SandboxStatus::Running => {}
            s => {
                return Err(ApiError::conflict(format!(
                    "sandbox {} is {s}: only a running sandbox can be suspended",
                    row.id
                )))
            }
        }
        let moved = self
            .store
            .transition(
                &row.id,
                &[SandboxStatus::Running],
                SandboxStatus::Suspending,
                None,
                None,
            )
            .await?;
        if !moved {
            return Err(ApiError::conflict(format!(
                "sandbox {} changed state meanwhile; try again",
                row.id
            )));
        }
        let me = self.clone();
        let id = row.id.clone();
        let reason = reason.to_string();
        let (done, suspending) = tokio::sync::oneshot::channel();
        self.tasks.spawn(async move {
            let lock = me.lock_for(&id);
            let _guard = lock.lock().await;
            let export = me.suspend_export(&id);
            let dest = export.as_ref().map(|(_, dir)| dir.as_path());
            // No poll of the log collector is under way (or its connection
            // being opened) while the sandbox is saved: runsc 20240729's
            // save panics on a TCP connection caught mid-handshake. Its
            // lines wait in the agent's journal.
            me.logs.collectors.hold(&id);
            let suspended = me.host().suspend_exporting(&id, dest).await;
            me.logs.collectors.release(&id);
            match suspended {
                Ok(ms) => {
                    tracing::info!(sandbox = id, ms, reason, "sandbox suspended");
                    me.logs.event(
                        &id,
                        sbx_api::logs::level::INFO,
                        "suspended",
                        format!("sandbox suspended ({reason})"),
                        serde_json::json!({ "reason": reason }),
                    );
                    let _ = me
                        .store
                        .transition(
                            &id,
                            &[SandboxStatus::Suspending],
                            SandboxStatus::Suspended,
                            None,
                            None,
                        )
                        .await;
                    if let Some((manifest, dir)) = export {
                        me.store_suspend_image(&id, manifest, dir);
                    }
                    let _ = done.send(Ok(()));
                }
                Err(e) => {
                    tracing::warn!(sandbox = id, "suspend failed: {e}");
                    me.logs.event(
                        &id,
                        sbx_api::logs::level::ERROR,
                        "suspend_failed",
                        format!("suspend failed: {e}"),
                        serde_json::Value::Null,
                    );
                    let alive = me.host().agent_addr(&id).is_some() && me.host().is_alive(&id);
                    let (to, err, why) = if alive {
                        let why = format!("suspend failed (the sandbox keeps running): {e}");
                        (SandboxStatus::Running, None, why)
                    } else {
                        let why = format!("suspend failed: {e}");
                        (SandboxStatus::Failed, Some(why.clone()), why)
                    };
                    let _ = me
                        .store
                        .transition(&id, &[SandboxStatus::Suspending], to, None, err.as_deref())
                        .await;
                    let _ = done.send(Err(why));
                }
            }
        });
        Ok(Some(suspending))
    }

    /// Starts resuming a suspended sandbox (idempotent for a running one).
    /// The receiver, when there is one, gets the outcome: a failed resume
    /// leaves the sandbox suspended with the reason as its error.
    pub async fn resume(self: &Arc<Self>, row: &SandboxRow) -> ApiResult<Option<Outcome>> {
        self.check_local(row)?;
        match row.status {
            SandboxStatus::Running | SandboxStatus::Suspended => {}
            SandboxStatus::Suspending => {}
            s => {
                return Err(ApiError::conflict(format!(
                    "sandbox {} is {s}: only a suspended sandbox can be resumed",
                    row.id
                )))
            }
        }
        if row.status == SandboxStatus::Running {
            return Ok(None);
        }
        let me = self.clone();
        let id = row.id.clone();
        let (done, resuming) = tokio::sync::oneshot::channel();
        let asked = std::time::Instant::now();
        self.tasks.spawn(async move {
            let lock = me.lock_for(&id);
            let _guard = lock.lock().await;
            // A suspend may have been under way; resume what it left.
            let row = match me.store.get(&id).await {
                Ok(Some(r)) if r.status == SandboxStatus::Suspended => r,
                _ => return,
            };
            let started = std::time::Instant::now();
            match me.resume_here(&row).await {
                Ok(()) => {
                    if let Ok(Some(mut r)) = me.store.get(&id).await {
                        r.spec.active_since = Some(Utc::now());
                        let stored = r.spec.suspend_image.take();
                        let _ = me.store.mark_resumed(&id, &r.spec).await;
                        me.drop_suspend_image(stored);
                    }
                    tracing::info!(
                        sandbox = id,
                        ms = started.elapsed().as_millis() as u64,
                        "sandbox resumed"
                    );
                    me.logs.info(&id, "resumed", "sandbox resumed");
                    me.metrics.sandbox_resumed(asked.elapsed());
                    let _ = done.send(Ok(()));
                }
                Err(e) => {
                    let why = format!("resume failed (the sandbox stays suspended): {e}");
                    tracing::warn!(sandbox = id, "{why}");
                    me.logs.event(
                        &id,
                        sbx_api::logs::level::ERROR,
                        "resume_failed",
                        why.clone(),
                        serde_json::Value::Null,
                    );
                    let _ = me.store.set_error(&id, Some(&why)).await;
                    let _ = done.send(Err(why));
                }
            }
        });
        Ok(Some(resuming))
    }

    /// Waits up to `limit` for the sandbox to reach `target`; returns its row.
    pub async fn wait_for_status(
        &self,
        id: &str,
        target: SandboxStatus,
        limit: Duration,
    ) -> ApiResult<SandboxRow> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Armed before the read: a change right after it is not missed.
            let changed = self.store.status_changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let row = self
                .store
                .get(id)
                .await?
                .ok_or_else(|| ApiError::not_found("sandbox", id))?;
            if row.status == target
                || row.status.is_final()
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(row);
            }
            // Looked at again at least every second all the same.
            let next = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            let _ = tokio::time::timeout_at(next, changed).await;
        }
    }

    /// One memory snapshot of `row`, restored `times` times.
    pub async fn copy(
        self: &Arc<Self>,
        row: &SandboxRow,
        times: u32,
    ) -> ApiResult<(SnapshotRow, Vec<(SandboxRow, LaunchOutcome)>)> {
        self.check_local(row)?;
        if times == 0 || times > MAX_COPIES {
            return Err(ApiError::bad_request(format!(
                "times must be between 1 and {MAX_COPIES} (got {times})"
            )));
        }
        let (snap, capture) = self.start_snapshot(row, SnapshotType::Memory).await?;
        match capture.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ApiError::unavailable(format!("copy of {}: {e}", row.id))),
            Err(e) => return Err(ApiError::internal(format!("capture task: {e}"))),
        }
        let req = CreateSandboxRequest {
            snapshot_id: Some(snap.id.clone()),
            ..Default::default()
        };
        // The request is checked once; the other copies take the first's
        // spec and its node, which has the snapshot just captured (each
        // create's checks cost ~30 ms here beside launches under way).
        let first = self.create(&row.namespace, &req).await?;
        let (spec, node) = (first.0.spec.clone(), first.0.node_id.clone());
        let mut started = vec![first];
        for _ in 1..times {
            let copy = self
                .place_and_start(&row.namespace, None, spec.clone(), node.as_deref(), None)
                .await?;
            started.push(copy);
        }
        let mut out = Vec::new();
        for (r, task) in started {
            let outcome = task
                .await
                .unwrap_or_else(|e| LaunchOutcome::Failed(format!("launch task: {e}")));
            out.push((r, outcome));
        }
        Ok((snap, out))
    }

    /// After a restart: captures that were under way failed; captured ones
    /// not yet stored are stored now.
    pub async fn recover_snapshots(self: &Arc<Self>) -> Result<(), sqlx::Error> {
        // Fetches a crash cut short (fetched again when needed).
        for id in self.host().local_snapshots() {
            let dir = self.host().snapshot_dir(&id);
            if dir.join(FETCHING_MARK).exists() {
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
        }
        for s in self
            .store
            .snapshots_with_status(SnapshotStatus::InProgress)
            .await?
            .into_iter()
            .filter(|s| self.is_local(s.node_id.as_deref()))
        {
            self.store
                .snapshot_transition(
                    &s.id,
                    SnapshotStatus::InProgress,
                    SnapshotStatus::Failed,
                    SnapshotUpdate {
                        error: Some("the server restarted during the capture"),
                        ..Default::default()
                    },
                )
                .await?;
            self.host().delete_snapshot(&s.id).await;
        }
        for s in self
            .store
            .snapshots_with_status(SnapshotStatus::LocalReady)
            .await?
            .into_iter()
            .filter(|s| self.is_local(s.node_id.as_deref()))
        {
            let dir = self.host().snapshot_dir(&s.id);
            let me = self.clone();
            tokio::spawn(async move { me.store_snapshot(&s.id, &dir).await });
        }
        Ok(())
    }
}

/// Stores a snapshot directory (`layer/`, `checkpoint/*`) under manifest
/// `sid`; returns (logical bytes, newly stored compressed bytes).
pub(crate) fn ingest(
    blobs: &sbx_store::Store,
    sid: &str,
    dir: &Path,
) -> Result<(u64, u64), String> {
    let w = blobs.writer().map_err(|e| e.to_string())?;
    let mut manifest = sbx_store::Manifest::default();
    let (tree, stats) = w.put_dir(dir.join("layer")).map_err(|e| e.to_string())?;
    let (mut logical, mut stored) = (stats.logical_bytes, stats.stored_bytes);
    manifest.trees.insert("layer".into(), tree);
    let ck = dir.join("checkpoint");
    if ck.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&ck)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            // The memory image is read whole at a restore: coarse chunks,
            // fewer requests to fetch it from S3.
            let (stream, stats) = w
                .put_file_chunked(ck.join(&name), sbx_store::Chunking::Coarse)
                .map_err(|e| e.to_string())?;
            logical += stats.logical_bytes;
            stored += stats.stored_bytes;
            manifest
                .streams
                .insert(format!("checkpoint/{name}"), stream);
        }
    }
    manifest.meta = serde_json::json!({"snapshot_id": sid});
    w.commit_manifest(sid, &manifest)
        .map_err(|e| e.to_string())?;
    Ok((logical, stored))
}

/// In a snapshot fetched from the blob store until it is synced to disk:
/// the boot it was fetched in. Found after a reboot, the files may be torn
/// (they were in the page cache only), so the snapshot is fetched again.
const FETCHED_MARK: &str = ".fetched-unsynced";

fn fetched_before_reboot(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(FETCHED_MARK))
        .is_ok_and(|boot| boot.trim() != sbx_executor::boot_id().trim())
}

/// The fetch of a snapshot's memory image under way: whether it ended
/// whole (each clone answers the same).
pub(crate) type MemoryFetch =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<(), String>>>;

/// How long after a fetch its files are synced (the kernel's own writeback
/// of dirty pages starts after 30 s by default).
const SYNC_FETCHED_AFTER: Duration = Duration::from_secs(30);

/// Marks a snapshot directory whose memory image is still being fetched
/// (see [`Manager::snapshot_files_early`]); one found so after a crash is
/// fetched again.
const FETCHING_MARK: &str = ".fetching";

/// Whether a snapshot's files are all on this host.
fn is_whole(dir: &Path) -> bool {
    dir.join("layer").is_dir() && !dir.join(FETCHING_MARK).exists()
}

/// Writes a stored snapshot back into `dir` (not synced: see
/// [`FETCHED_MARK`]), marked [`FETCHING_MARK`]: its largest checkpoint
/// file (the memory image) on a thread of its own, started first and
/// answered (its size once written), and the rest (the layer, the small
/// checkpoint files) before this returns.
fn fetch_all_but_memory(
    blobs: &Arc<sbx_store::Store>,
    sid: &str,
    dir: &Path,
) -> Result<Option<std::thread::JoinHandle<Result<u64, String>>>, String> {
    let manifest = blobs
        .manifest(sid)
        .map_err(|e| format!("not on this host and not in the store: {e}"))?;
    let tree = manifest
        .trees
        .get("layer")
        .ok_or("the stored snapshot has no layer")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(FETCHING_MARK), b"").map_err(|e| e.to_string())?;
    std::fs::write(dir.join(FETCHED_MARK), sbx_executor::boot_id()).map_err(|e| e.to_string())?;
    let mut files: Vec<(&str, &sbx_store::StreamRef)> = manifest
        .streams
        .iter()
        .filter_map(|(name, s)| Some((name.strip_prefix("checkpoint/")?, s)))
        .collect();
    files.sort_by_key(|(_, s)| s.size);
    let checkpoint = dir.join("checkpoint");
    let memory = match files.pop() {
        Some((name, stream)) => {
            std::fs::create_dir_all(&checkpoint).map_err(|e| e.to_string())?;
            let (blobs, stream, path) = (blobs.clone(), stream.clone(), checkpoint.join(name));
            Some(std::thread::spawn(move || {
                fetch_stream(&blobs, &stream, &path)
            }))
        }
        None => None,
    };
    let rest = blobs
        .restore_dir_unsynced(tree, dir.join("layer"))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            files.iter().try_for_each(|(name, stream)| {
                fetch_stream(blobs, stream, &checkpoint.join(name)).map(drop)
            })
        });
    match rest {
        Ok(()) => Ok(memory),
        Err(e) => {
            // Nothing writes into the directory once this fails.
            if let Some(m) = memory {
                let _ = m.join();
            }
            Err(e)
        }
    }
}

/// Writes one stored file to `path`; its size.
fn fetch_stream(
    blobs: &sbx_store::Store,
    stream: &sbx_store::StreamRef,
    path: &Path,
) -> Result<u64, String> {
    let out = std::fs::File::create(path).map_err(|e| e.to_string())?;
    blobs
        .read_stream_to_file(stream, &out, path)
        .map_err(|e| e.to_string())
}

/// `memory` or `filesystem`.
fn kind_name(kind: SnapshotType) -> &'static str {
    match kind {
        SnapshotType::Memory => "memory",
        SnapshotType::Filesystem => "filesystem",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_whole_once_its_fetch_has_ended() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_whole(dir.path()), "nothing here");
        std::fs::create_dir(dir.path().join("layer")).unwrap();
        assert!(is_whole(dir.path()), "captured here, or fetched");
        std::fs::write(dir.path().join(FETCHING_MARK), b"").unwrap();
        assert!(
            !is_whole(dir.path()),
            "its memory image is being written (or a crash cut it short)"
        );
    }

    #[test]
    fn a_fetched_snapshot_is_fetched_again_only_after_a_reboot() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            !fetched_before_reboot(dir.path()),
            "no mark: synced or made here"
        );
        std::fs::write(dir.path().join(FETCHED_MARK), sbx_executor::boot_id()).unwrap();
        assert!(
            !fetched_before_reboot(dir.path()),
            "this boot: the page cache has it"
        );
        std::fs::write(
            dir.path().join(FETCHED_MARK),
            "00000000-0000-0000-0000-000000000000\n",
        )
        .unwrap();
        assert!(fetched_before_reboot(dir.path()));
    }
}
