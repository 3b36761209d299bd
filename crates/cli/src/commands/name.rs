//! `sbx name ID NEW_NAME`.

use crate::client::Client;
use anyhow::Result;
use clap::Args;
use sbx_api::sandbox::UpdateSandboxRequest;

#[derive(Debug, Args)]
pub struct NameArgs {
    /// Sandbox id or current name.
    pub id: String,
    /// New name.
    pub name: String,
}

pub async fn run(client: &Client, args: NameArgs) -> Result<i32> {
    let req = UpdateSandboxRequest {
        name: Some(Some(args.name)),
        ..Default::default()
    };
    let info = client.update(&args.id, &req).await?;
    println!(
        "{}\t{}",
        info.sandbox_id,
        info.name.as_deref().unwrap_or("-")
    );
    Ok(0)
}
