//! `sbx suspend ID…` and `sbx resume ID…`.

use crate::client::Client;
use crate::commands::snapshot::{Progress, POLL};
use anyhow::{bail, Result};
use clap::Args;
use sbx_api::sandbox::SandboxStatus;
use std::time::{Duration, Instant};

/// How long one suspend or resume call asks the server to wait (its maximum).
const SERVER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct SuspendArgs {
    /// Sandbox ids or names.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,

    /// Seconds to wait for each sandbox to get there.
    #[arg(short = 't', long, default_value_t = 300, value_name = "SECS")]
    pub timeout: u64,

    /// Return once the server accepted the request.
    #[arg(long)]
    pub no_wait: bool,
}

/// Which way a sandbox goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Suspend,
    Resume,
}

impl Direction {
    fn verb(self) -> &'static str {
        match self {
            Self::Suspend => "suspend",
            Self::Resume => "resume",
        }
    }
    fn target(self) -> SandboxStatus {
        match self {
            Self::Suspend => SandboxStatus::Suspended,
            Self::Resume => SandboxStatus::Running,
        }
    }
    /// The state a sandbox passes through on the way.
    fn transit(self) -> SandboxStatus {
        match self {
            Self::Suspend => SandboxStatus::Suspending,
            Self::Resume => SandboxStatus::Suspended,
        }
    }
}

/// Suspends or resumes each sandbox in turn, printing `ID STATUS`; reports
/// every failure and exits 1 if any.
pub async fn run(client: &Client, args: SuspendArgs, direction: Direction) -> Result<i32> {
    let mut code = 0;
    for id in &args.ids {
        match one(client, id, &args, direction).await {
            Ok(status) => println!("{id}\t{status}"),
            Err(e) => {
                eprintln!("error: {id}: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

async fn one(
    client: &Client,
    id: &str,
    args: &SuspendArgs,
    direction: Direction,
) -> Result<SandboxStatus> {
    let wait = if args.no_wait {
        Duration::ZERO
    } else {
        SERVER_WAIT.min(Duration::from_secs(args.timeout))
    };
    let started = Instant::now();
    let mut info = client.lifecycle(id, direction.verb(), wait).await?;
    let mut progress = Progress::new();
    while !args.no_wait && info.status != direction.target() {
        if info.status != direction.transit() && info.status != direction.target() {
            progress.clear();
            bail!("sandbox is {} instead", info.status);
        }
        if started.elapsed() >= Duration::from_secs(args.timeout) {
            progress.clear();
            bail!(
                "still {} after {}s; it goes on in the server",
                info.status,
                args.timeout
            );
        }
        progress.show(&format!(
            "{id}: {} ({}s)",
            info.status,
            started.elapsed().as_secs()
        ));
        tokio::time::sleep(POLL).await;
        info = client.get(id).await?;
    }
    progress.clear();
    Ok(info.status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::parse;
    use crate::Command;
    use clap::Parser;

    #[test]
    fn suspend_and_resume_take_ids() {
        match parse(&["suspend", "a", "b", "--no-wait"]).command {
            Command::Suspend(a) => {
                assert_eq!(a.ids, vec!["a", "b"]);
                assert!(a.no_wait);
                assert_eq!(a.timeout, 300);
            }
            c => panic!("{c:?}"),
        }
        match parse(&["resume", "a", "-t", "5"]).command {
            Command::Resume(a) => assert_eq!((a.ids.len(), a.timeout), (1, 5)),
            c => panic!("{c:?}"),
        }
        assert!(crate::Cli::try_parse_from(["sbx", "resume"]).is_err());
    }

    #[test]
    fn directions_know_their_states() {
        assert_eq!(Direction::Suspend.target(), SandboxStatus::Suspended);
        assert_eq!(Direction::Suspend.transit(), SandboxStatus::Suspending);
        assert_eq!(Direction::Resume.target(), SandboxStatus::Running);
        assert_eq!(Direction::Resume.verb(), "resume");
    }
}
