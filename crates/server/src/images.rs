//! `/images`: list, inspect, import (from a registry, or an uploaded
//! archive) and remove sandbox images. Images belong to the host: every
//! namespace sees the same ones.
//!
//! An import answers once its source is resolved — a bad reference, an
//! unknown image, a refused login or an unreadable archive are plain JSON
//! errors — and then streams its progress as `application/x-ndjson`
//! ([`ImportEvent`] lines, the last one `done` or `error`). It goes on if
//! the client goes away.

use crate::api::ApiState;
use crate::error::{ApiError, ApiResult, JsonBody, ObjectBody, Path, Query};
use crate::lifecycle::Manager;
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
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

impl ObjectBody for ImportImageRequest {}

pub async fn list(State(state): State<ApiState>) -> Json<ListImagesResponse> {
    let images = state.manager.executor.images();
    let mut all: Vec<ImageInfo> = images.list().into_iter().map(|n| built_in(&n)).collect();
    all.extend(images.custom().list().iter().map(info));
    Json(ListImagesResponse { images: all })
}

pub async fn get_one(
    State(state): State<ApiState>,
    Path(params): Path<HashMap<String, String>>,
) -> ApiResult<Json<ImageInfo>> {
    let name = &params["name"];
    let images = state.manager.executor.images();
    if images.list().contains(name) {
        return Ok(Json(built_in(name)));
    }
    images
        .custom()
        .find(name)
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
    let images = state.manager.executor.images();
    if images.list().contains(name) || name == DEFAULT_IMAGE {
        return Err(ApiError::bad_request(format!(
            "{name} is a built-in image and cannot be removed"
        )));
    }
    let record = images
        .custom()
        .remove(name)
        .await
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
    let dir = state.manager.executor.images().custom().dir().to_path_buf();
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
    let images = manager.executor.images().clone();
    let m = manager.clone();
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
                let _ = tx.send(Step::Event(ImportEvent::Done {
                    image: Box::new(info(&record)),
                }));
                drop(tx);
                m.clone().store_image_later(record);
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
    if name == DEFAULT_IMAGE || manager.executor.images().list().iter().any(|n| n == name) {
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

impl Manager {
    /// Deletes removed images nothing uses any more, here and in the store.
    pub async fn collect_images(&self) {
        let custom = self.executor.images().custom();
        if !custom.has_removed() {
            return;
        }
        match self.store.images_in_use().await {
            Ok(in_use) => {
                let gone = custom.collect(&in_use).await;
                for id in &gone {
                    tracing::info!(id, "removed image deleted from the host");
                }
                let ids: Vec<String> = gone
                    .into_iter()
                    .filter(|id| custom_images::is_id(id))
                    .collect();
                if !ids.is_empty() {
                    let blobs = self.blobs.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        for id in ids {
                            let _ = blobs.delete_manifest(&manifest_id(&id));
                        }
                        if let Err(e) = blobs.gc() {
                            tracing::warn!("store gc: {e}");
                        }
                    })
                    .await;
                }
            }
            Err(e) => tracing::warn!("images in use: {e}"),
        }
    }

    /// Stores image `record` in the background, outside the work a shutdown
    /// waits for: a stop cuts it short, and the next start stores again
    /// what is not stored ([`Manager::store_unstored_images`]).
    pub fn store_image_later(self: Arc<Self>, record: ImageRecord) {
        tokio::spawn(async move { self.store_image(&record).await });
    }

    /// At start: stores the images whose storing a stop or crash cut short
    /// (not those brought back from the store).
    pub async fn store_unstored_images(self: &Arc<Self>) {
        let blobs = self.blobs.clone();
        let Ok(Ok(stored)) = tokio::task::spawn_blocking(move || blobs.list_manifests()).await
        else {
            return;
        };
        let stored: std::collections::HashSet<String> = stored.into_iter().collect();
        let custom = self.executor.images().custom();
        for record in custom.list() {
            if record.stored_bytes.is_none()
                && custom.is_listed(&record.id)
                && !stored.contains(&manifest_id(&record.id))
            {
                self.clone().store_image_later(record);
            }
        }
    }

    /// Puts image `record`'s files into the content-addressed store (chunks
    /// shared with snapshots and other images), so that a host without them
    /// can bring the image back; records the bytes it added.
    pub async fn store_image(&self, record: &ImageRecord) {
        let images = self.executor.images().clone();
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
            // Removed meanwhile: its manifest goes too.
            Ok(_) if !images.custom().is_listed(&record.id) => {
                let blobs = self.blobs.clone();
                let id = manifest_id(&record.id);
                let _ = tokio::task::spawn_blocking(move || blobs.delete_manifest(&id)).await;
            }
            Ok((logical, bytes)) => {
                tracing::info!(image = record.name, id = record.id, bytes, "image stored");
                self.metrics
                    .blob_put(crate::metrics::BlobKind::Image, logical, bytes);
                if let Err(e) = images.custom().set_stored(&record.id, bytes).await {
                    tracing::warn!(id = record.id, "image stored: {e}");
                }
            }
            // Removed (and deleted) while it was being stored.
            Err(e) if !images.custom().is_listed(&record.id) => {
                tracing::debug!(image = record.name, "image gone before it was stored: {e}")
            }
            Err(e) => tracing::warn!(image = record.name, "storing the image failed: {e}"),
        }
    }

    /// Brings back the images the store has and this host lacks (at start):
    /// their files from their chunks, their record from the manifest.
    pub async fn restore_images(&self) {
        let blobs = self.blobs.clone();
        let images = self.executor.images().clone();
        let restored = tokio::task::spawn_blocking(move || {
            let Ok(ids) = blobs.list_manifests() else {
                return Vec::new();
            };
            ids.iter()
                .filter(|m| m.starts_with("image-"))
                .filter_map(|mid| fetch_image(&blobs, &images, mid))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (record, image, filled) in restored {
            let _ = finish_fetch(record, image, filled).await;
        }
    }

    /// Makes image `id` available here, from the blob store when this host
    /// lacks it (a sandbox placed here from another node's image).
    pub async fn ensure_image(&self, id: &str) -> Result<(), String> {
        let images = self.executor.images().clone();
        if !custom_images::is_id(id) || images.custom().get(id).is_some() {
            return Ok(());
        }
        let lock = self.lock_for(&format!("image:{id}"));
        let _guard = lock.lock().await;
        if images.custom().get(id).is_some() {
            return Ok(());
        }
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
