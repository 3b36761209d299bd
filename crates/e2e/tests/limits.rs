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
    let mem: u64 = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/sbx/{id}/memory.limit_in_bytes"
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert!((1024 << 20..=2048 << 20).contains(&mem), "{mem}");
    s.cleanup().await;
}

#[tokio::test]
async fn cpu_quota_follows_the_request() {
    let s = Server::start().await;
    let id = s
        .create(json!({"resources": {"cpus": 0.5, "memory_mb": 1024}}))
        .await;
    let quota =
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/sbx/{id}/cpu.cfs_quota_us")).unwrap();
    let period =
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/sbx/{id}/cpu.cfs_period_us")).unwrap();
    assert_eq!(
        quota.trim().parse::<u64>().unwrap() * 2,
        period.trim().parse::<u64>().unwrap()
    );
    assert_eq!(s.get(&id).await.1["resources"]["cpus"], 0.5);
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

/// A stand-in "outside" host in a network namespace of the test's own, on
/// an address of the benchmarking range 198.18.0.0/15, with a route to it
/// from the host. Removed on drop; no packet leaves the machine.
struct OutsideHost {
    netns: String,
    host_if: String,
    addr: String,
    server: Option<std::process::Child>,
}

impl OutsideHost {
    fn start(tag: u8) -> OutsideHost {
        let netns = format!("test-outside{tag}");
        let host_if = format!("tout{tag}");
        let peer = format!("tpeer{tag}");
        let host_ip = format!("198.18.{tag}.1");
        let addr = format!("198.18.{tag}.2");
        let sh = |args: &[&str]| {
            let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
            assert!(st.success(), "{args:?}");
        };
        let _ = Command::new("ip").args(["netns", "del", &netns]).status();
        sh(&["ip", "netns", "add", &netns]);
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer, "netns", &netns,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&[
            "ip",
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            &peer,
        ]);
        sh(&["ip", "-n", &netns, "link", "set", &peer, "up"]);
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        let server = Command::new("ip")
            .args(["netns", "exec", &netns, "python3", "-c"])
            .arg(format!(
                "import http.server\nclass H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        self.send_response(200); self.end_headers(); self.wfile.write(b'outside-ok')\n    def log_message(self, *a): pass\nhttp.server.HTTPServer(('{addr}', 8080), H).serve_forever()\n"
            ))
            .spawn()
            .unwrap();
        OutsideHost {
            netns,
            host_if,
            addr,
            server: Some(server),
        }
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

#[tokio::test]
async fn egress_goes_out_through_nat_unless_internet_access_is_off() {
    let outside = OutsideHost::start(7);
    let s = Server::start().await;
    let open = s.create(json!({})).await;
    let closed = s
        .create(json!({"network": {"allow_internet_access": false}}))
        .await;
    let fetch = format!(
        "import urllib.request, time\nfor i in range(20):\n    try:\n        print(urllib.request.urlopen('http://{}:8080/', timeout=1).read().decode()); break\n    except Exception as e:\n        err = e; time.sleep(0.1)\nelse:\n    print('blocked')\n",
        outside.addr
    );
    let r = s
        .run(&open, json!({"command": "python3", "args": ["-c", fetch]}))
        .await;
    assert_eq!(r.stdout, "outside-ok\n", "{r:?}");
    let once = fetch.replace("range(20)", "range(1)");
    let r = s
        .run(&closed, json!({"command": "python3", "args": ["-c", once]}))
        .await;
    assert_eq!(r.stdout, "blocked\n", "{r:?}");
    assert_eq!(
        s.get(&closed).await.1["network_policy"]["allow_internet_access"],
        false
    );
    s.cleanup().await;
    drop(outside);
}
