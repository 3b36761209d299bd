//! Resource limits and network isolation of real sandboxes.

use reqwest::Method;
use sbx_e2e::*;
use serde_json::{json, Value};
use std::process::Command;

#[tokio::test]
async fn a_process_over_the_memory_limit_is_oom_killed_and_the_sandbox_lives() {
    let s = Server::start().await;
    let id = s
        .create(json!({"resources": {"cpus": 1, "memory_mb": 1024}}))
        .await;
    let hog = "x=[]\nwhile True:\n    x.append(b'a' * 8_000_000)\n";
    let r = s
        .run(&id, json!({"command": "python3", "args": ["-c", hog]}))
        .await;
    assert_eq!(r.exit["reason"], "oom_killed", "{r:?}");
    assert_eq!(r.exit["oom_killed"], true);
    assert_eq!(s.get(&id).await.1["status"], "running");
    assert_eq!(s.sh(&id, "echo alive").await, "alive\n");
    // The host enforces limits too: cgroup memory and CPU quota.
    let mem: u64 = std::fs::read_to_string(s.cgroup("memory", &id).join("memory.limit_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1024 << 20..=2048 << 20).contains(&mem), "{mem}");
    s.cleanup().await;
}

#[tokio::test]
async fn cpu_quota_follows_the_request_and_the_sandbox_runs_as_batch() {
    let s = Server::start().await;
    let id = s
        .create(json!({"resources": {"cpus": 0.5, "memory_mb": 1024}}))
        .await;
    let quota = std::fs::read_to_string(s.cgroup("cpu", &id).join("cpu.cfs_quota_us")).unwrap();
    let period = std::fs::read_to_string(s.cgroup("cpu", &id).join("cpu.cfs_period_us")).unwrap();
    assert_eq!(
        quota.trim().parse::<u64>().unwrap() * 2,
        period.trim().parse::<u64>().unwrap()
    );
    assert_eq!(s.get(&id).await.1["resources"]["cpus"], 0.5);
    // Every host process of the sandbox, the stubs of processes started
    // after it booted included, runs under SCHED_BATCH (see
    // runtime::gvisor::batch_scheduling).
    s.sh(&id, "true").await;
    let procs = std::fs::read_to_string(s.cgroup("cpu", &id).join("cgroup.procs")).unwrap();
    let pids: Vec<&str> = procs.lines().collect();
    assert!(pids.len() >= 2, "sentry and stubs: {pids:?}");
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // gone since the listing
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        assert_eq!(fields[38], "3", "SCHED_BATCH for {pid}: {stat}");
    }
    s.cleanup().await;
}

/// The CPUs of a cpuset list such as `0-2,5`.
fn cpu_list(list: &str) -> Vec<usize> {
    list.split(',')
        .filter(|p| !p.is_empty())
        .flat_map(|p| match p.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![p.parse().unwrap()],
        })
        .collect()
}

#[tokio::test]
async fn small_sandboxes_are_pinned_one_cpu_each_and_their_gofer_is_not() {
    let host_cpus = std::thread::available_parallelism().unwrap().get();
    if host_cpus < 2 {
        eprintln!("one host CPU: nothing to pin");
        return;
    }
    let by_affinity = sbx_runtime::pinning::affinity_survives_cpusets();
    let s = Server::start().await;
    let a = s.create(json!({"resources": {"cpus": 1}})).await;
    let b = s.create(json!({"resources": {"cpus": 0.5}})).await;
    let big = s
        .create(json!({"resources": {"cpus": 2, "memory_mb": 2048}}))
        .await;
    assert_eq!(s.sh(&big, "nproc").await.trim(), host_cpus.to_string());
    let mut pinned_to = Vec::new();
    for id in [&a, &b] {
        let roles = s.processes_cpus(id);
        // The sentry and its stubs run on one CPU...
        let cpus: Vec<&String> = roles.iter().filter(|r| !r.1).map(|r| &r.0).collect();
        assert!(cpus.len() >= 2, "sentry and stubs of {id}: {roles:?}");
        let cpu = cpus[0].clone();
        assert!(cpu.parse::<usize>().is_ok(), "one CPU: {cpu}");
        assert!(cpus.iter().all(|c| **c == cpu), "{id}: {roles:?}");
        // ...which its cgroup's cpuset holds, beside a second CPU when the
        // pin is an affinity (the sentry then has two Go processors, and
        // the sandbox sees the cpuset's CPUs)...
        let cpuset = s.cpuset(id);
        let in_cpuset = cpu_list(&cpuset);
        assert!(
            in_cpuset.contains(&cpu.parse().unwrap()),
            "{cpu} in {cpuset}"
        );
        assert_eq!(in_cpuset.len(), if by_affinity { 2 } else { 1 }, "{cpuset}");
        assert_eq!(s.sh(id, "nproc").await.trim(), in_cpuset.len().to_string());
        // ...while its gofer, still in its cpu and memory cgroups, may run
        // on more.
        let gofers: Vec<&String> = roles.iter().filter(|r| r.1).map(|r| &r.0).collect();
        assert_eq!(gofers.len(), 1, "{id}: {roles:?}");
        assert_ne!(gofers[0], &cpu, "{id}");
        pinned_to.push(cpu);
    }
    assert_ne!(
        pinned_to[0], pinned_to[1],
        "two sandboxes share a CPU while another is free"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn writing_past_the_disk_limit_fails_with_enospc() {
    let s = Server::start().await;
    let id = s.create(json!({"resources": {"disk_mb": 200}})).await;
    let r = s
        .run(&id, json!({"command": "sh", "args": ["-c", "dd if=/dev/zero of=/root/fill bs=1M count=400 conv=fsync"]}))
        .await;
    assert_ne!(r.exit["exit_code"], 0, "{r:?}");
    assert!(r.stderr.contains("No space left on device"), "{r:?}");
    // The sandbox goes on; freeing the space makes writes work again.
    assert_eq!(
        s.sh(
            &id,
            "rm /root/fill && echo ok > /root/small && cat /root/small"
        )
        .await,
        "ok\n"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn sandboxes_cannot_reach_each_other_or_the_host() {
    let s = Server::start().await;
    let a = s.create(json!({})).await;
    let b = s.create(json!({})).await;
    let b_ip = sandbox_ip(&b);
    // A service on the host, on every address: sandboxes must not reach it.
    let host_srv = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_srv.local_addr().unwrap().port();
    let a_ip = sandbox_ip(&a);
    let host_side: Vec<u8> = a_ip.split('.').map(|x| x.parse().unwrap()).collect();
    let gateway = format!(
        "{}.{}.{}.{}",
        host_side[0],
        host_side[1],
        host_side[2],
        host_side[3] - 1
    );
    let probe = |ip: &str, port: u16| {
        format!(
            "import socket\ns=socket.socket(); s.settimeout(2)\ntry:\n    s.connect(('{ip}', {port})); print('open')\nexcept Exception as e:\n    print('blocked')\n"
        )
    };
    // Sanity: B's agent answers from the host, so "blocked" below means isolation.
    let r = s
        .http
        .get(format!("http://{b_ip}:9501/api/v1/health"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    for (ip, port) in [
        (b_ip.as_str(), 9501),
        (gateway.as_str(), host_port),
        (gateway.as_str(), s.api_port),
    ] {
        let r = s
            .run(
                &a,
                json!({"command": "python3", "args": ["-c", probe(ip, port)]}),
            )
            .await;
        assert_eq!(
            r.stdout, "blocked\n",
            "{ip}:{port} reachable from a sandbox"
        );
    }
    // Its own daemon is reachable from inside (loopback).
    let r = s
        .run(
            &a,
            json!({"command": "python3", "args": ["-c", probe("127.0.0.1", 9501)]}),
        )
        .await;
    assert_eq!(r.stdout, "open\n");
    drop(host_srv);
    s.cleanup().await;
}

#[tokio::test]
async fn entrypoint_runs_as_a_managed_process() {
    let s = Server::start().await;
    let id = s
        .create(json!({"entrypoint": ["sh", "-c", "echo started > /tmp/ep; exec sleep 1000"]}))
        .await;
    let mut found = false;
    for _ in 0..50 {
        let list: Value = s.daemon_json(&id, Method::GET, "/processes").await;
        if list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["command"] == "sh" && p["status"] == "running")
        {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "entrypoint not listed");
    assert_eq!(s.sh(&id, "cat /tmp/ep").await, "started\n");
    assert_eq!(
        s.get(&id).await.1["entrypoint"],
        json!(["sh", "-c", "echo started > /tmp/ep; exec sleep 1000"])
    );
    s.cleanup().await;
}

/// A stand-in "outside" host in a network namespace of the test's own, with
/// two addresses of the benchmarking range 198.18.0.0/15 on a /24 linked to
/// the host, each serving HTTP on port 8080. Removed on drop, with its route;
/// no packet leaves the machine.
struct OutsideHost {
    netns: String,
    host_if: String,
    addrs: [String; 2],
    server: Option<std::process::Child>,
}

impl OutsideHost {
    fn start(tag: u8) -> OutsideHost {
        let netns = format!("test-outside{tag}");
        let host_if = format!("tout{tag}");
        let peer = format!("tpeer{tag}");
        let addrs = [format!("198.18.{tag}.2"), format!("198.18.{tag}.3")];
        let sh = |args: &[&str]| {
            let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
            assert!(st.success(), "{args:?}");
        };
        let _ = Command::new("ip").args(["netns", "del", &netns]).status();
        sh(&["ip", "netns", "add", &netns]);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer, "netns", &netns,
        ]);
        let host_ip = format!("198.18.{tag}.1/24");
        sh(&["ip", "addr", "add", &host_ip, "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        for a in &addrs {
            let a = format!("{a}/24");
            sh(&["ip", "-n", &netns, "addr", "add", &a, "dev", &peer]);
        }
        sh(&["ip", "-n", &netns, "link", "set", &peer, "up"]);
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        let server = Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-c"])
            .arg(
                "import http.server\nclass H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        self.send_response(200); self.end_headers(); self.wfile.write(b'outside-ok')\n    def log_message(self, *a): pass\nhttp.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\n",
            )
            .spawn()
            .unwrap();
        let outside = OutsideHost {
            netns,
            host_if,
            addrs,
            server: Some(server),
        };
        // Both addresses answer the host before any sandbox asks.
        for a in &outside.addrs {
            let addr: std::net::SocketAddr = format!("{a}:8080").parse().unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1))
                .is_err()
            {
                assert!(std::time::Instant::now() < deadline, "{a} never answered");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        outside
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Which of `addrs` a sandbox reaches over HTTP: "ok" or "blocked" each.
async fn reach(s: &Server, id: &str, addrs: &[&str]) -> Vec<String> {
    let script = format!(
        "import urllib.request\nfor a in {addrs:?}:\n    try:\n        urllib.request.urlopen(f'http://{{a}}:8080/', timeout=2).read(); print('ok')\n    except Exception:\n        print('blocked')\n"
    );
    let r = s
        .run(id, json!({"command": "python3", "args": ["-c", script]}))
        .await;
    assert_eq!(r.exit["exit_code"], 0, "{r:?}");
    r.stdout.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn egress_follows_each_sandbox_policy() {
    let outside = OutsideHost::start(7);
    let [a, b] = [outside.addrs[0].as_str(), outside.addrs[1].as_str()];
    let s = Server::start().await;
    // Each policy beside which of the two outside addresses it reaches.
    let cases = [
        (json!({}), ["ok", "ok"]),
        (
            json!({"allow_internet_access": false}),
            ["blocked", "blocked"],
        ),
        (json!({"deny_out": [b]}), ["ok", "blocked"]),
        (
            json!({"allow_internet_access": false, "allow_out": [a]}),
            ["ok", "blocked"],
        ),
        (
            json!({"deny_out": ["0.0.0.0/0"], "allow_out": [format!("{b}/32")]}),
            ["blocked", "ok"],
        ),
        // An allow list cannot open what no sandbox may reach.
        (json!({"allow_out": ["10.0.0.0/8"]}), ["ok", "ok"]),
    ];
    let mut ids = Vec::new();
    for (policy, _) in &cases {
        ids.push(s.create(json!({"network": policy})).await);
    }
    let targets = [a, b];
    let reached = futures::future::join_all(ids.iter().map(|id| reach(&s, id, &targets))).await;
    for ((policy, want), got) in cases.iter().zip(&reached) {
        assert_eq!(got, want, "policy {policy}");
    }
    let probe = format!(
        "import socket\ns=socket.socket(); s.settimeout(2)\ntry:\n    s.connect(('{}', 9501)); print('open')\nexcept Exception:\n    print('blocked')\n",
        sandbox_ip(&ids[0])
    );
    let r = s
        .run(
            &ids[5],
            json!({"command": "python3", "args": ["-c", probe]}),
        )
        .await;
    assert_eq!(r.stdout, "blocked\n", "allow_out reached another sandbox");
    let (_, info) = s.get(&ids[3]).await;
    assert_eq!(info["network_policy"]["allow_internet_access"], false);
    assert_eq!(info["network_policy"]["allow_out"], json!([a]));

    // The policy outlives a suspend and resume.
    let named = s
        .create(json!({"name": "walled", "network": {"deny_out": [a]}}))
        .await;
    assert_eq!(reach(&s, &named, &[a, b]).await, ["blocked", "ok"]);
    for step in ["suspend", "resume"] {
        let r = s
            .req(
                Method::POST,
                &format!("/sandboxes/walled/{step}?wait_ms=30000"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{step}");
    }
    assert_eq!(reach(&s, &named, &[a, b]).await, ["blocked", "ok"]);

    // Bad entries are refused and create nothing.
    let before = s.api_json(Method::GET, "/sandboxes").await["sandboxes"]
        .as_array()
        .unwrap()
        .len();
    for bad in ["a..b", "198.18.0.0/40", "2001:db8::1"] {
        let r = s
            .req(Method::POST, "/sandboxes")
            .json(&json!({"network": {"deny_out": [bad]}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert!(
            e["message"].as_str().unwrap().contains("network.deny_out"),
            "{e}"
        );
    }
    let after = s.api_json(Method::GET, "/sandboxes").await["sandboxes"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);

    // Each narrowing policy has a chain, which goes with its sandbox (the
    // first and last policies narrow nothing and have none).
    let chains: Vec<String> = std::iter::once(&named)
        .chain(&ids[1..5])
        .map(|id| {
            let o: Vec<u32> = sandbox_ip(id)
                .split('.')
                .map(|x| x.parse().unwrap())
                .collect();
            format!("SBX-N{}", (o[2] * 256 + o[3]) / 4)
        })
        .collect();
    let rules = || {
        let out = Command::new("iptables")
            .args(["-w", "-S"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = rules();
    assert!(
        chains.iter().all(|c| before.contains(&format!("-N {c}\n"))),
        "{before}"
    );
    s.cleanup().await;
    let after = rules();
    for c in &chains {
        assert!(!after.contains(&format!("{c}\n")), "{c} left: {after}");
    }
    drop(outside);
}

/// Starts, in the background, a connection from sandbox `id` to `addr`
/// port 8080 that stays open until `/tmp/go` appears, then asks for a page
/// on it and writes what happened to `/tmp/held-{tag}`: "open" (an answer),
/// or the error that ended it.
async fn hold_connection(s: &Server, id: &str, addr: &str, tag: &str) {
    let script = format!(
        "import os, socket, time\ns = socket.create_connection(('{addr}', 8080), timeout=5)\nopen('/tmp/connected-{tag}', 'w').write('1')\nwhile not os.path.exists('/tmp/go'):\n    time.sleep(0.05)\ntry:\n    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n    s.settimeout(3)\n    r = 'open' if s.recv(100) else 'closed'\nexcept Exception as e:\n    r = type(e).__name__\nopen('/tmp/held-{tag}', 'w').write(r)\n"
    );
    let r = s
        .daemon(id, Method::POST, "/processes")
        .json(&json!({"command": "python3", "args": ["-c", script]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    for _ in 0..100 {
        if s.sh(id, &format!("cat /tmp/connected-{tag} 2>/dev/null || true"))
            .await
            .trim()
            == "1"
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the sandbox never connected to {addr}");
}

/// PATCH of `network` on sandbox `id`: its status and answer.
async fn patch_network(s: &Server, id: &str, network: Value) -> (u16, Value) {
    let r = s
        .req(Method::PATCH, &format!("/sandboxes/{id}"))
        .json(&json!({ "network": network }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The host's tracked connections from `src` to `dst`.
fn tracked(src: &str, dst: &str) -> usize {
    let out = Command::new("conntrack")
        .args(["-L", "-f", "ipv4", "-s", src, "-d", dst])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test]
async fn a_network_policy_update_applies_at_once_and_closes_what_it_forbids() {
    let outside = OutsideHost::start(8);
    let [a, b] = [outside.addrs[0].as_str(), outside.addrs[1].as_str()];
    let s = Server::start().await;
    let id = s.create(json!({"name": "patched"})).await;
    assert_eq!(reach(&s, &id, &[a, b]).await, ["ok", "ok"]);

    // Two connections open before the update: the one to the address the
    // new policy forbids is closed, the other one lives on.
    hold_connection(&s, &id, a, "a").await;
    hold_connection(&s, &id, b, "b").await;
    let ip = sandbox_ip(&id);
    assert!(tracked(&ip, a) >= 1);
    let (code, info) = patch_network(&s, &id, json!({"deny_out": [a]})).await;
    assert_eq!(code, 200, "{info}");
    assert_eq!(info["network_policy"]["deny_out"], json!([a]));
    assert_eq!(info["status"], "running");
    assert_eq!(tracked(&ip, a), 0, "the forbidden connection is forgotten");
    assert!(tracked(&ip, b) >= 1, "the allowed one is kept");
    s.sh(&id, "touch /tmp/go").await;
    let mut held = String::new();
    for _ in 0..100 {
        held = s
            .sh(
                &id,
                // Either file may not be written yet: polled until both are.
                "cat /tmp/held-a 2>/dev/null; echo; cat /tmp/held-b 2>/dev/null; true",
            )
            .await;
        // Two lines, neither empty: a missing second file leaves one line.
        if held.lines().count() == 2 && held.lines().all(|l| !l.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(held, "ConnectionResetError\nopen\n");
    assert_eq!(reach(&s, &id, &[a, b]).await, ["blocked", "ok"]);

    // No internet at all, then back to the default policy.
    let (code, info) = patch_network(&s, &id, json!({"allow_internet_access": false})).await;
    assert_eq!(code, 200, "{info}");
    assert_eq!(info["network_policy"]["allow_internet_access"], false);
    assert_eq!(reach(&s, &id, &[a, b]).await, ["blocked", "blocked"]);
    let (code, info) = patch_network(&s, &id, Value::Null).await;
    assert_eq!(code, 200, "{info}");
    assert_eq!(info["network_policy"]["allow_internet_access"], true);
    assert_eq!(info["network_policy"]["deny_out"], json!([]));
    assert_eq!(reach(&s, &id, &[a, b]).await, ["ok", "ok"]);

    // A bad policy is refused and changes nothing.
    let (code, e) = patch_network(&s, &id, json!({"deny_out": ["198.18.0.0/40"]})).await;
    assert_eq!(code, 400, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("network.deny_out"),
        "{e}"
    );
    assert_eq!(reach(&s, &id, &[a, b]).await, ["ok", "ok"]);

    // Changed while suspended: the resumed sandbox has the new policy.
    let step = |verb: &'static str| {
        let req = s.req(
            Method::POST,
            &format!("/sandboxes/patched/{verb}?wait_ms=30000"),
        );
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200, "{verb}");
        }
    };
    step("suspend").await;
    let (code, info) = patch_network(
        &s,
        "patched",
        json!({"allow_internet_access": false, "allow_out": [b]}),
    )
    .await;
    assert_eq!(code, 200, "{info}");
    assert_eq!(info["status"], "suspended");
    step("resume").await;
    assert_eq!(reach(&s, &id, &[a, b]).await, ["blocked", "ok"]);

    // A server restart keeps it, and so does a restore of a snapshot.
    let mut s = s;
    s.stop();
    s.respawn().await;
    assert_eq!(reach(&s, &id, &[a, b]).await, ["blocked", "ok"]);
    let snap = s.snapshot(&id, "memory").await;
    let restored = s.create(json!({"snapshot_id": snap["snapshot_id"]})).await;
    assert_eq!(
        s.get(&restored).await.1["network_policy"]["allow_out"],
        json!([b])
    );
    assert_eq!(reach(&s, &restored, &[a, b]).await, ["blocked", "ok"]);
    s.cleanup().await;
    drop(outside);
}

/// A stand-in resolver in the outside host's netns (port 53 of its
/// addresses) for the test's made-up names: each `(name, address)` an A
/// record, anything else NXDOMAIN. Killed on drop.
struct StandInResolver(std::process::Child);

impl StandInResolver {
    fn start(netns: &str, names: &[(&str, &str)]) -> StandInResolver {
        let table: Vec<String> = names.iter().map(|(n, a)| format!("{n:?}: {a:?}")).collect();
        let script = format!(
            r#"import socket, struct
names = {{{}}}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
while True:
    q, peer = s.recvfrom(512)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode().lower()); i += 1 + q[i]
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    addr = names.get(".".join(labels))
    r = bytearray(q[:i + 5])
    r[2:4] = b"\x81\x80" if addr else b"\x81\x83"
    r[4:12] = b"\x00\x01\x00\x00\x00\x00\x00\x00"
    if addr and qtype == 1:
        r[7] = 1
        r += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(addr)
    s.sendto(bytes(r), peer)
"#,
            table.join(", ")
        );
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-c", &script])
            .spawn()
            .unwrap();
        StandInResolver(child)
    }
}

impl Drop for StandInResolver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a sandbox gets for each name: its address and whether HTTP on
/// port 8080 answers, or "unresolved".
async fn lookups(s: &Server, id: &str, names: &[&str]) -> Vec<String> {
    let script = format!(
        "import socket, urllib.request\nfor n in {names:?}:\n    try:\n        a = socket.gethostbyname(n)\n    except Exception:\n        print('unresolved'); continue\n    try:\n        urllib.request.urlopen(f'http://{{n}}:8080/', timeout=2).read(); print(a, 'ok')\n    except Exception:\n        print(a, 'blocked')\n"
    );
    let r = s
        .run(id, json!({"command": "python3", "args": ["-c", script]}))
        .await;
    assert_eq!(r.exit["exit_code"], 0, "{r:?}");
    r.stdout.lines().map(str::to_string).collect()
}

/// Host names in a policy: a sandbox's lookups go to its DNS guard, which
/// answers only what the policy allows and opens the answered addresses.
/// Resolved by a stand-in resolver on the test's own outside link.
#[tokio::test]
async fn egress_by_host_name_resolves_and_opens_only_what_the_policy_names() {
    let outside = OutsideHost::start(9);
    let [a, b] = [outside.addrs[0].clone(), outside.addrs[1].clone()];
    // The resolver answers on the outside host's first address.
    let resolver_at = a.clone();
    let _resolver = StandInResolver::start(
        &outside.netns,
        &[
            ("allowed.test", &a),
            ("other.test", &b),
            ("x.blocked.test", &b),
        ],
    );
    let s = Server::start_with(Options {
        args: vec!["--sandbox-dns-upstream".into(), format!("{resolver_at}:53")],
        ..Options::default()
    })
    .await;
    // No internet but one name: only its address opens.
    let walled = s
        .create(json!({"network": {"allow_internet_access": false, "allow_out": ["allowed.test"]}}))
        .await;
    assert_eq!(
        lookups(&s, &walled, &["allowed.test", "other.test"]).await,
        [format!("{a} ok"), "unresolved".to_string()]
    );
    assert_eq!(
        reach(&s, &walled, &[&b]).await,
        ["blocked"],
        "only what was resolved opens"
    );
    // Internet on, a domain denied: its names do not resolve.
    let open = s
        .create(json!({"network": {"deny_out": ["*.blocked.test"]}}))
        .await;
    assert_eq!(
        lookups(&s, &open, &["x.blocked.test", "other.test"]).await,
        ["unresolved".to_string(), format!("{b} ok")]
    );
    let (_, info) = s.get(&walled).await;
    assert_eq!(
        info["network_policy"]["allow_out"],
        json!(["allowed.test"]),
        "{info}"
    );
    // A live update to a policy naming another host: the guard follows.
    let (code, v) = patch_network(
        &s,
        &walled,
        json!({"allow_internet_access": false, "allow_out": ["other.test"]}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        lookups(&s, &walled, &["other.test", "allowed.test"]).await,
        [format!("{b} ok"), "unresolved".to_string()]
    );
    // Bad names are refused.
    for bad in ["a..b", "-x.test", "a.*.test"] {
        let (code, e) = s
            .post_status("/sandboxes", json!({"network": {"allow_out": [bad]}}))
            .await;
        assert_eq!(code, 400, "{bad}: {e}");
    }
    // Each has its redirect to its guard on the host end of its link
    // (.1 of its /30) while it runs, and none once it is gone.
    let redirects = || {
        String::from_utf8(
            Command::new("iptables")
                .args(["-t", "nat", "-S", "SBX-DNS"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    let guards: Vec<String> = [&walled, &open]
        .iter()
        .map(|id| {
            let ip: std::net::Ipv4Addr = sandbox_ip(id).parse().unwrap();
            format!("{}:53", std::net::Ipv4Addr::from(u32::from(ip) - 1))
        })
        .collect();
    for g in &guards {
        assert!(redirects().contains(g.as_str()), "{g}: {}", redirects());
    }
    s.cleanup().await;
    for g in &guards {
        assert!(!redirects().contains(g.as_str()), "{g}: {}", redirects());
    }
}

/// PATCH of `resources` (a live resize) on sandbox `id`: its status and answer.
async fn patch_resources(s: &Server, id: &str, resources: Value) -> (u16, Value) {
    let r = s
        .req(Method::PATCH, &format!("/sandboxes/{id}"))
        .json(&json!({ "resources": resources }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A number in a cgroup file of sandbox `id`.
fn cgroup_number(s: &Server, hierarchy: &str, id: &str, file: &str) -> u64 {
    std::fs::read_to_string(s.cgroup(hierarchy, id).join(file))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The memory sandbox `id`'s cgroup holds, less its inactive file cache.
fn memory_in_use_mb(s: &Server, id: &str) -> u64 {
    let usage = cgroup_number(s, "memory", id, "memory.usage_in_bytes");
    let stat = std::fs::read_to_string(s.cgroup("memory", id).join("memory.stat")).unwrap();
    let inactive: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("total_inactive_file "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    (usage - inactive) >> 20
}

#[tokio::test]
async fn resize_memory_at_once_and_refuse_a_shrink_below_use() {
    let s = Server::start().await;
    let id = s
        .create(json!({"resources": {"cpus": 1, "memory_mb": 1024}}))
        .await;
    let limit = |s: &Server| cgroup_number(s, "memory", &id, "memory.limit_in_bytes") >> 20;
    // Above the memory asked for (the agent's per-process OOM acts
    // first), well below the next size.
    let at_launch = limit(&s);
    assert!((1024..2048).contains(&at_launch), "{at_launch}");

    let (code, v) = patch_resources(&s, &id, json!({"memory_mb": 2048})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["resources"]["memory_mb"], 2048);
    assert_eq!(v["resource_resize"]["status"], "succeeded", "{v}");
    assert_eq!(v["resource_resize"]["requested"]["memory_mb"], 2048, "{v}");
    let raised = limit(&s);
    assert!((2048..4096).contains(&raised), "{raised}");
    assert_eq!(s.get(&id).await.1["resources"]["memory_mb"], 2048);
    // More than the old hard limit, held: neither the agent nor the cgroup
    // kills it now.
    let grow = "b = bytearray(1600 << 20)\nprint(len(b) >> 20)\n";
    let r = s
        .run(&id, json!({"command": "python3", "args": ["-c", grow]}))
        .await;
    assert_eq!(r.exit["exit_code"], 0, "{r:?}");
    assert_eq!(r.stdout, "1600\n", "{r:?}");
    // Past the new size, the agent kills the largest process group down
    // to the new size, not the old one: three of 750 MB (2250 MB), one goes.
    let hold = "import time; memhold = b'x' * (750 << 20); time.sleep(600)";
    for n in 0..3 {
        if n == 2 {
            wait_until(std::time::Duration::from_secs(30), || {
                memory_in_use_mb(&s, &id) > 1450
            })
            .await;
        }
        let r = s
            .daemon(&id, Method::POST, "/processes")
            .json(&json!({"command": "python3", "args": ["-c", hold]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let holders = || async {
        s.sh(&id, "pgrep -f 'memhol[d]' | wc -l")
            .await
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let mut left = 3;
    for _ in 0..100 {
        left = holders().await;
        if left < 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(
        (left, holders().await),
        (2, 2),
        "one of three killed, not two"
    );
    s.sh(&id, "pkill -f 'memhol[d]'; true").await;

    // A shrink below what it holds is refused and changes nothing.
    s.sh(
        &id,
        "nohup python3 -c 'import time; b = bytearray(1500 << 20); time.sleep(600)' >/dev/null 2>&1 &",
    )
    .await;
    wait_until(std::time::Duration::from_secs(30), || {
        memory_in_use_mb(&s, &id) > 1500
    })
    .await;
    let (code, v) = patch_resources(&s, &id, json!({"memory_mb": 1024})).await;
    assert_eq!(code, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("holds now"), "{v}");
    assert_eq!(limit(&s), raised);
    assert_eq!(s.get(&id).await.1["resources"]["memory_mb"], 2048);
    // Once it is freed, the shrink goes through.
    s.sh(&id, "pkill -f 'time[.]sleep'; true").await;
    let mut answer = (0, Value::Null);
    for _ in 0..60 {
        answer = patch_resources(&s, &id, json!({"memory_mb": 1024})).await;
        if answer.0 != 409 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(answer.0, 200, "{answer:?}");
    assert_eq!(limit(&s), at_launch);
    // Checked like a create: bounds and memory per CPU.
    let (code, v) = patch_resources(&s, &id, json!({"memory_mb": 1u64 << 40})).await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = patch_resources(&s, &id, json!({"cpus": 2})).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("per CPU"), "{v}");
    s.cleanup().await;
}

#[tokio::test]
async fn resize_cpus_sets_the_quota_and_unpins() {
    let s = Server::start().await;
    let id = s
        .create(json!({"resources": {"cpus": 1, "memory_mb": 2048}}))
        .await;
    let period = cgroup_number(&s, "cpu", &id, "cpu.cfs_period_us");
    assert_eq!(cgroup_number(&s, "cpu", &id, "cpu.cfs_quota_us"), period);
    let (code, v) = patch_resources(&s, &id, json!({"cpus": 2})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["resources"]["cpus"], 2.0);
    assert_eq!(
        cgroup_number(&s, "cpu", &id, "cpu.cfs_quota_us"),
        2 * period
    );
    let host_cpus = std::thread::available_parallelism().unwrap().get();
    if host_cpus >= 2 {
        assert_eq!(
            cpu_list(&s.cpuset(&id)).len(),
            host_cpus,
            "{}",
            s.cpuset(&id)
        );
        assert_eq!(s.pinned_cpu(&id), None, "{:?}", s.processes_cpus(&id));
    }
    assert_eq!(s.sh(&id, "echo alive").await, "alive\n");
    let (code, v) = patch_resources(&s, &id, json!({"cpus": 0.5, "memory_mb": 1024})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        cgroup_number(&s, "cpu", &id, "cpu.cfs_quota_us") * 2,
        period
    );
    assert_eq!(s.get(&id).await.1["resources"]["cpus"], 0.5);
    s.cleanup().await;
}

#[tokio::test]
async fn resize_disk_grows_the_volume_online_and_never_shrinks_it() {
    let s = Server::start().await;
    let id = s.create(json!({"resources": {"disk_mb": 200}})).await;
    let size_mb = |out: String| -> u64 {
        out.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(size_mb(s.sh(&id, "df -m /").await) <= 200);
    let (code, v) = patch_resources(&s, &id, json!({"disk_mb": 700})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["resources"]["disk_mb"], 700);
    let df = s.sh(&id, "df -m /").await;
    assert!(size_mb(df.clone()) > 600, "{df}");
    // More than the old volume held.
    let r = s
        .run(&id, json!({"command": "sh", "args": ["-c", "dd if=/dev/zero of=/root/fill bs=1M count=400 conv=fsync"]}))
        .await;
    assert_eq!(r.exit["exit_code"], 0, "{r:?}");
    // A shrink is refused and changes nothing.
    let (code, v) = patch_resources(&s, &id, json!({"disk_mb": 300})).await;
    assert_eq!(code, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("only grows"), "{v}");
    assert_eq!(s.get(&id).await.1["resources"]["disk_mb"], 700);
    assert!(size_mb(s.sh(&id, "df -m /").await) > 600);
    // A resize goes alone.
    let r = s
        .req(Method::PATCH, &format!("/sandboxes/{id}"))
        .json(&json!({"resources": {"disk_mb": 800}, "name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    s.cleanup().await;
}
