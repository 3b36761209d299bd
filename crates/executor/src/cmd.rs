//! Running host tools (`ip`, `iptables`, `mount`, `mkfs.ext4`) with errors that say what failed.

use crate::Error;
use std::process::Stdio;
use tokio::process::Command;

/// Runs `program args…`; fails with its stderr when it exits non-zero.
pub async fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| Error::Host {
            what: format!("{program} {}", args.join(" ")),
            reason: format!("cannot start {program}: {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Host {
            what: format!("{program} {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
