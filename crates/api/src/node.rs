//! Nodes: the hosts that run sandboxes (`GET /v1/nodes`).

use serde::{Deserialize, Serialize};

/// Whether a node takes new sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Takes new sandboxes.
    Ready,
    /// Runs what it has; takes nothing new (`sbx node drain`).
    Draining,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(NodeState::Ready),
            "draining" => Some(NodeState::Draining),
            _ => None,
        }
    }
}

/// What a node can hold, as it reported at registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeCapacity {
    pub cpus: u32,
    pub memory_mb: u64,
    /// At most this many sandboxes at once (`--max-sandboxes`), if capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sandboxes: Option<u64>,
}

/// What a node uses now and holds, as of its last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeUsage {
    /// Sandboxes running or starting on it.
    pub sandboxes: u64,
    /// Memory its host has available for more sandboxes.
    pub memory_available_mb: u64,
    /// Ids of the images on its disk (a sandbox of one starts there without
    /// fetching it from the blob store).
    #[serde(default)]
    pub images: Vec<String>,
    /// Ids of the snapshots on its disk.
    #[serde(default)]
    pub snapshots: Vec<String>,
}

/// One node, as `GET /v1/nodes` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// Where other servers' proxies reach its sandboxes (`HOST:PORT`);
    /// absent when it advertises none (a proxy on a wildcard address
    /// without `--advertise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Where other servers send lifecycle requests for its sandboxes (its
    /// server's API, `HOST:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_address: Option<String>,
    pub state: NodeState,
    /// Whether it heartbeat recently enough to be given work.
    pub alive: bool,
    pub capacity: NodeCapacity,
    pub usage: NodeUsage,
    pub registered_at: String,
    pub heartbeat_at: String,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListNodesResponse {
    pub nodes: Vec<NodeInfo>,
}

/// `POST /v1/cluster/join` (authenticated with the cluster's node token):
/// what a node started with `sbx node --server URL` needs to serve in the
/// cluster. Its values are secrets (the state store's URL, S3 keys, the API
/// keys): a control plane answers only a request bearing its node token.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The state store's URL (`postgres://…`), as the control plane uses it.
    pub state: String,
    /// The blob store's URL (`s3://…` or a directory every node mounts).
    pub blobs: String,
    /// The S3 key the control plane uses, for a node that has none of its
    /// own in its environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs_credentials: Option<BlobsCredentials>,
    /// The cluster's `--node-lost-secs` (every node must use the same).
    pub node_lost_secs: u64,
    /// The API keys clients use (requests relayed to a node carry them).
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// The key secrets are sealed with, as hex digits: every node that
    /// launches sandboxes opens them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_key: Option<String>,
}

/// An S3 access key, as [`JoinResponse`] hands it to a node.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for JoinResponse {
    /// Names what it holds, never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinResponse")
            .field("blobs", &self.blobs)
            .field("node_lost_secs", &self.node_lost_secs)
            .field("api_keys", &self.api_keys.len())
            .finish_non_exhaustive()
    }
}
