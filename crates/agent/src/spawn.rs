//! Building and spawning user processes: environment, user switch, session.

use crate::error::AppError;
use crate::reaper::{Exit, Reaper};
use crate::users::{Identity, UserDb};
use sbx_api::daemon::ProcessUser;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use tokio::sync::oneshot;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to connect a child's standard streams to.
pub enum Io {
    Null,
    Pipe,
    /// The slave side of a pty, used for all three streams.
    Pty(OwnedFd),
}

pub struct SpawnSpec<'a> {
    pub command: &'a str,
    pub args: &'a [String],
    pub env: Option<&'a BTreeMap<String, String>>,
    pub working_dir: Option<&'a str>,
    pub user: Option<&'a ProcessUser>,
    pub stdin: Io,
    pub stdout: bool,
    pub stderr: bool,
}

pub struct Spawned {
    pub pid: i32,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub exit: oneshot::Receiver<Exit>,
}

/// The environment a child gets: the agent's minus `SBX_*`, defaults, then `extra`.
pub fn child_env(
    identity: Option<&Identity>,
    extra: Option<&BTreeMap<String, String>>,
    pty: bool,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("SBX_"))
        .collect();
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    match identity {
        Some(id) => {
            env.insert("HOME".into(), id.home.clone());
            if let Some(name) = &id.name {
                env.insert("USER".into(), name.clone());
                env.insert("LOGNAME".into(), name.clone());
            }
        }
        None => {
            if !env.contains_key("HOME") {
                let uid = nix::unistd::getuid().as_raw();
                let home = UserDb::load()
                    .home_of(uid)
                    .unwrap_or_else(|| if uid == 0 { "/root" } else { "/" }.into());
                env.insert("HOME".into(), home);
            }
        }
    }
    if pty {
        env.entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
    }
    if let Some(extra) = extra {
        env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    env
}

/// Spawns a process in its own session (so its process group id is its pid).
/// Failures (unknown user, bad directory, command not found) are 400s.
pub fn spawn(reaper: &Reaper, spec: SpawnSpec<'_>) -> Result<Spawned, AppError> {
    if spec.command.is_empty() {
        return Err(AppError::bad_request("command must not be empty"));
    }
    let identity = match spec.user {
        Some(u) => Some(UserDb::load().resolve(u).map_err(AppError::bad_request)?),
        None => None,
    };
    let is_pty = matches!(spec.stdin, Io::Pty(_));
    let mut cmd = Command::new(spec.command);
    cmd.args(spec.args)
        .env_clear()
        .envs(child_env(identity.as_ref(), spec.env, is_pty));
    if let Some(dir) = spec.working_dir {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(AppError::bad_request(format!(
                    "working_dir `{dir}` is not a directory"
                )))
            }
            Err(e) => {
                return Err(AppError::bad_request(format!("working_dir `{dir}`: {e}")));
            }
        }
        cmd.current_dir(dir);
    }
    match spec.stdin {
        Io::Null => {
            cmd.stdin(Stdio::null());
        }
        Io::Pipe => {
            cmd.stdin(Stdio::piped());
        }
        Io::Pty(slave) => {
            cmd.stdin(Stdio::from(
                slave.try_clone().map_err(|e| AppError::io("pty", &e))?,
            ))
            .stdout(Stdio::from(
                slave.try_clone().map_err(|e| AppError::io("pty", &e))?,
            ))
            .stderr(Stdio::from(slave));
        }
    }
    if !is_pty {
        cmd.stdout(if spec.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stderr(if spec.stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    }

    // Switch user only when it changes something; setgroups needs root.
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let ids = identity
        .as_ref()
        .filter(|id| id.uid != euid || id.gid != egid || euid == 0)
        .map(|id| (id.uid, id.gid, id.groups.clone()));
    let as_root = euid == 0;
    // SAFETY: the closure only makes async-signal-safe syscalls and does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if is_pty && libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &ids {
                if as_root && libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setgid(*gid) < 0 || libc::setuid(*uid) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (mut child, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|e| AppError::bad_request(format!("failed to start `{}`: {e}", spec.command)))?;
    Ok(Spawned {
        pid: child.id() as i32,
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        exit,
    })
}

/// Sends `sig` to the process group led by `pid`, falling back to the process.
pub fn signal_group(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: plain kill(2).
    if unsafe { libc::kill(-pid, sig) } == 0 {
        return Ok(());
    }
    if unsafe { libc::kill(pid, sig) } == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_drops_sbx_and_applies_overrides() {
        std::env::set_var("SBX_SECRET_FOR_TEST", "x");
        let mut extra = BTreeMap::new();
        extra.insert("FOO".to_string(), "bar".to_string());
        let id = Identity {
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            name: Some("alice".into()),
            home: "/home/alice".into(),
        };
        let env = child_env(Some(&id), Some(&extra), true);
        assert!(!env.contains_key("SBX_SECRET_FOR_TEST"));
        assert_eq!(env["FOO"], "bar");
        assert_eq!(env["HOME"], "/home/alice");
        assert_eq!(env["USER"], "alice");
        assert!(env.contains_key("PATH"));
        assert!(env.contains_key("TERM"));
    }
}
