//! Snapshots, restore, suspend/resume and live copies with real gVisor sandboxes.

use reqwest::Method;
use sbx_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

/// A loop inside the sandbox that writes an increasing number to /tmp/count.
const COUNTER: &str = "i=0; while true; do echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; i=$((i+1)); sleep 0.1; done";

async fn start_bg(s: &Server, id: &str, script: &str) {
    let r = s
        .daemon(id, Method::POST, "/processes")
        .json(&json!({"command": "sh", "args": ["-c", script]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn count(s: &Server, id: &str) -> u64 {
    let out = s
        .sh(
            id,
            "while [ ! -s /tmp/count ]; do sleep 0.05; done; cat /tmp/count",
        )
        .await;
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("count: {out:?}"))
}

#[tokio::test]
async fn filesystem_snapshot_outlives_its_source_and_restores_bigger() {
    let s = Server::start().await;
    let id = s.create(json!({"resources": {"disk_mb": 1024}})).await;
    s.sh(
        &id,
        "mkdir -p /data && seq 1 10000 > /data/numbers && echo hello > /root/greeting && rm /etc/motd",
    )
    .await;
    let snap = s.snapshot(&id, "filesystem").await;
    let sid = snap["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(snap["snapshot_type"], "filesystem");
    assert_eq!(snap["sandbox_id"], id.as_str());
    assert_eq!(snap["base_image"], "default");
    assert!(snap["size_bytes"].as_u64().unwrap() > 48_000, "{snap}");
    assert!(snap["stored_bytes"].as_u64().is_some(), "{snap}");
    assert_eq!(snap["rootfs_disk_bytes"], 1024u64 * 1024 * 1024);
    assert!(snap["pause_ms"].as_u64().is_some(), "{snap}");
    // The source runs on, and is listed with its snapshot.
    assert_eq!(s.get(&id).await.1["status"], "running");
    let mine = s
        .api_json(Method::GET, &format!("/sandboxes/{id}/snapshots"))
        .await;
    assert_eq!(mine["snapshots"][0]["snapshot_id"], sid.as_str());
    assert_eq!(s.delete(&id).await, 200);

    // Shrinking the disk is refused and creates nothing.
    let before = s.api_json(Method::GET, "/sandboxes?all=true").await["sandboxes"]
        .as_array()
        .unwrap()
        .len();
    let (code, e) = s
        .post_status(
            "/sandboxes",
            json!({"snapshot_id": sid, "resources": {"disk_mb": 512}}),
        )
        .await;
    assert_eq!(code, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("only grow"), "{e}");
    let after = s.api_json(Method::GET, "/sandboxes?all=true").await["sandboxes"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
    let (code, _) = s
        .post_status("/sandboxes", json!({"snapshot_id": "snapnope"}))
        .await;
    assert_eq!(code, 404);

    // Restore with more of everything: a cold boot on the snapshot's files.
    let restored = s
        .create(json!({"snapshot_id": sid, "resources": {"cpus": 2.0, "memory_mb": 2048, "disk_mb": 2048}}))
        .await;
    let (_, info) = s.get(&restored).await;
    assert_eq!(
        info["resources"],
        json!({"cpus": 2.0, "memory_mb": 2048, "disk_mb": 2048})
    );
    assert_eq!(info["snapshot_id"], sid.as_str());
    let out = s
        .sh(
            &restored,
            "wc -l < /data/numbers; cat /root/greeting; test -e /etc/motd && echo motd; nproc",
        )
        .await;
    assert_eq!(out, "10000\nhello\n2\n");

    // Deleting the snapshot leaves the sandbox restored from it working.
    let r = s
        .req(Method::DELETE, &format!("/snapshots/{sid}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = s
        .req(Method::GET, &format!("/snapshots/{sid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let out = s
        .sh(
            &restored,
            "tail -1 /data/numbers; echo more >> /data/numbers; tail -1 /data/numbers",
        )
        .await;
    assert_eq!(out, "10000\nmore\n");
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}

#[tokio::test]
async fn memory_snapshot_restores_processes_twice_in_parallel() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    start_bg(&s, &id, COUNTER).await;
    start_bg(&s, &id, "echo served > /root/index.html && cd /root && exec python3 -m http.server 8000 --bind 0.0.0.0").await;
    // Wait until the server answers before capturing it.
    s.sh(
        &id,
        "until python3 -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:8000/index.html\")' 2>/dev/null; do sleep 0.1; done",
    )
    .await;
    let snap = s.snapshot(&id, "memory").await;
    let captured = count(&s, &id).await;
    let sid = snap["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(snap["snapshot_type"], "memory");
    assert!(snap["pause_ms"].as_u64().is_some(), "{snap}");
    let pinned = std::thread::available_parallelism().unwrap().get() > 1;
    if pinned {
        // Pinned after the capture (unpinned for it where the pin is the
        // cgroup's cpuset, see sbx_runtime::pinning).
        assert!(s.pinned_cpu(&id).is_some(), "{:?}", s.processes_cpus(&id));
    }
    // The source keeps counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(count(&s, &id).await > captured);

    // Resources are fixed for a memory snapshot.
    let (code, e) = s
        .post_status(
            "/sandboxes",
            json!({"snapshot_id": sid, "resources": {"memory_mb": 2048}}),
        )
        .await;
    assert_eq!(code, 400, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("resources are fixed"),
        "{e}"
    );

    let body = json!({"snapshot_id": sid});
    let (a, b) = tokio::join!(s.create(body.clone()), s.create(body));
    assert_ne!(a, b);
    if pinned {
        // Restored copies are pinned too, each to a CPU of its own.
        let (cpu_a, cpu_b) = (s.pinned_cpu(&a), s.pinned_cpu(&b));
        assert!(cpu_a.is_some(), "{:?}", s.processes_cpus(&a));
        assert!(cpu_b.is_some(), "{:?}", s.processes_cpus(&b));
        assert_ne!(cpu_a, cpu_b);
    }
    for copy in [&a, &b] {
        let first = count(&s, copy).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let later = count(&s, copy).await;
        assert!(
            later > first,
            "{copy}: the counter does not run ({first} → {later})"
        );
        let page = s
            .sh(
                copy,
                "for i in $(seq 100); do python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:8000/index.html\").read().decode(), end=\"\")' && exit 0; sleep 0.2; done; exit 1",
            )
            .await;
        assert_eq!(page, "served\n");
    }
    // Each copy has its own address and writable layer.
    s.sh(&a, "echo only-a > /root/mine").await;
    let r = s
        .run(&b, json!({"command": "cat", "args": ["/root/mine"]}))
        .await;
    assert_ne!(r.exit["exit_code"], 0);
    s.cleanup().await;
}

#[tokio::test]
async fn snapshot_while_the_source_keeps_writing() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    start_bg(
        &s,
        &id,
        "i=0; while true; do echo line-$i >> /root/log; i=$((i+1)); done",
    )
    .await;
    s.sh(&id, "until [ -s /root/log ]; do sleep 0.05; done")
        .await;
    let snap = s.snapshot(&id, "filesystem").await;
    let restored = s.create(json!({"snapshot_id": snap["snapshot_id"]})).await;
    // The captured log is whole: every line complete and in order.
    let out = s
        .sh(
            &restored,
            "awk '$0 != \"line-\" NR-1 { print \"bad line \" NR \": \" $0; exit 1 } END { print NR }' /root/log",
        )
        .await;
    assert!(out.trim().parse::<u64>().unwrap() > 0, "{out}");
    s.cleanup().await;
}

/// A resume that fails (its memory image made unreadable) answers 503 with
/// the reason, through the API and through the proxy; the sandbox stays
/// suspended and says why; once the image is back, a resume succeeds and
/// the error is gone.
#[tokio::test]
async fn a_failed_resume_says_why_and_a_later_one_succeeds() {
    let s = Server::start().await;
    let id = s.create(json!({"name": "fragile"})).await;
    s.sh("fragile", "echo kept > /root/kept").await;
    s.suspend("fragile").await;
    let image = s
        .data_dir
        .join("sandboxes")
        .join(&id)
        .join("suspend")
        .join("checkpoint.img");
    let away = image.with_extension("away");
    std::fs::rename(&image, &away).unwrap();

    let (code, e) = s
        .post_status("/sandboxes/fragile/resume?wait_ms=30000", json!({}))
        .await;
    assert_eq!(code, 503, "{e}");
    assert_eq!(e["code"], "unavailable", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("resume failed"),
        "{e}"
    );
    let v = s.api_json(Method::GET, "/sandboxes/fragile").await;
    assert_eq!(v["status"], "suspended", "{v}");
    let why = v["error_details"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("resume failed"), "{v}");
    assert!(netns_of(std::slice::from_ref(&id)).is_empty());
    // A request through the proxy resumes on its own: it fails the same way.
    let r = s
        .daemon("fragile", Method::GET, "/health")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["message"].as_str().unwrap().contains("resume failed"),
        "{e}"
    );

    std::fs::rename(&away, &image).unwrap();
    let (code, v) = s
        .post_status("/sandboxes/fragile/resume?wait_ms=30000", json!({}))
        .await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    assert!(v["error_details"].is_null(), "{v}");
    assert_eq!(s.sh("fragile", "cat /root/kept").await, "kept\n");
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}

/// The memory cgroups under the server's cgroup parent that hold
/// processes, with their limits (cgroup v1 only: empty elsewhere).
fn busy_memory_cgroups(s: &Server) -> Vec<(String, u64)> {
    let parent = std::path::Path::new("/sys/fs/cgroup/memory").join(&s.cgroup_parent);
    let Ok(rd) = std::fs::read_dir(&parent) else {
        return Vec::new();
    };
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    rd.flatten()
        .filter(|e| e.path().is_dir())
        .filter(|e| !read(e.path().join("cgroup.procs")).trim().is_empty())
        .map(|e| {
            let limit = read(e.path().join("memory.limit_in_bytes"));
            (
                e.file_name().to_string_lossy().into_owned(),
                limit.trim().parse().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test]
async fn suspend_and_resume_ten_times_keep_files_and_processes() {
    let mut s = Server::start_with(Options {
        args: vec!["--suspend-linger-secs".into(), "2".into()],
        ..Options::default()
    })
    .await;
    let eph = s.create(json!({})).await;
    let (code, e) = s
        .post_status(&format!("/sandboxes/{eph}/suspend"), json!({}))
        .await;
    assert_eq!(code, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("ephemeral"), "{e}");

    let id = s.create(json!({"name": "keeper"})).await;
    let limit = busy_memory_cgroups(&s).first().map(|(_, l)| *l);
    start_bg(&s, &id, COUNTER).await;
    // A process whose output the agent collects across every restore.
    let talker = s
        .daemon(&id, Method::POST, "/processes")
        .json(&json!({"command": "sh", "args": ["-c", "i=0; while true; do i=$((i+1)); echo line$i; sleep 0.05; done"]}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    let lines = |v: Value| v["line_count"].as_u64().unwrap();
    let mut last = count(&s, "keeper").await;
    for round in 0..10 {
        s.sh("keeper", &format!("echo {round} > /root/round-{round}"))
            .await;
        let address = sandbox_ip(&id);
        s.suspend("keeper").await;
        // Its next run (the standby) was made during the checkpoint: it
        // waits, frozen (it costs no CPU), beside the old run still being
        // removed.
        let standby = standbys(&s, &id);
        assert_eq!(standby.len(), 1, "round {round}: {standby:?}");
        wait_until(Duration::from_secs(30), || frozen(&s, &standby[0])).await;
        // Three kinds of resume: at once and once the old run is gone, both
        // into the standby; after the linger, when nothing of it is left.
        let quick = round % 3 != 2;
        if round % 3 == 1 {
            wait_until(Duration::from_secs(30), || runs_on_disk(&s, &id) == standby).await;
        }
        if !quick {
            // Nothing of it stays on the host once its volume and network
            // have lingered for a quick resume (2 s here), its standby
            // neither.
            wait_until(Duration::from_secs(30), || {
                netns_of(std::slice::from_ref(&id)).is_empty()
            })
            .await;
            let runs = runs_on_disk(&s, &id);
            assert_eq!(runs, Vec::<String>::new(), "round {round}");
        }
        let (code, v) = s
            .post_status("/sandboxes/keeper/resume?wait_ms=30000", json!({}))
            .await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["status"], "running");
        assert_eq!(v["sandbox_id"], id.as_str());
        // A resume right after the suspend takes over the lingering network
        // (the same address); a later one gets a new slot (slots are handed
        // out in turn, so another address).
        assert_eq!(
            sandbox_ip(&id) == address,
            quick,
            "round {round}: address {address} then {}",
            sandbox_ip(&id)
        );
        // A quick resume runs beside the old sandbox still being removed,
        // in a cgroup of its own: whatever cgroup holds it has the limits.
        if let Some(limit) = limit {
            let busy = busy_memory_cgroups(&s);
            assert!(!busy.is_empty(), "round {round}: no cgroup holds it");
            for (cgroup, l) in busy {
                assert_eq!(l, limit, "round {round}: cgroup {cgroup}");
            }
        }
        let files = s.sh("keeper", "cat /root/round-*").await;
        let want: String = (0..=round).map(|i| format!("{i}\n")).collect();
        assert_eq!(files, want, "round {round}");
        let now = count(&s, "keeper").await;
        assert!(
            now >= last,
            "round {round}: counter went back {last} → {now}"
        );
        last = now;
    }
    let out = format!("/processes/{talker}/stdout");
    let before = lines(s.daemon_json("keeper", Method::GET, &out).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(count(&s, "keeper").await > last, "the counter stopped");
    let after = s.daemon_json("keeper", Method::GET, &out).await;
    assert!(
        lines(after.clone()) > before,
        "output no longer collected: {after}"
    );
    // Its exit is still noticed.
    let r = s
        .daemon("keeper", Method::DELETE, &format!("/processes/{talker}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let path = format!("/processes/{talker}");
    let mut status = Value::Null;
    for _ in 0..100 {
        status = s.daemon_json("keeper", Method::GET, &path).await;
        if status["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(status["status"], "running", "{status}");
    // Deleted while its volume and network linger with a standby made:
    // nothing is left.
    s.suspend("keeper").await;
    wait_until(Duration::from_secs(30), || !standbys(&s, &id).is_empty()).await;
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
    assert!(netns_of(std::slice::from_ref(&id)).is_empty());
    // No cgroup of any of its runs is left: a clean stop removes the parent.
    s.stop();
    assert!(
        cgroup_dirs(&s.cgroup_parent).is_empty(),
        "{:?}",
        cgroup_dirs(&s.cgroup_parent)
    );
}

/// A server killed while a resume right after a suspend restores (the old
/// sandbox may still be being removed) leaves the sandbox suspended, and
/// the restart removes both; one killed right after such a resume leaves
/// it running, and the restart adopts what runs and removes the rest.
#[tokio::test]
async fn killing_the_server_around_a_quick_resume_leaves_one_clean_sandbox() {
    let mut s = Server::start().await;
    let id = s.create(json!({"name": "quick"})).await;
    start_bg(&s, &id, COUNTER).await;
    s.sh("quick", "echo kept > /root/kept").await;
    let data_dir = s.data_dir.to_string_lossy().to_string();
    s.suspend("quick").await;
    let pid = s.child.as_ref().unwrap().id() as i32;
    let resume = s
        .req(Method::POST, "/sandboxes/quick/resume?wait_ms=30000")
        .json(&json!({}))
        .send();
    let kill = kill_once_seen(pid, "the restore", || runsc_running(&data_dir, "restore"));
    let (answer, ()) = tokio::join!(resume, kill);
    assert!(answer.is_err(), "answered although killed: {answer:?}");
    s.kill9();
    s.respawn().await;
    let (_, info) = s.get(&id).await;
    assert_eq!(info["status"], "suspended", "{info}");
    let runsc = runsc_containers(&s);
    assert!(runsc.is_empty(), "{runsc:?}");
    assert!(busy_memory_cgroups(&s).is_empty());

    let (code, v) = s
        .post_status("/sandboxes/quick/resume?wait_ms=30000", json!({}))
        .await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    // Now suspended and resumed at once, killed as soon as it answers.
    s.suspend("quick").await;
    let (code, v) = s
        .post_status("/sandboxes/quick/resume?wait_ms=30000", json!({}))
        .await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    s.kill9();
    s.respawn().await;
    let (_, info) = s.get(&id).await;
    assert_eq!(info["status"], "running", "{info}");
    assert_eq!(s.sh("quick", "cat /root/kept").await, "kept\n");
    let before = count(&s, "quick").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(count(&s, "quick").await > before, "the counter stopped");
    let runsc = runsc_containers(&s);
    assert_eq!(runsc.len(), 1, "{runsc:?}");
    // And it suspends and resumes again from there.
    for step in ["suspend", "resume"] {
        let (code, v) = s
            .post_status(&format!("/sandboxes/quick/{step}?wait_ms=30000"), json!({}))
            .await;
        assert_eq!(code, 200, "{step}: {v}");
    }
    assert_eq!(s.sh("quick", "cat /root/kept").await, "kept\n");
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
    s.stop();
    assert!(
        cgroup_dirs(&s.cgroup_parent).is_empty(),
        "{:?}",
        cgroup_dirs(&s.cgroup_parent)
    );
}

/// A server killed while a suspend checkpoints beside the standby it
/// makes (see the executor's `StandbyPlan`) leaves one sandbox: running
/// if the suspend was not recorded yet, else suspended; either way with
/// its files, and with no run of it beside the one it has.
#[tokio::test]
async fn killing_the_server_mid_suspend_leaves_one_clean_sandbox() {
    let mut s = Server::start().await;
    let id = s.create(json!({"name": "halfway"})).await;
    start_bg(&s, &id, COUNTER).await;
    // Memory enough that the checkpoint outlasts the standby's making.
    start_bg(
        &s,
        &id,
        "exec python3 -c 'import time; b = bytearray(b\"x\" * (300 << 20)); time.sleep(3600)'",
    )
    .await;
    s.sh("halfway", "echo kept > /root/kept").await;
    let pid = s.child.as_ref().unwrap().id() as i32;
    let suspend = s
        .req(Method::POST, "/sandboxes/halfway/suspend?wait_ms=30000")
        .json(&json!({}))
        .send();
    let kill = kill_once_seen(pid, "the standby", || !standbys(&s, &id).is_empty());
    let (answer, ()) = tokio::join!(suspend, kill);
    // Killed mid-checkpoint as a rule; where making the standby outlasts
    // the checkpoint, the suspend may have answered just before.
    let answered = answer.is_ok_and(|r| r.status().is_success());
    s.kill9();
    s.respawn().await;
    let (_, info) = s.get(&id).await;
    eprintln!(
        "killed mid-suspend (answered: {answered}): {}",
        info["status"]
    );
    match info["status"].as_str() {
        Some("running") => {
            assert!(!answered, "suspended, then found running: {info}");
            let before = count(&s, "halfway").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(count(&s, "halfway").await > before, "the counter stopped");
            assert_eq!(
                runs_on_disk(&s, &id).len(),
                1,
                "{:?}",
                runs_on_disk(&s, &id)
            );
        }
        Some("suspended") => {
            assert_eq!(runs_on_disk(&s, &id), Vec::<String>::new());
            let (code, v) = s
                .post_status("/sandboxes/halfway/resume?wait_ms=30000", json!({}))
                .await;
            assert_eq!(code, 200, "{v}");
        }
        _ => panic!("neither running nor suspended: {info}"),
    }
    assert!(standbys(&s, &id).is_empty(), "{:?}", standbys(&s, &id));
    assert_eq!(s.sh("halfway", "cat /root/kept").await, "kept\n");
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}

/// Kills (SIGKILL) the server process `pid` as soon as `seen` (`what`)
/// holds, polling every millisecond for up to 30 s.
async fn kill_once_seen(pid: i32, what: &str, seen: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !seen() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} was never seen"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // SAFETY: a signal to the server this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// The runs of sandbox `id` made and waiting for a restore (`created`),
/// from runsc's state files: `runsc list` would wait for sandboxes frozen
/// while idle.
fn standbys(s: &Server, id: &str) -> Vec<String> {
    run_states(s, id)
        .into_iter()
        .filter(|(_, status)| status == "created")
        .map(|(run, _)| run)
        .collect()
}

/// The runs of sandbox `id` runsc keeps state of (`id` or `r<n>-id`), by
/// name.
fn runs_on_disk(s: &Server, id: &str) -> Vec<String> {
    let mut runs: Vec<String> = run_states(s, id).into_iter().map(|(run, _)| run).collect();
    runs.sort();
    runs
}

/// Name and status of each run of sandbox `id` from runsc's state files
/// (`runsc list` waits for frozen sandboxes).
fn run_states(s: &Server, id: &str) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(s.data_dir.join("runsc")) else {
        return Vec::new();
    };
    let of_id = |run: &str| {
        run == id
            || run
                .strip_suffix(id)
                .and_then(|p| p.strip_prefix('r')?.strip_suffix('-'))
                .is_some_and(|n| n.parse::<u32>().is_ok())
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".state"))
        .filter_map(|e| {
            let state: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            let run = state["id"].as_str()?.to_string();
            let status = state["status"].as_str()?.to_string();
            of_id(&run).then_some((run, status))
        })
        .collect()
}

/// Whether the cgroup of run `run` is frozen (cgroup v1 or v2).
fn frozen(s: &Server, run: &str) -> bool {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    cgroup_dirs(&s.cgroup_parent).iter().any(|d| {
        read(d.join(run).join("freezer.state")).trim() == "FROZEN"
            || read(d.join(run).join("cgroup.events"))
                .lines()
                .any(|l| l == "frozen 1")
    })
}

/// The runsc containers of the server (whatever runs or was stopped).
fn runsc_containers(s: &Server) -> Vec<String> {
    let out = std::process::Command::new("runsc")
        .arg(format!("--root={}", s.data_dir.join("runsc").display()))
        .args(["list", "-quiet"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn timeouts_suspend_named_and_terminate_ephemeral_and_proxy_resumes() {
    let s = Server::start().await;
    let named = s.create(json!({"name": "sleepy", "timeout_secs": 2})).await;
    let eph = s.create(json!({"timeout_secs": 2})).await;
    s.sh(&named, "echo kept > /root/kept").await;
    let v = s
        .wait_status(&eph, "terminated", Duration::from_secs(30))
        .await;
    assert_eq!(v["termination_reason"], "timeout");
    s.wait_status(&named, "suspended", Duration::from_secs(30))
        .await;
    // Traffic through the proxy resumes it and is served.
    let out = s.sh("sleepy", "cat /root/kept").await;
    assert_eq!(out, "kept\n");
    assert_eq!(s.get(&named).await.1["status"], "running");
    // With auto_resume off, the proxy answers 409 instead.
    let r = s
        .req(Method::PATCH, "/sandboxes/sleepy")
        .json(&json!({"auto_resume": false}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (code, _) = s
        .post_status("/sandboxes/sleepy/suspend?wait_ms=30000", json!({}))
        .await;
    assert_eq!(code, 200);
    let r = s
        .daemon("sleepy", Method::GET, "/health")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    s.cleanup().await;
}

#[tokio::test]
async fn copy_makes_running_copies_from_one_memory_snapshot() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    start_bg(&s, &id, COUNTER).await;
    s.sh(&id, "echo from-source > /root/origin").await;
    let (code, e) = s
        .post_status(&format!("/sandboxes/{id}/copy?times=0"), json!({}))
        .await;
    assert_eq!(code, 400, "{e}");
    let (code, v) = s
        .post_status(&format!("/sandboxes/{id}/copy?times=3"), json!({}))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["source_sandbox_id"], id.as_str());
    let copies: Vec<String> = v["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["status"], "running", "{c}");
            c["sandbox_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(copies.len(), 3);
    for c in &copies {
        assert_eq!(s.sh(c, "cat /root/origin").await, "from-source\n");
        let first = count(&s, c).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(count(&s, c).await > first);
    }
    // The intermediate snapshot stays listed.
    let sid = v["snapshot_id"].as_str().unwrap();
    let snap = s.api_json(Method::GET, &format!("/snapshots/{sid}")).await;
    assert_eq!(snap["snapshot_type"], "memory");
    assert_eq!(s.get(&id).await.1["status"], "running");
    s.cleanup().await;
}

#[tokio::test]
async fn a_failed_capture_leaves_the_source_running_and_nothing_partial() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    let snaps = s.data_dir.join("snapshots");
    // Root ignores permissions; the immutable flag stops even root.
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&snaps)
            .status()
            .unwrap()
    };
    assert!(chattr("+i").success());
    let sid = s.start_snapshot(&id, "memory").await;
    let failed = s.wait_snapshot(&sid, &["failed"]).await;
    assert!(chattr("-i").success());
    assert!(
        failed["error"].as_str().unwrap().contains("capture"),
        "{failed}"
    );
    s.wait_status(&id, "running", Duration::from_secs(10)).await;
    assert_eq!(s.sh(&id, "echo alive").await, "alive\n");
    let left: Vec<_> = std::fs::read_dir(&snaps).unwrap().collect();
    assert!(left.is_empty(), "partial artifacts: {left:?}");
    let (code, _) = s
        .post_status("/sandboxes", json!({"snapshot_id": sid}))
        .await;
    assert_eq!(code, 409);
    s.cleanup().await;
}

/// gVisor stops a sandbox whose checkpoint fails unless the checkpoint
/// leaves it running: a suspend whose image cannot be written (here a
/// 1 MB tmpfs where it goes) must leave the sandbox and its processes
/// running, and say why.
#[tokio::test]
async fn a_failed_suspend_leaves_the_sandbox_and_its_processes_running() {
    let s = Server::start().await;
    let id = s.create(json!({"name": "stays"})).await;
    start_bg(&s, &id, COUNTER).await;
    s.sh(&id, "echo kept > /root/file").await;
    let tmp = s.data_dir.join(format!("sandboxes/{id}/.suspend.tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(mount.success());
    let (code, e) = s
        .post_status("/sandboxes/stays/suspend?wait_ms=30000", json!({}))
        .await;
    let umount = std::process::Command::new("umount")
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(umount.success());
    assert_eq!(code, 503, "{e}");
    let message = e["message"].as_str().unwrap();
    // What the runtime says of a full disk varies (gVisor's encoder may
    // even fail on a nil pointer after the write error).
    assert!(
        message.contains("suspend failed (the sandbox keeps running)"),
        "{e}"
    );
    assert_eq!(s.get(&id).await.1["status"], "running");
    let before = count(&s, &id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(count(&s, &id).await > before, "its processes stopped");
    // The standby made during the checkpoint is gone, and the sandbox's
    // end of its link holds no address again (gVisor's own stack does;
    // the host's would answer the sandbox's packets).
    assert_eq!(runs_on_disk(&s, &id), vec![id.clone()]);
    let out = std::process::Command::new("ip")
        .args(["-n", &format!("sbx-{id}"), "-o", "-4", "address", "show"])
        .output()
        .unwrap();
    let addresses = String::from_utf8_lossy(&out.stdout);
    assert!(addresses.lines().all(|l| l.contains(" lo ")), "{addresses}");
    // Once the image can be written, it suspends and resumes as usual.
    s.suspend("stays").await;
    let (code, v) = s
        .post_status("/sandboxes/stays/resume?wait_ms=30000", json!({}))
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(s.sh(&id, "cat /root/file").await, "kept\n");
    assert!(count(&s, &id).await >= before);
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}

#[tokio::test]
async fn killing_the_server_mid_snapshot_leaves_a_clean_state() {
    let mut s = Server::start().await;
    let id = s.create(json!({"name": "victim"})).await;
    // Enough memory that the capture is still under way when the server dies.
    start_bg(
        &s,
        &id,
        "exec python3 -c 'import os, time; b = bytearray(os.urandom(200 << 20)); time.sleep(3600)'",
    )
    .await;
    // And enough written that its layer is still being copied too.
    s.sh(&id, "head -c 300M /dev/zero > /root/big && sync")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sid = s.start_snapshot(&id, "memory").await;
    // Killed while it copies the layer (the `cp` of it is seen running).
    let data_dir = s.data_dir.to_string_lossy().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while copies_into(&data_dir).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the capture's copy was never seen"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    s.kill9();
    // Nothing the killed server started to copy runs on: the `cp` seen
    // just now (300 MB to go) dies with the server instead of finishing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        copies_into(&data_dir).is_empty(),
        "{:?}",
        copies_into(&data_dir)
    );
    s.spawn().await;
    let snap = s.api_json(Method::GET, &format!("/snapshots/{sid}")).await;
    let st = snap["status"].as_str().unwrap();
    assert!(
        ["failed", "local_ready", "completed"].contains(&st),
        "{snap}"
    );
    let (_, info) = s.get(&id).await;
    assert_eq!(info["status"], "running", "{info}");
    assert_eq!(s.sh(&id, "echo alive").await, "alive\n");
    let tmp: Vec<_> = std::fs::read_dir(s.data_dir.join("snapshots"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    // Nor does an upload it cut short leave temporary files in the store.
    let store_tmp = s.data_dir.join("store/tmp");
    let left: Vec<_> = std::fs::read_dir(&store_tmp)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // The volume's own snapshot the capture was copying from is gone too.
    let captures = captures_in_volume(&s, &id);
    assert!(captures.is_empty(), "{captures:?}");
    s.cleanup().await;
}

#[tokio::test]
async fn killing_the_server_while_a_capture_pauses_the_sandbox_leaves_it_running() {
    let mut s = Server::start().await;
    let id = s.create(json!({"name": "paused-victim"})).await;
    start_bg(&s, &id, COUNTER).await;
    start_bg(
        &s,
        &id,
        "exec python3 -c 'import os, time; b = bytearray(os.urandom(300 << 20)); time.sleep(3600)'",
    )
    .await;
    s.sh(&id, "sleep 4").await;
    let before = count(&s, &id).await;
    s.start_snapshot(&id, "memory").await;
    // Killed while the memory image is written: the sandbox is paused then.
    let data_dir = s.data_dir.to_string_lossy().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !runsc_running(&data_dir, "checkpoint") {
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint was never seen"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    s.kill9();
    s.spawn().await;
    let (_, info) = s.get(&id).await;
    assert_eq!(info["status"], "running", "{info}");
    // It runs on: its processes count again and it answers.
    let after = count(&s, &id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(count(&s, &id).await > after.max(before));
    assert_eq!(s.sh(&id, "echo alive").await, "alive\n");
    // A capture after the restart works.
    let snap = s.snapshot(&id, "memory").await;
    assert_eq!(snap["status"], "completed", "{snap}");
    s.cleanup().await;
}

/// The capture snapshots (`.capture-<sid>`) in sandbox `id`'s volume.
fn captures_in_volume(s: &Server, id: &str) -> Vec<String> {
    let volume = s.data_dir.join("sandboxes").join(id).join("disk");
    std::fs::read_dir(&volume)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".capture-"))
        .collect()
}

/// Whether a `runsc <subcommand>` of the server on `data_dir` runs.
fn runsc_running(data_dir: &str, subcommand: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            return false;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        args.first().is_some_and(|a| a.ends_with("runsc"))
            && args.iter().any(|a| a == subcommand)
            && args.iter().any(|a| a.contains(data_dir))
    })
}

#[tokio::test]
async fn snapshots_of_a_sandbox_with_600_mb_written_restore_every_byte() {
    let s = Server::start().await;
    let id = s.create(json!({})).await;
    start_bg(&s, &id, COUNTER).await;
    s.sh(
        &id,
        "mkdir -p /data && for i in 1 2 3 4 5 6; do head -c 100M /dev/urandom > /data/f$i; done && \
         mkdir -p /data/many && for i in $(seq 500); do echo $i > /data/many/$i; done && \
         rm /etc/motd",
    )
    .await;
    let sums = "cd /data && sha256sum f1 f2 f3 f4 f5 f6 && cat many/* | sha256sum && \
                ls /etc/motd 2>&1; du -sm /data | cut -f1";
    let want = s.sh(&id, sums).await;
    assert!(want.contains("No such file"), "{want}");
    let mb: u64 = want.lines().last().unwrap().trim().parse().unwrap();
    assert!(mb > 500, "{want}");
    let mut restored = Vec::new();
    for kind in ["memory", "filesystem"] {
        let snap = s.snapshot(&id, kind).await;
        assert_eq!(snap["status"], "completed", "{snap}");
        assert!(snap["pause_ms"].as_u64().is_some(), "{snap}");
        assert!(snap["size_bytes"].as_u64().unwrap() > 600 << 20, "{snap}");
        let copy = s.create(json!({"snapshot_id": snap["snapshot_id"]})).await;
        assert_eq!(s.sh(&copy, sums).await, want, "{kind} snapshot");
        restored.push((kind, copy));
    }
    // The memory snapshot's processes run on in its restore.
    let (_, warm) = &restored[0];
    let first = count(&s, warm).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(count(&s, warm).await > first);
    // The source is untouched and its capture left nothing in its volume.
    assert_eq!(s.sh(&id, sums).await, want);
    let left = captures_in_volume(&s, &id);
    assert!(left.is_empty(), "{left:?}");
    s.cleanup().await;
}

/// `cp` processes with an argument under `data_dir`.
fn copies_into(data_dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().is_some_and(|a| a == "cp") && args.iter().any(|a| a.contains(data_dir)) {
            found.push(args.join(" "));
        }
    }
    found
}
