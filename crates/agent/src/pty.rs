//! PTY sessions: a process on a pseudo-terminal, driven over a WebSocket.

use crate::error::AppError;
use crate::reaper::{Exit, Reaper};
use crate::spawn::{signal_group, spawn, Io, SpawnSpec};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::Rng;
use sbx_api::daemon::{pty_op, CreatePtyRequest, CreatePtyResponse};
use serde::Serialize;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// One entry of `GET /pty`.
#[derive(Debug, Clone, Serialize)]
pub struct PtySessionInfo {
    pub session_id: String,
    pub pid: i32,
    pub command: String,
    pub args: Vec<String>,
    pub rows: u16,
    pub cols: u16,
    pub created_at: DateTime<Utc>,
    pub is_alive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PtyList {
    pub sessions: Vec<PtySessionInfo>,
}

pub struct Session {
    id: String,
    token: String,
    pid: i32,
    command: String,
    args: Vec<String>,
    created_at: DateTime<Utc>,
    size: Mutex<(u16, u16)>,
    master: crate::blocking::Writer,
    /// Output read from the master; taken by the connected WebSocket.
    output: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    exit: watch::Receiver<Option<Exit>>,
}

#[derive(Default)]
pub struct Ptys {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

fn set_winsize(fd: i32, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ as _, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a pty pair with both ends close-on-exec from the start, so that a
/// process spawned concurrently on another thread never inherits them.
fn open_pty(rows: u16, cols: u16) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    // std opens with O_CLOEXEC.
    let slave: OwnedFd = std::fs::File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(name)?
        .into();
    // SAFETY: `into_raw_fd` hands over the only owner of an open descriptor.
    let master = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    set_winsize(master.as_raw_fd(), rows, cols)?;
    Ok((master, slave))
}

impl Ptys {
    pub fn create(
        &self,
        reaper: &Reaper,
        req: CreatePtyRequest,
    ) -> Result<CreatePtyResponse, AppError> {
        let rows = if req.rows == 0 { 24 } else { req.rows };
        let cols = if req.cols == 0 { 80 } else { req.cols };
        let (master, slave) =
            open_pty(rows, cols).map_err(|e| AppError::internal(format!("openpty: {e}")))?;
        let spawned = spawn(
            reaper,
            SpawnSpec {
                command: &req.command,
                args: &req.args,
                env: req.env.as_ref(),
                working_dir: req.working_dir.as_deref(),
                user: req.user.as_ref(),
                stdin: Io::Pty(slave),
                stdout: false,
                stderr: false,
            },
        )?;
        let reading = master
            .try_clone()
            .map_err(|e| AppError::internal(format!("pty: {e}")))?;
        // Reads end with EIO once every slave end is closed.
        let out_rx = crate::blocking::read_chunks(std::fs::File::from(reading), 256);
        let master = crate::blocking::Writer::new(std::fs::File::from(master));
        let (exit_tx, exit_rx) = watch::channel(None);
        let exit = spawned.exit;
        tokio::spawn(async move {
            let status = exit.await.unwrap_or(Exit::Signal(libc::SIGKILL));
            let _ = exit_tx.send(Some(status));
        });
        let id = format!("pty-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let token: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let session = Arc::new(Session {
            id: id.clone(),
            token: token.clone(),
            pid: spawned.pid,
            command: req.command,
            args: req.args,
            created_at: Utc::now(),
            size: Mutex::new((rows, cols)),
            master,
            output: tokio::sync::Mutex::new(out_rx),
            exit: exit_rx,
        });
        tracing::info!(session = %id, pid = spawned.pid, "pty started");
        self.sessions.lock().unwrap().insert(id.clone(), session);
        Ok(CreatePtyResponse {
            session_id: id,
            token,
        })
    }

    pub fn list(&self) -> PtyList {
        let sessions = self.sessions.lock().unwrap();
        let mut list: Vec<_> = sessions
            .values()
            .map(|s| {
                let exit = *s.exit.borrow();
                let (rows, cols) = *s.size.lock().unwrap();
                PtySessionInfo {
                    session_id: s.id.clone(),
                    pid: s.pid,
                    command: s.command.clone(),
                    args: s.args.clone(),
                    rows,
                    cols,
                    created_at: s.created_at,
                    is_alive: exit.is_none(),
                    exit_code: exit.map(Exit::shell_code),
                }
            })
            .collect();
        list.sort_by_key(|s| s.created_at);
        PtyList { sessions: list }
    }

    pub fn kill(&self, id: &str) -> Result<(), AppError> {
        let session = self
            .sessions
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| AppError::not_found(format!("no pty session `{id}`")))?;
        if session.exit.borrow().is_none() {
            let _ = signal_group(session.pid, libc::SIGKILL);
        }
        Ok(())
    }

    pub fn signal_all(&self, sig: i32) {
        for s in self.sessions.lock().unwrap().values() {
            if s.exit.borrow().is_none() {
                let _ = signal_group(s.pid, sig);
            }
        }
    }

    /// Checks the token: missing → 401, wrong → 403, unknown session → 404.
    pub fn authorize(&self, id: &str, token: Option<&str>) -> Result<Arc<Session>, AppError> {
        let session = self
            .sessions
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| AppError::not_found(format!("no pty session `{id}`")))?;
        match token {
            None => Err(AppError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing pty token",
            )),
            Some(t) if t != session.token => Err(AppError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "wrong pty token",
            )),
            Some(_) => Ok(session),
        }
    }

    fn forget(&self, id: &str) {
        self.sessions.lock().unwrap().remove(id);
    }
}

/// Serves one WebSocket connection of a session.
pub async fn serve_ws(ptys: Arc<Ptys>, session: Arc<Session>, mut ws: WebSocket) {
    let Ok(mut output) = session.output.try_lock() else {
        let _ = ws
            .send(Message::Close(Some(CloseFrame {
                code: 1008,
                reason: "session already has a client".into(),
            })))
            .await;
        return;
    };
    let mut ready = false;
    let mut exit_rx = session.exit.clone();
    let mut exited: Option<Exit> = None;
    loop {
        tokio::select! {
            msg = ws.recv() => {
                let Some(Ok(msg)) = msg else { return };
                match msg {
                    Message::Binary(data) if !data.is_empty() => match data[0] {
                        pty_op::READY => ready = true,
                        pty_op::DATA => {
                            session
                                .master
                                .write_all(data.slice(1..))
                                .await
                                .unwrap_or_else(|e| tracing::debug!("pty write: {e}"));
                        }
                        pty_op::RESIZE if data.len() >= 5 => {
                            let cols = u16::from_be_bytes([data[1], data[2]]);
                            let rows = u16::from_be_bytes([data[3], data[4]]);
                            *session.size.lock().unwrap() = (rows, cols);
                            let _ = set_winsize(session.master.file().as_raw_fd(), rows, cols);
                        }
                        _ => {}
                    },
                    Message::Text(t) => {
                        // Be lenient: treat text as input once ready.
                        let _ = session
                            .master
                            .write_all(Bytes::copy_from_slice(t.as_str().as_bytes()))
                            .await;
                    }
                    Message::Close(_) => return,
                    _ => {}
                }
            }
            chunk = output.recv(), if ready => match chunk {
                Some(data) => {
                    let mut frame = Vec::with_capacity(data.len() + 1);
                    frame.push(pty_op::DATA);
                    frame.extend_from_slice(&data);
                    if ws.send(Message::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            changed = exit_rx.changed(), if exited.is_none() => {
                if changed.is_err() { break; }
                exited = *exit_rx.borrow_and_update();
                if exited.is_some() && !ready {
                    continue;
                }
                if exited.is_some() {
                    // Drain what is left; a grandchild may keep the slave open.
                    while let Ok(Some(data)) = tokio::time::timeout(Duration::from_millis(200), output.recv()).await {
                        let mut frame = Vec::with_capacity(data.len() + 1);
                        frame.push(pty_op::DATA);
                        frame.extend_from_slice(&data);
                        if ws.send(Message::Binary(frame.into())).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
            }
        }
    }
    // Output ended or the process exited: report the exit code.
    let exit = match exited {
        Some(e) => e,
        None => {
            let mut rx = session.exit.clone();
            let exit = match rx.wait_for(|e| e.is_some()).await {
                Ok(e) => e.unwrap_or(Exit::Signal(libc::SIGKILL)),
                Err(_) => Exit::Signal(libc::SIGKILL),
            };
            exit
        }
    };
    let code = exit.shell_code();
    let mut frame = vec![pty_op::EXIT];
    frame.extend_from_slice(&code.to_be_bytes());
    let _ = ws.send(Message::Binary(frame.into())).await;
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: format!("exit:{code}").into(),
        })))
        .await;
    ptys.forget(&session.id);
}
