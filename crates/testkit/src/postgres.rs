//! A PostgreSQL server of the test's own: `initdb` into a temp dir, then
//! `postgres` on a free loopback port (and on a given address of this
//! machine, [`Postgres::start_on`]), run as the `postgres` user (the server
//! refuses root) and killed on drop.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running PostgreSQL with one superuser, `sbx`, trusted on loopback
/// (and from the clients given to [`start_on`](Self::start_on)).
pub struct Postgres {
    child: Child,
    port: u16,
    /// The address its URLs name.
    host: Ipv4Addr,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Starts a fresh cluster on 127.0.0.1. Panics with the install command
    /// when PostgreSQL is not installed (`scripts/install-deps.sh --test`).
    pub fn start() -> Postgres {
        Self::start_listening(None)
    }

    /// Starts a fresh cluster listening on `addr` (an address of this
    /// machine, e.g. a [`TestNet`](crate::net::TestNet)'s gateway) as well
    /// as 127.0.0.1, trusting clients in `clients` (CIDR); its URLs name
    /// `addr`.
    pub fn start_on(addr: Ipv4Addr, clients: &str) -> Postgres {
        Self::start_listening(Some((addr, clients)))
    }

    fn start_listening(extra: Option<(Ipv4Addr, &str)>) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("sbx-pg-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let user = server_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let out = as_user(Command::new(bin.join("initdb")), user)
            .args(["-A", "trust", "-U", "sbx", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut listen = "127.0.0.1".to_string();
        if let Some((addr, clients)) = extra {
            use std::io::Write;
            listen = format!("127.0.0.1,{addr}");
            std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))
                .and_then(|mut f| writeln!(f, "host all all {clients} trust"))
                .expect("append to pg_hba.conf");
        }
        // A free port picked here may be taken by a parallel test before
        // the server binds it: then try another.
        for _ in 0..5 {
            let port = crate::free_port();
            let mut child = as_user(Command::new(bin.join("postgres")), user)
                .arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(dir.path())
                .args(["-p", &port.to_string()])
                .args(["-c", &format!("listen_addresses={listen}")])
                .args(["-c", "fsync=off", "-c", "max_connections=200"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run postgres");
            let host = extra.map_or(Ipv4Addr::LOCALHOST, |(addr, _)| addr);
            if wait_ready(&mut child, &bin, port, host) {
                return Postgres {
                    child,
                    port,
                    host,
                    _dir: dir,
                };
            }
            stop(&mut child);
        }
        panic!("postgres did not start on a free port");
    }

    /// `postgres://sbx@HOST:PORT/DB`, HOST 127.0.0.1 or the address given
    /// to [`start_on`](Self::start_on); `postgres` always exists.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://sbx@{}:{}/{db}", self.host, self.port)
    }

    /// Creates database `name` (owned by `sbx`) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let out = Command::new(bin_dir().join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "sbx"])
            .arg(name)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The rows `sql` gives in database `db`, as `psql` prints them
    /// unaligned (`|` between columns, no header).
    pub fn query(&self, db: &str, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "sbx",
                "-At",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Immediate shutdown (SIGQUIT): the postmaster stops its backends and
/// exits; the cluster is thrown away anyway.
fn stop(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
    let _ = child.wait();
}

/// True once the server answers on 127.0.0.1 and on `host` (it starts
/// when it can bind one of its addresses: the port may be taken on the other).
fn wait_ready(child: &mut Child, bin: &Path, port: u16, host: Ipv4Addr) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ready = |h: Ipv4Addr| {
            Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", &h.to_string(), "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        };
        if ready(Ipv4Addr::LOCALHOST) && ready(host) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The newest installed PostgreSQL's `bin` directory, or `SBX_PG_BIN`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SBX_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed: run scripts/install-deps.sh --test")
    })
}

/// The `postgres` user's ids when the test runs as root (the server
/// refuses to run as root); `None` otherwise.
fn server_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(
        !pw.is_null(),
        "no postgres user: run scripts/install-deps.sh --test"
    );
    let pw = unsafe { &*pw };
    Some((pw.pw_uid, pw.pw_gid))
}

fn as_user(mut command: Command, user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}
