//! `sbx create [NAME]` (alias `new`).

use super::template::{EgressOpts, TemplateOpts};
use crate::client::Client;
use anyhow::{bail, Result};
use clap::Args;
use sbx_api::pool::ClaimRequest;
use sbx_api::sandbox::{CreateSandboxRequest, CreateSandboxResponse, SandboxInfo, SandboxStatus};
use std::time::{Duration, Instant};

/// Sandbox settings shared by `create` and `run`.
#[derive(Debug, Clone, Default, Args)]
pub struct CreateOpts {
    #[command(flatten)]
    pub template: TemplateOpts,

    /// Restore this snapshot: its files (and, for a memory snapshot, its
    /// running processes); image and settings come from the snapshot.
    #[arg(short = 's', long, value_name = "SID")]
    pub snapshot: Option<String>,

    #[command(flatten)]
    pub egress: EgressOpts,

    /// A secret (`sbx secret set NAME`) to set as an environment variable
    /// of every process in the sandbox (repeatable).
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,

    /// When no node has room now, wait up to this many seconds `pending`
    /// for one instead of failing at once.
    #[arg(long, value_name = "SECS")]
    pub max_pending_secs: Option<u64>,
}

impl CreateOpts {
    pub fn request(&self, name: Option<String>) -> Result<CreateSandboxRequest> {
        Ok(CreateSandboxRequest {
            image: self.template.image.clone(),
            network: self.egress.policy(),
            resources: self.template.resources(),
            timeout_secs: self.template.timeout,
            entrypoint: self.template.entrypoint()?,
            name,
            snapshot_id: self.snapshot.clone(),
            secret_names: (!self.secrets.is_empty()).then(|| self.secrets.clone()),
            max_pending_secs: self.max_pending_secs,
            ..Default::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the sandbox (optional; named sandboxes can be suspended).
    pub name: Option<String>,

    #[command(flatten)]
    pub opts: CreateOpts,

    /// Claim a sandbox from this warm pool (`sbx pool create`): its
    /// template decides image, resources and network.
    #[arg(long, value_name = "POOL", conflicts_with_all = POOL_CONFLICTS)]
    pub pool: Option<String>,

    /// Return at once while the sandbox is still pending.
    #[arg(long)]
    pub no_wait: bool,

    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The settings a pool's template decides (`--pool` takes none of them).
const POOL_CONFLICTS: [&str; 12] = [
    "cpus",
    "memory",
    "disk_mb",
    "timeout",
    "entrypoint",
    "image",
    "snapshot",
    "no_internet",
    "allow_out",
    "deny_out",
    "secrets",
    "max_pending_secs",
];

pub async fn run(client: &Client, args: CreateArgs) -> Result<i32> {
    let resp = match &args.pool {
        Some(pool) => {
            let req = ClaimRequest {
                name: args.name.clone(),
                file_systems: None,
            };
            let resp = client.claim(pool, &req, !args.no_wait).await?;
            settle(client, resp, !args.no_wait).await?
        }
        None => {
            let mut req = args.opts.request(args.name)?;
            if args.no_wait {
                req.wait = Some(false);
            }
            create_sandbox(client, &req, !args.no_wait).await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        match &resp.name {
            Some(name) => println!("{}\t{}", resp.sandbox_id, name),
            None => println!("{}", resp.sandbox_id),
        }
        if resp.status == SandboxStatus::Pending {
            let why = resp.pending_reason.as_deref().unwrap_or("scheduling");
            eprintln!("sandbox {} is pending ({why})", resp.sandbox_id);
        }
    }
    Ok(0)
}

/// Creates a sandbox; with `wait`, polls a pending one until it runs. A
/// sandbox that failed or stopped is an error.
pub async fn create_sandbox(
    client: &Client,
    req: &CreateSandboxRequest,
    wait: bool,
) -> Result<CreateSandboxResponse> {
    let resp = client.create(req).await?;
    settle(client, resp, wait).await
}

/// Follows a create answer: with `wait`, polls while pending; a failed or
/// stopped sandbox is an error.
pub async fn settle(
    client: &Client,
    mut resp: CreateSandboxResponse,
    wait: bool,
) -> Result<CreateSandboxResponse> {
    let started = Instant::now();
    let mut told = false;
    while wait && resp.status == SandboxStatus::Pending {
        if !told && started.elapsed() > Duration::from_secs(5) {
            let why = resp.pending_reason.as_deref().unwrap_or("scheduling");
            eprintln!("waiting for sandbox {} ({why})…", resp.sandbox_id);
            told = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        resp = response_of(client.get(&resp.sandbox_id).await?);
    }
    if resp.status.is_final() || resp.status == SandboxStatus::Suspended {
        let why = resp
            .error_details
            .as_ref()
            .map(|e| e.message.clone())
            .or(resp.reason.clone())
            .or(resp.termination_reason.clone())
            .unwrap_or_else(|| "no reason given".into());
        bail!("sandbox {} is {}: {why}", resp.sandbox_id, resp.status);
    }
    Ok(resp)
}

fn response_of(info: SandboxInfo) -> CreateSandboxResponse {
    CreateSandboxResponse {
        sandbox_id: info.sandbox_id,
        status: info.status,
        sandbox_url: info.sandbox_url,
        name: info.name,
        pending_reason: info.pending_reason,
        reason: None,
        termination_reason: info.termination_reason,
        error_details: info.error_details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::parse;
    use crate::Command;
    use clap::Parser;

    fn create_args(argv: &[&str]) -> CreateArgs {
        match parse(argv).command {
            Command::Create(a) => a,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn create_flags() {
        let a = create_args(&[
            "create",
            "web",
            "-c",
            "0.5",
            "-m",
            "2048",
            "--disk-mb",
            "4096",
            "-t",
            "600",
            "-e",
            "python3 -m http.server 'a b'",
            "-i",
            "ubuntu",
            "--no-wait",
            "--json",
        ]);
        assert_eq!(a.name.as_deref(), Some("web"));
        assert!(a.no_wait && a.json);
        let req = a.opts.request(a.name.clone()).unwrap();
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "image": "ubuntu",
                "resources": {"cpus": 0.5, "memory_mb": 2048, "disk_mb": 4096},
                "timeout_secs": 600,
                "entrypoint": ["python3", "-m", "http.server", "a b"],
                "name": "web",
            })
        );
    }

    #[test]
    fn network_flags_make_a_policy() {
        let a = create_args(&[
            "create",
            "--no-internet",
            "--allow-out",
            "203.0.113.7",
            "--allow-out",
            "198.51.100.0/24",
        ]);
        let v = serde_json::to_value(a.opts.request(None).unwrap()).unwrap();
        assert_eq!(
            v["network"],
            serde_json::json!({"allow_internet_access": false, "allow_out": ["203.0.113.7", "198.51.100.0/24"], "deny_out": []})
        );
        let a = create_args(&["create", "--deny-out", "0.0.0.0/0"]);
        let v = serde_json::to_value(a.opts.request(None).unwrap()).unwrap();
        assert_eq!(v["network"]["allow_internet_access"], true);
        assert_eq!(v["network"]["deny_out"], serde_json::json!(["0.0.0.0/0"]));
    }

    #[test]
    fn restore_sends_only_what_is_given() {
        let a = create_args(&["create", "--snapshot", "snap-1", "-m", "2048"]);
        let v = serde_json::to_value(a.opts.request(None).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"snapshot_id": "snap-1", "resources": {"memory_mb": 2048}})
        );
    }

    #[test]
    fn new_is_an_alias_and_defaults_send_nothing() {
        let a = create_args(&["new"]);
        assert!(a.name.is_none() && !a.no_wait && !a.json);
        let v = serde_json::to_value(a.opts.request(None).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({}));
    }

    #[test]
    fn a_pool_claim_takes_a_name_and_no_template() {
        let a = create_args(&["create", "--pool", "pool1", "web", "--no-wait"]);
        assert_eq!(a.pool.as_deref(), Some("pool1"));
        assert_eq!(a.name.as_deref(), Some("web"));
        assert!(a.no_wait);
        for flag in [
            &["-i", "app"][..],
            &["-m", "512"],
            &["--no-internet"],
            &["-s", "x"],
        ] {
            let mut argv = vec!["sbx", "create", "--pool", "pool1"];
            argv.extend_from_slice(flag);
            assert!(crate::Cli::try_parse_from(&argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn bad_entrypoints_are_refused() {
        let a = create_args(&["create", "-e", "echo 'unclosed"]);
        assert!(a.opts.request(None).is_err());
        let a = create_args(&["create", "-e", ""]);
        assert!(a.opts.request(None).is_err());
        assert!(crate::Cli::try_parse_from(["sbx", "create", "-c", "lots"]).is_err());
    }
}
