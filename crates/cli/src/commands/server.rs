//! `sbx server`: the all-in-one server in the foreground.

use anyhow::Result;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where sbx keeps its state, images and sandboxes.
    #[arg(long, default_value = "/var/lib/sbx", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// The state store: `sqlite:PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`
    /// (default: SQLite in the data dir). Replicas share one PostgreSQL.
    #[arg(long, env = "SBX_STATE", value_name = "URL")]
    pub state: Option<String>,

    /// Where other servers sharing the state store reach this server's
    /// sandbox proxy, HOST:PORT (default: --proxy-addr unless it is 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,

    /// Where other servers sharing the state store send snapshot, suspend,
    /// resume and copy requests for this server's sandboxes, HOST:PORT
    /// (default: --api-addr unless it is 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    pub advertise_api: Option<String>,

    /// A node (a server sharing the state store) that has not reported for
    /// this long is lost: its running sandboxes fail with reason
    /// `node_lost`, suspended ones stay suspended. Nodes report every
    /// quarter of it, at most every 10 s.
    #[arg(long, default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(4..))]
    pub node_lost_secs: u64,

    /// Where snapshots and images are stored: a directory, or
    /// `s3://BUCKET[/PREFIX]?endpoint=URL&region=R` with credentials from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (default: DATA_DIR/store).
    #[arg(long, env = "SBX_BLOBS", value_name = "URL")]
    pub blobs: Option<String>,

    /// Control-plane listen address.
    #[arg(long, default_value = "127.0.0.1:8900", value_name = "ADDR")]
    pub api_addr: SocketAddr,

    /// Sandbox proxy (data plane) listen address.
    #[arg(long, default_value = "127.0.0.1:9443", value_name = "ADDR")]
    pub proxy_addr: SocketAddr,

    /// Accepted API key; repeat for several. SBX_API_KEY adds one more.
    /// Without any key the server answers loopback clients only.
    // Same id as the global --api-key: clap then does not propagate the
    // global one here and the flag can be repeated.
    #[arg(long = "api-key", id = "api_key", value_name = "KEY", action = clap::ArgAction::Append)]
    pub api_keys: Vec<String>,

    /// Static sbx-agent binary (default: beside this executable).
    #[arg(long, env = "SBX_AGENT_BIN", value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,

    /// The cgroup under which sandboxes run, made and prepared by the
    /// server (one per server when several share a host).
    #[arg(long, default_value = "sbx", value_name = "NAME")]
    pub cgroup_parent: String,

    /// CA bundle every sandbox trusts, with SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
    /// PIP_CERT, NODE_EXTRA_CA_CERTS and CURL_CA_BUNDLE pointing at it
    /// (default: the host's system bundle); `none` for only the image's own.
    #[arg(long, value_name = "PATH|none")]
    pub sandbox_ca_bundle: Option<String>,

    /// Freeze a sandbox that has no process of its own after this many
    /// seconds without a request (it then uses no CPU; the next request
    /// thaws it in a few ms). 0: never.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub idle_freeze_secs: u64,

    /// Keep a suspended sandbox's volume mounted and its network ready for
    /// this many seconds, so that a resume soon after is quicker; then
    /// only its files stay on the host. 0: release them at once.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub suspend_linger_secs: u64,

    /// Writable volumes of the default size kept made ahead of time: this
    /// many sandboxes start at once without waiting for `mkfs` and a mount
    /// (a copy of ten, here ~0.3-0.8 s slower per volume made on demand).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub spare_volumes: usize,

    /// Memory kept free of sandboxes: a create that would start one into it
    /// is refused (503 no_resources_available). Default: 5% of the host's
    /// memory, at least 512 MB.
    #[arg(long, value_name = "MB")]
    pub memory_reserve_mb: Option<u64>,

    /// At most this many sandboxes at once (default: as many as fit).
    #[arg(long, value_name = "N")]
    pub max_sandboxes: Option<usize>,

    /// Where the DNS guards of sandboxes whose policy names hosts send the
    /// lookups they let through, IP:PORT (repeatable; default: the host's
    /// resolvers).
    #[arg(long, value_name = "ADDR", action = clap::ArgAction::Append)]
    pub sandbox_dns_upstream: Vec<SocketAddr>,

    /// A create that gives no max_pending_secs and that no node has room
    /// for waits `pending` this long for room (0: refused at once with 503).
    #[arg(long, default_value_t = 0, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub max_pending_secs: u64,

    /// The key secrets are encrypted with in the state store: 32 raw bytes
    /// or 64 hex digits (default: DATA_DIR/secrets.key, made on the first
    /// start). Servers sharing a state store need the same key.
    #[arg(long, env = "SBX_SECRETS_KEY_FILE", value_name = "PATH")]
    pub secrets_key_file: Option<PathBuf>,

    /// The cluster's node token (16+ characters). On `sbx server`: nodes
    /// that present it may join (`sbx node --server URL --node-token T`;
    /// needs --state postgres://… and --blobs). On `sbx node`: presented
    /// to the control plane.
    #[arg(
        long,
        env = "SBX_NODE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub node_token: Option<String>,

    /// Run no sandboxes here: a control plane that places every sandbox
    /// on its nodes (needs --node-token).
    #[arg(long)]
    pub no_local_node: bool,

    /// Sandbox logs (process output and lifecycle events, DATA_DIR/logs)
    /// kept per sandbox, in MB: its oldest lines go first.
    #[arg(long, default_value_t = 16, value_name = "MB",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub logs_sandbox_mb: u64,

    /// Sandbox logs kept in all, in MB: the oldest lines of any go first.
    #[arg(long, default_value_t = 1024, value_name = "MB",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub logs_total_mb: u64,

    /// Sandbox log lines older than this many hours go (and so do whole
    /// logs of sandboxes that ended).
    #[arg(long, default_value_t = 168, value_name = "HOURS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub logs_max_age_hours: u64,
}

impl ServerArgs {
    pub fn config(&self) -> sbx_server::ServerConfig {
        let env_key = std::env::var("SBX_API_KEY").ok();
        sbx_server::ServerConfig {
            data_dir: self.data_dir.clone(),
            state: self.state.clone(),
            blobs: self.blobs.clone(),
            advertise: self.advertise.clone(),
            advertise_api: self.advertise_api.clone(),
            node_lost_after: std::time::Duration::from_secs(self.node_lost_secs),
            api_addr: self.api_addr,
            proxy_addr: self.proxy_addr,
            api_keys: merge_keys(&self.api_keys, env_key.as_deref()),
            agent_bin: self.agent_bin.clone(),
            cgroup_parent: self.cgroup_parent.clone(),
            sandbox_ca_bundle: self
                .sandbox_ca_bundle
                .as_deref()
                .map(sbx_server::CaBundle::parse)
                .unwrap_or_default(),
            idle_freeze: (self.idle_freeze_secs > 0)
                .then(|| std::time::Duration::from_secs(self.idle_freeze_secs)),
            suspend_linger: std::time::Duration::from_secs(self.suspend_linger_secs),
            spare_volumes: self.spare_volumes,
            memory_reserve_mb: self.memory_reserve_mb,
            max_sandboxes: self.max_sandboxes,
            max_pending_secs: Some(self.max_pending_secs),
            sandbox_dns_upstream: self.sandbox_dns_upstream.clone(),
            node_token: self.node_token.clone(),
            local_node: !self.no_local_node,
            blobs_credentials: None,
            secrets_key_file: self.secrets_key_file.clone(),
            logs: sbx_server::LogBudget {
                per_sandbox: self.logs_sandbox_mb << 20,
                total: self.logs_total_mb << 20,
                max_age: std::time::Duration::from_secs(self.logs_max_age_hours * 3600),
            },
        }
    }
}

/// Flag keys plus the environment's, without blanks or duplicates.
fn merge_keys(flags: &[String], env: Option<&str>) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for k in flags.iter().map(String::as_str).chain(env) {
        let k = k.trim();
        if !k.is_empty() && !keys.iter().any(|x| x == k) {
            keys.push(k.to_string());
        }
    }
    keys
}

pub async fn run(args: ServerArgs) -> Result<i32> {
    init_logs();
    sbx_server::run(args.config()).await?;
    Ok(0)
}

/// Logs to stderr, at `info` unless `RUST_LOG` says otherwise.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::parse;
    use crate::Command;
    use clap::Parser;

    #[test]
    fn server_defaults() {
        let Command::Server(a) = parse(&["server"]).command else {
            panic!()
        };
        assert_eq!(a.data_dir, PathBuf::from("/var/lib/sbx"));
        assert_eq!(a.api_addr.to_string(), "127.0.0.1:8900");
        assert_eq!(a.proxy_addr.to_string(), "127.0.0.1:9443");
        assert_eq!(a.cgroup_parent, "sbx");
        assert_eq!(a.config().sandbox_ca_bundle, sbx_server::CaBundle::Host);
        assert_eq!(
            a.config().idle_freeze,
            Some(std::time::Duration::from_secs(5))
        );
        let Command::Server(a) = parse(&["server", "--idle-freeze-secs", "0"]).command else {
            panic!()
        };
        assert_eq!(a.config().idle_freeze, None);
        assert_eq!(a.config().secrets_key_file, None);
        let Command::Server(a) = parse(&["server", "--secrets-key-file", "/k"]).command else {
            panic!()
        };
        assert_eq!(a.config().secrets_key_file, Some(PathBuf::from("/k")));
    }

    #[test]
    fn cgroup_parent_and_ca_bundle_flags() {
        let Command::Server(a) = parse(&[
            "server",
            "--cgroup-parent",
            "ci/run-1",
            "--sandbox-ca-bundle",
            "none",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(a.config().cgroup_parent, "ci/run-1");
        assert_eq!(a.config().sandbox_ca_bundle, sbx_server::CaBundle::Off);
        let Command::Server(a) =
            parse(&["server", "--sandbox-ca-bundle", "/etc/my-ca.pem"]).command
        else {
            panic!()
        };
        assert_eq!(
            a.config().sandbox_ca_bundle,
            sbx_server::CaBundle::File("/etc/my-ca.pem".into())
        );
    }

    #[test]
    fn server_flags_and_repeated_keys() {
        let Command::Server(a) = parse(&[
            "server",
            "--data-dir",
            "/tmp/d",
            "--api-addr",
            "0.0.0.0:1",
            "--proxy-addr",
            "0.0.0.0:2",
            "--api-key",
            "k1",
            "--api-key",
            "k2",
            "--agent-bin",
            "/bin/agent",
        ])
        .command
        else {
            panic!()
        };
        assert_eq!(a.api_keys, vec!["k1", "k2"]);
        assert_eq!(a.agent_bin, Some(PathBuf::from("/bin/agent")));
        assert_eq!(a.api_addr.port(), 1);
        assert!(crate::Cli::try_parse_from(["sbx", "server", "--api-addr", "nope"]).is_err());
    }

    #[test]
    fn keys_merge_with_the_environment() {
        let flags = vec!["a".to_string(), "b".to_string()];
        assert_eq!(merge_keys(&flags, Some("c")), vec!["a", "b", "c"]);
        assert_eq!(merge_keys(&flags, Some("a")), vec!["a", "b"]);
        assert_eq!(merge_keys(&[], Some("")), Vec::<String>::new());
        assert_eq!(merge_keys(&[], None), Vec::<String>::new());
    }
}
