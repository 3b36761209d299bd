//! `sbx`: run the all-in-one server, and manage and use its sandboxes.

mod client;
mod commands;
mod table;

use clap::{Parser, Subcommand};
use commands::{
    copy, cp, create, describe, exec, image, name, network, node, run, secret, server, snapshot,
    ssh, suspend, terminate,
};

/// Exit status of a failed `sbx` verb (the command's own code wins in `exec`, `run`, `ssh`).
const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "sbx",
    version,
    about = "Self-hosted sandboxes: run the server, create sandboxes, run commands in them",
    after_help = "Examples:\n  \
        sbx server --data-dir /var/lib/sbx\n  \
        sbx create my-box --cpus 2 --memory 2048\n  \
        sbx exec my-box -- python3 -c 'print(1)'\n  \
        sbx run -- uname -a\n  \
        sbx ssh my-box\n  \
        sbx cp ./data.csv my-box:/tmp/data.csv\n  \
        sbx checkpoint my-box --checkpoint-type memory\n  \
        sbx create --snapshot SNAPSHOT_ID\n  \
        sbx suspend my-box && sbx resume my-box\n  \
        sbx copy my-box -n 3\n  \
        sbx image import 127.0.0.1:5000/tools/app:1 --insecure && sbx create -i app"
)]
pub struct Cli {
    /// Control-plane URL of the sbx server.
    #[arg(
        long,
        env = "SBX_API_URL",
        default_value = "http://localhost:8900",
        global = true,
        help_heading = "Global options",
        value_name = "URL"
    )]
    pub api_url: String,

    /// API key, sent as `Authorization: Bearer KEY`.
    #[arg(
        long,
        env = "SBX_API_KEY",
        global = true,
        help_heading = "Global options",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,

    /// Namespace of the sandboxes.
    #[arg(
        long,
        env = "SBX_NAMESPACE",
        default_value = "default",
        global = true,
        help_heading = "Global options",
        value_name = "NS"
    )]
    pub namespace: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sbx server: control plane, sandbox proxy and local executor.
    Server(server::ServerArgs),
    /// Create a sandbox and print its id.
    #[command(visible_alias = "new")]
    Create(create::CreateArgs),
    /// List sandboxes (not terminated ones unless --all).
    #[command(visible_alias = "list")]
    Ls(commands::ls::LsArgs),
    /// Show one sandbox.
    Describe(describe::DescribeArgs),
    /// Print a sandbox's logs: its processes' output and its lifecycle (-f: follow).
    Logs(commands::logs::LogsArgs),
    /// Run a command in a sandbox, streaming its output; exits with its code.
    Exec(exec::ExecArgs),
    /// Create an ephemeral sandbox, run one command in it, terminate it.
    Run(run::RunArgs),
    /// Open an interactive shell in a sandbox.
    Ssh(ssh::SshArgs),
    /// Copy a file to or from a sandbox (one side is ID:/path).
    Cp(cp::CpArgs),
    /// Rename a sandbox.
    Name(name::NameArgs),
    /// Give a sandbox a new egress policy at once (it keeps running).
    Network(network::NetworkArgs),
    /// Terminate sandboxes.
    #[command(visible_alias = "rm")]
    Terminate(terminate::TerminateArgs),
    /// Snapshot a sandbox and print the snapshot id; `ls` and `rm` manage snapshots.
    #[command(visible_alias = "checkpoint")]
    Snapshot(snapshot::SnapshotArgs),
    /// Suspend named sandboxes: memory and files go to disk, nothing runs.
    Suspend(suspend::SuspendArgs),
    /// Resume suspended sandboxes where they left off.
    Resume(suspend::SuspendArgs),
    /// Make running copies of a running sandbox (one memory snapshot, restored N times).
    #[command(visible_alias = "clone")]
    Copy(copy::CopyArgs),
    /// Images to create sandboxes from: import (registry or archive), ls, inspect, rm.
    Image(image::ImageArgs),
    /// Run this host as a node of a control plane (--server URL), or manage
    /// the hosts that run sandboxes: ls, inspect, drain, undrain.
    Node(node::NodeArgs),
    /// Secrets given to sandboxes as environment variables: set, ls, rm.
    Secret(secret::SecretArgs),
    /// Warm pools: booted sandboxes of one template, claimed with
    /// `sbx create --pool ID`: create, ls, describe, update, rm.
    Pool(commands::pool::PoolArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILURE
        }
    };
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let command = match cli.command {
        Command::Server(args) => return server::run(args).await,
        Command::Node(args) if args.action.is_none() => return node::serve(args).await,
        other => other,
    };
    let client = client::Client::new(&cli.api_url, cli.api_key, &cli.namespace)?;
    match command {
        Command::Server(_) => unreachable!("handled above"),
        Command::Create(args) => create::run(&client, args).await,
        Command::Ls(args) => commands::ls::run(&client, args).await,
        Command::Describe(args) => describe::run(&client, args).await,
        Command::Logs(args) => commands::logs::run(&client, args).await,
        Command::Exec(args) => exec::run(&client, args).await,
        Command::Run(args) => run::run(&client, args).await,
        Command::Ssh(args) => ssh::run(&client, args).await,
        Command::Cp(args) => cp::run(&client, args).await,
        Command::Name(args) => name::run(&client, args).await,
        Command::Network(args) => network::run(&client, args).await,
        Command::Terminate(args) => terminate::run(&client, args).await,
        Command::Snapshot(args) => snapshot::run(&client, args).await,
        Command::Suspend(args) => suspend::run(&client, args, suspend::Direction::Suspend).await,
        Command::Resume(args) => suspend::run(&client, args, suspend::Direction::Resume).await,
        Command::Copy(args) => copy::run(&client, args).await,
        Command::Image(args) => image::run(&client, args).await,
        Command::Node(args) => node::run(&client, args).await,
        Command::Secret(args) => secret::run(&client, args).await,
        Command::Pool(args) => commands::pool::run(&client, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    pub fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sbx").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_go_anywhere() {
        let cli = parse(&["ls", "--api-url", "http://h:1", "--namespace", "ns"]);
        assert_eq!(cli.api_url, "http://h:1");
        assert_eq!(cli.namespace, "ns");
        let cli = parse(&["--api-key", "k", "ls"]);
        assert_eq!(cli.api_key.as_deref(), Some("k"));
    }

    #[test]
    fn every_verb_has_help() {
        for verb in [
            "server",
            "create",
            "new",
            "ls",
            "describe",
            "exec",
            "run",
            "ssh",
            "cp",
            "name",
            "terminate",
            "rm",
            "snapshot",
            "checkpoint",
            "suspend",
            "resume",
            "copy",
            "clone",
            "image",
            "secret",
            "pool",
        ] {
            let err = Cli::try_parse_from(["sbx", verb, "--help"]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{verb}");
        }
    }

    #[test]
    fn name_and_terminate_parse() {
        match parse(&["name", "sb1", "web"]).command {
            Command::Name(a) => assert_eq!((a.id.as_str(), a.name.as_str()), ("sb1", "web")),
            c => panic!("{c:?}"),
        }
        match parse(&["rm", "a", "b"]).command {
            Command::Terminate(a) => assert_eq!(a.ids, vec!["a", "b"]),
            c => panic!("{c:?}"),
        }
        assert!(Cli::try_parse_from(["sbx", "terminate"]).is_err());
    }
}
