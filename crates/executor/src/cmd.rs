//! Running host tools (`ip`, `iptables`, `mount`, `mkfs.ext4`) with errors that say what failed.

use crate::Error;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Runs `program args…`; fails with its stderr when it exits non-zero.
pub async fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    run_with_input(program, args, None).await
}

/// [`run`] with `input` written to the program's stdin.
pub async fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, Error> {
    let what = || format!("{program} {}", args.join(" "));
    let cannot_start = |e: std::io::Error| Error::Host {
        what: what(),
        reason: format!("cannot start {program}: {e}"),
    };
    let mut cmd = Command::new(program);
    // A tool must not outlive the server (a `cp` of a capture ran on after
    // a kill -9 of the server), nor a dropped task.
    dies_with_server(&mut cmd);
    let mut child = cmd
        .args(args)
        .kill_on_drop(true)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(cannot_start)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A program that exits without reading all of it reports why below.
        let _ = stdin.write_all(input.as_bytes()).await;
    }
    let out = child.wait_with_output().await.map_err(|e| Error::Host {
        what: what(),
        reason: format!("waiting for {program}: {e}"),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Host {
            what: what(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

pub use sbx_runtime::dies_with_server;
