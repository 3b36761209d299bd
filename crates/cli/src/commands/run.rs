//! `sbx run [create flags] -- CMD…`: an ephemeral sandbox for one command.

use super::create::{settle, CreateOpts};
use super::exec::{parse_env, stream_run, CommandSpec};
use crate::client::{Client, Target};
use anyhow::Result;
use clap::Args;
use sbx_api::sandbox::SandboxStatus;

#[derive(Debug, Args)]
#[command(
    after_help = "The sandbox is terminated when the command ends, fails or is interrupted.\n\
    Exit status: the command's own; 128+N when killed by signal N; 130 when interrupted."
)]
pub struct RunArgs {
    #[command(flatten)]
    pub opts: CreateOpts,

    /// Working directory of the command.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,

    /// Environment variable of the command (K=V, or K for the local value); repeatable.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// User to run the command as.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// The command and its arguments (after `--`).
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl RunArgs {
    fn spec(&self) -> CommandSpec {
        CommandSpec {
            argv: self.command.clone(),
            workdir: self.workdir.clone(),
            env: self.env.clone(),
            user: self.user.clone(),
            timeout: None,
        }
    }
}

pub async fn run(client: &Client, args: RunArgs) -> Result<i32> {
    let mut req = args.opts.request(None)?;
    // Without waiting, the id is known at once, so an interrupt while the
    // sandbox boots can still terminate it.
    req.wait = Some(false);
    let spec = args.spec();
    let created = tokio::select! {
        r = client.create(&req) => r?,
        _ = interrupted() => return Ok(130),
    };
    let id = created.sandbox_id.clone();
    let work = async {
        let resp = settle(client, created, true).await?;
        let target = match resp.sandbox_url {
            Some(url) if resp.status == SandboxStatus::Running => Target {
                sandbox_id: id.clone(),
                url,
            },
            _ => client.target(&id).await?,
        };
        stream_run(client, &target, &spec.run_request()).await
    };
    let result = tokio::select! {
        r = work => r,
        _ = interrupted() => {
            eprintln!("sbx: interrupted; terminating sandbox {id}");
            Ok(130)
        }
    };
    if let Err(e) = client.terminate(&id).await {
        eprintln!("warning: could not terminate sandbox {id}: {e:#}");
    }
    result
}

/// Ctrl-C, SIGTERM or SIGHUP.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let hup = signal(SignalKind::hangup());
    match (term, hup) {
        (Ok(mut term), Ok(mut hup)) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::parse;
    use crate::Command;
    use clap::Parser;

    fn run_args(argv: &[&str]) -> RunArgs {
        match parse(argv).command {
            Command::Run(a) => a,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn run_takes_create_flags_then_the_command() {
        let a = run_args(&[
            "run", "-c", "2", "-m", "4096", "-i", "python", "-t", "60", "-w", "/src", "--env",
            "A=1", "--user", "nobody", "--", "python3", "-V",
        ]);
        assert_eq!(a.opts.template.cpus, Some(2.0));
        assert_eq!(a.opts.template.memory, Some(4096));
        assert_eq!(a.opts.template.image.as_deref(), Some("python"));
        assert_eq!(a.opts.template.timeout, Some(60));
        let spec = a.spec();
        assert_eq!(spec.argv, vec!["python3", "-V"]);
        assert_eq!(spec.workdir.as_deref(), Some("/src"));
        assert_eq!(spec.env, vec![("A".into(), "1".into())]);
        assert_eq!(spec.user.as_deref(), Some("nobody"));
    }

    #[test]
    fn run_needs_a_command_after_dashes() {
        assert!(crate::Cli::try_parse_from(["sbx", "run"]).is_err());
        assert!(crate::Cli::try_parse_from(["sbx", "run", "ls"]).is_err());
        let a = run_args(&["run", "-e", "/init", "--", "ls"]);
        assert_eq!(a.opts.template.entrypoint.as_deref(), Some("/init"));
        assert_eq!(a.command, vec!["ls"]);
    }
}
