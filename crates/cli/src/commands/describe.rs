//! `sbx describe ID`.

use crate::client::Client;
use crate::table;
use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use sbx_api::sandbox::SandboxInfo;

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Sandbox id or name.
    pub id: String,

    /// Print the full SandboxInfo as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(client: &Client, args: DescribeArgs) -> Result<i32> {
    let info = client.get(&args.id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", render(&info, Utc::now()));
    }
    Ok(0)
}

/// `key: value` lines, keys aligned; absent optional fields are left out.
pub fn render(s: &SandboxInfo, now: DateTime<Utc>) -> String {
    let mut rows: Vec<(&str, String)> = vec![("id", s.sandbox_id.clone())];
    if let Some(n) = &s.name {
        rows.push(("name", n.clone()));
    }
    rows.push(("namespace", s.namespace.clone()));
    rows.push(("status", s.status.to_string()));
    for (k, v) in [
        ("pending reason", &s.pending_reason),
        ("termination reason", &s.termination_reason),
    ] {
        if let Some(v) = v {
            rows.push((k, v.clone()));
        }
    }
    if let Some(e) = &s.error_details {
        rows.push(("error", e.message.clone()));
    }
    rows.push(("image", s.image.clone().unwrap_or_else(|| "-".into())));
    rows.push(("cpus", table::cpus(s.resources.cpus)));
    rows.push(("memory", format!("{} MB", s.resources.memory_mb)));
    rows.push(("disk", format!("{} MB", s.resources.disk_mb)));
    if let Some(t) = s.timeout_secs {
        rows.push(("timeout", format!("{t}s")));
    }
    if let Some(e) = &s.entrypoint {
        rows.push(("entrypoint", shell_words::join(e)));
    }
    let net = &s.network_policy;
    let mut network = if net.allow_internet_access {
        "internet allowed".to_string()
    } else {
        "internet blocked".to_string()
    };
    if !net.allow_out.is_empty() {
        network.push_str(&format!("; allow {}", net.allow_out.join(", ")));
    }
    if !net.deny_out.is_empty() {
        network.push_str(&format!("; deny {}", net.deny_out.join(", ")));
    }
    rows.push(("network", network));
    if !s.exposed_ports.is_empty() {
        let ports: Vec<String> = s.exposed_ports.iter().map(|p| p.to_string()).collect();
        rows.push(("exposed ports", ports.join(", ")));
    }
    rows.push((
        "created",
        format!(
            "{} ({} ago)",
            s.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            table::age(now, s.created_at)
        ),
    ));
    if let Some(t) = s.terminated_at {
        rows.push((
            "terminated",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
    }
    if let Some(u) = &s.sandbox_url {
        rows.push(("sandbox url", u.clone()));
    }
    rows.push(("auto resume", s.auto_resume.to_string()));
    if let Some(snap) = &s.snapshot_id {
        rows.push(("snapshot", snap.clone()));
    }
    if let Some(pool) = &s.pool_id {
        rows.push(("pool", pool.clone()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:width$} {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::ls::tests::info;
    use clap::Parser;

    #[test]
    fn describe_view() {
        let now: DateTime<Utc> = "2026-01-01T01:00:00Z".parse().unwrap();
        let out = render(
            &info("sb-1", Some("web"), "running", "2026-01-01T00:00:00Z"),
            now,
        );
        assert!(
            out.starts_with("id:          sb-1\nname:        web\n"),
            "{out}"
        );
        assert!(out.contains("status:      running\n"), "{out}");
        assert!(
            out.contains("created:     2026-01-01T00:00:00Z (1h ago)\n"),
            "{out}"
        );
        assert!(
            out.contains("sandbox url: http://localhost:9443\n"),
            "{out}"
        );
        assert!(!out.contains("timeout"));
        assert!(!out.contains("pool"));
        let mut claimed = info("sb-2", None, "running", "2026-01-01T00:00:00Z");
        claimed.pool_id = Some("pool1".into());
        assert!(render(&claimed, now).contains("pool:        pool1\n"));
    }

    #[test]
    fn describe_flags() {
        let crate::Command::Describe(a) = crate::tests::parse(&["describe", "x", "--json"]).command
        else {
            panic!()
        };
        assert_eq!(a.id, "x");
        assert!(a.json);
        assert!(crate::Cli::try_parse_from(["sbx", "describe"]).is_err());
    }
}
