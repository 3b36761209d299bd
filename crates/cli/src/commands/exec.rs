//! `sbx exec ID -- CMD ARGS…`: run a command, stream its output live, exit
//! with its code.

use crate::client::{Client, SseParser, Target};
use anyhow::{bail, Context, Result};
use clap::Args;
use futures::StreamExt;
use reqwest::Method;
use sbx_api::daemon::{
    ExitEvent, ExitReason, OutputStream, ProcessInfo, ProcessUser, RunEvent, RunRequest,
    StartProcessRequest,
};
use sbx_api::ErrorBody;
use std::collections::BTreeMap;
use std::io::Write;

#[derive(Debug, Args)]
#[command(
    after_help = "The command runs without a shell: use `-- sh -c '…'` for pipes and globs.\n\
    Exit status: the command's own; 128+N when killed by signal N."
)]
pub struct ExecArgs {
    /// Sandbox id or name.
    pub id: String,

    /// Working directory of the command.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,

    /// Environment variable (K=V, or K to pass the local value); repeatable.
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// User to run as: a name, "uid" or "uid:gid".
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Kill the command after this many seconds.
    #[arg(long, value_name = "SECS", conflicts_with = "detach")]
    pub timeout: Option<f64>,

    /// Start the command in the background and print its pid.
    #[arg(short = 'd', long)]
    pub detach: bool,

    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// What to run and how, shared by `exec` and `run`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub workdir: Option<String>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub timeout: Option<f64>,
}

impl CommandSpec {
    fn env_map(&self) -> Option<BTreeMap<String, String>> {
        (!self.env.is_empty()).then(|| self.env.iter().cloned().collect())
    }

    pub fn run_request(&self) -> RunRequest {
        RunRequest {
            command: self.argv[0].clone(),
            args: self.argv[1..].to_vec(),
            env: self.env_map(),
            working_dir: self.workdir.clone(),
            timeout: self.timeout,
            user: self.user.clone().map(ProcessUser::Spec),
        }
    }

    pub fn start_request(&self) -> StartProcessRequest {
        StartProcessRequest {
            command: self.argv[0].clone(),
            args: self.argv[1..].to_vec(),
            env: self.env_map(),
            working_dir: self.workdir.clone(),
            user: self.user.clone().map(ProcessUser::Spec),
            ..Default::default()
        }
    }
}

/// `K=V`, or `K` alone for the local environment's value.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("{s:?}: empty variable name")),
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None if s.is_empty() => Err("empty variable name".into()),
        None => std::env::var(s)
            .map(|v| (s.to_string(), v))
            .map_err(|_| format!("{s} is not set locally; pass {s}=VALUE")),
    }
}

pub async fn run(client: &Client, args: ExecArgs) -> Result<i32> {
    let target = client.target(&args.id).await?;
    let spec = CommandSpec {
        argv: args.command,
        workdir: args.workdir,
        env: args.env,
        user: args.user,
        timeout: args.timeout,
    };
    if args.detach {
        let rb = client
            .daemon(&target, Method::POST, "/processes")
            .json(&spec.start_request());
        let info: ProcessInfo = client.send(rb).await?.json().await?;
        println!("{}", info.pid);
        return Ok(0);
    }
    stream_run(client, &target, &spec.run_request()).await
}

/// Runs a command through `POST /processes/run`, copying each output line to
/// the local stdout/stderr as it arrives; returns the exit code to use.
pub async fn stream_run(client: &Client, target: &Target, req: &RunRequest) -> Result<i32> {
    let rb = client
        .daemon(target, Method::POST, "/processes/run")
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .json(req);
    let resp = client.send(rb).await?;
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::new();
    let mut out = Sink::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("reading the command's output")?;
        for ev in parser.push(&chunk) {
            if let Some(code) = out.event(&ev.data)? {
                return Ok(code);
            }
        }
        out.flush();
    }
    if let Some(ev) = parser.finish() {
        if let Some(code) = out.event(&ev.data)? {
            return Ok(code);
        }
    }
    out.flush();
    bail!("the connection closed before the command finished")
}

/// Writes output events locally. A closed local stdout (e.g. `| head`) does
/// not stop the run: its output is dropped and the exit code still comes.
#[derive(Default)]
struct Sink {
    stdout_closed: bool,
}

impl Sink {
    /// Handles one event; `Some(code)` when it is the last one.
    fn event(&mut self, data: &str) -> Result<Option<i32>> {
        match serde_json::from_str::<RunEvent>(data) {
            Ok(RunEvent::Output(o)) => {
                let mut line = o.line.into_bytes();
                line.push(b'\n');
                if o.stream == Some(OutputStream::Stderr) {
                    let _ = std::io::stderr().write_all(&line);
                } else if !self.stdout_closed {
                    if let Err(e) = std::io::stdout().write_all(&line) {
                        if e.kind() != std::io::ErrorKind::BrokenPipe {
                            return Err(e).context("writing to stdout");
                        }
                        self.stdout_closed = true;
                    }
                }
                Ok(None)
            }
            Ok(RunEvent::Started(_)) => Ok(None),
            Ok(RunEvent::Exit(exit)) => {
                self.flush();
                let (code, note) = exit_status(&exit);
                if let Some(note) = note {
                    eprintln!("sbx: {note}");
                }
                Ok(Some(code))
            }
            Err(_) => match serde_json::from_str::<ErrorBody>(data) {
                Ok(e) => bail!("{}", e.message),
                Err(_) => Ok(None), // unknown events are skipped
            },
        }
    }

    fn flush(&mut self) {
        if !self.stdout_closed {
            let _ = std::io::stdout().flush();
        }
    }
}

/// The local exit code for a remote exit, and a note for the user when the
/// command did not simply exit.
pub fn exit_status(exit: &ExitEvent) -> (i32, Option<String>) {
    let code = match (exit.signal, exit.exit_code) {
        (Some(sig), _) => 128 + sig,
        (None, Some(c)) => c,
        (None, None) if exit.reason == ExitReason::TimedOut => 124,
        (None, None) => 1,
    };
    let code = if (0..=255).contains(&code) { code } else { 255 };
    let note = match exit.reason {
        ExitReason::TimedOut => Some("command timed out and was killed".to_string()),
        ExitReason::OomKilled => Some("command was killed: out of memory".to_string()),
        _ if exit.oom_killed => Some("command was killed: out of memory".to_string()),
        _ => None,
    };
    (code, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::parse;
    use crate::Command;
    use clap::Parser;

    fn exec_args(argv: &[&str]) -> ExecArgs {
        match parse(argv).command {
            Command::Exec(a) => a,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn exec_flags_and_command() {
        let a = exec_args(&[
            "exec",
            "sb1",
            "-w",
            "/tmp",
            "-e",
            "A=1",
            "-e",
            "B=x=y",
            "--user",
            "1000:1000",
            "--timeout",
            "2.5",
            "--",
            "ls",
            "-la",
            "--color",
        ]);
        assert_eq!(a.id, "sb1");
        assert_eq!(a.workdir.as_deref(), Some("/tmp"));
        assert_eq!(
            a.env,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(a.user.as_deref(), Some("1000:1000"));
        assert_eq!(a.timeout, Some(2.5));
        assert!(!a.detach);
        assert_eq!(a.command, vec!["ls", "-la", "--color"]);
    }

    #[test]
    fn exec_without_dashes_and_detach() {
        let a = exec_args(&["exec", "sb1", "echo", "-n", "hi"]);
        assert_eq!(a.command, vec!["echo", "-n", "hi"]);
        let a = exec_args(&["exec", "sb1", "--detach", "--", "sleep", "100"]);
        assert!(a.detach);
        assert_eq!(a.command, vec!["sleep", "100"]);
        assert!(crate::Cli::try_parse_from(["sbx", "exec", "sb1"]).is_err());
        assert!(crate::Cli::try_parse_from(["sbx", "exec", "sb1", "-e", "=1", "--", "x"]).is_err());
        assert!(crate::Cli::try_parse_from([
            "sbx",
            "exec",
            "sb1",
            "-d",
            "--timeout",
            "1",
            "--",
            "x"
        ])
        .is_err());
    }

    #[test]
    fn requests_carry_the_spec() {
        let spec = CommandSpec {
            argv: vec!["python3".into(), "-c".into(), "print(1)".into()],
            workdir: Some("/w".into()),
            env: vec![("A".into(), "1".into())],
            user: Some("root".into()),
            timeout: Some(3.0),
        };
        assert_eq!(
            serde_json::to_value(spec.run_request()).unwrap(),
            serde_json::json!({
                "command": "python3", "args": ["-c", "print(1)"], "env": {"A": "1"},
                "working_dir": "/w", "timeout": 3.0, "user": "root"
            })
        );
        let start = serde_json::to_value(spec.start_request()).unwrap();
        assert_eq!(start["command"], "python3");
        assert!(start.get("timeout").is_none());
        let bare = CommandSpec {
            argv: vec!["true".into()],
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(bare.run_request()).unwrap(),
            serde_json::json!({"command": "true", "args": []})
        );
    }

    fn exit(json: &str) -> (i32, Option<String>) {
        exit_status(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn exit_codes_map() {
        assert_eq!(exit(r#"{"exit_code":0,"reason":"exited"}"#), (0, None));
        assert_eq!(exit(r#"{"exit_code":3,"reason":"exited"}"#), (3, None));
        assert_eq!(exit(r#"{"signal":9,"reason":"signaled"}"#), (137, None));
        let (code, note) = exit(r#"{"signal":9,"reason":"timed_out"}"#);
        assert_eq!(code, 137);
        assert!(note.unwrap().contains("timed out"));
        assert_eq!(exit(r#"{"reason":"timed_out"}"#).0, 124);
        let (code, note) = exit(r#"{"signal":9,"oom_killed":true,"reason":"oom_killed"}"#);
        assert_eq!(code, 137);
        assert!(note.unwrap().contains("out of memory"));
        assert_eq!(exit(r#"{"exit_code":-1,"reason":"exited"}"#).0, 255);
    }

    #[test]
    fn sink_returns_the_code_on_the_exit_event() {
        let mut s = Sink::default();
        assert_eq!(
            s.event(r#"{"pid":1,"started_at":"2026-01-01T00:00:00Z"}"#)
                .unwrap(),
            None
        );
        assert_eq!(s.event(r#"{"something":"new"}"#).unwrap(), None);
        assert_eq!(
            s.event(r#"{"exit_code":7,"reason":"exited"}"#).unwrap(),
            Some(7)
        );
        let err = s
            .event(r#"{"code":"spawn_failed","message":"no such file: nope"}"#)
            .unwrap_err();
        assert_eq!(err.to_string(), "no such file: nope");
    }

    #[test]
    fn env_parsing() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("SBX_SURELY_UNSET_VARIABLE").is_err());
        let path = std::env::var("PATH").unwrap();
        assert_eq!(parse_env("PATH").unwrap(), ("PATH".into(), path));
    }
}
