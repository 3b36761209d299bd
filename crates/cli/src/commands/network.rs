//! `sbx network ID [--no-internet] [--allow-out DEST]… [--deny-out DEST]…
//! | --default`: gives a sandbox a new egress policy at once.

use super::template::EgressOpts;
use crate::client::Client;
use anyhow::{bail, Result};
use clap::Args;
use sbx_api::sandbox::UpdateSandboxRequest;

#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// Sandbox id or name.
    pub id: String,

    #[command(flatten)]
    pub egress: EgressOpts,

    /// Back to the default policy (the internet, nothing else denied).
    #[arg(long, conflicts_with_all = ["no_internet", "allow_out", "deny_out"])]
    pub default: bool,
}

impl NetworkArgs {
    /// The PATCH body: the whole new policy (`null` for the default).
    fn request(&self) -> Result<UpdateSandboxRequest> {
        let policy = match (self.default, self.egress.policy()) {
            (true, _) => None,
            (false, Some(p)) => Some(p),
            (false, None) => {
                bail!("give the new policy (--no-internet, --allow-out, --deny-out) or --default")
            }
        };
        Ok(UpdateSandboxRequest {
            network: Some(policy),
            ..Default::default()
        })
    }
}

pub async fn run(client: &Client, args: NetworkArgs) -> Result<i32> {
    let info = client.update(&args.id, &args.request()?).await?;
    let p = &info.network_policy;
    println!(
        "{}\tinternet {}\tallow_out {}\tdeny_out {}",
        info.sandbox_id,
        if p.allow_internet_access { "on" } else { "off" },
        p.allow_out.join(","),
        p.deny_out.join(",")
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::parse;
    use crate::Command;

    fn args(a: &[&str]) -> NetworkArgs {
        let mut all = vec!["network"];
        all.extend_from_slice(a);
        let Command::Network(n) = parse(&all).command else {
            panic!()
        };
        n
    }

    #[test]
    fn a_policy_or_the_default_is_sent_whole() {
        let r = args(&["web", "--no-internet", "--allow-out", "pypi.org"])
            .request()
            .unwrap();
        let p = r.network.unwrap().unwrap();
        assert!(!p.allow_internet_access);
        assert_eq!(p.allow_out, ["pypi.org"]);
        let r = args(&["web", "--default"]).request().unwrap();
        assert_eq!(r.network, Some(None));
        assert!(args(&["web"]).request().is_err(), "nothing to change");
        assert!(parse_fails(&[
            "network",
            "web",
            "--default",
            "--no-internet"
        ]));
    }

    fn parse_fails(a: &[&str]) -> bool {
        use clap::Parser;
        crate::Cli::try_parse_from(std::iter::once("sbx").chain(a.iter().copied())).is_err()
    }
}
