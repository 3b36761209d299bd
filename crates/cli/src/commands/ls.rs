//! `sbx ls` (alias `list`).

use crate::client::Client;
use crate::table;
use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use sbx_api::sandbox::{SandboxInfo, SandboxStatus};

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Include terminated sandboxes.
    #[arg(short = 'a', long, conflicts_with = "running")]
    pub all: bool,

    /// Only running sandboxes.
    #[arg(short = 'r', long)]
    pub running: bool,

    /// Print `{"sandboxes": [...]}` as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(client: &Client, args: LsArgs) -> Result<i32> {
    let status = args.running.then_some(SandboxStatus::Running);
    let sandboxes = client.list(args.all, status).await?;
    if args.json {
        let out = serde_json::json!({ "sandboxes": sandboxes });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&sandboxes, Utc::now()));
    }
    Ok(0)
}

pub const HEADERS: [&str; 7] = ["ID", "NAME", "STATUS", "CPUS", "MEMORY", "IMAGE", "CREATED"];

pub fn render(sandboxes: &[SandboxInfo], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = sandboxes
        .iter()
        .map(|s| {
            vec![
                s.sandbox_id.clone(),
                s.name.clone().unwrap_or_else(|| "-".into()),
                s.status.to_string(),
                table::cpus(s.resources.cpus),
                table::memory(s.resources.memory_mb),
                s.image.clone().unwrap_or_else(|| "-".into()),
                format!("{} ago", table::age(now, s.created_at)),
            ]
        })
        .collect();
    table::render(&HEADERS, &rows)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tests::parse;
    use crate::Command;
    use clap::Parser;

    pub fn info(id: &str, name: Option<&str>, status: &str, created: &str) -> SandboxInfo {
        serde_json::from_value(serde_json::json!({
            "sandbox_id": id,
            "namespace": "default",
            "status": status,
            "resources": {"cpus": 1.0, "memory_mb": 1024, "disk_mb": 10240},
            "name": name,
            "image": "ubuntu",
            "network_policy": {"allow_internet_access": true},
            "network": {"allow_internet_access": true},
            "created_at": created,
            "allow_unauthenticated_access": false,
            "exposed_ports": [],
            "sandbox_url": "http://localhost:9443",
            "auto_resume": true,
        }))
        .unwrap()
    }

    #[test]
    fn ls_flags() {
        let Command::Ls(a) = parse(&["ls"]).command else {
            panic!()
        };
        assert!(!a.all && !a.running && !a.json);
        let Command::Ls(a) = parse(&["list", "-a", "--json"]).command else {
            panic!()
        };
        assert!(a.all && a.json);
        let Command::Ls(a) = parse(&["ls", "-r"]).command else {
            panic!()
        };
        assert!(a.running);
        assert!(crate::Cli::try_parse_from(["sbx", "ls", "-a", "-r"]).is_err());
    }

    #[test]
    fn ls_table() {
        let now: DateTime<Utc> = "2026-01-01T01:00:00Z".parse().unwrap();
        let t = render(
            &[
                info("sb-1", Some("web"), "running", "2026-01-01T00:58:00Z"),
                info("sb-22", None, "pending", "2026-01-01T00:59:50Z"),
            ],
            now,
        );
        assert_eq!(
            t,
            "ID      NAME   STATUS    CPUS   MEMORY   IMAGE    CREATED\n\
             sb-1    web    running   1      1GB      ubuntu   2m ago\n\
             sb-22   -      pending   1      1GB      ubuntu   10s ago\n"
        );
    }
}
