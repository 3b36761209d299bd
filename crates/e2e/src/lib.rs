//! Harness for the end-to-end tests: starts a real `sbx server` on free
//! loopback ports (or in a network namespace of the test's own, on its
//! address: [`Options::netns`]) with its own data directory (sharing one
//! built default image between servers), and talks to it as a user would.

use futures::StreamExt;
use sbx_testkit::net::Host;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use reqwest;
pub use serde_json;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The `sbx` binary under test: `SBX_BIN`, else the cargo build outputs.
pub fn sbx_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SBX_BIN") {
        return p.into();
    }
    let ws = workspace();
    for p in ["target/release/sbx", "target/debug/sbx"] {
        let p = ws.join(p);
        if p.is_file() {
            return p;
        }
    }
    panic!("sbx binary not found: run `cargo build -p sbx-cli` or set SBX_BIN");
}

/// The static agent: `SBX_AGENT_BIN`, else the `make agent` output.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SBX_AGENT_BIN") {
        return p.into();
    }
    let p = workspace().join("target/x86_64-unknown-linux-gnu/release/sbx-agent");
    assert!(
        p.is_file(),
        "static agent not found: run `make agent` or set SBX_AGENT_BIN"
    );
    p
}

/// A TCP port on 127.0.0.1 nothing listens on (now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `sbx server`, stopped (and its sandboxes removed) on drop.
pub struct Server {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub api: String,
    pub proxy: String,
    pub api_port: u16,
    pub proxy_port: u16,
    pub key: Option<String>,
    pub http: reqwest::Client,
    /// This server's own cgroup parent (`--cgroup-parent`), made by the
    /// server at start and removed by it at a clean stop.
    pub cgroup_parent: String,
    /// The `sbx` subcommand that runs it, with its own arguments
    /// (default `server`; `node --server URL` for a node).
    pub command: Vec<String>,
    /// Extra `sbx server` arguments.
    pub args: Vec<String>,
    /// Extra environment of the server process (e.g. `AWS_*` for S3).
    pub env: Vec<(String, String)>,
    /// Where the server's stdout and stderr go (appended); `None`: the test's.
    pub log: Option<PathBuf>,
    /// The network namespace it runs in (`None`: the test's own).
    pub netns: Option<Host>,
    /// `start` waits until sandboxes can start (the default image is built).
    wait_ready: bool,
    _tmp: Option<tempfile::TempDir>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub key: Option<String>,
    /// Use the image directory shared by every test server (built once); with
    /// `false` the server starts with none and builds its own, as on a fresh host.
    pub shared_images: bool,
    /// Wait until the server is ready for sandboxes, not just answering.
    pub wait_ready: bool,
    /// The `sbx` subcommand that runs it, with its own arguments
    /// (default `server`; `node --server URL` for a node).
    pub command: Vec<String>,
    /// Extra `sbx server` arguments.
    pub args: Vec<String>,
    /// Extra environment of the server process (`RUST_LOG` too).
    pub env: Vec<(String, String)>,
    /// Where the server's stdout and stderr go (appended); `None`: the test's.
    pub log: Option<PathBuf>,
    /// Run the server in this host's network namespace (`nsenter --net`),
    /// its API and proxy on the host's address (the test reaches them over
    /// the bridge). A server on a non-loopback address needs `key`; the
    /// servers of one cluster share theirs.
    pub netns: Option<Host>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            key: None,
            shared_images: true,
            wait_ready: true,
            command: vec!["server".into()],
            args: Vec::new(),
            env: Vec::new(),
            log: None,
            netns: None,
        }
    }
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(Options::default()).await
    }

    /// Two servers of `opts`, each on a host of its own: `hosts.0` and
    /// `hosts.1` (network namespaces of the test's network; `opts` needs a
    /// key). The first has started when the second starts.
    pub async fn start_pair(opts: Options, hosts: (Host, Host)) -> (Server, Server) {
        let a = Self::start_with(Options {
            netns: Some(hosts.0),
            ..opts.clone()
        })
        .await;
        let b = Self::start_with(Options {
            netns: Some(hosts.1),
            ..opts
        })
        .await;
        (a, b)
    }

    pub async fn start_with(opts: Options) -> Server {
        assert!(
            opts.netns.is_none() || opts.key.is_some(),
            "a server in a network namespace listens on a non-loopback address: give it a key"
        );
        let tmp = tempfile::Builder::new()
            .prefix("sbx-e2e-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let data_dir = tmp.path().to_path_buf();
        if opts.shared_images {
            // One default image for every test server: built once, then shared.
            let images = workspace().join("target/sbx-test-images");
            std::fs::create_dir_all(&images).unwrap();
            std::os::unix::fs::symlink(&images, data_dir.join("images")).unwrap();
        }
        // A cgroup parent of its own, named after its unique data directory:
        // every test server starts from a fresh host's cgroup state.
        let cgroup_parent = data_dir.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            cgroup_dirs(&cgroup_parent).is_empty(),
            "cgroup parent {cgroup_parent} exists before its server"
        );
        let mut s = Server {
            child: None,
            data_dir,
            api: String::new(),
            proxy: String::new(),
            api_port: free_port(),
            proxy_port: free_port(),
            key: opts.key,
            http: reqwest::Client::builder().build().unwrap(),
            cgroup_parent,
            command: opts.command,
            args: opts.args,
            env: opts.env,
            log: opts.log,
            netns: opts.netns,
            wait_ready: opts.wait_ready,
            _tmp: Some(tmp),
        };
        // A free port picked here may be taken by a parallel test before
        // the server binds it: then try again with other ports.
        for _ in 0..5 {
            if s.try_spawn().await {
                return s;
            }
            s.api_port = free_port();
            s.proxy_port = free_port();
        }
        panic!("sbx server did not start on free ports");
    }

    /// Starts (or restarts) the server process on the same ports and data.
    pub async fn spawn(&mut self) {
        assert!(self.try_spawn().await, "sbx server exited during start");
    }

    /// Restarts the server on its data, on other ports when a parallel
    /// test took its own meanwhile (for tests that need no fixed port).
    pub async fn respawn(&mut self) {
        for _ in 0..5 {
            if self.try_spawn().await {
                return;
            }
            self.api_port = free_port();
            self.proxy_port = free_port();
        }
        panic!("sbx server did not restart on free ports");
    }

    /// The address its API and proxy listen on: its host's in a network
    /// namespace, else 127.0.0.1.
    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(self.netns.as_ref().map_or(Ipv4Addr::LOCALHOST, |h| h.addr))
    }

    /// Like [`spawn`](Self::spawn); false when the server exited during start.
    async fn try_spawn(&mut self) -> bool {
        let ip = self.ip();
        self.api = format!("http://{ip}:{}", self.api_port);
        self.proxy = format!("http://{ip}:{}", self.proxy_port);
        // In a network namespace, nsenter execs sbx: the child is the server.
        let mut cmd = match &self.netns {
            Some(host) => host.command(sbx_bin()),
            None => Command::new(sbx_bin()),
        };
        cmd.args(&self.command)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--api-addr")
            .arg(format!("{ip}:{}", self.api_port))
            .arg("--proxy-addr")
            .arg(format!("{ip}:{}", self.proxy_port))
            .arg("--agent-bin")
            .arg(agent_bin())
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("SBX_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        if let Some(path) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("server log file");
            cmd.stdout(file.try_clone().unwrap()).stderr(file);
        }
        if let Some(k) = &self.key {
            cmd.arg("--api-key").arg(k);
        }
        self.child = Some(cmd.spawn().expect("start sbx server"));
        // The API answers at once; the first server builds the default
        // image meanwhile (about a minute).
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            if let Some(h) = self.health().await {
                if !self.wait_ready || h["ready"] == true {
                    return true;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                eprintln!("sbx server exited during start: {status}");
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "sbx server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /healthz`, when the server answers.
    pub async fn health(&self) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/healthz", self.api))
            .bearer(self.key.as_deref())
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// The directory of sandbox `id`'s cgroup in cgroup v1 `hierarchy`.
    pub fn cgroup(&self, hierarchy: &str, id: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(&self.cgroup_parent)
            .join(id)
    }

    /// The host CPUs of a sandbox's cpuset cgroup, as a cpuset list.
    pub fn cpuset(&self, id: &str) -> String {
        std::fs::read_to_string(self.cgroup("cpuset", id).join("cpuset.cpus"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Each host process of sandbox `id` (from its cpu cgroup): its
    /// `Cpus_allowed_list` and whether it is runsc's gofer.
    pub fn processes_cpus(&self, id: &str) -> Vec<(String, bool)> {
        std::fs::read_to_string(self.cgroup("cpu", id).join("cgroup.procs"))
            .unwrap()
            .lines()
            .filter_map(cpus_and_role)
            .collect()
    }

    /// The one host CPU the sentry and stubs of sandbox `id` run on, if
    /// they all run on the same single CPU.
    pub fn pinned_cpu(&self, id: &str) -> Option<usize> {
        let cpus: Vec<String> = self
            .processes_cpus(id)
            .into_iter()
            .filter(|(_, gofer)| !gofer)
            .map(|(cpus, _)| cpus)
            .collect();
        let first = cpus.first()?.parse().ok()?;
        cpus.iter().all(|c| *c == cpus[0]).then_some(first)
    }

    /// SIGKILLs the server, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the server and waits for it.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        // Past the server's own shutdown grace (60 s): a kill would leave
        // its spare volumes mounted.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/namespaces/default{path}", self.api)
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.req_in("default", method, path)
    }

    /// A control-plane request in namespace `ns` (as it appears in the URL).
    pub fn req_in(&self, ns: &str, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/v1/namespaces/{ns}{path}", self.api))
            .bearer(self.key.as_deref())
    }

    /// A control-plane request outside namespaces (`/v1/nodes`, `/healthz`).
    pub fn req_root(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api))
            .bearer(self.key.as_deref())
    }

    /// Creates a sandbox (blocking); panics unless it runs.
    pub async fn create(&self, body: Value) -> String {
        let r = self
            .req(reqwest::Method::POST, "/sandboxes")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert!(status.is_success(), "create failed: {status} {v}");
        assert_eq!(v["status"], "running", "{v}");
        v["sandbox_id"].as_str().unwrap().to_string()
    }

    /// A control-plane request answered with JSON (any status).
    pub async fn api_json(&self, method: reqwest::Method, path: &str) -> Value {
        self.api_json_in("default", method, path).await
    }

    /// [`Server::api_json`] in namespace `ns`.
    pub async fn api_json_in(&self, ns: &str, method: reqwest::Method, path: &str) -> Value {
        self.req_in(ns, method, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A daemon request through the proxy answered with JSON (any status).
    pub async fn daemon_json(&self, id: &str, method: reqwest::Method, path: &str) -> Value {
        self.daemon(id, method, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn get(&self, id: &str) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::GET, &format!("/sandboxes/{id}"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, id: &str) -> u16 {
        self.req(reqwest::Method::DELETE, &format!("/sandboxes/{id}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A request to a sandbox's daemon through the proxy.
    pub fn daemon(&self, id: &str, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/api/v1{path}", self.proxy))
            .header("X-Tensorlake-Sandbox-Id", id)
            .bearer(self.key.as_deref())
    }

    /// Runs a command to completion through `processes/run`.
    pub async fn run(&self, id: &str, body: Value) -> RunResult {
        let r = self
            .daemon(id, reqwest::Method::POST, "/processes/run")
            .header("Accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .unwrap();
        if !r.status().is_success() {
            let status = r.status();
            panic!(
                "run {body}: {status} {}",
                r.text().await.unwrap_or_default()
            );
        }
        let mut out = RunResult::default();
        let mut buf = String::new();
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(i) = buf.find("\n\n") {
                let event: String = buf.drain(..i + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        let v: Value = serde_json::from_str(data.trim()).unwrap();
                        out.events.push(v);
                    }
                }
            }
        }
        for e in &out.events {
            if let Some(line) = e.get("line").and_then(Value::as_str) {
                if e["stream"] == "stderr" {
                    out.stderr.push_str(line);
                    out.stderr.push('\n');
                } else {
                    out.stdout.push_str(line);
                    out.stdout.push('\n');
                }
            } else if e.get("reason").is_some() {
                out.exit = e.clone();
            }
        }
        out
    }

    /// A POST with a JSON body: its status and JSON answer (`null` if none).
    /// Suspends sandbox `name` (id or name), waiting until it is `suspended`.
    pub async fn suspend(&self, name: &str) {
        let (code, v) = self
            .post_status(
                &format!("/sandboxes/{name}/suspend?wait_ms=30000"),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(
            (code, v["status"].as_str()),
            (200, Some("suspended")),
            "{v}"
        );
    }

    pub async fn post_status(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Takes a snapshot of sandbox `id` (id or name) and waits until it is
    /// stored (`completed`); returns its info.
    pub async fn snapshot(&self, id: &str, kind: &str) -> Value {
        let sid = self.start_snapshot(id, kind).await;
        self.wait_snapshot(&sid, &["completed"]).await
    }

    /// Asks for a snapshot of sandbox `id` and returns its id at once,
    /// while it is still `in_progress`.
    pub async fn start_snapshot(&self, id: &str, kind: &str) -> String {
        let (code, v) = self
            .post_status(
                &format!("/sandboxes/{id}/snapshot"),
                json!({"snapshot_type": kind}),
            )
            .await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["status"], "in_progress", "{v}");
        v["snapshot_id"].as_str().unwrap().to_string()
    }

    /// Waits until snapshot `sid` is in one of `want` (panics on `failed`
    /// unless wanted, or after two minutes); returns its info.
    pub async fn wait_snapshot(&self, sid: &str, want: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self
                .api_json(reqwest::Method::GET, &format!("/snapshots/{sid}"))
                .await;
            let st = v["status"].as_str().unwrap_or("").to_string();
            if want.contains(&st.as_str()) {
                return v;
            }
            assert!(st != "failed" || want.contains(&"failed"), "{v}");
            assert!(Instant::now() < deadline, "snapshot stuck: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until sandbox `id` is `want`, up to `limit`; returns its info.
    pub async fn wait_status(&self, id: &str, want: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (_, v) = self.get(id).await;
            if v["status"] == want {
                return v;
            }
            assert!(Instant::now() < deadline, "{id} never became {want}: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `sh -c SCRIPT` in the sandbox; panics unless it exits 0; returns stdout.
    pub async fn sh(&self, id: &str, script: &str) -> String {
        let r = self
            .run(id, json!({"command": "sh", "args": ["-c", script]}))
            .await;
        assert_eq!(r.exit["exit_code"], 0, "`{script}` failed: {r:?}");
        r.stdout
    }

    /// The `sbx` CLI pointed at this server.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(sbx_bin());
        c.env("SBX_API_URL", &self.api);
        match &self.key {
            Some(k) => c.env("SBX_API_KEY", k),
            None => c.env_remove("SBX_API_KEY"),
        };
        c
    }

    /// Everything this server's sandboxes hold on the host.
    pub fn host_leftovers(&self) -> Vec<String> {
        leftovers(&self.data_dir)
    }

    /// Terminates every sandbox and waits until the host holds nothing of them.
    pub async fn cleanup(&self) {
        // Pools first: their warm sandboxes are not listed as sandboxes.
        let r = self
            .req(reqwest::Method::GET, "/sandbox-pools")
            .send()
            .await;
        if let Ok(r) = r {
            if let Ok(v) = r.json::<Value>().await {
                for p in v["pools"].as_array().cloned().unwrap_or_default() {
                    let path = format!("/sandbox-pools/{}", p["id"].as_str().unwrap_or_default());
                    let _ = self.req(reqwest::Method::DELETE, &path).send().await;
                }
            }
        }
        let r = self.req(reqwest::Method::GET, "/sandboxes").send().await;
        if let Ok(r) = r {
            if let Ok(v) = r.json::<Value>().await {
                for s in v["sandboxes"].as_array().cloned().unwrap_or_default() {
                    let _ = self.delete(s["sandbox_id"].as_str().unwrap()).await;
                }
            }
        }
        wait_until(Duration::from_secs(60), || self.host_leftovers().is_empty()).await;
    }
}

impl Drop for Server {
    /// A test that failed half-way leaves sandboxes behind (they outlive the
    /// server by design): remove them through the server, then stop it.
    fn drop(&mut self) {
        if !self.host_leftovers().is_empty() {
            let me = Server {
                child: self.child.take(),
                data_dir: self.data_dir.clone(),
                api: self.api.clone(),
                proxy: self.proxy.clone(),
                api_port: self.api_port,
                proxy_port: self.proxy_port,
                key: self.key.clone(),
                http: reqwest::Client::new(),
                cgroup_parent: self.cgroup_parent.clone(),
                command: self.command.clone(),
                args: self.args.clone(),
                env: self.env.clone(),
                log: self.log.clone(),
                netns: self.netns.clone(),
                wait_ready: self.wait_ready,
                _tmp: None,
            };
            let me = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut me = me;
                rt.block_on(async {
                    if me
                        .child
                        .as_mut()
                        .map(|c| c.try_wait().ok().flatten().is_some())
                        .unwrap_or(true)
                    {
                        me.spawn().await;
                    }
                    me.cleanup().await;
                });
                me.stop();
                me
            })
            .join();
            if let Ok(mut me) = me {
                me.child = None;
            }
        }
        self.stop();
        // The server removes its cgroup parent at a clean stop; one a
        // failed test left (sandboxes it could not stop) goes here.
        for d in cgroup_dirs(&self.cgroup_parent) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// What a sandbox of `data_dir` still holds on the host: sandbox dirs,
/// mounts, netns named after them, runsc containers.
pub fn leftovers(data_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let sandboxes = data_dir.join("sandboxes");
    if let Ok(rd) = std::fs::read_dir(&sandboxes) {
        for e in rd.flatten() {
            found.push(format!("dir {}", e.path().display()));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mountinfo.lines() {
        if let Some(mp) = l.split(' ').nth(4) {
            if Path::new(mp).starts_with(&sandboxes) {
                found.push(format!("mount {mp}"));
            }
        }
    }
    let runsc_root = data_dir.join("runsc");
    if let Ok(out) = Command::new("runsc")
        .arg(format!("--root={}", runsc_root.display()))
        .args(["list", "-quiet"])
        .output()
    {
        for id in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
        {
            found.push(format!("runsc container {id}"));
            if let Ok(ns) = Command::new("ip").args(["netns", "list"]).output() {
                if String::from_utf8_lossy(&ns.stdout).contains(&format!("sbx-{id}")) {
                    found.push(format!("netns sbx-{id}"));
                }
            }
        }
    }
    found
}

/// The directories of cgroup parent `name` that exist, in any hierarchy.
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let p = e.path().join(name);
            if p.is_dir() {
                found.push(p);
            }
        }
    }
    let v2 = Path::new("/sys/fs/cgroup").join(name);
    if v2.is_dir() && !found.contains(&v2) {
        found.push(v2);
    }
    found
}

/// The `Cpus_allowed_list` of a host process, and whether it is runsc's
/// gofer; `None` for a process gone since it was listed.
fn cpus_and_role(pid: &str) -> Option<(String, bool)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let cpus = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim()
        .to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let gofer = cmdline.split(|b| *b == 0).any(|a| a == b"gofer");
    Some((cpus, gofer))
}

/// The sandbox's address: runsc takes it off the netns interface, so read
/// the host end of the veth pair (`sbx{n}h`, .1 of the /30) and add one.
pub fn sandbox_ip(id: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &format!("sbx-{id}"), "-o", "link", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let inner = text
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap().to_string())
        .find(|n| n.starts_with("sbx") && n.ends_with('c'))
        .unwrap_or_else(|| panic!("no veth in netns of {id}: {text}"));
    let host_if = format!("{}h", inner.trim_end_matches('c'));
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &host_if])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let cidr = text
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no address on {host_if}: {text}"));
    let mut octets: Vec<u8> = cidr
        .split('/')
        .next()
        .unwrap()
        .split('.')
        .map(|x| x.parse().unwrap())
        .collect();
    octets[3] += 1;
    format!("{}.{}.{}.{}", octets[0], octets[1], octets[2], octets[3])
}

/// The network namespaces of these sandbox ids that still exist.
pub fn netns_of(ids: &[String]) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    ids.iter()
        .filter(|id| text.contains(&format!("sbx-{id}")))
        .cloned()
        .collect()
}

/// Polls `cond` until true; panics after `limit`.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Default)]
pub struct RunResult {
    pub events: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
    pub exit: Value,
}

/// Adds `Authorization: Bearer` when a key is set.
pub trait Bearer {
    fn bearer(self, key: Option<&str>) -> Self;
}

impl Bearer for reqwest::RequestBuilder {
    fn bearer(self, key: Option<&str>) -> Self {
        match key {
            Some(k) => self.bearer_auth(k),
            None => self,
        }
    }
}
