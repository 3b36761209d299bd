//! `sbx secret set|ls|rm`: values given to sandboxes created with
//! `secret_names` as environment variables. Values go in, never out.

use crate::client::Client;
use crate::table;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use sbx_api::secret::SecretInfo;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub action: SecretAction,
}

#[derive(Debug, Subcommand)]
pub enum SecretAction {
    /// Set a secret (new or replaced). The value comes from standard input
    /// (one trailing newline dropped; asked for without echo on a
    /// terminal) or from --from-file (as it is).
    Set(SetArgs),
    /// List secrets: names and dates, never values.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Delete secrets (running sandboxes keep the values they have).
    #[command(visible_alias = "delete")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// An environment variable name: letters, digits and '_', not
    /// starting with a digit nor with SBX_.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Read the value from this file instead of standard input.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print `{"secrets": [...]}` as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
}

pub async fn run(client: &Client, args: SecretArgs) -> Result<i32> {
    match args.action {
        SecretAction::Set(a) => {
            let raw = match &a.from_file {
                Some(path) => {
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
                }
                None if std::io::stdin().is_terminal() => read_hidden(&a.name)?,
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("reading the value from standard input")?;
                    strip_newline(buf)
                }
            };
            let Ok(value) = String::from_utf8(raw) else {
                bail!("the value must be UTF-8 text");
            };
            let info = client.set_secret(&a.name, value).await?;
            println!("{}", info.name);
        }
        SecretAction::Ls(a) => {
            let secrets = client.secrets().await?;
            if a.json {
                let out = serde_json::json!({ "secrets": secrets });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", render(&secrets, chrono::Utc::now()));
            }
        }
        SecretAction::Rm(a) => {
            let mut failed = false;
            for name in &a.names {
                match client.delete_secret(name).await {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("error: {name}: {e:#}");
                        failed = true;
                    }
                }
            }
            return Ok(if failed { crate::EXIT_FAILURE } else { 0 });
        }
    }
    Ok(0)
}

/// Drops one trailing newline (`\n` or `\r\n`), as `echo` or a here-string adds.
fn strip_newline(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
    v
}

/// One line typed on the terminal, not echoed.
fn read_hidden(name: &str) -> Result<Vec<u8>> {
    use crossterm::terminal::{disable_raw_mode, enable_raw_mode};
    eprint!("Value of {name} (not shown, Enter to end): ");
    enable_raw_mode().context("terminal")?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let result = loop {
        match std::io::stdin().read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) => match byte[0] {
                b'\r' | b'\n' => break Ok(()),
                3 => break Err(anyhow::anyhow!("interrupted")),
                4 if line.is_empty() => break Ok(()),
                0x7f | 8 => {
                    line.pop();
                }
                b => line.push(b),
            },
            Err(e) => break Err(e.into()),
        }
    };
    let _ = disable_raw_mode();
    eprintln!();
    result.map(|()| line)
}

const HEADERS: [&str; 3] = ["NAME", "CREATED", "UPDATED"];

fn render(secrets: &[SecretInfo], now: chrono::DateTime<chrono::Utc>) -> String {
    let rows: Vec<Vec<String>> = secrets
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format!("{} ago", table::age(now, s.created_at)),
                format!("{} ago", table::age(now, s.updated_at)),
            ]
        })
        .collect();
    table::render(&HEADERS, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::parse;
    use crate::Command;

    #[test]
    fn verbs_parse() {
        match parse(&["secret", "set", "TOKEN", "--from-file", "/tmp/t"]).command {
            Command::Secret(SecretArgs {
                action: SecretAction::Set(a),
            }) => {
                assert_eq!(a.name, "TOKEN");
                assert_eq!(a.from_file, Some(PathBuf::from("/tmp/t")));
            }
            c => panic!("{c:?}"),
        }
        match parse(&["secret", "ls", "--json"]).command {
            Command::Secret(SecretArgs {
                action: SecretAction::Ls(a),
            }) => assert!(a.json),
            c => panic!("{c:?}"),
        }
        match parse(&["secret", "rm", "A", "B"]).command {
            Command::Secret(SecretArgs {
                action: SecretAction::Rm(a),
            }) => assert_eq!(a.names, ["A", "B"]),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(strip_newline(b"v\n".to_vec()), b"v");
        assert_eq!(strip_newline(b"v\r\n".to_vec()), b"v");
        assert_eq!(strip_newline(b"v\n\n".to_vec()), b"v\n");
        assert_eq!(strip_newline(b"v".to_vec()), b"v");
    }

    #[test]
    fn the_list_shows_names_and_ages() {
        let now = chrono::Utc::now();
        let s = SecretInfo {
            name: "TOKEN".into(),
            created_at: now - chrono::Duration::hours(3),
            updated_at: now - chrono::Duration::minutes(5),
        };
        let out = render(&[s], now);
        assert!(out.starts_with("NAME"), "{out}");
        assert!(
            out.contains("TOKEN   3h ago") && out.contains("5m ago"),
            "{out}"
        );
    }
}
