//! Control-plane types: sandboxes, their resources and network policy.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Lifecycle status of a sandbox (exact wire strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    Pending,
    Running,
    Snapshotting,
    Suspending,
    Suspended,
    Terminated,
    Timeout,
    Failed,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Snapshotting => "snapshotting",
            Self::Suspending => "suspending",
            Self::Suspended => "suspended",
            Self::Terminated => "terminated",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    /// Terminated, failed or timed out: nothing runs and nothing will.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Terminated | Self::Failed | Self::Timeout)
    }
}

impl std::fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resources as requested; missing fields take the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourcesRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<serde_json::Value>,
}

/// Resources as granted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpus: f64,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    #[serde(default = "default_true")]
    pub allow_internet_access: bool,
    #[serde(default)]
    pub allow_out: Vec<String>,
    #[serde(default)]
    pub deny_out: Vec<String>,
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        Self {
            allow_internet_access: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// `POST …/sandboxes`. Unknown fields are accepted and ignored, as the
/// client may send fields sbx does not implement yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateSandboxRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated_access: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_secs: Option<u64>,
}

/// Answer to create: enough for the client to reach the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSandboxResponse {
    pub sandbox_id: String,
    pub status: SandboxStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_details: Option<ErrorDetails>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetails {
    pub message: String,
}

/// `GET …/sandboxes/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub sandbox_id: String,
    pub namespace: String,
    pub status: SandboxStatus,
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_names: Option<Vec<String>>,
    pub network_policy: NetworkPolicy,
    /// Same as `network_policy`, for older CLIs.
    pub network: NetworkPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_details: Option<ErrorDetails>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated_at: Option<DateTime<Utc>>,
    pub allow_unauthenticated_access: bool,
    pub exposed_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_url: Option<String>,
    pub auto_resume: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// The warm pool it was claimed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    /// Only in the answer to a resize (a PATCH of `resources`), which is
    /// applied before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_resize: Option<ResourceResize>,
}

/// A resize that was applied (the tensorlake client reads this).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceResize {
    /// When it was applied, in milliseconds since the epoch.
    pub generation: i64,
    /// Always `succeeded`: a resize that cannot be applied is an error.
    pub status: String,
    /// The resources the sandbox has now.
    pub requested: Resources,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListSandboxesResponse {
    pub sandboxes: Vec<SandboxInfo>,
}

/// A sandbox that ended (`terminated`, `failed` or `timeout`), with when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchivedSandboxInfo {
    #[serde(flatten)]
    pub info: SandboxInfo,
    /// When it ended, in milliseconds since the epoch: an integer, which
    /// the tensorlake client requires (it rejects an RFC 3339 string here).
    pub archived_at: u64,
}

/// `GET …/archived-sandboxes`: one page, newest first. A cursor is opaque.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListArchivedSandboxesResponse {
    pub sandboxes: Vec<ArchivedSandboxInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `PATCH …/sandboxes/{id}`: omitted = keep; `null` = clear.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateSandboxRequest {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub name: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated_access: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
    /// A running sandbox's new egress policy, applied at once; `null`: the
    /// default policy.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub network: Option<Option<NetworkPolicy>>,
}

/// Distinguishes a missing field (`None`) from an explicit `null` (`Some(None)`).
pub(crate) mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_match_the_wire() {
        for s in [
            "pending",
            "running",
            "snapshotting",
            "suspending",
            "suspended",
            "terminated",
            "timeout",
            "failed",
        ] {
            assert_eq!(SandboxStatus::parse(s).unwrap().as_str(), s);
        }
        assert!(SandboxStatus::parse("stopped").is_none());
    }

    #[test]
    fn patch_distinguishes_null_from_missing() {
        let keep: UpdateSandboxRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(keep.name, None);
        let clear: UpdateSandboxRequest = serde_json::from_str(r#"{"name":null}"#).unwrap();
        assert_eq!(clear.name, Some(None));
        let set: UpdateSandboxRequest = serde_json::from_str(r#"{"name":"a"}"#).unwrap();
        assert_eq!(set.name, Some(Some("a".into())));
    }
}
