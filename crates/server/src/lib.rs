//! The sbx control plane, sandbox proxy and the all-in-one `sbx server`.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings of `sbx server`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Everything sbx keeps: state database, images, sandboxes' layers.
    pub data_dir: PathBuf,
    /// Control-plane listen address.
    pub api_addr: SocketAddr,
    /// Sandbox proxy (data plane) listen address.
    pub proxy_addr: SocketAddr,
    /// Accepted bearer keys; empty = no auth, loopback only.
    pub api_keys: Vec<String>,
    /// Static `sbx-agent` binary; default: found beside the running executable.
    pub agent_bin: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(config: ServerConfig) -> Result<(), Error> {
    let _ = config;
    Err(Error::Config("not implemented yet".into()))
}
