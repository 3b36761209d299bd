//! Snapshots, suspend/resume and live copies.

use crate::sandbox::CreateSandboxResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a snapshot captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotType {
    /// The writable layer only; restore is a cold boot.
    #[default]
    Filesystem,
    /// The writable layer and the gVisor checkpoint of memory and
    /// processes, taken at the same instant; restore is warm.
    Memory,
}

impl SnapshotType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Filesystem => "filesystem",
            Self::Memory => "memory",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// Lifecycle of a snapshot (exact wire strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStatus {
    /// Being captured.
    InProgress,
    /// Captured and restorable on this host; not yet in the store.
    LocalReady,
    /// In the content-addressed store.
    Completed,
    Failed,
    Deleting,
    Replicating,
}

impl SnapshotStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::LocalReady => "local_ready",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Deleting => "deleting",
            Self::Replicating => "replicating",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
    /// A restore may start from it.
    pub fn is_restorable(self) -> bool {
        matches!(self, Self::LocalReady | Self::Completed)
    }
}

impl std::fmt::Display for SnapshotStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST …/sandboxes/{id}/snapshot` (the body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateSnapshotRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

/// Answer to `POST …/snapshot`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSnapshotResponse {
    pub snapshot_id: String,
    pub status: SnapshotStatus,
}

/// `GET …/snapshots/{sid}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub snapshot_id: String,
    pub namespace: String,
    /// The sandbox it was taken from (which may be gone by now).
    pub sandbox_id: String,
    pub snapshot_type: SnapshotType,
    pub status: SnapshotStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Logical size: the layer's files plus the memory image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Compressed bytes this snapshot added to the store (the rest was
    /// already there: chunks are shared between snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// The disk size a restore gets by default (the source's `disk_mb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_disk_bytes: Option<u64>,
    /// How long the source sandbox was paused for the capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_uri: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListSnapshotsResponse {
    pub snapshots: Vec<SnapshotInfo>,
}

/// Answer to `POST …/sandboxes/{id}/copy?times=N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopySandboxResponse {
    pub source_sandbox_id: String,
    /// The memory snapshot the copies were restored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    pub sandboxes: Vec<CreateSandboxResponse>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_strings_match_the_wire() {
        for s in [
            "in_progress",
            "local_ready",
            "completed",
            "failed",
            "deleting",
            "replicating",
        ] {
            assert_eq!(SnapshotStatus::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(SnapshotType::parse("memory"), Some(SnapshotType::Memory));
        assert_eq!(SnapshotType::default().as_str(), "filesystem");
        let empty: CreateSnapshotRequest = serde_json::from_str("{}").unwrap();
        assert!(empty.snapshot_type.is_none());
    }
}
