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
