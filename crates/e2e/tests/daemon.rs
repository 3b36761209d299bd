//! The daemon routes of a real sandbox, through the proxy.

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use sbx_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn commands_report_output_exit_codes_env_cwd_and_user() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    let r = s
        .run(
            &id,
            json!({"command": "sh", "args": ["-c", "echo out; echo err >&2; exit 3"]}),
        )
        .await;
    assert_eq!(r.stdout, "out\n");
    assert_eq!(r.stderr, "err\n");
    assert_eq!(r.exit["exit_code"], 3);
    assert_eq!(r.exit["reason"], "exited");
    assert!(
        r.events[0]["pid"].as_i64().unwrap() > 1,
        "first event is the start: {:?}",
        r.events[0]
    );
    let r = s
        .run(&id, json!({"command": "sh", "args": ["-c", "echo $A; pwd"], "env": {"A": "1"}, "working_dir": "/tmp"}))
        .await;
    assert_eq!(r.stdout, "1\n/tmp\n");
    for (user, uid) in [
        (json!("nobody"), "65534\n"),
        (json!("1000:1000"), "1000\n"),
        (json!({"uid": 1234}), "1234\n"),
        (Value::Null, "0\n"),
    ] {
        let r = s
            .run(&id, json!({"command": "id", "args": ["-u"], "user": user}))
            .await;
        assert_eq!(r.stdout, uid, "user {user}");
    }
    // The image has what the issue promises.
    let out = s.sh(&id, "python3 -c 'print(6*7)'; bash -c 'echo $BASH_VERSION' | cut -c1; pip --version | cut -d' ' -f1; ls /etc/ssl/certs | head -1 | wc -l; ls -l / > /dev/null && echo ls-ok").await;
    assert_eq!(out, "42\n5\npip\n1\nls-ok\n");
    // A command that does not exist is the caller's mistake: a 400 that names it.
    let r = s
        .daemon(&id, Method::POST, "/processes/run")
        .json(&json!({"command": "no-such-command"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["message"].as_str().unwrap().contains("no-such-command"),
        "{e}"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn a_command_that_runs_too_long_is_killed_as_timed_out() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    let r = s
        .run(
            &id,
            json!({"command": "sleep", "args": ["30"], "timeout": 1.0}),
        )
        .await;
    assert_eq!(r.exit["reason"], "timed_out", "{r:?}");
    assert_eq!(r.exit["signal"], 9);
    s.cleanup().await;
}

#[tokio::test]
async fn background_process_with_stdin_follow_and_signal() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    let p: Value = s
        .daemon(&id, Method::POST, "/processes")
        .json(&json!({"command": "sh", "args": ["-c", "trap 'echo got-term; exit 7' TERM; while read l; do echo \"echo:$l\"; done; sleep 1000 & wait"], "stdin_mode": "pipe", "name": "worker"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = p["pid"].as_i64().unwrap();
    assert_eq!(p["status"], "running");
    assert_eq!(p["stdin_writable"], true);
    // Follow output while we write to stdin.
    let follow = s
        .daemon(&id, Method::GET, &format!("/processes/{pid}/output/follow"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert!(follow.status().is_success());
    let r = s
        .daemon(&id, Method::POST, &format!("/processes/{pid}/stdin"))
        .body("hello\nworld\n")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = s
        .daemon(&id, Method::POST, &format!("/processes/{pid}/stdin/close"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let mut stream = follow.bytes_stream();
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(c) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&c.unwrap()));
            if seen.contains("echo:world") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "{seen}");
    assert!(seen.contains("echo:hello"));
    // By name too.
    let by_name: Value = s.daemon_json(&id, Method::GET, "/processes/worker").await;
    assert_eq!(by_name["pid"], pid);
    let list: Value = s.daemon_json(&id, Method::GET, "/processes").await;
    assert!(list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["pid"] == pid));
    let r: Value = s
        .daemon(&id, Method::POST, &format!("/processes/{pid}/signal"))
        .json(&json!({"signal": 15}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["success"], true);
    let mut info = Value::Null;
    for _ in 0..100 {
        info = s
            .daemon_json(&id, Method::GET, &format!("/processes/{pid}"))
            .await;
        if info["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(info["status"], "exited", "{info}");
    assert_eq!(info["exit_code"], 7);
    let out: Value = s
        .daemon_json(&id, Method::GET, &format!("/processes/{pid}/stdout"))
        .await;
    let lines: Vec<&str> = out["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(lines, vec!["echo:hello", "echo:world", "got-term"]);
    let r = s
        .daemon(&id, Method::DELETE, &format!("/processes/{pid}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    s.cleanup().await;
}

/// Deterministic pseudo-random bytes (xorshift), so uploads are incompressible.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[tokio::test]
async fn files_round_trip_list_and_delete() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    let data = noise(3 * 1024 * 1024 + 17, 7);
    let r = s
        .daemon(&id, Method::PUT, "/files?path=/root/dir/blob.bin")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let back = s
        .daemon(&id, Method::GET, "/files?path=/root/dir/blob.bin")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes differ");
    assert_eq!(
        s.sh(&id, "stat -c %s /root/dir/blob.bin").await.trim(),
        data.len().to_string()
    );
    let list: Value = s
        .daemon_json(&id, Method::GET, "/files/list?path=/root/dir")
        .await;
    assert_eq!(list["entries"][0]["name"], "blob.bin");
    assert_eq!(list["entries"][0]["is_dir"], false);
    assert_eq!(list["entries"][0]["size"], data.len());
    let r = s
        .daemon(&id, Method::DELETE, "/files?path=/root/dir/blob.bin")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = s
        .daemon(&id, Method::GET, "/files?path=/root/dir/blob.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    s.cleanup().await;
}

#[tokio::test]
async fn a_file_larger_than_the_sandbox_memory_streams_both_ways() {
    let s = Server::start().await;
    let id = s
        .create(json!({"resources": {"cpus": 1, "memory_mb": 1024, "disk_mb": 4096}}))
        .await;
    // 1.5 GiB: more than the sandbox's whole memory limit (1 GiB + headroom).
    const CHUNK: usize = 4 * 1024 * 1024;
    const CHUNKS: usize = 384;
    let block = std::sync::Arc::new(noise(CHUNK, 99));
    let b2 = block.clone();
    let body = futures::stream::iter(0..CHUNKS).map(move |i| {
        let mut c = b2.as_ref().clone();
        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Ok::<_, std::io::Error>(bytes::Bytes::from(c))
    });
    let r = s
        .daemon(&id, Method::PUT, "/files?path=/root/big.bin")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        s.sh(&id, "stat -c %s /root/big.bin").await.trim(),
        (CHUNK * CHUNKS).to_string()
    );
    let r = s
        .daemon(&id, Method::GET, "/files?path=/root/big.bin")
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut got = Vec::with_capacity(CHUNK);
    let mut index = 0usize;
    while let Some(c) = stream.next().await {
        got.extend_from_slice(&c.unwrap());
        while got.len() >= CHUNK {
            let rest = got.split_off(CHUNK);
            let mut want = block.as_ref().clone();
            want[..8].copy_from_slice(&(index as u64).to_le_bytes());
            assert!(got == want, "chunk {index} differs");
            index += 1;
            got = rest;
        }
    }
    assert_eq!(index, CHUNKS);
    assert!(got.is_empty());
    // The sandbox survived it.
    assert_eq!(s.get(&id).await.1["status"], "running");
    s.cleanup().await;
}

async fn ws_connect(
    s: &Server,
    id: &str,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://127.0.0.1:{}/api/v1{path}", s.proxy_port);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("X-Tensorlake-Sandbox-Id", id.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket");
    ws
}

#[tokio::test]
async fn pty_echoes_resizes_and_reports_exit() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    let p: Value = s
        .daemon(&id, Method::POST, "/pty")
        .json(&json!({"command": "bash", "rows": 24, "cols": 80, "env": {"PS1": "$ "}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = p["session_id"].as_str().unwrap();
    let token = p["token"].as_str().unwrap();
    let mut ws = ws_connect(&s, &id, &format!("/pty/{sid}/ws?token={token}")).await;
    ws.send(Message::Binary(vec![0x02].into())).await.unwrap();
    let mut resize = vec![0x01];
    resize.extend_from_slice(&132u16.to_be_bytes());
    resize.extend_from_slice(&40u16.to_be_bytes());
    ws.send(Message::Binary(resize.into())).await.unwrap();
    let mut input = vec![0x00];
    input.extend_from_slice(b"echo pty-$((6*7)); stty size; exit 5\n");
    ws.send(Message::Binary(input.into())).await.unwrap();
    let mut screen = String::new();
    let mut exit_code = None;
    let mut close_reason = String::new();
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = ws.next().await {
            match m.unwrap() {
                Message::Binary(b) if b[0] == 0x00 => {
                    screen.push_str(&String::from_utf8_lossy(&b[1..]))
                }
                Message::Binary(b) if b[0] == 0x03 => {
                    exit_code = Some(i32::from_be_bytes([b[1], b[2], b[3], b[4]]))
                }
                Message::Close(Some(f)) => {
                    close_reason = f.reason.to_string();
                    break;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(done.is_ok(), "pty did not finish: {screen}");
    assert!(screen.contains("pty-42"), "{screen}");
    assert!(screen.contains("40 132"), "resize seen by stty: {screen}");
    assert_eq!(exit_code, Some(5));
    assert_eq!(close_reason, "exit:5");
    s.cleanup().await;
}

#[tokio::test]
async fn tunnel_reaches_a_tcp_server_in_the_sandbox() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    let echo = "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 7000)); s.listen()\nwhile True:\n    c,_=s.accept()\n    while True:\n        d=c.recv(65536)\n        if not d: break\n        c.sendall(d.upper())\n    c.close()\n";
    s.daemon(&id, Method::PUT, "/files?path=/root/echo.py")
        .body(echo)
        .send()
        .await
        .unwrap();
    let r = s
        .daemon(&id, Method::POST, "/processes")
        .json(&json!({"command": "python3", "args": ["/root/echo.py"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let wait = "import socket, time\nfor _ in range(100):\n    try:\n        socket.create_connection(('127.0.0.1', 7000), 1).close()\n        break\n    except OSError:\n        time.sleep(0.1)\nelse:\n    raise SystemExit(1)\n";
    let r = s
        .run(&id, json!({"command": "python3", "args": ["-c", wait]}))
        .await;
    assert_eq!(r.exit["exit_code"], 0, "echo server did not listen: {r:?}");
    let mut ws = ws_connect(&s, &id, "/tunnels/tcp?port=7000").await;
    let payload = b"hello through the tunnel".to_vec();
    ws.send(Message::Binary(payload.clone().into()))
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < payload.len() {
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(b) => got.extend_from_slice(&b),
                Message::Text(t) => panic!("tunnel error: {t}"),
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, payload.to_ascii_uppercase());
    s.cleanup().await;
}
