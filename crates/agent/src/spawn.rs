//! Building and spawning user processes: environment, user switch, session.
//!
//! Two paths: the common one (no pty, no user switch) uses `posix_spawn`
//! (see [`posix`]), which is much cheaper than `fork` under gVisor; ptys and
//! user switches need code between `fork` and `exec` and go through
//! `std::process::Command` with a `pre_exec` hook.

mod posix;

use crate::error::AppError;
use crate::reaper::{Exit, Reaper};
use crate::users::{Identity, UserDb};
use sbx_api::daemon::ProcessUser;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
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
    /// Whether the fast `posix_spawn` path was taken.
    pub fast: bool,
}

/// The agent's own environment minus `SBX_*`, with a default PATH: read once.
fn base_env() -> &'static BTreeMap<String, String> {
    static BASE: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| !k.starts_with("SBX_"))
            .collect();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        env
    })
}

/// HOME for children that run as the agent's own user (looked up once).
fn own_home() -> &'static str {
    static HOME: OnceLock<String> = OnceLock::new();
    HOME.get_or_init(|| {
        let uid = nix::unistd::getuid().as_raw();
        UserDb::load()
            .home_of(uid)
            .unwrap_or_else(|| if uid == 0 { "/root" } else { "/" }.into())
    })
}

/// `/dev/null`, opened once (close-on-exec, read-write).
fn dev_null() -> std::io::Result<&'static File> {
    static NULL: OnceLock<File> = OnceLock::new();
    if let Some(f) = NULL.get() {
        return Ok(f);
    }
    let f = File::options().read(true).write(true).open("/dev/null")?;
    Ok(NULL.get_or_init(|| f))
}

/// Marks every descriptor above 2 that the agent inherited close-on-exec, so
/// that children get only 0, 1 and 2 (all the agent opens itself already is).
fn cloexec_inherited_fds() {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
        }
    }
}

/// Reads the agent's environment (and the user databases, for HOME) now, so
/// that no spawn pays for it, and keeps inherited descriptors from children.
pub fn init() {
    cloexec_inherited_fds();
    image_defaults();
    let env = base_env();
    if !env.contains_key("HOME") {
        own_home();
    }
    let _ = dev_null();
}

/// The environment a child gets: the agent's minus `SBX_*`, defaults, then `extra`.
pub fn child_env(
    identity: Option<&Identity>,
    extra: Option<&BTreeMap<String, String>>,
    pty: bool,
) -> BTreeMap<String, String> {
    let mut env = base_env().clone();
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
                env.insert("HOME".into(), own_home().into());
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

/// Whether running as `id` changes anything for a child of the agent.
fn needs_switch(id: &Identity) -> bool {
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    if id.uid != euid || id.gid != egid {
        return true;
    }
    // As root the switch would also set the supplementary groups.
    if euid == 0 {
        let mut want: Vec<u32> = id.groups.clone();
        let mut have: Vec<u32> = match nix::unistd::getgroups() {
            Ok(g) => g.into_iter().map(|g| g.as_raw()).collect(),
            Err(_) => return true,
        };
        want.sort_unstable();
        want.dedup();
        have.sort_unstable();
        have.dedup();
        return want != have;
    }
    false
}

/// The image's working directory and user (`WorkingDir`, `User`), which
/// processes get unless their request names others: read once.
fn image_defaults() -> &'static (Option<String>, Option<ProcessUser>) {
    static DEFAULTS: OnceLock<(Option<String>, Option<ProcessUser>)> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        (
            var("SBX_DEFAULT_WORKDIR"),
            var("SBX_DEFAULT_USER").map(ProcessUser::Spec),
        )
    })
}

/// Spawns a process in its own session (so its process group id is its pid).
/// Failures (unknown user, bad directory, command not found) are 400s.
pub fn spawn(reaper: &Reaper, mut spec: SpawnSpec<'_>) -> Result<Spawned, AppError> {
    if spec.command.is_empty() {
        return Err(AppError::bad_request("command must not be empty"));
    }
    let (dir, user) = image_defaults();
    // The image's WORKDIR may not exist yet (as Docker, it is made).
    if spec.working_dir.is_none() {
        if let Some(dir) = dir {
            let _ = std::fs::create_dir_all(dir);
            spec.working_dir = Some(dir);
        }
    }
    spec.user = spec.user.or(user.as_ref());
    // The user databases are only read when a user is asked for.
    let identity = match spec.user {
        Some(u) => Some(UserDb::load().resolve(u).map_err(AppError::bad_request)?),
        None => None,
    };
    let is_pty = matches!(spec.stdin, Io::Pty(_));
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
    }
    let env = child_env(identity.as_ref(), spec.env, is_pty);
    let switch = identity.as_ref().filter(|id| needs_switch(id));
    if !is_pty && switch.is_none() {
        return spawn_fast(reaper, &spec, &env).map_err(|e| {
            AppError::bad_request(format!("failed to start `{}`: {e}", spec.command))
        });
    }

    let mut cmd = Command::new(spec.command);
    cmd.args(spec.args).env_clear().envs(&env);
    if let Some(dir) = spec.working_dir {
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

    let ids = switch.map(|id| (id.uid, id.gid, id.groups.clone()));
    let as_root = nix::unistd::geteuid().is_root();
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
        fast: false,
    })
}

fn nul_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "nul byte found in provided data",
    )
}

fn cstring(bytes: impl Into<Vec<u8>>) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| nul_error())
}

/// Finds `command` like `execvp` would, in the child's `PATH` (relative
/// entries are relative to the child's working directory).
fn resolve_command(
    command: &str,
    path_var: Option<&str>,
    cwd: Option<&str>,
) -> std::io::Result<PathBuf> {
    if command.contains('/') {
        return Ok(command.into());
    }
    let mut denied = false;
    for dir in path_var.unwrap_or(DEFAULT_PATH).split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let mut candidate = PathBuf::from(dir);
        if let (true, Some(cwd)) = (candidate.is_relative(), cwd) {
            candidate = Path::new(cwd).join(candidate);
        }
        candidate.push(command);
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() => {
                if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
                    return Ok(candidate);
                }
                denied = true;
            }
            Ok(_) => denied = true,
            Err(_) => {}
        }
    }
    Err(std::io::Error::from_raw_os_error(if denied {
        libc::EACCES
    } else {
        libc::ENOENT
    }))
}

/// The `posix_spawn` path: no pty, no user switch.
fn spawn_fast(
    reaper: &Reaper,
    spec: &SpawnSpec<'_>,
    env: &BTreeMap<String, String>,
) -> std::io::Result<Spawned> {
    let path = resolve_command(
        spec.command,
        env.get("PATH").map(String::as_str),
        spec.working_dir,
    )?;
    let path = cstring(path.as_os_str().as_bytes())?;
    let mut argv = Vec::with_capacity(spec.args.len() + 2);
    argv.push(cstring(spec.command)?);
    for a in spec.args {
        argv.push(cstring(a.as_str())?);
    }
    let envp = env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}")))
        .collect::<std::io::Result<Vec<_>>>()?;
    let cwd = spec.working_dir.map(cstring).transpose()?;

    // Every descriptor the agent keeps is close-on-exec (pipe2, std's open).
    let null = dev_null()?;
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    let (stdin_child, stdin) = match spec.stdin {
        Io::Pipe => {
            let (r, w) = pipe()?;
            (Some(r), Some(w))
        }
        _ => (None, None),
    };
    let (stdout, stdout_child) = if spec.stdout {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let (stderr, stderr_child) = if spec.stderr {
        let (r, w) = pipe()?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    fn fd_or<'a>(fd: &'a Option<OwnedFd>, null: &'a File) -> BorrowedFd<'a> {
        match fd {
            Some(fd) => fd.as_fd(),
            None => null.as_fd(),
        }
    }
    let req = posix::Request {
        path: &path,
        argv: &argv,
        envp: &envp,
        cwd: cwd.as_deref(),
        stdio: [
            fd_or(&stdin_child, null),
            fd_or(&stdout_child, null),
            fd_or(&stderr_child, null),
        ],
    };
    let (pid, exit) = reaper.spawn_with(|| match posix::spawn(&req) {
        // Like execvp: a file without a known header is a shell script.
        Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
            let mut sh_argv = vec![cstring("/bin/sh")?, path.clone()];
            sh_argv.extend_from_slice(&argv[1..]);
            posix::spawn(&posix::Request {
                path: c"/bin/sh",
                argv: &sh_argv,
                ..req
            })
        }
        r => r,
    })?;
    Ok(Spawned {
        pid,
        stdin,
        stdout,
        stderr,
        exit,
        fast: true,
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

    use crate::reaper::TEST_LOCK;
    use std::io::{BufRead, Read, Write};

    fn started_reaper() -> Reaper {
        let reaper = Reaper::default();
        reaper.start().unwrap();
        reaper
    }

    fn read_all(fd: Option<OwnedFd>) -> String {
        let mut s = String::new();
        File::from(fd.unwrap()).read_to_string(&mut s).unwrap();
        s
    }

    fn spec<'a>(command: &'a str, args: &'a [String]) -> SpawnSpec<'a> {
        SpawnSpec {
            command,
            args,
            env: None,
            working_dir: None,
            user: None,
            stdin: Io::Null,
            stdout: true,
            stderr: true,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn fast_path_env_cwd_stdin_exit_code_session_signals_and_fds() {
        let _serial = TEST_LOCK.lock().await;
        let reaper = started_reaper();
        let mut env = BTreeMap::new();
        env.insert("FOO".to_string(), "bar baz".to_string());
        let args = strings(&[
            "-c",
            "read line; echo \"$line|$FOO|$(pwd)|$SBX_SECRET_FOR_FAST_TEST\"; \
             cut -d' ' -f5,6 /proc/$$/stat; echo $$; \
             while read -r k v; do case $k in SigBlk:|SigIgn:) printf '%s\\t%s\\n' \"$k\" \"$v\";; esac; done < /proc/$$/status; \
             echo oops >&2; exit 3",
        ]);
        std::env::set_var("SBX_SECRET_FOR_FAST_TEST", "leaked");
        let spawned = spawn(
            &reaper,
            SpawnSpec {
                env: Some(&env),
                working_dir: Some("/tmp"),
                stdin: Io::Pipe,
                ..spec("sh", &args)
            },
        )
        .unwrap();
        assert!(spawned.fast, "no pty, no user: the posix_spawn path");
        let mut stdin = File::from(spawned.stdin.unwrap());
        stdin.write_all(b"hello\n").unwrap();
        drop(stdin);
        let out = read_all(spawned.stdout);
        let err = read_all(spawned.stderr);
        let lines: Vec<&str> = out.lines().collect();
        let pid = spawned.pid.to_string();
        assert_eq!(lines[0], "hello|bar baz|/tmp|");
        // Its own session and process group.
        assert_eq!(lines[1], format!("{pid} {pid}"));
        assert_eq!(lines[2], pid);
        // Nothing blocked or ignored (the test harness ignores SIGPIPE).
        // Read by the shell's builtins: a forked reader (grep) could catch
        // the shell with every signal blocked around its fork.
        assert_eq!(lines[3], "SigBlk:\t0000000000000000");
        assert_eq!(lines[4], "SigIgn:\t0000000000000000");
        assert_eq!(err, "oops\n");
        assert_eq!(spawned.exit.await.unwrap(), Exit::Code(3));

        // Only the three standard descriptors are inherited (ls opens 3);
        // the test runner may have inherited others, which `init` fixes.
        init();
        let args = strings(&["/proc/self/fd"]);
        let spawned = spawn(&reaper, spec("ls", &args)).unwrap();
        assert!(spawned.fast);
        assert_eq!(read_all(spawned.stdout), "0\n1\n2\n3\n");
        assert_eq!(spawned.exit.await.unwrap(), Exit::Code(0));
    }

    #[tokio::test]
    async fn fast_path_group_kill_and_errors() {
        let _serial = TEST_LOCK.lock().await;
        let reaper = started_reaper();
        let args = strings(&["-c", "sleep 100 & echo $!; wait"]);
        let spawned = spawn(
            &reaper,
            SpawnSpec {
                stderr: false,
                ..spec("sh", &args)
            },
        )
        .unwrap();
        assert!(spawned.fast);
        let mut out = std::io::BufReader::new(File::from(spawned.stdout.unwrap()));
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let sleep: i32 = line.trim().parse().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{sleep}/stat")).unwrap();
        let pgid: i32 = stat.split(' ').nth(4).unwrap().parse().unwrap();
        assert_eq!(pgid, spawned.pid);
        signal_group(spawned.pid, libc::SIGKILL).unwrap();
        assert_eq!(spawned.exit.await.unwrap(), Exit::Signal(libc::SIGKILL));
        // The backgrounded sleep died with its group (gone or a zombie).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match std::fs::read_to_string(format!("/proc/{sleep}/stat")) {
                Err(_) => break,
                Ok(s) if s.rsplit(") ").next().unwrap().starts_with('Z') => break,
                Ok(_) => {}
            }
            assert!(std::time::Instant::now() < deadline, "sleep survived");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        let e = spawn(&reaper, spec("definitely-not-a-command-xyz", &[]))
            .err()
            .unwrap();
        assert_eq!(
            e.message,
            "failed to start `definitely-not-a-command-xyz`: No such file or directory (os error 2)"
        );
        let e = spawn(&reaper, spec("/no/such/binary", &[])).err().unwrap();
        assert!(
            e.message.contains("No such file or directory"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn fast_path_runs_scripts_without_shebang_like_execvp() {
        let _serial = TEST_LOCK.lock().await;
        let reaper = started_reaper();
        let dir = std::env::temp_dir().join(format!("sbx-agent-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("noshebang");
        std::fs::write(&script, "echo script \"$@\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_string(),
            format!("/no/such/dir:{}", dir.display()),
        );
        let args = strings(&["a", "b"]);
        let spawned = spawn(
            &reaper,
            SpawnSpec {
                env: Some(&env),
                ..spec("noshebang", &args)
            },
        )
        .unwrap();
        assert!(spawned.fast);
        assert_eq!(read_all(spawned.stdout), "script a b\n");
        assert_eq!(spawned.exit.await.unwrap(), Exit::Code(0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolves_commands_in_the_child_path() {
        assert_eq!(
            resolve_command("sh", Some("/no/such:/bin"), None).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            resolve_command("sh", Some("bin"), Some("/")).unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            resolve_command("./x", Some("/bin"), None).unwrap(),
            PathBuf::from("./x")
        );
        let e = resolve_command("sh", Some("/no/such"), None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        // A directory of that name is not a command.
        let e = resolve_command("bin", Some("/"), None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn user_switch_only_when_it_changes_something() {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let mut groups: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        if uid != 0 && !groups.contains(&gid) {
            groups.push(gid);
        }
        let me = Identity {
            uid,
            gid,
            groups,
            name: None,
            home: "/".into(),
        };
        assert!(!needs_switch(&me));
        assert!(needs_switch(&Identity {
            uid: uid + 1,
            ..me.clone()
        }));
        assert!(needs_switch(&Identity {
            gid: gid + 1,
            ..me.clone()
        }));
    }

    #[tokio::test]
    async fn user_switch_takes_the_fork_path() {
        if !nix::unistd::geteuid().is_root() {
            return; // switching users needs root
        }
        let _serial = TEST_LOCK.lock().await;
        let reaper = started_reaper();
        let user = ProcessUser::Spec("65534:65534".into());
        let args = strings(&["-c", "id -u; id -g; cut -d' ' -f5,6 /proc/$$/stat; echo $$"]);
        let spawned = spawn(
            &reaper,
            SpawnSpec {
                user: Some(&user),
                ..spec("sh", &args)
            },
        )
        .unwrap();
        assert!(!spawned.fast, "a user switch needs the fork path");
        let pid = spawned.pid;
        let out = read_all(spawned.stdout);
        assert_eq!(out, format!("65534\n65534\n{pid} {pid}\n{pid}\n"));
        assert_eq!(spawned.exit.await.unwrap(), Exit::Code(0));
    }
}
