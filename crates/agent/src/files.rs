//! File routes: streamed download/upload, delete, directory listing.

use crate::error::AppError;
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sbx_api::daemon::{DirEntry, DirListing};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

const CHUNK: usize = 256 << 10;

fn require_path(path: Option<String>) -> Result<PathBuf, AppError> {
    match path {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(AppError::bad_request("query parameter `path` is required")),
    }
}

/// `GET /files?path=P`: streams the file.
pub async fn read(path: Option<String>) -> Result<Response, AppError> {
    let path = require_path(path)?;
    let what = path.display().to_string();
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| AppError::io(&what, &e))?;
    if meta.is_dir() {
        return Err(AppError::bad_request(format!("{what} is a directory")));
    }
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| AppError::io(&what, &e))?;
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if meta.is_file() {
        builder = builder.header(header::CONTENT_LENGTH, meta.len());
    }
    builder
        .body(Body::from_stream(ReaderStream::with_capacity(file, CHUNK)))
        .map_err(|e| AppError::internal(e.to_string()))
}

/// `PUT /files?path=P`: streams the body to a temporary file beside the
/// target, then renames it into place (a failed upload leaves nothing).
pub async fn write(path: Option<String>, body: Body) -> Result<Response, AppError> {
    let path = require_path(path)?;
    let what = path.display().to_string();
    let name = path
        .file_name()
        .ok_or_else(|| AppError::bad_request(format!("{what} has no file name")))?
        .to_string_lossy()
        .into_owned();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
        return Err(AppError::bad_request(format!("{what} is a directory")));
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| AppError::io(&dir.display().to_string(), &e))?;
    let tmp = dir.join(format!(".{name}.sbx-upload-{:08x}", rand::random::<u32>()));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| AppError::io(&what, &e))?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| AppError::bad_request(format!("reading body: {e}")))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| AppError::io(&what, &e))?;
        }
        file.flush().await.map_err(|e| AppError::io(&what, &e))?;
        // Keep the mode of a file we replace.
        if let Ok(old) = tokio::fs::metadata(&path).await {
            let _ = tokio::fs::set_permissions(&tmp, old.permissions()).await;
        }
        drop(file);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| AppError::io(&what, &e))
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /files?path=P`: a file, or a directory recursively.
pub async fn delete(path: Option<String>) -> Result<Response, AppError> {
    let path = require_path(path)?;
    let what = path.display().to_string();
    let meta = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|e| AppError::io(&what, &e))?;
    if meta.is_dir() {
        tokio::fs::remove_dir_all(&path).await
    } else {
        tokio::fs::remove_file(&path).await
    }
    .map_err(|e| AppError::io(&what, &e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /files/list?path=P`.
pub async fn list(path: Option<String>) -> Result<Json<DirListing>, AppError> {
    let path = require_path(path)?;
    let what = path.display().to_string();
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| AppError::io(&what, &e))?;
    if !meta.is_dir() {
        return Err(AppError::bad_request(format!("{what} is not a directory")));
    }
    let mut rd = tokio::fs::read_dir(&path)
        .await
        .map_err(|e| AppError::io(&what, &e))?;
    let mut entries = Vec::new();
    while let Some(entry) = rd.next_entry().await.map_err(|e| AppError::io(&what, &e))? {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Follow symlinks for the kind and size, falling back to the link itself.
        let meta = match tokio::fs::metadata(entry.path()).await {
            Ok(m) => m,
            Err(_) => match entry.metadata().await {
                Ok(m) => m,
                Err(_) => continue,
            },
        };
        entries.push(DirEntry {
            name,
            is_dir: meta.is_dir(),
            size: (!meta.is_dir()).then_some(meta.len()),
            modified_at: meta.modified().ok().map(DateTime::<Utc>::from),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(DirListing {
        path: what,
        entries,
    }))
}
