//! `sbx copy ID -n N` (alias `clone`).

use crate::client::Client;
use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Sandbox (id or name) to copy while it runs.
    #[arg(value_name = "ID")]
    pub id: String,

    /// How many copies.
    #[arg(short = 'n', long = "times", default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub times: u32,

    /// Print the server's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints one new sandbox id per line; the memory snapshot they came from
/// stays listed, and stderr says how to delete it.
pub async fn run(client: &Client, args: CopyArgs) -> Result<i32> {
    let resp = client.copy(&args.id, args.times).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(0);
    }
    for copy in &resp.sandboxes {
        println!("{}", copy.sandbox_id);
    }
    if let Some(sid) = &resp.snapshot_id {
        eprintln!(
            "{} cop{} of {} from snapshot {sid} (delete it with `sbx snapshot rm {sid}`)",
            resp.sandboxes.len(),
            if resp.sandboxes.len() == 1 {
                "y"
            } else {
                "ies"
            },
            resp.source_sandbox_id
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use crate::tests::parse;
    use crate::Command;
    use clap::Parser;

    #[test]
    fn copy_and_clone_take_a_count() {
        match parse(&["copy", "web", "-n", "3"]).command {
            Command::Copy(a) => assert_eq!((a.id.as_str(), a.times), ("web", 3)),
            c => panic!("{c:?}"),
        }
        match parse(&["clone", "web"]).command {
            Command::Copy(a) => assert_eq!(a.times, 1),
            c => panic!("{c:?}"),
        }
        assert!(crate::Cli::try_parse_from(["sbx", "copy", "web", "-n", "0"]).is_err());
    }
}
