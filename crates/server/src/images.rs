//! `/images`: list, inspect, import (from a registry, or an uploaded
//! archive) and remove sandbox images. Every namespace sees the same ones.
//!
//! The state store is the catalog of custom images, shared by the servers
//! on it ([`StoreCatalog`]): a commit records the image there, then stores
//! its files in the blob store (manifest `image-<id>`); lists, lookups and
//! removals read and write the catalog; a host that lacks an image it must
//! boot brings it back from the blob store then ([`Manager::ensure_image`]).
//! A removed image stays (off the list) while a sandbox or snapshot uses
//! it; once nothing does, its row is marked deleted, its manifest goes, and
//! each host deletes its files ([`Manager::collect_images`]).
//!
//! An import answers once its source is resolved — a bad reference, an
//! unknown image, a refused login or an unreadable archive are plain JSON
//! errors — and then streams its progress as `application/x-ndjson`
//! ([`ImportEvent`] lines, the last one `done` or `error`). It goes on if
//! the client goes away.

use crate::api::ApiState;
use crate::error::{ApiError, ApiResult, JsonBody, ObjectBody, Path, Query};
use crate::lifecycle::Manager;
use crate::store::{ImageRow, ImageState};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use sbx_api::image::{ImageInfo, ImportEvent, ImportImageRequest, ListImagesResponse};
use sbx_executor::custom_images::{self, ImageRecord};
use sbx_executor::image::DEFAULT_IMAGE;
use sbx_image::{Credentials, Progress, Source};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

impl ObjectBody for ImportImageRequest {}

pub async fn list(State(state): State<ApiState>) -> ApiResult<Json<ListImagesResponse>> {
    let images = state.manager.images();
    let mut all: Vec<ImageInfo> = images.list().into_iter().map(|n| built_in(&n)).collect();
    let rows = state.manager.store.images().await?;
    all.extend(rows.iter().filter_map(record_of).map(|r| info(&r)));
    Ok(Json(ListImagesResponse { images: all }))
}

pub async fn get_one(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<ImageInfo>> {
    let name = &params["name"];
    let images = state.manager.images();
    if images.list().contains(name) {
        return Ok(Json(built_in(name)));
    }
    state
        .manager
        .store
        .image_named(name)
        .await?
        .as_ref()
        .and_then(record_of)
        .map(|r| Json(info(&r)))
        .ok_or_else(|| ApiError::not_found("image", name))
}

/// Takes the image off the list at once; its files go when no sandbox or
/// snapshot uses them.
pub async fn remove(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = &params["name"];
    let images = state.manager.images();
    if images.list().contains(name) || name == DEFAULT_IMAGE {
        return Err(ApiError::bad_request(format!(
            "{name} is a built-in image and cannot be removed"
        )));
    }
    let record = state
        .manager
        .store
        .remove_image(name)
        .await?
        .ok_or_else(|| ApiError::not_found("image", name))?;
    tracing::info!(image = name, id = record.id, "image removed");
    state.manager.collect_images().await;
    Ok(Json(
        serde_json::json!({"name": name, "id": record.id, "status": "removed"}),
    ))
}

pub async fn import(
    State(state): State<ApiState>,
    JsonBody(req): JsonBody<ImportImageRequest>,
) -> ApiResult<Response> {
    if req.reference.trim().is_empty() {
        return Err(ApiError::bad_request(
            "reference must name an image: HOST[:PORT]/REPO[:TAG]",
        ));
    }
    let source = Source::parse(&req.reference).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Source::Registry(reference) = &source else {
        return Err(ApiError::bad_request(
            "this route pulls from a registry; upload archives to …/images/import-archive",
        ));
    };
    let name = match &req.name {
        Some(n) => n.clone(),
        None => default_name(reference),
    };
    check_name(&state.manager, &name)?;
    let credentials = Credentials {
        username: req.username.clone().filter(|u| !u.is_empty()),
        password: req.password.clone(),
    };
    start(
        &state.manager,
        name,
        source,
        credentials,
        req.insecure,
        None,
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct ArchiveQuery {
    name: Option<String>,
    format: Option<String>,
}

/// Most bytes an uploaded archive may have.
const MAX_ARCHIVE_BYTES: u64 = 32 << 30;

pub async fn import_archive(
    State(state): State<ApiState>,
    Query(q): Query<ArchiveQuery>,
    body: Body,
) -> ApiResult<Response> {
    let name = q
        .name
        .ok_or_else(|| ApiError::bad_request("name is required (?name=…)"))?;
    check_name(&state.manager, &name)?;
    let format = q.format.as_deref().unwrap_or("docker-archive");
    let dir = state.manager.images().custom().dir().to_path_buf();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::internal(format!("image directory: {e}")))?;
    let upload = Upload(dir.join(format!("{}{}.tar", custom_images::UPLOAD_PREFIX, unique())));
    let source = match format {
        "docker-archive" => Source::DockerArchive(upload.0.clone()),
        "oci-archive" => Source::OciArchive(upload.0.clone()),
        other => {
            return Err(ApiError::bad_request(format!(
                "format must be docker-archive or oci-archive (got {other:?})"
            )))
        }
    };
    let size = receive(body, &upload.0, Some(MAX_ARCHIVE_BYTES)).await?;
    if size == 0 {
        return Err(ApiError::bad_request(
            "the request body must be the archive (a tar file)",
        ));
    }
    start(
        &state.manager,
        name,
        source,
        Credentials::default(),
        false,
        Some(upload),
    )
    .await
}

/// Writes a request body (an uploaded tar) to `path`; its bytes. More than
/// `limit` is a 413.
pub(crate) async fn receive(
    body: Body,
    path: &std::path::Path,
    limit: Option<u64>,
) -> ApiResult<u64> {
    let io = |e: std::io::Error| ApiError::internal(format!("upload: {e}"));
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload: {e}")))?;
        size += chunk.len() as u64;
        if let Some(limit) = limit.filter(|l| size > *l) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("an upload may have at most {limit} bytes"),
            ));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    Ok(size)
}

/// An uploaded archive, removed when the import is done with it.
struct Upload(std::path::PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum Step {
    Event(ImportEvent),
    Failed(sbx_executor::Error),
}

/// Runs the import in the background; answers with its first step: an
/// error, or the stream of its progress.
async fn start(
    manager: &Arc<Manager>,
    name: String,
    source: Source,
    credentials: Credentials,
    insecure: bool,
    upload: Option<Upload>,
) -> ApiResult<Response> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Step>();
    let images = manager.images().clone();
    tracing::info!(image = name, source = ?source, "image import started");
    manager.tasks.spawn(async move {
        let progress_tx = tx.clone();
        let progress = move |p: Progress| {
            let _ = progress_tx.send(Step::Event(event(p)));
        };
        let result = images
            .custom()
            .import(&name, &source, &credentials, insecure, &progress)
            .await;
        drop(upload);
        match result {
            Ok(record) => {
                tracing::info!(
                    image = name,
                    id = record.id,
                    bytes = record.size_bytes,
                    "image imported"
                );
                // The catalog stores it in the blob store (`StoreCatalog`).
                let _ = tx.send(Step::Event(ImportEvent::Done {
                    image: Box::new(info(&record)),
                }));
            }
            Err(e) => {
                tracing::warn!(image = name, "image import failed: {e}");
                let _ = tx.send(Step::Failed(e));
            }
        }
    });
    let first = match rx.recv().await {
        Some(Step::Failed(e)) => return Err(import_error(e)),
        Some(Step::Event(e)) => e,
        None => return Err(ApiError::internal("the import stopped")),
    };
    let (events, rest) = tokio::sync::mpsc::unbounded_channel();
    let _ = events.send(first);
    tokio::spawn(async move {
        while let Some(step) = rx.recv().await {
            let e = match step {
                Step::Event(e) => e,
                Step::Failed(e) => ImportEvent::Error {
                    message: e.to_string(),
                },
            };
            if events.send(e).is_err() {
                break;
            }
        }
    });
    Ok(stream_events(rest))
}

/// An `application/x-ndjson` answer: one JSON line per event, until the
/// sender is dropped.
pub(crate) fn stream_events<T: serde::Serialize + Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> Response {
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| {
            let mut line = serde_json::to_vec(&e).expect("json");
            line.push(b'\n');
            (Ok::<_, std::convert::Infallible>(line), rx)
        })
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

fn event(p: Progress) -> ImportEvent {
    match p {
        Progress::Resolved { layers, bytes } => ImportEvent::Resolved { layers, bytes },
        Progress::Fetched { index, bytes } => ImportEvent::Fetched {
            layer: index + 1,
            bytes,
        },
        Progress::Applied { index, entries } => ImportEvent::Applied {
            layer: index + 1,
            entries,
        },
    }
}

fn import_error(e: sbx_executor::Error) -> ApiError {
    use sbx_image::Error as E;
    match e {
        sbx_executor::Error::Import(e) => {
            let message = e.to_string();
            match e {
                E::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "image_not_found", message),
                E::Unauthorized(_) => {
                    ApiError::new(StatusCode::FORBIDDEN, "registry_denied", message)
                }
                E::Registry(_) => ApiError::new(StatusCode::BAD_GATEWAY, "registry_error", message),
                E::Io(_) => ApiError::internal(message),
                E::BadReference(..) | E::Archive(_) | E::Layer(_) | E::Unsupported(_) => {
                    ApiError::bad_request(message)
                }
            }
        }
        other => ApiError::internal(other.to_string()),
    }
}

pub(crate) fn check_name(manager: &Manager, name: &str) -> ApiResult<()> {
    if !sbx_api::image::is_valid_name(name) || custom_images::is_id(name) {
        return Err(ApiError::bad_request(format!(
            "image name {name:?}: {}",
            sbx_api::image::NAME_RULE
        )));
    }
    if name == DEFAULT_IMAGE || manager.images().list().iter().any(|n| n == name) {
        return Err(ApiError::conflict(format!(
            "{name} is a built-in image; import under another name"
        )));
    }
    Ok(())
}

/// `127.0.0.1:5000/tools/app:1` → `app`.
pub(crate) fn default_name(reference: &str) -> String {
    let path = reference.split('@').next().unwrap_or(reference);
    let last = path.rsplit('/').next().unwrap_or(path);
    last.split(':').next().unwrap_or(last).to_string()
}

/// A name no other upload of this process has.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

fn built_in(name: &str) -> ImageInfo {
    ImageInfo {
        name: name.to_string(),
        id: name.to_string(),
        source: "debootstrap".into(),
        digest: None,
        created_at: None,
        size_bytes: None,
        layers: None,
        stored_bytes: None,
        env: Vec::new(),
        working_dir: None,
        user: None,
        entrypoint: Vec::new(),
    }
}

pub(crate) fn info(r: &ImageRecord) -> ImageInfo {
    ImageInfo {
        name: r.name.clone(),
        id: r.id.clone(),
        source: r.source.clone(),
        digest: r.digest.clone(),
        created_at: Some(r.created_at.clone()),
        size_bytes: Some(r.size_bytes),
        layers: Some(r.layers),
        stored_bytes: r.stored_bytes,
        env: r.config.env.clone(),
        working_dir: r.config.working_dir.clone(),
        user: r.config.user.clone(),
        entrypoint: r.config.start_command(),
    }
}

/// The store manifest of image `id`: its root filesystem and its record.
fn manifest_id(id: &str) -> String {
    format!("image-{id}")
}

/// How long a host that must boot an image waits for the image's own host
/// to put it into the blob store (right after its commit).
const STORED_WAIT: Duration = Duration::from_secs(300);

/// The record of catalog row `row` (its stored bytes the catalog's);
/// `None`, logged, when the row's record does not read.
pub(crate) fn record_of(row: &ImageRow) -> Option<ImageRecord> {
    match serde_json::from_str::<ImageRecord>(&row.record) {
        Ok(mut record) => {
            record.stored_bytes = row.stored_bytes;
            Some(record)
        }
        Err(e) => {
            tracing::warn!(id = row.id, "unreadable image record in the catalog: {e}");
            None
        }
    }
}

/// The catalog row of image `record`, in `state`.
fn row_of(record: &ImageRecord, state: ImageState) -> ImageRow {
    ImageRow {
        id: record.id.clone(),
        name: record.name.clone(),
        state,
        record: serde_json::to_string(record).expect("json"),
        stored_bytes: record.stored_bytes,
        created_at: chrono::DateTime::parse_from_rfc3339(&record.created_at)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|_| chrono::Utc::now()),
    }
}

/// The state store as the catalog of the images this host commits (an
/// import, a build, a build's `FROM` import); each is then stored in the
/// blob store.
pub struct StoreCatalog(Weak<Manager>);

impl custom_images::Catalog for StoreCatalog {
    fn record<'a>(
        &'a self,
        record: &'a ImageRecord,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let m = self
                .0
                .upgrade()
                .ok_or_else(|| "the server is stopping".to_string())?;
            m.store
                .commit_image(&row_of(record, ImageState::Ready))
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn committed(&self, record: &ImageRecord) {
        if let Some(m) = self.0.upgrade() {
            m.store_image_later(record.clone());
        }
    }

    fn abandoned(&self, record: &ImageRecord) {
        if let Some(m) = self.0.upgrade() {
            let id = record.id.clone();
            tokio::spawn(async move {
                if let Err(e) = m.store.withdraw_image(&id).await {
                    tracing::warn!(id, "withdrawing an image that did not commit: {e}");
                }
            });
        }
    }
}

impl Manager {
    /// At start: makes the state store the catalog of the images this host
    /// commits, and adds to it the images on this host it has no row of
    /// (from before the catalog, or from a store that never saw them).
    pub async fn start_image_catalog(self: &Arc<Self>) {
        let custom = self.images().custom();
        if let Err(e) = custom.set_catalog(Arc::new(StoreCatalog(Arc::downgrade(self)))) {
            tracing::warn!("{e}");
        }
        let here = custom.on_disk();
        if here.is_empty() {
            return;
        }
        let ids: Vec<String> = here.iter().map(|(r, _)| r.id.clone()).collect();
        let known = match self.store.image_states(&ids).await {
            Ok(known) => known,
            Err(e) => return tracing::warn!("the image catalog: {e}"),
        };
        // Newest first: the newest image of a name takes it.
        for (record, removed) in here.iter().filter(|(r, _)| !known.contains_key(&r.id)) {
            let state = if *removed {
                ImageState::Removed
            } else {
                ImageState::Ready
            };
            match self.store.adopt_image(&row_of(record, state)).await {
                Ok(true) => tracing::info!(
                    image = record.name,
                    id = record.id,
                    "image on this host added to the catalog"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(id = record.id, "adding the image to the catalog: {e}"),
            }
        }
    }

    /// Names a create may give: the built-in images (the default one also
    /// while it is built) and the catalog's.
    pub async fn known_images(&self) -> Result<Vec<String>, sqlx::Error> {
        let mut names = self.images().list();
        if !names.iter().any(|n| n == DEFAULT_IMAGE) {
            names.push(DEFAULT_IMAGE.into());
        }
        names.extend(self.store.images().await?.into_iter().map(|r| r.name));
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The id of the image a create names: a built-in image's name, or the
    /// catalog's image of that name; `None`: no such image.
    pub async fn resolve_image(&self, name: &str) -> Result<Option<String>, sqlx::Error> {
        let images = self.images();
        if name == DEFAULT_IMAGE || images.exists(name) && !custom_images::is_id(name) {
            return Ok(Some(name.to_string()));
        }
        Ok(self.store.image_named(name).await?.map(|r| r.id))
    }

    /// Marks deleted the removed images nothing uses any more (their
    /// manifests go), and deletes from this host the files of images the
    /// catalog no longer lists that nothing here uses (and what a killed
    /// import left).
    pub async fn collect_images(&self) {
        match self.store.delete_unused_images().await {
            Ok(ids) if !ids.is_empty() => {
                for id in &ids {
                    tracing::info!(id, "removed image unused: deleted");
                }
                // Not waited for: gc waits for the store's writers (an
                // image being stored takes seconds), and nothing here needs
                // its chunks gone.
                let blobs = self.blobs.clone();
                tokio::task::spawn_blocking(move || {
                    for id in ids {
                        let _ = blobs.delete_manifest(&manifest_id(&id));
                    }
                    if let Err(e) = blobs.gc() {
                        tracing::warn!("store gc: {e}");
                    }
                });
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("deleting unused images: {e}"),
        }
        let custom = self.images().custom();
        let here = custom.ids();
        let unlisted: HashSet<String> = if here.is_empty() {
            HashSet::new()
        } else {
            match self.store.image_states(&here).await {
                Ok(states) => states
                    .into_iter()
                    .filter(|(_, s)| *s != ImageState::Ready)
                    .map(|(id, _)| id)
                    .collect(),
                Err(e) => return tracing::warn!("the image catalog: {e}"),
            }
        };
        let in_use = if unlisted.is_empty() {
            HashSet::new()
        } else {
            match self.store.images_in_use_on(&self.node_id).await {
                Ok(ids) => ids,
                Err(e) => return tracing::warn!("images in use: {e}"),
            }
        };
        for name in custom
            .collect(|id| unlisted.contains(id) && !in_use.contains(id))
            .await
        {
            tracing::info!(name, "image files deleted from this host");
        }
    }

    /// Stores image `record` in the background, outside the work a shutdown
    /// waits for: a stop cuts it short, and the next start stores again
    /// what is not stored ([`Manager::store_unstored_images`]).
    pub fn store_image_later(self: Arc<Self>, record: ImageRecord) {
        tokio::spawn(async move { self.store_image(&record).await });
    }

    /// At start: stores the images on this host whose storing a stop or
    /// crash cut short.
    pub async fn store_unstored_images(self: &Arc<Self>) {
        let here = self.images().custom().on_disk();
        if here.is_empty() {
            return;
        }
        let blobs = self.blobs.clone();
        let Ok(Ok(stored)) = tokio::task::spawn_blocking(move || blobs.list_manifests()).await
        else {
            return;
        };
        let stored: HashSet<String> = stored.into_iter().collect();
        for (record, _) in here {
            if stored.contains(&manifest_id(&record.id)) {
                continue;
            }
            match self.store.image(&record.id).await {
                Ok(Some(row)) if row.state != ImageState::Deleted && row.stored_bytes.is_none() => {
                    self.clone().store_image_later(record)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(id = record.id, "the image catalog: {e}"),
            }
        }
    }

    /// Puts image `record`'s files into the content-addressed store (chunks
    /// shared with snapshots and other images), so that a host without them
    /// can bring the image back; records the bytes it added.
    pub async fn store_image(&self, record: &ImageRecord) {
        let images = self.images().clone();
        let rootfs = images.rootfs(&record.id);
        let (blobs, r) = (self.blobs.clone(), record.clone());
        let stored = tokio::task::spawn_blocking(move || {
            let w = blobs.writer().map_err(|e| e.to_string())?;
            let (tree, stats) = w.put_dir(&rootfs).map_err(|e| e.to_string())?;
            let mut manifest = sbx_store::Manifest::default();
            manifest.trees.insert("rootfs".into(), tree);
            manifest.meta = serde_json::to_value(&r).expect("json");
            w.commit_manifest(&manifest_id(&r.id), &manifest)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((stats.logical_bytes, stats.stored_bytes))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match stored {
            Ok((logical, bytes)) => match self.store.set_image_stored(&record.id, bytes).await {
                Ok(true) => {
                    tracing::info!(image = record.name, id = record.id, bytes, "image stored");
                    self.metrics
                        .blob_put(crate::metrics::BlobKind::Image, logical, bytes);
                    if let Err(e) = images.custom().set_stored(&record.id, bytes).await {
                        tracing::debug!(id = record.id, "image stored: {e}");
                    }
                }
                // Deleted meanwhile: its manifest goes too.
                Ok(false) => {
                    let blobs = self.blobs.clone();
                    let id = manifest_id(&record.id);
                    let _ = tokio::task::spawn_blocking(move || blobs.delete_manifest(&id)).await;
                }
                Err(e) => tracing::warn!(id = record.id, "recording the stored image: {e}"),
            },
            // Removed (its files deleted from this host) while it was being
            // stored.
            Err(e) if !self.image_listed(&record.id).await => {
                tracing::debug!(image = record.name, "image gone before it was stored: {e}")
            }
            Err(e) => tracing::warn!(image = record.name, "storing the image failed: {e}"),
        }
    }

    /// Whether the catalog still lists image `id` (and this host has it).
    async fn image_listed(&self, id: &str) -> bool {
        let listed = matches!(
            self.store.image(id).await,
            Ok(Some(row)) if row.state == ImageState::Ready
        );
        listed && self.images().custom().get(id).is_some()
    }

    /// Makes image `id` available here, from the blob store when this host
    /// lacks it (a sandbox of an image made on another host), once the
    /// image's host has stored it there.
    pub async fn ensure_image(&self, id: &str) -> Result<(), String> {
        let images = self.images().clone();
        if !custom_images::is_id(id) || images.custom().get(id).is_some() {
            return Ok(());
        }
        let lock = self.lock_for(&format!("image:{id}"));
        let _guard = lock.lock().await;
        if images.custom().get(id).is_some() {
            return Ok(());
        }
        self.wait_stored(id).await?;
        let (blobs, mid) = (self.blobs.clone(), manifest_id(id));
        let fetched = tokio::task::spawn_blocking(move || fetch_image(&blobs, &images, &mid))
            .await
            .map_err(|e| e.to_string())?;
        let Some((record, image, filled)) = fetched else {
            return Err(format!(
                "image {id} is neither on this host nor in the store"
            ));
        };
        finish_fetch(record, image, filled).await
    }

    /// Waits (at most [`STORED_WAIT`]) until the catalog says image `id` is
    /// in the blob store; at once when the catalog has no row of it (an
    /// image from before the catalog: its manifest may be there).
    async fn wait_stored(&self, id: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + STORED_WAIT;
        loop {
            match self.store.image(id).await {
                Ok(Some(row)) if row.state == ImageState::Deleted => {
                    return Err(format!("image {id} was removed and deleted"))
                }
                Ok(Some(row)) if row.stored_bytes.is_none() => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(format!("the image catalog: {e}")),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "image {id} is not in the blob store yet (the host that made it stores it)"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Starts bringing image manifest `mid` back from the store (blocking):
/// `None` when it is not an image's, or the image is here already.
fn fetch_image(
    blobs: &sbx_store::Store,
    images: &sbx_executor::image::Images,
    mid: &str,
) -> Option<(ImageRecord, custom_images::NewImage, Result<(), String>)> {
    let manifest = blobs.manifest(mid).ok()?;
    let record = serde_json::from_value::<ImageRecord>(manifest.meta.clone()).ok()?;
    if images.custom().dir().join(&record.id).exists() {
        return None;
    }
    let tree = manifest.trees.get("rootfs")?;
    let image = images.custom().begin_restore(&record).ok()?;
    let filled = blobs.restore_dir(tree, image.rootfs());
    Some((record, image, filled.map_err(|e| e.to_string())))
}

/// Commits (or abandons) an image [`fetch_image`] filled.
async fn finish_fetch(
    record: ImageRecord,
    image: custom_images::NewImage,
    filled: Result<(), String>,
) -> Result<(), String> {
    let result = match filled {
        Ok(()) => image
            .commit_record(&record)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => {
            image.abandon().await;
            Err(e)
        }
    };
    match &result {
        Ok(()) => tracing::info!(
            image = record.name,
            id = record.id,
            "image brought back from the store"
        ),
        Err(e) => tracing::warn!(image = record.name, "bringing the image back failed: {e}"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_the_repository() {
        assert_eq!(default_name("127.0.0.1:5000/tools/app:1"), "app");
        assert_eq!(default_name("busybox"), "busybox");
        assert_eq!(default_name("reg.example/a/b@sha256:00"), "b");
        assert_eq!(default_name("localhost:5000/x"), "x");
    }
}
