//! `sbx node ls|inspect|drain|undrain`: the hosts that run sandboxes.

use crate::client::Client;
use crate::table;
use anyhow::Result;
use clap::{Args, Subcommand};
use sbx_api::node::{NodeInfo, NodeState};

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub action: NodeAction,
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
    match args.action {
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
    use sbx_api::node::{NodeCapacity, NodeUsage};

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
