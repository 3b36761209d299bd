//! `sbx terminate ID…` (alias `rm`).

use crate::client::Client;
use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct TerminateArgs {
    /// Sandbox ids or names.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

/// Terminates each sandbox in turn; reports every failure and exits 1 if any.
pub async fn run(client: &Client, args: TerminateArgs) -> Result<i32> {
    let mut code = 0;
    for id in &args.ids {
        match client.terminate(id).await {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("error: {id}: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}
