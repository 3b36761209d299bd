//! Idle sandboxes cost nothing: one without a process of its own is frozen
//! after a quiet spell, and whatever reaches it thaws it first.

use sbx_e2e::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn freezer_state(s: &Server, id: &str) -> String {
    std::fs::read_to_string(s.cgroup("freezer", id).join("freezer.state"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

async fn wait_for_state(s: &Server, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while freezer_state(s, id) != want {
        assert!(
            Instant::now() < deadline,
            "{id} never became {want} (is {})",
            freezer_state(s, id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_idle_sandbox_is_frozen_and_whatever_reaches_it_thaws_it() {
    if !std::path::Path::new("/sys/fs/cgroup/freezer").is_dir() {
        eprintln!("no cgroup v1 freezer here: nothing to test");
        return;
    }
    let mut s = Server::start_with(Options {
        args: vec!["--idle-freeze-secs".into(), "1".into()],
        ..Options::default()
    })
    .await;
    let idle = s.create(json!({"name": "idle"})).await;
    let busy = s.create(json!({})).await;
    // A process of its own (started and left behind by a shell, as an
    // orphan of the agent): this sandbox is never frozen.
    s.sh(&busy, "sleep 1000 >/dev/null 2>&1 &").await;

    wait_for_state(&s, &idle, "FROZEN").await;
    // Every process of it is stopped: its CPU time does not move.
    let cpu = |id: &str| {
        std::fs::read_to_string(s.cgroup("cpuacct", id).join("cpuacct.usage"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = cpu(&idle);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cpu(&idle), before, "a frozen sandbox used CPU");
    assert_eq!(freezer_state(&s, &busy), "THAWED");

    // A request thaws it and is answered.
    assert_eq!(s.sh(&idle, "echo awake").await, "awake\n");
    wait_for_state(&s, &idle, "FROZEN").await;
    // A long request keeps it thawed while it runs.
    let slow = s.run(
        &idle,
        json!({"command": "sh", "args": ["-c", "sleep 3; echo done"]}),
    );
    let (r, states) = tokio::join!(slow, async {
        let mut seen = Vec::new();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen.push(freezer_state(&s, &idle));
        }
        seen
    });
    assert_eq!(r.stdout, "done\n");
    assert!(states[2..].iter().all(|st| st == "THAWED"), "{states:?}");

    // A memory snapshot of a frozen sandbox, and its restore.
    wait_for_state(&s, &idle, "FROZEN").await;
    let snap = s.snapshot("idle", "memory").await;
    let sid = snap["snapshot_id"].as_str().unwrap();
    let copy = s.create(json!({"snapshot_id": sid})).await;
    assert_eq!(s.sh(&copy, "echo copy").await, "copy\n");

    // A server that crashes while a sandbox is frozen finds it again, thaws
    // it, and it answers.
    wait_for_state(&s, &idle, "FROZEN").await;
    s.kill9();
    s.spawn().await;
    assert_eq!(s.sh(&idle, "echo back").await, "back\n");

    // Terminating a frozen sandbox leaves nothing behind.
    wait_for_state(&s, &idle, "FROZEN").await;
    assert!(s.delete(&idle).await < 300);
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}
