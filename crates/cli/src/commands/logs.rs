//! `sbx logs ID [-f] [--process P]`: a sandbox's persisted logs.

use crate::client::Client;
use anyhow::{bail, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use sbx_api::logs::LogEntry;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Sandbox id or name (also one that ended).
    pub id: String,

    /// Keep printing new lines until the sandbox ends (Ctrl-C to stop).
    #[arg(short, long)]
    pub follow: bool,

    /// Only this process's lines: a pid, or a background process's name
    /// (repeatable).
    #[arg(short, long = "process", value_name = "P")]
    pub processes: Vec<String>,

    /// Only the last N lines (then new ones with -f).
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<usize>,

    /// Only these levels: trace, debug, info (stdout), warn, error
    /// (stderr), fatal, or 1-6 (repeatable).
    #[arg(short, long = "level", value_name = "LEVEL")]
    pub levels: Vec<String>,

    /// Only lines containing this text.
    #[arg(short, long, value_name = "TEXT")]
    pub grep: Option<String>,

    /// Print each record as a JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Pause between two reads when following.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

pub async fn run(client: &Client, args: LogsArgs) -> Result<i32> {
    let mut filter: Vec<(&str, String)> = Vec::new();
    for p in &args.processes {
        for pid in resolve_process(client, &args.id, p).await? {
            filter.push(("processId", pid));
        }
    }
    for l in &args.levels {
        filter.push(("level", l.clone()));
    }
    if let Some(g) = &args.grep {
        filter.push(("body", g.clone()));
    }
    // What is there now: the last N, or all of it a page at a time.
    let mut cursor = match args.tail {
        Some(n) => {
            let mut q = filter.clone();
            q.push(("tail", n.to_string()));
            let page = client.logs(&args.id, &q).await?;
            print_all(&page.logs, args.json)?;
            page.cursor
        }
        None => drain(client, &args, &filter, None).await?,
    };
    if !args.follow {
        return Ok(0);
    }
    loop {
        let ended = client.get(&args.id).await?.status.is_final();
        cursor = drain(client, &args, &filter, Some(cursor)).await?;
        if ended {
            return Ok(0);
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// Prints every matching record from `from` on; answers where newer ones
/// will start.
async fn drain(
    client: &Client,
    args: &LogsArgs,
    filter: &[(&str, String)],
    mut from: Option<String>,
) -> Result<String> {
    loop {
        let mut q = filter.to_vec();
        if let Some(t) = &from {
            q.push(("nextToken", t.clone()));
        }
        let page = client.logs(&args.id, &q).await?;
        print_all(&page.logs, args.json)?;
        match page.next_token {
            Some(t) => from = Some(t),
            None => return Ok(page.cursor),
        }
    }
}

/// The pids a `--process` value names: itself when digits, else those of
/// the background processes of that name or id.
async fn resolve_process(client: &Client, id: &str, p: &str) -> Result<Vec<String>> {
    if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(vec![p.to_string()]);
    }
    let pids: Vec<String> = client
        .log_processes(id)
        .await?
        .into_iter()
        .filter(|x| x.process_managed_name == p || x.process_managed_id == p)
        .map(|x| x.process_id)
        .collect();
    if pids.is_empty() {
        bail!("no process named {p:?} in the logs of {id}");
    }
    Ok(pids)
}

fn print_all(entries: &[LogEntry], json: bool) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for e in entries {
        if json {
            serde_json::to_writer(&mut out, e)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", render(e))?;
        }
    }
    Ok(())
}

/// `TIME [SOURCE] BODY`: the source is the pid (with `err` for stderr)
/// or `sandbox` for lifecycle events.
pub fn render(e: &LogEntry) -> String {
    let attrs: serde_json::Value = serde_json::from_str(&e.log_attributes).unwrap_or_default();
    let source = match (attrs["processId"].as_str(), attrs["stream"].as_str()) {
        (Some(p), Some("stderr")) => format!("{p} err"),
        (Some(p), _) => p.to_string(),
        (None, _) => "sandbox".to_string(),
    };
    let secs = (e.timestamp / 1_000_000_000) as i64;
    let nanos = (e.timestamp % 1_000_000_000) as u32;
    let ts = DateTime::<Utc>::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| e.timestamp.to_string());
    format!("{ts} [{source}] {}", e.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(attrs: &str, body: &str) -> LogEntry {
        LogEntry {
            timestamp: 1_767_225_600_123_456_789,
            uuid: "u".into(),
            namespace: "default".into(),
            application: String::new(),
            body: body.into(),
            log_attributes: attrs.into(),
            sandbox_id: "sbx1".into(),
            level: 3,
        }
    }

    #[test]
    fn records_render_with_time_and_source() {
        assert_eq!(
            render(&entry(
                r#"{"stream":"stdout","processId":"12","pid":12}"#,
                "hi"
            )),
            "2026-01-01T00:00:00.123Z [12] hi"
        );
        assert_eq!(
            render(&entry(r#"{"stream":"stderr","processId":"12"}"#, "oops")),
            "2026-01-01T00:00:00.123Z [12 err] oops"
        );
        assert_eq!(
            render(&entry(r#"{"event":"running"}"#, "sandbox running")),
            "2026-01-01T00:00:00.123Z [sandbox] sandbox running"
        );
    }

    #[test]
    fn logs_flags() {
        let crate::Command::Logs(a) = crate::tests::parse(&[
            "logs",
            "web",
            "-f",
            "--process",
            "12",
            "-p",
            "api",
            "-n",
            "5",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(a.id, "web");
        assert!(a.follow);
        assert_eq!(a.processes, ["12", "api"]);
        assert_eq!(a.tail, Some(5));
    }
}
