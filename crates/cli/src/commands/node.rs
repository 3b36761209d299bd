//! `sbx node --server URL --node-token T`: run sandboxes on this host as a
//! node of a control plane; `sbx node ls|inspect|drain|undrain`: the hosts
//! that run sandboxes.

use crate::client::Client;
use crate::commands::server::{self, ServerArgs};
use crate::table;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sbx_api::node::{JoinResponse, NodeInfo, NodeState};
use std::time::Duration;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub action: Option<NodeAction>,

    /// The control plane to join (its API URL): this host then runs the
    /// sandboxes it places here. Takes the server's flags (--data-dir,
    /// --api-addr, --proxy-addr, --advertise, --advertise-api,
    /// --cgroup-parent, …); the state store, blob store, API keys and
    /// --node-lost-secs come from the control plane.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,

    #[command(flatten)]
    pub host: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// List nodes: state, whether alive, sandboxes, capacity.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show one node as JSON.
    Inspect(IdArgs),
    /// Stop placing sandboxes on a node; what runs there keeps running.
    Drain(IdArgs),
    /// Place sandboxes on a drained node again.
    Undrain(IdArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print `{"nodes": [...]}` as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    #[arg(value_name = "NODE")]
    pub id: String,
}

pub async fn run(client: &Client, args: NodeArgs) -> Result<i32> {
    let Some(action) = args.action else {
        bail!("a node runs through `sbx node --server URL` (handled before any client)");
    };
    match action {
        NodeAction::Ls(a) => {
            let nodes = client.nodes().await?;
            if a.json {
                let out = serde_json::json!({ "nodes": nodes });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", render(&nodes));
            }
        }
        NodeAction::Inspect(a) => {
            let node = client.node(&a.id).await?;
            println!("{}", serde_json::to_string_pretty(&node)?);
        }
        NodeAction::Drain(a) => {
            let node = client.node_action(&a.id, "drain").await?;
            println!("{} {}", node.id, node.state.as_str());
        }
        NodeAction::Undrain(a) => {
            let node = client.node_action(&a.id, "undrain").await?;
            println!("{} {}", node.id, node.state.as_str());
        }
    }
    Ok(0)
}

/// Joins the control plane at `--server` and serves as its node until
/// SIGINT/SIGTERM.
pub async fn serve(args: NodeArgs) -> Result<i32> {
    let url = args.server.context(
        "--server URL: the control plane to join (or one of: ls, inspect, drain, undrain)",
    )?;
    let token = args
        .host
        .node_token
        .clone()
        .context("--node-token TOKEN (or SBX_NODE_TOKEN): the control plane's node token")?;
    if args.host.no_local_node {
        bail!("--no-local-node: a node runs sandboxes; the flag is for `sbx server`");
    }
    if args.host.state.is_some() || args.host.blobs.is_some() {
        bail!("--state and --blobs (SBX_STATE, SBX_BLOBS) come from the control plane: drop them");
    }
    server::init_logs();
    let client = Client::new(&url, Some(token), "default")?;
    let join = join(&client, &url).await?;
    tracing::info!(server = url, blobs = join.blobs, "joined the cluster");
    let mut config = args.host.config();
    if let (Some(key), None) = (&join.secrets_key, &config.secrets_key_file) {
        config.secrets_key_file = Some(write_cluster_key(&config.data_dir, key)?);
    }
    apply(&mut config, join, has_own_s3_key());
    sbx_server::run(config).await?;
    Ok(0)
}

/// Keeps the cluster's secrets key (hex) in `DATA_DIR/cluster-secrets.key`
/// (mode 0600), replacing what an earlier join wrote there.
fn write_cluster_key(data_dir: &std::path::Path, key: &str) -> Result<std::path::PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("cluster-secrets.key");
    let tmp = data_dir.join(".cluster-secrets.key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Asks the control plane to join, trying again for a minute while it
/// cannot be reached (a node started before its control plane).
async fn join(client: &Client, url: &str) -> Result<JoinResponse> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match client.join().await {
            Ok(j) => return Ok(j),
            Err(e) if is_unreachable(&e) && tokio::time::Instant::now() < deadline => {
                tracing::warn!("cannot reach the control plane at {url} yet: {e:#}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.context(format!("joining the control plane at {url}"))),
        }
    }
}

fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<reqwest::Error>()
            .is_some_and(|r| r.is_connect() || r.is_timeout())
    })
}

/// Whether this host has an S3 key of its own (then the control plane's
/// is not used).
fn has_own_s3_key() -> bool {
    std::env::var_os("AWS_ACCESS_KEY_ID").is_some_and(|v| !v.is_empty())
}

/// A node's server configuration: its own flags, with what the cluster
/// shares from `join`.
fn apply(config: &mut sbx_server::ServerConfig, join: JoinResponse, own_s3_key: bool) {
    config.state = Some(join.state);
    config.blobs = Some(join.blobs);
    config.node_lost_after = Duration::from_secs(join.node_lost_secs);
    config.blobs_credentials =
        join.blobs_credentials
            .filter(|_| !own_s3_key)
            .map(|c| sbx_server::S3Credentials {
                access_key_id: c.access_key_id,
                secret_access_key: c.secret_access_key,
                session_token: c.session_token,
            });
    for key in join.api_keys {
        if !config.api_keys.contains(&key) {
            config.api_keys.push(key);
        }
    }
    // A node takes no nodes itself.
    config.node_token = None;
    config.local_node = true;
}

const HEADERS: [&str; 6] = ["ID", "ADDRESS", "STATE", "SANDBOXES", "CPUS", "MEMORY"];

fn render(nodes: &[NodeInfo]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let state = match (n.state, n.alive) {
                (_, false) => "lost".to_string(),
                (NodeState::Ready, true) => "ready".to_string(),
                (NodeState::Draining, true) => "draining".to_string(),
            };
            let sandboxes = match n.capacity.max_sandboxes {
                Some(max) => format!("{}/{max}", n.usage.sandboxes),
                None => n.usage.sandboxes.to_string(),
            };
            vec![
                n.id.clone(),
                n.address.clone().unwrap_or_else(|| "-".into()),
                state,
                sandboxes,
                n.capacity.cpus.to_string(),
                format!(
                    "{} free of {}",
                    table::memory(n.usage.memory_available_mb),
                    table::memory(n.capacity.memory_mb)
                ),
            ]
        })
        .collect();
    table::render(&HEADERS, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::parse;
    use crate::Command;
    use sbx_api::node::{BlobsCredentials, NodeCapacity, NodeUsage};

    #[test]
    fn a_node_takes_the_server_flags_and_subcommands_still_parse() {
        let Command::Node(a) = parse(&[
            "node",
            "--server",
            "http://cp:8900",
            "--node-token",
            "0123456789abcdef",
            "--data-dir",
            "/d",
            "--advertise",
            "10.0.0.2:9443",
        ])
        .command
        else {
            panic!()
        };
        assert!(a.action.is_none());
        assert_eq!(a.server.as_deref(), Some("http://cp:8900"));
        assert_eq!(a.host.advertise.as_deref(), Some("10.0.0.2:9443"));
        let Command::Node(a) = parse(&["node", "drain", "node-1"]).command else {
            panic!()
        };
        assert!(matches!(a.action, Some(NodeAction::Drain(_))));
    }

    #[test]
    fn the_cluster_settings_replace_the_nodes_own() {
        let Command::Node(a) =
            parse(&["node", "--server", "http://cp", "--api-key", "mine"]).command
        else {
            panic!()
        };
        let mut config = a.host.config();
        let join = JoinResponse {
            state: "postgres://db/sbx".into(),
            blobs: "s3://b?endpoint=http://s3:8333".into(),
            blobs_credentials: Some(BlobsCredentials {
                access_key_id: "id".into(),
                secret_access_key: "secret".into(),
                session_token: None,
            }),
            node_lost_secs: 20,
            api_keys: vec!["shared".into(), "mine".into()],
            secrets_key: None,
        };
        apply(&mut config, join.clone(), false);
        assert_eq!(config.state.as_deref(), Some("postgres://db/sbx"));
        assert_eq!(config.node_lost_after, Duration::from_secs(20));
        assert_eq!(config.api_keys, ["mine", "shared"]);
        assert_eq!(
            config
                .blobs_credentials
                .as_ref()
                .map(|c| c.access_key_id.as_str()),
            Some("id")
        );
        assert!(config.local_node && config.node_token.is_none());
        // A host with its own S3 key keeps it.
        apply(&mut config, join, true);
        assert!(config.blobs_credentials.is_none());
    }

    #[test]
    fn the_cluster_key_is_kept_private_in_the_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for key in ["00ff", "abcd"] {
            let path = write_cluster_key(dir.path(), key).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), key);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_silent_node_shows_as_lost() {
        let mut n = NodeInfo {
            id: "node-1".into(),
            address: None,
            api_address: None,
            state: NodeState::Draining,
            alive: true,
            capacity: NodeCapacity {
                cpus: 2,
                memory_mb: 24_000,
                max_sandboxes: Some(10),
            },
            usage: NodeUsage {
                sandboxes: 3,
                memory_available_mb: 20_000,
                ..Default::default()
            },
            registered_at: String::new(),
            heartbeat_at: String::new(),
        };
        let out = render(std::slice::from_ref(&n));
        assert!(
            out.contains("node-1") && out.contains("draining") && out.contains("3/10"),
            "{out}"
        );
        n.alive = false;
        assert!(render(&[n]).contains("lost"));
    }
}
