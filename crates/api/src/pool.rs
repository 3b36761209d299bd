//! Warm pools (`…/sandbox-pools`): sandboxes of one template kept booted,
//! handed out by a claim.

use crate::sandbox::{NetworkPolicy, Resources, ResourcesRequest};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST …/sandbox-pools` and `PUT …/sandbox-pools/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesRequest>,
    /// 0 or absent: no timeout (counted from the claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// At most this many sandboxes of the pool at once, warm and claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_containers: Option<u32>,
    /// How many booted, unclaimed sandboxes to keep (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_containers: Option<u32>,
    /// On an update: absent keeps the policy, `null` clears it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::sandbox::double_option"
    )]
    pub network: Option<Option<NetworkPolicy>>,
}

/// `POST …/sandbox-pools`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatePoolResponse {
    pub pool_id: String,
    pub namespace: String,
}

/// One sandbox of a pool, as `GET …/sandbox-pools/{id}` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolContainer {
    /// The sandbox's id.
    pub id: String,
    /// `Idle` (warm: booted, unclaimed) or `Running` (claimed).
    pub state: String,
    /// Set once claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The node it runs on.
    pub executor_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolInfo {
    pub id: String,
    pub namespace: String,
    pub image: String,
    pub resources: Resources,
    pub timeout_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_containers: Option<u32>,
    pub warm_containers: u32,
    pub network_policy: NetworkPolicy,
    /// Only in `GET …/sandbox-pools/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<PoolContainer>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListPoolsResponse {
    pub pools: Vec<PoolInfo>,
}

/// `POST …/sandbox-pools/{id}/sandboxes` (a claim; the body may be absent).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// A name for the claimed sandbox (an sbx extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// File systems to mount: sbx has none to offer (a 400 when non-empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_systems: Option<Vec<serde_json::Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_tells_a_missing_network_from_a_cleared_one() {
        let keep: PoolRequest = serde_json::from_str(r#"{"image": "default"}"#).unwrap();
        assert!(keep.network.is_none());
        let clear: PoolRequest = serde_json::from_str(r#"{"network": null}"#).unwrap();
        assert_eq!(clear.network, Some(None));
        let set: PoolRequest =
            serde_json::from_str(r#"{"network": {"allow_internet_access": false}}"#).unwrap();
        assert!(matches!(set.network, Some(Some(ref n)) if !n.allow_internet_access));
    }
}
