//! Running host tools (`ip`, `iptables`, `mount`, `mkfs.ext4`) with errors that say what failed.

use crate::Error;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Runs `program args…`; fails with its stderr when it exits non-zero.
pub async fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    run_with_input(program, args, None).await
}

/// Like [`run`], feeding `input` on stdin (for `ip -batch -`).
pub async fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, Error> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::Host {
        what: format!("{program} {}", args.join(" ")),
        reason: format!("cannot start {program}: {e}"),
    })?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Host {
            what: format!("{program} {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
