//! `sbx ssh ID`: an interactive shell on a PTY in the sandbox, over the
//! daemon's PTY WebSocket.
//!
//! With a terminal on stdin, the local terminal is put in raw mode (restored
//! on every way out) and resized along with the local window. Without one
//! (stdin piped), bytes are forwarded as they come and end of input is sent
//! as Ctrl-D, which ends a shell reading from the PTY.

use crate::client::{Client, Target, SANDBOX_HEADER};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use sbx_api::daemon::{pty_op, CreatePtyRequest, CreatePtyResponse};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Args)]
#[command(after_help = "Exit status: the remote shell's.\n\
    With stdin not a terminal, input is forwarded as is and end of input is sent as Ctrl-D.")]
pub struct SshArgs {
    /// Sandbox id or name.
    pub id: String,

    /// Shell (or any program) to run on the PTY.
    #[arg(long, default_value = "bash", value_name = "PROGRAM")]
    pub shell: String,

    /// Working directory of the shell.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
}

/// A frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    Output(&'a [u8]),
    Exit(i32),
    Unknown,
}

pub fn decode(frame: &[u8]) -> ServerFrame<'_> {
    match frame.split_first() {
        Some((&pty_op::DATA, rest)) => ServerFrame::Output(rest),
        Some((&pty_op::EXIT, rest)) if rest.len() >= 4 => {
            ServerFrame::Exit(i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]))
        }
        _ => ServerFrame::Unknown,
    }
}

pub fn input_frame(bytes: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(bytes.len() + 1);
    f.push(pty_op::DATA);
    f.extend_from_slice(bytes);
    f
}

pub fn resize_frame(cols: u16, rows: u16) -> Vec<u8> {
    let mut f = vec![pty_op::RESIZE];
    f.extend_from_slice(&cols.to_be_bytes());
    f.extend_from_slice(&rows.to_be_bytes());
    f
}

/// `ws://host/api/v1/pty/{sid}/ws?token=T` from the proxy's `http://host`.
pub fn ws_url(sandbox_url: &str, session_id: &str, token: &str) -> Result<String> {
    let base = sandbox_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        bail!("unsupported sandbox_url {sandbox_url:?}")
    };
    Ok(format!(
        "{base}/api/v1/pty/{}/ws?token={}",
        crate::client::encode_segment(session_id),
        crate::client::encode_segment(token)
    ))
}

/// The exit code in a close reason `exit:N`.
pub fn close_reason_code(reason: &str) -> Option<i32> {
    reason.strip_prefix("exit:")?.trim().parse().ok()
}

/// Raw mode for as long as it lives.
struct RawMode;

impl RawMode {
    fn enable() -> Result<Self> {
        crossterm::terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        Ok(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn terminal_size() -> (u16, u16) {
    crossterm::terminal::size()
        .ok()
        .filter(|&(c, r)| c > 0 && r > 0)
        .unwrap_or((80, 24))
}

pub async fn run(client: &Client, args: SshArgs) -> Result<i32> {
    let target = client.target(&args.id).await?;
    let tty = std::io::stdin().is_terminal();
    let (cols, rows) = terminal_size();
    let term = std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "xterm-256color".into());
    let req = CreatePtyRequest {
        command: args.shell,
        env: Some(BTreeMap::from([("TERM".to_string(), term)])),
        working_dir: args.workdir,
        rows,
        cols,
        ..Default::default()
    };
    let rb = client.daemon(&target, Method::POST, "/pty").json(&req);
    let pty: CreatePtyResponse = client.send(rb).await?.json().await?;
    let ws = connect(client, &target, &pty).await?;

    let _raw = if tty { Some(RawMode::enable()?) } else { None };
    session(ws, tty).await
    // `_raw` restores the terminal here, on success and on error alike.
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(client: &Client, target: &Target, pty: &CreatePtyResponse) -> Result<Ws> {
    let url = ws_url(&target.url, &pty.session_id, &pty.token)?;
    let mut req = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("bad WebSocket URL {url}"))?;
    let headers = req.headers_mut();
    headers.insert(SANDBOX_HEADER, HeaderValue::from_str(&target.sandbox_id)?);
    headers.insert("X-PTY-Token", HeaderValue::from_str(&pty.token)?);
    if let Some(key) = client.api_key() {
        headers.insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {key}"))?,
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| anyhow!("cannot open the terminal WebSocket at {url}: {e}"))?;
    Ok(ws)
}

/// Local stdin, read on a thread of its own (a blocking read cannot be
/// cancelled; the process exits past it). `None` is end of input.
fn stdin_reader() -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

async fn session(ws: Ws, tty: bool) -> Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::binary(vec![pty_op::READY])).await?;
    let mut input = stdin_reader();
    let mut input_open = true;
    let mut winch = signal(SignalKind::window_change()).ok();
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            msg = rx.next() => {
                let msg = match msg {
                    None => bail!("the connection closed before the shell exited"),
                    Some(m) => m.context("terminal connection")?,
                };
                match msg {
                    Message::Binary(data) => match decode(&data) {
                        ServerFrame::Output(bytes) => {
                            stdout.write_all(bytes)?;
                            stdout.flush()?;
                        }
                        ServerFrame::Exit(code) => {
                            let _ = tx.send(Message::Close(None)).await;
                            return Ok(code);
                        }
                        ServerFrame::Unknown => {}
                    },
                    Message::Text(text) => bail!("{}", text.as_str()),
                    Message::Close(frame) => {
                        let code = frame.and_then(|f| close_reason_code(f.reason.as_str()));
                        return code.ok_or_else(|| anyhow!("the connection closed before the shell exited"));
                    }
                    _ => {}
                }
            }
            chunk = input.recv(), if input_open => {
                match chunk.flatten() {
                    Some(bytes) => tx.send(Message::binary(input_frame(&bytes))).await?,
                    None => {
                        input_open = false;
                        if !tty {
                            // EOT: end of input for whatever reads the PTY.
                            tx.send(Message::binary(input_frame(&[0x04]))).await?;
                        }
                    }
                }
            }
            _ = async { match winch.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                let (cols, rows) = terminal_size();
                tx.send(Message::binary(resize_frame(cols, rows))).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(input_frame(b"ls\r"), vec![0, b'l', b's', b'\r']);
        assert_eq!(resize_frame(120, 40), vec![1, 0, 120, 0, 40]);
        assert_eq!(resize_frame(300, 2), vec![1, 1, 44, 0, 2]);
        assert_eq!(decode(&[0, b'h', b'i']), ServerFrame::Output(b"hi"));
        assert_eq!(decode(&[3, 0, 0, 0, 7]), ServerFrame::Exit(7));
        assert_eq!(decode(&[3, 0xff, 0xff, 0xff, 0xff]), ServerFrame::Exit(-1));
        assert_eq!(decode(&[3, 0]), ServerFrame::Unknown);
        assert_eq!(decode(&[]), ServerFrame::Unknown);
        assert_eq!(decode(&[9, 1]), ServerFrame::Unknown);
    }

    #[test]
    fn urls_and_close_reasons() {
        assert_eq!(
            ws_url("http://localhost:9443/", "s1", "t/k").unwrap(),
            "ws://localhost:9443/api/v1/pty/s1/ws?token=t%2Fk"
        );
        assert_eq!(
            ws_url("https://sbx.example.com", "s1", "t").unwrap(),
            "wss://sbx.example.com/api/v1/pty/s1/ws?token=t"
        );
        assert!(ws_url("ftp://x", "s", "t").is_err());
        assert_eq!(close_reason_code("exit:0"), Some(0));
        assert_eq!(close_reason_code("exit:130"), Some(130));
        assert_eq!(close_reason_code("bye"), None);
    }

    #[test]
    fn ssh_flags() {
        let crate::Command::Ssh(a) = crate::tests::parse(&["ssh", "sb1"]).command else {
            panic!()
        };
        assert_eq!((a.id.as_str(), a.shell.as_str()), ("sb1", "bash"));
        let crate::Command::Ssh(a) =
            crate::tests::parse(&["ssh", "sb1", "--shell", "sh", "-w", "/tmp"]).command
        else {
            panic!()
        };
        assert_eq!(a.shell, "sh");
        assert_eq!(a.workdir.as_deref(), Some("/tmp"));
    }
}
