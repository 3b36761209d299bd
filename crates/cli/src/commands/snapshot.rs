//! `sbx snapshot ID` (alias `checkpoint`), `sbx snapshot ls`, `sbx snapshot rm SID…`.

use crate::client::Client;
use crate::table;
use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use sbx_api::snapshot::{SnapshotInfo, SnapshotStatus, SnapshotType};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a waiting verb asks the server again.
pub const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub action: Option<SnapshotAction>,

    /// Sandbox (id or name) to snapshot.
    #[arg(required = true, value_name = "ID")]
    pub id: Option<String>,

    /// `filesystem` (restores cold-boot the saved files) or `memory` (restores
    /// continue the running processes). Default: filesystem.
    #[arg(long = "checkpoint-type", visible_alias = "type", value_name = "TYPE", value_parser = parse_type)]
    pub snapshot_type: Option<SnapshotType>,

    /// Seconds to wait for the snapshot to be stored.
    #[arg(short = 't', long, default_value_t = 300, value_name = "SECS")]
    pub timeout: u64,

    /// Print the snapshot id at once, without waiting.
    #[arg(long)]
    pub no_wait: bool,

    /// Print the finished snapshot as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// List snapshots.
    #[command(visible_alias = "list")]
    Ls(SnapshotLsArgs),
    /// Delete snapshots (sandboxes restored from them keep running).
    #[command(visible_alias = "delete")]
    Rm(SnapshotRmArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotLsArgs {
    /// Only snapshots taken from this sandbox (id or name).
    #[arg(short = 's', long, value_name = "ID")]
    pub sandbox: Option<String>,

    /// Print `{"snapshots": [...]}` as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotRmArgs {
    /// Snapshot ids.
    #[arg(required = true, value_name = "SID")]
    pub ids: Vec<String>,
}

fn parse_type(s: &str) -> Result<SnapshotType, String> {
    SnapshotType::parse(s).ok_or_else(|| format!("{s:?} is not `filesystem` or `memory`"))
}

pub async fn run(client: &Client, args: SnapshotArgs) -> Result<i32> {
    match args.action {
        Some(SnapshotAction::Ls(a)) => return list(client, a).await,
        Some(SnapshotAction::Rm(a)) => return remove(client, a).await,
        None => {}
    }
    let Some(id) = args.id.as_deref() else {
        bail!("name the sandbox to snapshot");
    };
    let started = client.snapshot(id, args.snapshot_type).await?;
    if args.no_wait {
        println!("{}", started.snapshot_id);
        return Ok(0);
    }
    let info = wait_stored(
        client,
        &started.snapshot_id,
        Duration::from_secs(args.timeout),
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        eprintln!("{}", summary(&info));
        println!("{}", info.snapshot_id);
    }
    Ok(0)
}

/// Polls snapshot `sid` until it is stored, with a progress line on stderr.
/// A failed snapshot, or one still going after `timeout`, is an error.
pub async fn wait_stored(client: &Client, sid: &str, timeout: Duration) -> Result<SnapshotInfo> {
    let started = Instant::now();
    let mut progress = Progress::new();
    loop {
        let info = client.snapshot_info(sid).await?;
        match info.status {
            SnapshotStatus::Completed => {
                progress.clear();
                return Ok(info);
            }
            SnapshotStatus::Failed => {
                progress.clear();
                let why = info.error.as_deref().unwrap_or("no reason given");
                bail!("snapshot {sid} failed: {why}");
            }
            status if started.elapsed() >= timeout => {
                progress.clear();
                bail!(
                    "snapshot {sid} is still {status} after {}s; it goes on in the \
                     server (see `sbx snapshot ls`)",
                    timeout.as_secs()
                );
            }
            status => progress.show(&format!(
                "snapshot {sid}: {status} ({}s)",
                started.elapsed().as_secs()
            )),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A status line on stderr: rewritten in place on a terminal, else printed
/// once per change.
pub struct Progress {
    tty: bool,
    last: String,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    pub fn show(&mut self, line: &str) {
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else if strip_elapsed(line) != strip_elapsed(&self.last) {
            eprintln!("{line}");
        }
        self.last = line.to_string();
    }

    pub fn clear(&mut self) {
        if self.tty && !self.last.is_empty() {
            eprint!("\r\x1b[2K");
        }
        self.last.clear();
    }
}

/// A progress line without its trailing `(12s)`: what counts as a change.
fn strip_elapsed(line: &str) -> &str {
    line.rsplit_once(" (").map_or(line, |(head, _)| head)
}

/// One line about a stored snapshot: type, source, sizes and pause.
pub fn summary(info: &SnapshotInfo) -> String {
    let mut s = format!(
        "{} snapshot of {} {}",
        info.snapshot_type.as_str(),
        info.sandbox_id,
        info.status
    );
    if let Some(size) = info.size_bytes {
        s.push_str(&format!(": {}", table::bytes(size)));
        if let Some(stored) = info.stored_bytes {
            s.push_str(&format!(" ({} newly stored)", table::bytes(stored)));
        }
    }
    if let Some(ms) = info.pause_ms {
        s.push_str(&format!(", sandbox paused {ms}ms"));
    }
    s
}

async fn list(client: &Client, args: SnapshotLsArgs) -> Result<i32> {
    let snapshots = client.snapshots(args.sandbox.as_deref()).await?;
    if args.json {
        let out = serde_json::json!({ "snapshots": snapshots });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&snapshots, Utc::now()));
    }
    Ok(0)
}

async fn remove(client: &Client, args: SnapshotRmArgs) -> Result<i32> {
    let mut code = 0;
    for sid in &args.ids {
        match client.delete_snapshot(sid).await {
            Ok(()) => println!("{sid}"),
            Err(e) => {
                eprintln!("error: {sid}: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

pub const HEADERS: [&str; 8] = [
    "SNAPSHOT", "SANDBOX", "TYPE", "STATUS", "SIZE", "STORED", "PAUSE", "CREATED",
];

pub fn render(snapshots: &[SnapshotInfo], now: DateTime<Utc>) -> String {
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = snapshots
        .iter()
        .map(|s| {
            vec![
                s.snapshot_id.clone(),
                s.sandbox_id.clone(),
                s.snapshot_type.as_str().to_string(),
                s.status.to_string(),
                s.size_bytes.map(table::bytes).unwrap_or_else(dash),
                s.stored_bytes.map(table::bytes).unwrap_or_else(dash),
                s.pause_ms.map(|ms| format!("{ms}ms")).unwrap_or_else(dash),
                format!("{} ago", table::age(now, s.created_at)),
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

    fn args(argv: &[&str]) -> SnapshotArgs {
        match parse(argv).command {
            Command::Snapshot(a) => a,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn snapshot_and_checkpoint_take_an_id_and_a_type() {
        let a = args(&["snapshot", "web"]);
        assert_eq!(a.id.as_deref(), Some("web"));
        assert!(a.snapshot_type.is_none() && a.action.is_none());
        assert_eq!(a.timeout, 300);
        let a = args(&[
            "checkpoint",
            "web",
            "--checkpoint-type",
            "memory",
            "-t",
            "9",
        ]);
        assert_eq!(a.snapshot_type, Some(SnapshotType::Memory));
        assert_eq!(a.timeout, 9);
        let a = args(&["checkpoint", "--type", "filesystem", "web", "--no-wait"]);
        assert_eq!(a.snapshot_type, Some(SnapshotType::Filesystem));
        assert!(a.no_wait);
        assert!(crate::Cli::try_parse_from(["sbx", "snapshot", "web", "--type", "disk"]).is_err());
        assert!(crate::Cli::try_parse_from(["sbx", "checkpoint"]).is_err());
    }

    #[test]
    fn ls_and_rm_are_subcommands() {
        match args(&["checkpoint", "ls", "--sandbox", "web", "--json"]).action {
            Some(SnapshotAction::Ls(l)) => {
                assert_eq!(l.sandbox.as_deref(), Some("web"));
                assert!(l.json);
            }
            a => panic!("{a:?}"),
        }
        match args(&["snapshot", "rm", "s1", "s2"]).action {
            Some(SnapshotAction::Rm(r)) => assert_eq!(r.ids, vec!["s1", "s2"]),
            a => panic!("{a:?}"),
        }
        assert!(crate::Cli::try_parse_from(["sbx", "checkpoint", "rm"]).is_err());
    }

    fn snap(id: &str, status: &str, extra: serde_json::Value) -> SnapshotInfo {
        let mut v = serde_json::json!({
            "snapshot_id": id,
            "namespace": "default",
            "sandbox_id": "sb-1",
            "snapshot_type": "memory",
            "status": status,
            "created_at": "2026-01-01T00:59:00Z",
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn snapshot_table_and_summary() {
        let now: DateTime<Utc> = "2026-01-01T01:00:00Z".parse().unwrap();
        let done = snap(
            "snap-a",
            "completed",
            serde_json::json!({"size_bytes": 3_145_728, "stored_bytes": 1024, "pause_ms": 140}),
        );
        let busy = snap("snap-b", "in_progress", serde_json::json!({}));
        assert_eq!(
            render(&[done.clone(), busy], now),
            "SNAPSHOT   SANDBOX   TYPE     STATUS        SIZE   STORED   PAUSE   CREATED\n\
             snap-a     sb-1      memory   completed     3MB    1KB      140ms   1m ago\n\
             snap-b     sb-1      memory   in_progress   -      -        -       1m ago\n"
        );
        assert_eq!(
            summary(&done),
            "memory snapshot of sb-1 completed: 3MB (1KB newly stored), sandbox paused 140ms"
        );
    }

    #[test]
    fn progress_changes_ignore_the_clock() {
        assert_eq!(
            strip_elapsed("snapshot s: in_progress (3s)"),
            "snapshot s: in_progress"
        );
        assert_eq!(strip_elapsed("plain"), "plain");
    }
}
