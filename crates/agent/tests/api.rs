//! Integration tests: drive the built agent binary over HTTP and WebSockets.

mod common;

use common::{lines_of, parse_sse, Agent};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn health_and_info() {
    let agent = Agent::start().await;
    let (s, v) = agent.get("/health").await;
    assert_eq!((s, v), (200, json!({"healthy": true})));
    let (s, v) = agent.get("/info").await;
    assert_eq!(s, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["running_processes"], 0);
    let (s, v) = agent.get("/nope").await;
    assert_eq!(s, 404);
    assert_eq!(v["code"], "not_found");
}

#[tokio::test]
async fn run_streams_output_exit_code_env_and_cwd() {
    let agent = Agent::start().await;
    let dir = std::env::temp_dir();
    let events = agent
        .run(json!({
            "command": "sh",
            "args": ["-c", "echo out1; echo err1 >&2; echo \"$FOO|$SBX_TEST_SECRET|$PATH\"; pwd; printf 'no-newline\\377'; exit 7"],
            "env": {"FOO": "bar"},
            "working_dir": dir.to_str().unwrap(),
        }))
        .await;
    assert!(events[0]["pid"].as_i64().unwrap() > 0);
    assert!(events[0]["started_at"].is_string());
    let stdout = lines_of(&events, "stdout");
    assert_eq!(stdout[0], "out1");
    assert!(stdout[1].starts_with("bar||"), "{}", stdout[1]);
    assert_eq!(
        stdout[2],
        std::fs::canonicalize(&dir).unwrap().to_str().unwrap()
    );
    assert_eq!(stdout[3], "no-newline\u{fffd}");
    assert_eq!(lines_of(&events, "stderr"), vec!["err1"]);
    let exit = events.last().unwrap();
    assert_eq!(exit["exit_code"], 7);
    assert_eq!(exit["reason"], "exited");
    assert_eq!(exit["oom_killed"], false);
    assert!(events[1..events.len() - 1]
        .iter()
        .all(|e| e["timestamp"].is_string()));

    // A killed process reports its signal; lots of output is drained first.
    let events = agent
        .run(json!({"command": "sh", "args": ["-c", "seq 1 20000; kill -TERM $$"]}))
        .await;
    assert_eq!(lines_of(&events, "stdout").len(), 20000);
    let exit = events.last().unwrap();
    assert_eq!(exit["signal"], 15);
    assert_eq!(exit["reason"], "signaled");
    assert!(exit.get("exit_code").is_none());
}

#[tokio::test]
async fn run_timeout_kills_process_group() {
    let agent = Agent::start().await;
    let started = Instant::now();
    let events = agent
        .run(json!({"command": "sh", "args": ["-c", "echo before; sleep 30; echo after"], "timeout": 0.5}))
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(lines_of(&events, "stdout"), vec!["before"]);
    let exit = events.last().unwrap();
    assert_eq!(exit["reason"], "timed_out");
    assert_eq!(exit["signal"], 9);
}

#[tokio::test]
async fn spawn_failures_are_client_errors() {
    let agent = Agent::start().await;
    let (s, v) = agent
        .post(
            "/processes/run",
            json!({"command": "definitely-not-a-command-xyz"}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("definitely-not-a-command-xyz"));
    let (s, _) = agent
        .post(
            "/processes",
            json!({"command": "definitely-not-a-command-xyz"}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, v) = agent
        .post(
            "/processes",
            json!({"command": "true", "user": "no-such-user-xyz"}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("no-such-user-xyz"));
    let (s, _) = agent.post("/processes", json!({"args": []})).await;
    assert_eq!(s, 400);
    let (s, _) = agent
        .post(
            "/processes",
            json!({"command": "true", "working_dir": "/no/such/dir"}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = agent.get("/processes/999999999").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn run_as_user() {
    let agent = Agent::start().await;
    if unsafe { libc::geteuid() } != 0 {
        return; // switching users needs root
    }
    let events = agent
        .run(json!({"command": "sh", "args": ["-c", "id -u; id -g; echo $HOME"], "user": "65534:65534"}))
        .await;
    let out = lines_of(&events, "stdout");
    assert_eq!(&out[..2], &["65534", "65534"]);
    let events = agent
        .run(json!({"command": "id", "args": ["-u"], "user": {"uid": 1234}}))
        .await;
    assert_eq!(lines_of(&events, "stdout"), vec!["1234"]);
}

#[tokio::test]
async fn background_process_stdin_follow_signal_and_kill() {
    let agent = Agent::start().await;
    let (s, info) = agent
        .post(
            "/processes",
            json!({"command": "sh", "args": ["-c", "while read l; do echo \"got:$l\"; echo \"e:$l\" >&2; done; echo done"], "stdin_mode": "pipe"}),
        )
        .await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["status"], "running");
    assert_eq!(info["stdin_writable"], true);
    assert!(info.get("managed").is_none());
    let pid = info["pid"].as_i64().unwrap();

    // Follow the combined output while writing to stdin.
    let follow = agent
        .http
        .get(agent.url(&format!("/processes/{pid}/output/follow")))
        .send()
        .await
        .unwrap();
    assert_eq!(follow.headers()["content-type"], "text/event-stream");
    let r = agent
        .http
        .post(agent.url(&format!("/processes/{pid}/stdin")))
        .body("a\nb\n")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    agent
        .wait_for(&format!("/processes/{pid}/stdout"), 10, |v| {
            v["line_count"] == 2
        })
        .await;
    let (_, out) = agent.get(&format!("/processes/{pid}/stdout")).await;
    assert_eq!(out["lines"], json!(["got:a", "got:b"]));
    assert_eq!(out["pid"], pid);
    let (_, err) = agent.get(&format!("/processes/{pid}/stderr")).await;
    assert_eq!(err["lines"], json!(["e:a", "e:b"]));
    let (_, both) = agent.get(&format!("/processes/{pid}/output")).await;
    assert_eq!(both["line_count"], 4);

    let r = agent
        .http
        .post(agent.url(&format!("/processes/{pid}/stdin/close")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    // The follow stream ends once the process's pipes are closed.
    let body = tokio::time::timeout(Duration::from_secs(10), follow.text())
        .await
        .expect("follow stream did not end")
        .unwrap();
    let events = parse_sse(&body);
    let lines: Vec<&str> = events.iter().map(|e| e["line"].as_str().unwrap()).collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[4], "done");
    let info = agent
        .wait_for(&format!("/processes/{pid}"), 10, |v| {
            v["status"] == "exited"
        })
        .await;
    assert_eq!(info["exit_code"], 0);
    assert_eq!(info["stdin_writable"], false);
    let r = agent
        .http
        .post(agent.url(&format!("/processes/{pid}/stdin")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);

    // Signal and kill.
    let (_, info) = agent
        .post("/processes", json!({"command": "sleep", "args": ["60"]}))
        .await;
    let pid = info["pid"].as_i64().unwrap();
    let (s, v) = agent
        .post(&format!("/processes/{pid}/signal"), json!({"signal": 15}))
        .await;
    assert_eq!((s, v), (200, json!({"success": true})));
    let info = agent
        .wait_for(&format!("/processes/{pid}"), 10, |v| {
            v["status"] == "signaled"
        })
        .await;
    assert_eq!(info["signal"], 15);
    assert!(info["ended_at"].is_string());

    let (_, info) = agent
        .post(
            "/processes",
            json!({"command": "sh", "args": ["-c", "sleep 60 & sleep 60"]}),
        )
        .await;
    let pid = info["pid"].as_i64().unwrap();
    let (_, list) = agent.get("/processes").await;
    assert!(list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["pid"] == pid));
    let (s, _) = agent.delete(&format!("/processes/{pid}")).await;
    assert!((200..300).contains(&s));
    let (s, _) = agent.get(&format!("/processes/{pid}")).await;
    assert_eq!(s, 404);
    // The whole group died, including the backgrounded sleep.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(unsafe { libc::kill(-(pid as i32), 0) } != 0);
}

#[tokio::test]
async fn named_process_restarts_on_failure_and_lookup_follows() {
    let agent = Agent::start().await;
    let (s, info) = agent
        .post(
            "/processes",
            json!({
                "command": "sh", "args": ["-c", "echo run; sleep 0.3; exit 3"],
                "name": "my svc",
                "restart": {"policy": "on_failure", "max_restarts": 2, "initial_backoff_ms": 100, "max_backoff_ms": 200},
            }),
        )
        .await;
    assert_eq!(s, 200, "{info}");
    let first = info["pid"].as_i64().unwrap();
    assert_eq!(info["name"], "my svc");
    assert_eq!(info["managed"]["id"], "my svc");
    assert_eq!(info["managed"]["restart"]["policy"], "on_failure");

    // Same name while live → 409.
    let (s, v) = agent
        .post("/processes", json!({"command": "true", "name": "my svc"}))
        .await;
    assert_eq!(s, 409);
    assert_eq!(v["code"], "conflict");

    let info = agent
        .wait_for("/processes/my%20svc", 15, |v| {
            v["managed"]["status"] == "stopped" && v["managed"]["restart_count"] == 2
        })
        .await;
    assert_ne!(info["pid"].as_i64().unwrap(), first);
    assert_eq!(info["exit_code"], 3);
    assert_eq!(info["managed"]["last_exit"]["exit_code"], 3);
    let (s, old) = agent.get(&format!("/processes/{first}")).await;
    assert_eq!(s, 200);
    assert_eq!(old["status"], "exited");

    // Explicit restart gives a new pid under the same name.
    let (s, restarted) = agent.post("/processes/my%20svc/restart", json!({})).await;
    assert_eq!(s, 200, "{restarted}");
    assert_ne!(restarted["pid"], info["pid"]);
    let (_, now) = agent.get("/processes/my%20svc").await;
    assert_eq!(now["pid"], restarted["pid"]);

    // policy always with a stopper: restart of a long-running process.
    let (_, a) = agent
        .post(
            "/processes",
            json!({"command": "sleep", "args": ["60"], "name": "sleeper", "restart": {"policy": "always", "initial_backoff_ms": 50}}),
        )
        .await;
    let (_, b) = agent.post("/processes/sleeper/restart", json!({})).await;
    assert_ne!(a["pid"], b["pid"]);
    assert_eq!(b["status"], "running");
    let (s, _) = agent.delete("/processes/sleeper").await;
    assert!((200..300).contains(&s));
    let (s, _) = agent.get("/processes/sleeper").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn failing_health_check_marks_unhealthy_and_restarts() {
    let agent = Agent::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // nothing listens there once dropped
    let (s, info) = agent
        .post(
            "/processes",
            json!({
                "command": "sleep", "args": ["60"], "name": "hc",
                "restart": {"policy": "always", "initial_backoff_ms": 50},
                "health_check": {"type": "tcp", "port": port, "initial_delay_ms": 0, "interval_ms": 50, "timeout_ms": 100, "failure_threshold": 2},
            }),
        )
        .await;
    assert_eq!(s, 200);
    let first = info["pid"].clone();
    let info = agent
        .wait_for("/processes/hc", 10, |v| {
            v["managed"]["restart_count"].as_u64().unwrap() >= 1 && v["pid"] != first
        })
        .await;
    assert_eq!(info["managed"]["last_exit"]["signal"], 9);

    // A passing HTTP check.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    agent
        .post(
            "/processes",
            json!({
                "command": "sleep", "args": ["60"], "name": "web",
                "health_check": {"type": "http", "port": port, "path": "/healthz", "initial_delay_ms": 0, "interval_ms": 50},
            }),
        )
        .await;
    agent
        .wait_for("/processes/web", 10, |v| {
            v["managed"]["health_status"] == "healthy"
        })
        .await;
}

#[tokio::test]
async fn entrypoint_is_a_managed_process() {
    let agent = Agent::start_with(&[], &["sh", "-c", "echo entry-$FOO; exit 4"]).await;
    let info = agent
        .wait_for("/processes/entrypoint", 10, |v| v["status"] == "exited")
        .await;
    assert_eq!(info["exit_code"], 4);
    assert_eq!(info["managed"]["restart"]["policy"], "never");
    assert_eq!(info["managed"]["status"], "stopped");
    let (_, out) = agent.get("/processes/entrypoint/stdout").await;
    assert_eq!(out["lines"], json!(["entry-"]));
    // Following a finished process replays its output and ends.
    let body = agent
        .http
        .get(agent.url("/processes/entrypoint/stdout/follow"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = parse_sse(&body);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["line"], "entry-");
    assert_eq!(events[0]["stream"], "stdout");
}

#[tokio::test]
async fn run_client_disconnect_kills_process() {
    let agent = Agent::start().await;
    let r = agent
        .http
        .post(agent.url("/processes/run"))
        .json(&json!({"command": "sleep", "args": ["30"]}))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let started = parse_sse(std::str::from_utf8(&first).unwrap());
    let pid = started[0]["pid"].as_i64().unwrap();
    let (_, info) = agent.get(&format!("/processes/{pid}")).await;
    assert_eq!(info["status"], "running");
    drop(stream);
    let info = agent
        .wait_for(&format!("/processes/{pid}"), 10, |v| {
            v["status"] != "running"
        })
        .await;
    assert_eq!(info["signal"], 9);
}

#[tokio::test]
async fn files_round_trip_list_and_delete() {
    let agent = Agent::start().await;
    let dir = std::env::temp_dir().join(format!("sbx-agent-files-{}", std::process::id()));
    let path = dir.join("sub/dir/data.bin");
    let p = path.to_str().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let r = agent
        .http
        .put(agent.url("/files"))
        .query(&[("path", p)])
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = agent
        .http
        .get(agent.url("/files"))
        .query(&[("path", p)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    let sub = dir.join("sub/dir");
    let (s, listing) = agent
        .get(&format!("/files/list?path={}", sub.to_str().unwrap()))
        .await;
    assert_eq!(s, 200);
    assert_eq!(listing["path"], sub.to_str().unwrap());
    assert_eq!(
        listing["entries"],
        json!([{"name": "data.bin", "is_dir": false, "size": 300000, "modified_at": listing["entries"][0]["modified_at"]}])
    );
    assert!(listing["entries"][0]["modified_at"].is_string());
    let (_, listing) = agent
        .get(&format!(
            "/files/list?path={}",
            dir.join("sub").to_str().unwrap()
        ))
        .await;
    assert_eq!(listing["entries"][0]["is_dir"], true);

    // Errors: directory read, missing file, listing a file.
    let (s, v) = agent
        .get(&format!("/files?path={}", sub.to_str().unwrap()))
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["code"], "bad_request");
    let (s, v) = agent
        .get(&format!("/files?path={}/missing", dir.to_str().unwrap()))
        .await;
    assert_eq!(s, 404);
    assert_eq!(v["code"], "not_found");
    let (s, _) = agent.get(&format!("/files/list?path={p}")).await;
    assert_eq!(s, 400);

    // Delete a file, then the directory tree.
    let (s, _) = agent.delete(&format!("/files?path={p}")).await;
    assert!((200..300).contains(&s));
    assert!(!path.exists());
    let (s, _) = agent.delete(&format!("/files?path={p}")).await;
    assert_eq!(s, 404);
    let (s, _) = agent
        .delete(&format!("/files?path={}", dir.to_str().unwrap()))
        .await;
    assert!((200..300).contains(&s));
    assert!(!dir.exists());
}

/// Deterministic chunk `i` of the large-file test.
fn big_chunk(i: u64) -> Vec<u8> {
    let mut v = vec![0u8; 1 << 20];
    for (j, b) in v.iter_mut().enumerate() {
        *b = (i as usize * 31 + j * 13 % 251) as u8;
    }
    v
}

#[tokio::test]
async fn files_stream_200_mb_without_buffering() {
    const MB: u64 = 200;
    let agent = Agent::start().await;
    let path = std::env::temp_dir().join(format!("sbx-agent-big-{}.bin", std::process::id()));
    let p = path.to_str().unwrap().to_string();
    let before = agent.vm_hwm_kib();
    let body = futures::stream::iter(0..MB).map(|i| Ok::<_, std::io::Error>(big_chunk(i)));
    let r = agent
        .http
        .put(agent.url("/files"))
        .query(&[("path", &p)])
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), MB << 20);

    let r = agent
        .http
        .get(agent.url("/files"))
        .query(&[("path", &p)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.content_length(), Some(MB << 20));
    let mut stream = r.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk_no = 0u64;
    while let Some(bytes) = stream.next().await {
        pending.extend_from_slice(&bytes.unwrap());
        while pending.len() >= 1 << 20 {
            let rest = pending.split_off(1 << 20);
            assert!(pending == big_chunk(chunk_no), "chunk {chunk_no} differs");
            chunk_no += 1;
            pending = rest;
        }
    }
    assert_eq!(chunk_no, MB);
    assert!(pending.is_empty());
    let after = agent.vm_hwm_kib();
    assert!(
        after < before + 64 * 1024,
        "agent peak RSS grew from {before} KiB to {after} KiB"
    );
    std::fs::remove_file(&path).unwrap();
}

async fn pty_read_until(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
    out: &mut String,
    needle: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.contains(needle) {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .unwrap_or_else(|_| panic!("did not see {needle:?} in {out:?}"))
            .unwrap()
            .unwrap();
        if let Message::Binary(b) = msg {
            assert_eq!(b[0], 0x00);
            out.push_str(&String::from_utf8_lossy(&b[1..]));
        }
    }
}

#[tokio::test]
async fn pty_echo_resize_and_exit() {
    let agent = Agent::start().await;
    let (s, v) = agent
        .post(
            "/pty",
            json!({"command": "sh", "rows": 24, "cols": 80, "env": {"PS1": "$ "}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let sid = v["session_id"].as_str().unwrap().to_string();
    let token = v["token"].as_str().unwrap().to_string();
    let (_, list) = agent.get("/pty").await;
    assert_eq!(list["sessions"][0]["session_id"], sid.as_str());

    // Wrong or missing tokens are refused.
    let r = agent
        .http
        .get(agent.url(&format!("/pty/{sid}/ws?token=wrong")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = agent
        .http
        .get(agent.url(&format!("/pty/{sid}/ws")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let (mut ws, _) =
        tokio_tungstenite::connect_async(agent.ws_url(&format!("/pty/{sid}/ws?token={token}")))
            .await
            .unwrap();
    ws.send(Message::Binary(vec![0x02].into())).await.unwrap();
    let mut input = vec![0x00];
    input.extend_from_slice(b"echo $((40+2))\n");
    ws.send(Message::Binary(input.into())).await.unwrap();
    let mut out = String::new();
    pty_read_until(&mut ws, &mut out, "42\r\n").await;

    let mut resize = vec![0x01];
    resize.extend_from_slice(&100u16.to_be_bytes());
    resize.extend_from_slice(&30u16.to_be_bytes());
    ws.send(Message::Binary(resize.into())).await.unwrap();
    let mut input = vec![0x00];
    input.extend_from_slice(b"stty size; echo TERM=$TERM\n");
    ws.send(Message::Binary(input.into())).await.unwrap();
    pty_read_until(&mut ws, &mut out, "30 100\r\n").await;
    pty_read_until(&mut ws, &mut out, "TERM=xterm-256color").await;

    let mut input = vec![0x00];
    input.extend_from_slice(b"exit 3\n");
    ws.send(Message::Binary(input.into())).await.unwrap();
    let mut exit_code = None;
    let mut close_reason = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline.into(), ws.next()).await {
        match msg.unwrap() {
            Message::Binary(b) if b[0] == 0x03 => {
                exit_code = Some(i32::from_be_bytes([b[1], b[2], b[3], b[4]]));
            }
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1000);
                close_reason = Some(frame.reason.to_string());
                break;
            }
            _ => {}
        }
    }
    assert_eq!(exit_code, Some(3));
    assert_eq!(close_reason.as_deref(), Some("exit:3"));
}

#[tokio::test]
async fn pty_output_waits_for_ready_and_delete_kills() {
    let agent = Agent::start().await;
    let (_, v) = agent
        .post(
            "/pty",
            json!({"command": "sh", "args": ["-c", "echo early; sleep 60"]}),
        )
        .await;
    let sid = v["session_id"].as_str().unwrap().to_string();
    let token = v["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        agent.ws_url(&format!("/pty/{sid}/ws")),
    )
    .unwrap();
    req.headers_mut()
        .insert("X-PTY-Token", token.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    // Output produced before `ready` is buffered, not lost.
    ws.send(Message::Binary(vec![0x02].into())).await.unwrap();
    let mut out = String::new();
    pty_read_until(&mut ws, &mut out, "early").await;
    let (s, _) = agent.delete(&format!("/pty/{sid}")).await;
    assert!((200..300).contains(&s));
    let mut exit_code = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        if let Message::Binary(b) = &msg {
            if b[0] == 0x03 {
                exit_code = Some(i32::from_be_bytes([b[1], b[2], b[3], b[4]]));
            }
        }
        if matches!(msg, Message::Close(_)) {
            break;
        }
    }
    assert_eq!(exit_code, Some(128 + 9));
    let (s, _) = agent.delete(&format!("/pty/{sid}")).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn tunnel_round_trips_bytes() {
    let agent = Agent::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (mut ws, _) =
        tokio_tungstenite::connect_async(agent.ws_url(&format!("/tunnels/tcp?port={port}")))
            .await
            .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::Binary(payload.clone().into()))
        .await
        .unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < payload.len() {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Binary(b) => echoed.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, payload);
    ws.close(None).await.unwrap();

    // A port nobody listens on: one text frame with the error, then close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(agent.ws_url(&format!("/tunnels/tcp?port={dead}")))
            .await
            .unwrap();
    let msg = ws.next().await.unwrap().unwrap();
    assert!(
        matches!(msg, Message::Text(ref t) if t.contains("connect")),
        "{msg:?}"
    );
    assert!(matches!(
        ws.next().await,
        Some(Ok(Message::Close(_))) | None
    ));
}

#[tokio::test]
async fn oom_watcher_kills_memory_hog() {
    let mut agent = Agent::start_with(&[("SBX_MEMORY_LIMIT_MB", "200")], &[]).await;
    let events = agent
        .run(json!({
            "command": "python3",
            "args": ["-c", "x=b'a'*(400*1024*1024); import time; time.sleep(5)"],
            "timeout": 30,
        }))
        .await;
    let exit = events.last().unwrap();
    assert_eq!(exit["reason"], "oom_killed", "{exit}");
    assert_eq!(exit["oom_killed"], true);
    assert_eq!(exit["signal"], 9);
    assert!(agent.is_alive());
    let (s, _) = agent.get("/health").await;
    assert_eq!(s, 200);
    let (_, list) = agent.get("/processes").await;
    let p = &list["processes"][0];
    assert_eq!(p["status"], "oom_killed");
    // Small processes are untouched.
    let events = agent
        .run(json!({"command": "echo", "args": ["fine"]}))
        .await;
    assert_eq!(events.last().unwrap()["reason"], "exited");
}

#[test]
fn sse_parser_reads_events() {
    let v: Vec<Value> = parse_sse("data: {\"a\":1}\n\ndata: {\"b\":2}\n\n");
    assert_eq!(v, vec![json!({"a":1}), json!({"b":2})]);
}
