//! Persisted sandbox logs: every process's output (with pid and timestamp)
//! and the sandbox's lifecycle, read back with the client's filters and
//! paging, kept after the sandbox ends, across a server restart and a
//! suspend/resume, and trimmed to the budget.

use reqwest::Method;
use sbx_e2e::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// GET …/logs with a query; the whole answer.
async fn logs(s: &Server, id: &str, query: &[(&str, &str)]) -> Value {
    let r = s
        .req(Method::GET, &format!("/sandboxes/{id}/logs"))
        .query(query)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{query:?}");
    r.json().await.unwrap()
}

fn entries(v: &Value) -> Vec<Value> {
    v["logs"].as_array().unwrap().clone()
}

fn bodies(v: &Value) -> Vec<String> {
    entries(v)
        .iter()
        .map(|e| e["body"].as_str().unwrap().to_string())
        .collect()
}

fn attrs(e: &Value) -> Value {
    serde_json::from_str(e["logAttributes"].as_str().unwrap()).unwrap()
}

/// Waits until the logs of `id` hold a record whose body is `body`.
async fn wait_for_line(s: &Server, id: &str, body: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = logs(s, id, &[("tail", "10000")]).await;
        if bodies(&v).iter().any(|b| b == body) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{body:?} never reached the logs of {id}: {:?}",
            bodies(&v)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn events(v: &Value) -> Vec<String> {
    entries(v)
        .iter()
        .filter_map(|e| attrs(e)["event"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn output_and_lifecycle_are_logged_filtered_paged_and_kept() {
    let s = Server::start().await;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let id = s.create(json!({"name": "logged"})).await;

    // A command run to completion, and a background process nobody reads.
    let r = s
        .run(
            &id,
            json!({"command": "sh", "args": ["-c", "echo out-1; echo err-1 >&2; echo out-2"]}),
        )
        .await;
    let run_pid = r.events[0]["pid"].as_i64().unwrap();
    let bg: Value = s
        .daemon(&id, Method::POST, "/processes")
        .json(&json!({"command": "sh", "args": ["-c", "for i in 1 2 3; do echo bg-$i; done"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bg_pid = bg["pid"].as_i64().unwrap();
    let all = wait_for_line(&s, &id, "bg-3", Duration::from_secs(15)).await;

    // Lines carry their process, stream, level and a timestamp.
    let find = |body: &str| {
        entries(&all)
            .into_iter()
            .find(|e| e["body"] == body)
            .unwrap_or_else(|| panic!("no {body:?}"))
    };
    let out1 = find("out-1");
    let err1 = find("err-1");
    assert_eq!(out1["level"], 3);
    assert_eq!(err1["level"], 5);
    assert_eq!(attrs(&out1)["stream"], "stdout");
    assert_eq!(attrs(&err1)["stream"], "stderr");
    assert_eq!(attrs(&out1)["processId"], run_pid.to_string());
    assert_eq!(attrs(&find("bg-2"))["processId"], bg_pid.to_string());
    assert_eq!(out1["sandboxId"], id.as_str());
    assert_eq!(out1["namespace"], "default");
    let t1 = out1["timestamp"].as_u64().unwrap();
    let t2 = find("out-2")["timestamp"].as_u64().unwrap();
    assert!(created < t1 && t1 <= t2, "{created} {t1} {t2}");
    let uuids: std::collections::HashSet<&str> = all["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(uuids.len(), entries(&all).len(), "uuids are unique");
    // Its lifecycle so far, in order, and the processes' starts and ends.
    let ev = events(&all);
    let pos = |e: &str| {
        ev.iter()
            .position(|x| x == e)
            .unwrap_or_else(|| panic!("no {e} in {ev:?}"))
    };
    assert!(pos("created") < pos("running"), "{ev:?}");
    assert!(ev.contains(&"process_started".to_string()), "{ev:?}");
    assert!(ev.contains(&"process_exited".to_string()), "{ev:?}");

    // Filters: levels, processes, body text.
    let errors = logs(&s, &id, &[("level", "5")]).await;
    assert!(bodies(&errors).contains(&"err-1".to_string()));
    assert!(entries(&errors).iter().all(|e| e["level"] == 5));
    let bg_only = logs(
        &s,
        &id,
        &[("processId", &bg_pid.to_string()), ("level", "3")],
    )
    .await;
    assert_eq!(bodies(&bg_only), ["bg-1", "bg-2", "bg-3"]);
    let both = logs(
        &s,
        &id,
        &[
            ("processId", &bg_pid.to_string()),
            ("processId", &run_pid.to_string()),
            ("body", "-2"),
            ("level", "3"),
        ],
    )
    .await;
    assert_eq!(bodies(&both), ["out-2", "bg-2"]);
    // Paging: head pages joined are the whole log; tail is its end.
    let whole = bodies(&logs(&s, &id, &[]).await);
    let mut paged = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = vec![("head", "2".to_string())];
        if let Some(t) = &token {
            q.push(("nextToken", t.clone()));
        }
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let page = logs(&s, &id, &q).await;
        assert!(entries(&page).len() <= 2);
        paged.extend(bodies(&page));
        match page["nextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(
        paged[..whole.len()],
        whole[..],
        "paging saw the same records"
    );
    let tail = logs(&s, &id, &[("tail", "2"), ("level", "3")]).await;
    assert_eq!(bodies(&tail), ["bg-2", "bg-3"]);
    // Bad filters are refused.
    let r = s
        .req(Method::GET, &format!("/sandboxes/{id}/logs?level=9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The processes the logs have seen.
    let procs = s
        .api_json(Method::GET, &format!("/sandboxes/{id}/processes"))
        .await;
    let procs = procs["processes"].as_array().unwrap();
    let (run_pid_s, bg_pid_s) = (run_pid.to_string(), bg_pid.to_string());
    let run_proc = procs
        .iter()
        .find(|p| p["processId"].as_str() == Some(run_pid_s.as_str()))
        .unwrap();
    assert!(run_proc["processCommand"]
        .as_str()
        .unwrap()
        .starts_with("sh -c echo out-1"));
    assert_eq!(run_proc["logCount"], 3);
    let bg_proc = procs
        .iter()
        .find(|p| p["processId"].as_str() == Some(bg_pid_s.as_str()))
        .unwrap();
    assert_ne!(bg_proc["processManagedId"], "");
    assert!(bg_proc["firstSeen"].as_u64() <= bg_proc["lastSeen"].as_u64());

    // Suspend and resume: both logged; output after the resume is too.
    let (code, _) = s
        .post_status(&format!("/sandboxes/{id}/suspend?wait_ms=30000"), json!({}))
        .await;
    assert_eq!(code, 200);
    let (code, _) = s
        .post_status(&format!("/sandboxes/{id}/resume?wait_ms=30000"), json!({}))
        .await;
    assert_eq!(code, 200);
    s.sh(&id, "echo after-resume").await;
    let v = wait_for_line(&s, &id, "after-resume", Duration::from_secs(15)).await;
    let ev = events(&v);
    assert!(ev.contains(&"suspended".to_string()), "{ev:?}");
    assert!(ev.contains(&"resumed".to_string()), "{ev:?}");

    // A snapshot is logged.
    s.snapshot(&id, "filesystem").await;
    let v = logs(&s, &id, &[("body", "snapshot")]).await;
    assert!(events(&v).contains(&"snapshot".to_string()), "{v}");

    // Terminated: the logs stay, with the end.
    s.sh(&id, "echo last-words").await;
    wait_for_line(&s, &id, "last-words", Duration::from_secs(15)).await;
    assert_eq!(s.delete(&id).await, 200);
    s.wait_status(&id, "terminated", Duration::from_secs(30))
        .await;
    let v = logs(&s, &id, &[]).await;
    assert!(bodies(&v).contains(&"out-1".to_string()));
    assert_eq!(
        events(&v).last().map(String::as_str),
        Some("terminated"),
        "{:?}",
        events(&v)
    );
    // The CLI reads the same.
    let out = s
        .cli()
        .args(["logs", &id, "--process", &bg_pid.to_string(), "-l", "info"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].ends_with(&format!("[{bg_pid}] bg-1")), "{text}");
    // An unknown sandbox is a 404.
    let r = s
        .req(Method::GET, "/sandboxes/sbx00000000000000000000/logs")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.cleanup().await;
}

#[tokio::test]
async fn logging_goes_on_across_a_restart_and_the_budget_trims() {
    let mut s = Server::start_with(Options {
        args: vec!["--logs-sandbox-mb".into(), "1".into()],
        ..Options::default()
    })
    .await;
    let id = s.create(json!({})).await;
    // Prints once now and once while the server is down.
    s.daemon(&id, Method::POST, "/processes")
        .json(&json!({"command": "sh", "args": ["-c", "echo before; sleep 3; echo while-down; sleep 600"]}))
        .send()
        .await
        .unwrap();
    wait_for_line(&s, &id, "before", Duration::from_secs(15)).await;
    s.kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    s.respawn().await;
    let v = wait_for_line(&s, &id, "while-down", Duration::from_secs(20)).await;
    assert!(
        events(&v).contains(&"adopted".to_string()),
        "{:?}",
        events(&v)
    );
    // Nothing twice: the restart picked up where the log ended.
    let before: Vec<String> = bodies(&v).into_iter().filter(|b| b == "before").collect();
    assert_eq!(before.len(), 1);

    // `sbx logs -f` follows new lines until the sandbox ends.
    let mut follow = s
        .cli()
        .args(["logs", &id, "-f", "-n", "0", "-l", "info"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let followed = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });

    // About 2.5 MB of log: over the 1 MB budget, so the oldest records go.
    let r = s
        .run(
            &id,
            json!({"command": "sh", "args": ["-c", "seq 1 20000 | sed 's/^/line-/'"]}),
        )
        .await;
    assert_eq!(r.exit["exit_code"], 0);
    wait_for_line(&s, &id, "line-20000", Duration::from_secs(30)).await;
    let dir = s.data_dir.join("logs").join(&id);
    let size: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        size <= (1 << 20) + (256 << 10) + (64 << 10),
        "{size} bytes kept"
    );
    let v = logs(&s, &id, &[("head", "1")]).await;
    assert_ne!(bodies(&v)[0], "before", "the oldest records are gone");
    assert!(!events(&logs(&s, &id, &[]).await).contains(&"created".to_string()));

    assert_eq!(s.delete(&id).await, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = follow.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "sbx logs -f did not end with the sandbox"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success());
    let text = followed.join().unwrap();
    assert!(
        text.contains("] line-20000\n"),
        "followed: {}",
        &text[..text.len().min(300)]
    );
    assert!(!text.contains("before"), "-n 0 starts at the end");
    s.cleanup().await;
}
