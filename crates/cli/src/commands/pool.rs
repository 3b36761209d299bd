//! `sbx pool create|ls|describe|update|rm`: warm pools, sandboxes of one
//! template kept booted and handed out by `sbx create --pool ID`.

use super::template::{EgressOpts, TemplateOpts};
use crate::client::Client;
use crate::table;
use anyhow::Result;
use clap::{Args, Subcommand};
use sbx_api::pool::{PoolInfo, PoolRequest};
use sbx_api::sandbox::ResourcesRequest;

#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    pub action: PoolAction,
}

#[derive(Debug, Subcommand)]
pub enum PoolAction {
    /// Create a pool and print its id; the server boots its warm sandboxes.
    Create(CreateArgs),
    /// List pools.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show a pool as JSON, with its sandboxes (`Idle`: warm; `Running`: claimed).
    #[command(visible_alias = "inspect")]
    Describe(IdArgs),
    /// Change a pool: the flags given replace those settings, the others
    /// stay. Warm sandboxes of the old template are replaced; claimed ones
    /// keep running.
    Update(UpdateArgs),
    /// Delete pools and their warm sandboxes (refused while sandboxes
    /// claimed from one still run).
    #[command(visible_alias = "delete")]
    Rm(RmArgs),
}

/// A pool's template and counts.
#[derive(Debug, Clone, Default, Args)]
pub struct PoolOpts {
    #[command(flatten)]
    pub template: TemplateOpts,

    /// Booted, unclaimed sandboxes to keep (server default: 1).
    #[arg(long, value_name = "N")]
    pub warm: Option<u32>,

    /// At most this many sandboxes of the pool at once, warm and claimed
    /// (0: no cap). A claim at the cap waits for one to end.
    #[arg(long, value_name = "N")]
    pub max: Option<u32>,

    #[command(flatten)]
    pub egress: EgressOpts,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub opts: PoolOpts,

    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[arg(value_name = "ID")]
    pub id: String,

    #[command(flatten)]
    pub opts: PoolOpts,

    /// Print the updated pool as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print `{"pools": [...]}` as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<String>,
}

impl PoolOpts {
    /// A new pool's request: only what was given (the server fills the rest).
    pub fn request(&self) -> Result<PoolRequest> {
        let t = &self.template;
        Ok(PoolRequest {
            image: t.image.clone(),
            resources: t.resources(),
            timeout_secs: t.timeout,
            entrypoint: t.entrypoint()?,
            max_containers: self.max.filter(|m| *m > 0),
            warm_containers: self.warm,
            network: self.egress.policy().map(Some),
        })
    }

    /// An update of pool `cur`: the server replaces the whole template, so
    /// what was not given is sent as it is now (the network policy, absent,
    /// is kept by the server).
    pub fn update(&self, cur: &PoolInfo) -> Result<PoolRequest> {
        let t = &self.template;
        Ok(PoolRequest {
            image: Some(t.image.clone().unwrap_or_else(|| cur.image.clone())),
            resources: Some(ResourcesRequest {
                cpus: Some(t.cpus.unwrap_or(cur.resources.cpus)),
                memory_mb: Some(t.memory.unwrap_or(cur.resources.memory_mb)),
                disk_mb: Some(t.disk_mb.unwrap_or(cur.resources.disk_mb)),
                gpus: None,
            }),
            timeout_secs: Some(t.timeout.unwrap_or(cur.timeout_secs)),
            entrypoint: t.entrypoint()?.or_else(|| cur.entrypoint.clone()),
            max_containers: match self.max {
                Some(0) => None,
                Some(m) => Some(m),
                None => cur.max_containers,
            },
            warm_containers: Some(self.warm.unwrap_or(cur.warm_containers)),
            network: self.egress.policy().map(Some),
        })
    }
}

pub async fn run(client: &Client, args: PoolArgs) -> Result<i32> {
    match args.action {
        PoolAction::Create(a) => {
            let resp = client.create_pool(&a.opts.request()?).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&resp)?);
            } else {
                println!("{}", resp.pool_id);
            }
        }
        PoolAction::Ls(a) => {
            let pools = client.pools().await?;
            if a.json {
                let out = serde_json::json!({ "pools": pools });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", render(&pools, chrono::Utc::now()));
            }
        }
        PoolAction::Describe(a) => {
            let pool = client.pool(&a.id).await?;
            println!("{}", serde_json::to_string_pretty(&pool)?);
        }
        PoolAction::Update(a) => {
            let cur = client.pool(&a.id).await?;
            let pool = client.update_pool(&a.id, &a.opts.update(&cur)?).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&pool)?);
            } else {
                println!("{}", pool.id);
            }
        }
        PoolAction::Rm(a) => {
            let mut failed = false;
            for id in &a.ids {
                match client.delete_pool(id).await {
                    Ok(()) => println!("{id}"),
                    Err(e) => {
                        eprintln!("error: {id}: {e:#}");
                        failed = true;
                    }
                }
            }
            return Ok(if failed { crate::EXIT_FAILURE } else { 0 });
        }
    }
    Ok(0)
}

const HEADERS: [&str; 7] = ["ID", "IMAGE", "WARM", "MAX", "CPUS", "MEMORY", "CREATED"];

fn render(pools: &[PoolInfo], now: chrono::DateTime<chrono::Utc>) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.image.clone(),
                p.warm_containers.to_string(),
                p.max_containers
                    .map_or_else(|| "-".to_string(), |m| m.to_string()),
                table::cpus(p.resources.cpus),
                table::memory(p.resources.memory_mb),
                format!("{} ago", table::age(now, p.created_at)),
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
    use clap::Parser;
    use sbx_api::sandbox::{NetworkPolicy, Resources};
    use serde_json::json;

    fn action(argv: &[&str]) -> PoolAction {
        match parse(argv).command {
            Command::Pool(PoolArgs { action }) => action,
            c => panic!("{c:?}"),
        }
    }

    fn pool() -> PoolInfo {
        let now = chrono::Utc::now();
        PoolInfo {
            id: "poolabc".into(),
            namespace: "default".into(),
            image: "app".into(),
            resources: Resources {
                cpus: 0.5,
                memory_mb: 2048,
                disk_mb: 10240,
            },
            timeout_secs: 600,
            entrypoint: Some(vec!["sleep".into(), "inf".into()]),
            max_containers: Some(4),
            warm_containers: 2,
            network_policy: NetworkPolicy::default(),
            containers: None,
            created_at: now - chrono::Duration::minutes(3),
            updated_at: now,
        }
    }

    #[test]
    fn create_sends_only_what_is_given() {
        let PoolAction::Create(a) = action(&[
            "pool",
            "create",
            "-i",
            "app",
            "--cpus",
            "0.5",
            "--memory",
            "1024",
            "--timeout",
            "60",
            "--entrypoint",
            "python3 -m http.server",
            "--warm",
            "2",
            "--max",
            "5",
            "--no-internet",
            "--allow-out",
            "10.0.0.0/8",
            "--json",
        ]) else {
            panic!()
        };
        assert!(a.json);
        let v = serde_json::to_value(a.opts.request().unwrap()).unwrap();
        assert_eq!(
            v,
            json!({
                "image": "app",
                "resources": {"cpus": 0.5, "memory_mb": 1024},
                "timeout_secs": 60,
                "entrypoint": ["python3", "-m", "http.server"],
                "max_containers": 5,
                "warm_containers": 2,
                "network": {"allow_internet_access": false, "allow_out": ["10.0.0.0/8"], "deny_out": []},
            })
        );
        let PoolAction::Create(a) = action(&["pool", "create"]) else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(a.opts.request().unwrap()).unwrap(),
            json!({})
        );
        let PoolAction::Create(a) = action(&["pool", "create", "-e", "echo 'open"]) else {
            panic!()
        };
        assert!(a.opts.request().is_err());
    }

    #[test]
    fn an_update_keeps_what_is_not_given() {
        let PoolAction::Update(a) =
            action(&["pool", "update", "poolabc", "--warm", "3", "-m", "4096"])
        else {
            panic!()
        };
        assert_eq!(a.id, "poolabc");
        let v = serde_json::to_value(a.opts.update(&pool()).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({
                "image": "app",
                "resources": {"cpus": 0.5, "memory_mb": 4096, "disk_mb": 10240},
                "timeout_secs": 600,
                "entrypoint": ["sleep", "inf"],
                "max_containers": 4,
                "warm_containers": 3,
            })
        );
        // --max 0 lifts the cap; network flags replace the policy.
        let PoolAction::Update(a) = action(&[
            "pool",
            "update",
            "poolabc",
            "--max",
            "0",
            "--deny-out",
            "0.0.0.0/0",
        ]) else {
            panic!()
        };
        let v = serde_json::to_value(a.opts.update(&pool()).unwrap()).unwrap();
        assert!(v.get("max_containers").is_none(), "{v}");
        assert_eq!(v["network"]["deny_out"], json!(["0.0.0.0/0"]));
    }

    #[test]
    fn other_verbs_parse() {
        assert!(matches!(
            action(&["pool", "ls", "--json"]),
            PoolAction::Ls(LsArgs { json: true })
        ));
        assert!(matches!(action(&["pool", "list"]), PoolAction::Ls(_)));
        match action(&["pool", "inspect", "p1"]) {
            PoolAction::Describe(a) => assert_eq!(a.id, "p1"),
            a => panic!("{a:?}"),
        }
        match action(&["pool", "rm", "p1", "p2"]) {
            PoolAction::Rm(a) => assert_eq!(a.ids, ["p1", "p2"]),
            a => panic!("{a:?}"),
        }
        assert!(crate::Cli::try_parse_from(["sbx", "pool", "rm"]).is_err());
        assert!(crate::Cli::try_parse_from(["sbx", "pool", "update"]).is_err());
    }

    #[test]
    fn the_list_shows_template_and_counts() {
        let mut p = pool();
        let out = render(std::slice::from_ref(&p), chrono::Utc::now());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "ID        IMAGE   WARM   MAX   CPUS   MEMORY   CREATED"
        );
        assert_eq!(
            lines[1],
            "poolabc   app     2      4     0.5    2GB      3m ago"
        );
        p.max_containers = None;
        assert!(render(&[p], chrono::Utc::now()).contains("   -   "));
    }
}
