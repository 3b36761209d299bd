//! Sandbox lifecycle over the HTTP API with real gVisor sandboxes.

use reqwest::Method;
use sbx_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn create_get_list_rename_delete_by_id_and_name() {
    let s = Server::start().await;
    let id = s.create(json!({"name": "box1"})).await;
    let (code, info) = s.get(&id).await;
    assert_eq!(code, 200);
    assert_eq!(info["status"], "running");
    assert_eq!(info["name"], "box1");
    assert_eq!(info["namespace"], "default");
    assert_eq!(
        info["resources"],
        json!({"cpus": 1.0, "memory_mb": 1024, "disk_mb": 10240})
    );
    assert!(info["sandbox_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}", s.proxy_port)));
    assert!(info["created_at"].is_string());
    // By name, as the same sandbox.
    let (_, by_name) = s.get("box1").await;
    assert_eq!(by_name["sandbox_id"], id.as_str());
    // A second sandbox may not take the name.
    let r = s
        .req(Method::POST, "/sandboxes")
        .json(&json!({"name": "box1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "conflict");
    // An ephemeral sandbox next to it; the list has both.
    let eph = s.create(json!({})).await;
    let list: Value = s.api_json(Method::GET, "/sandboxes").await;
    let ids: Vec<&str> = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["sandbox_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&id.as_str()) && ids.contains(&eph.as_str()),
        "{list}"
    );
    let running: Value = s.api_json(Method::GET, "/sandboxes?status=running").await;
    assert!(running["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["status"] == "running"));
    // Flat routes serve the default namespace too.
    let flat: Value = s
        .http
        .get(format!("{}/sandboxes/{id}", s.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(flat["sandbox_id"], id.as_str());
    // Rename, then the old name is gone and the new one works.
    let r = s
        .req(Method::PATCH, &format!("/sandboxes/{id}"))
        .json(&json!({"name": "box2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.get("box1").await.0, 404);
    assert_eq!(s.get("box2").await.1["sandbox_id"], id.as_str());
    let r = s
        .req(Method::PATCH, &format!("/sandboxes/{eph}"))
        .json(&json!({"name": "box2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Delete by name, idempotently; it stays visible as terminated.
    assert_eq!(s.delete("box2").await, 200);
    assert_eq!(s.delete(&id).await, 200);
    let (_, gone) = s.get(&id).await;
    assert_eq!(gone["status"], "terminated");
    assert!(gone["terminated_at"].is_string());
    let all: Value = s.api_json(Method::GET, "/sandboxes?all=true").await;
    assert!(all["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["sandbox_id"] == id.as_str()));
    let live: Value = s.api_json(Method::GET, "/sandboxes").await;
    assert!(!live["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["sandbox_id"] == id.as_str()));
    // The name is free again once its holder is terminated.
    let again = s.create(json!({"name": "box2"})).await;
    assert_ne!(again, id);
    assert_eq!(s.delete("nope-not-here").await, 404);
    s.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_a_400_and_creates_nothing() {
    let s = Server::start().await;
    for body in [
        json!({"resources": {"cpus": 0}}),
        json!({"resources": {"cpus": 64}}),
        json!({"resources": {"memory_mb": 100}}),
        json!({"resources": {"cpus": 1, "memory_mb": 100000}}),
        json!({"resources": {"disk_mb": 1}}),
        json!({"image": "no-such-image"}),
        json!({"name": "not a name"}),
        json!({"exposed_ports": [9501]}),
    ] {
        let r = s
            .req(Method::POST, "/sandboxes")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "invalid_argument", "{body}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    let r = s
        .req(Method::POST, "/sandboxes")
        .json(&json!({"image": "no-such-image"}))
        .send()
        .await
        .unwrap();
    let e: Value = r.json().await.unwrap();
    assert!(
        e["message"].as_str().unwrap().contains("default"),
        "names the images: {e}"
    );
    let r = s
        .req(Method::POST, "/sandboxes")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A namespace in the path is checked before anything else.
    for ns in ["bad%20ns", "ctl%07", "a%2Fb", &"n".repeat(129)] {
        let r = s
            .req_in(ns, Method::POST, "/sandboxes")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{ns}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "invalid_argument", "{ns}");
        assert!(e["message"].as_str().unwrap().contains("namespace"), "{e}");
    }
    let listed = s.api_json_in("team-a.dev", Method::GET, "/sandboxes").await;
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 0, "{listed}");
    let all: Value = s.api_json(Method::GET, "/sandboxes?all=true").await;
    assert_eq!(all["sandboxes"].as_array().unwrap().len(), 0, "{all}");
    assert!(s.host_leftovers().is_empty());
}

#[tokio::test]
async fn no_wait_create_answers_pending_then_runs() {
    let s = Server::start().await;
    let r = s
        .req(Method::POST, "/sandboxes")
        .json(&json!({"wait": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "pending");
    let id = v["sandbox_id"].as_str().unwrap().to_string();
    let mut status = String::new();
    for _ in 0..300 {
        status = s.get(&id).await.1["status"].as_str().unwrap().to_string();
        if status == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "running");
    assert_eq!(s.sh(&id, "echo ready").await, "ready\n");
    s.cleanup().await;
}

#[tokio::test]
async fn terminate_leaves_nothing_on_the_host() {
    let s = Server::start().await;
    // A bodyless POST (no content type either) creates with defaults.
    let r = s.req(Method::POST, "/sandboxes").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "running", "{v}");
    let a = v["sandbox_id"].as_str().unwrap().to_string();
    let b = s.create(json!({"name": "keep"})).await;
    assert_eq!(netns_of(&[a.clone(), b.clone()]).len(), 2);
    let a_ip = sandbox_ip(&a);
    assert_eq!(s.delete(&a).await, 200);
    let dir = s.data_dir.join("sandboxes").join(&a);
    wait_until(Duration::from_secs(30), || !dir.exists()).await;
    // Its address now leads nowhere (the host's blackhole for the sandbox
    // range): `ip route get` finds no route, so nothing can leave the host.
    let route = std::process::Command::new("ip")
        .args(["route", "get", &a_ip])
        .output()
        .unwrap();
    assert!(
        !route.status.success(),
        "{}",
        String::from_utf8_lossy(&route.stdout)
    );
    assert!(netns_of(std::slice::from_ref(&a)).is_empty());
    assert!(!s.cgroup("memory", &a).exists());
    let left = s.host_leftovers();
    assert!(
        left.iter().all(|l| l.contains(&b)),
        "only b remains: {left:?}"
    );
    s.cleanup().await;
    assert!(netns_of(&[b]).is_empty());
}

#[tokio::test]
async fn sandbox_times_out_and_is_terminated() {
    let s = Server::start().await;
    let id = s.create(json!({"timeout_secs": 2})).await;
    let mut info = Value::Null;
    for _ in 0..100 {
        info = s.get(&id).await.1;
        if info["status"] == "terminated" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(info["status"], "terminated", "{info}");
    assert_eq!(info["termination_reason"], "timeout");
    wait_until(Duration::from_secs(30), || s.host_leftovers().is_empty()).await;
}

#[tokio::test]
async fn crash_and_restart_adopts_running_sandboxes_and_cleans_the_rest() {
    let mut s = Server::start().await;
    let keep = s.create(json!({"name": "survivor"})).await;
    s.sh(&keep, "echo kept > /root/mark").await;
    s.kill9();
    // A sandbox whose runtime died while the server was down: kill its runsc container.
    s.spawn().await;
    let (_, info) = s.get(&keep).await;
    assert_eq!(info["status"], "running", "{info}");
    assert_eq!(s.sh(&keep, "cat /root/mark").await, "kept\n");
    // Now break one on purpose behind the server's back and crash again.
    let doomed = s.create(json!({})).await;
    s.kill9();
    let runsc_root = s.data_dir.join("runsc");
    let st = std::process::Command::new("runsc")
        .arg(format!("--root={}", runsc_root.display()))
        .args(["delete", "--force", &doomed])
        .status()
        .unwrap();
    assert!(st.success());
    s.spawn().await;
    let (_, d) = s.get(&doomed).await;
    assert_eq!(d["status"], "terminated", "{d}");
    let left = s.host_leftovers();
    assert!(left.iter().all(|l| !l.contains(&doomed)), "{left:?}");
    assert!(netns_of(&[doomed]).is_empty());
    assert_eq!(s.get(&keep).await.1["status"], "running");
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty());
}

#[tokio::test]
async fn auth_is_required_when_keys_are_set() {
    let s = Server::start_with(Options {
        key: Some("sekret".into()),
        ..Options::default()
    })
    .await;
    let r = s.http.get(s.url("/sandboxes")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "unauthorized");
    let r = s
        .http
        .get(s.url("/sandboxes"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Probes need no key: /healthz says only whether it is up and ready.
    let r = s
        .http
        .get(format!("{}/healthz", s.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["ready"], true);
    for path in ["/metrics", "/v1/nodes", "/openapi.json"] {
        let r = s.http.get(format!("{}{path}", s.api)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let id = s.create(json!({})).await;
    // The proxy checks too.
    let r = s
        .http
        .get(format!("{}/api/v1/health", s.proxy))
        .header("X-Tensorlake-Sandbox-Id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = s.daemon(&id, Method::GET, "/health").send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.cleanup().await;
}

#[tokio::test]
async fn proxy_answers_404_and_409_in_json() {
    let s = Server::start().await;
    let r = s
        .daemon("sbx00000000000000000000", Method::GET, "/health")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let id = s.create(json!({})).await;
    // Host: {id}.local routing works like the header.
    let r = s
        .http
        .get(format!("{}/api/v1/health", s.proxy))
        .header("Host", format!("{id}.local"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["healthy"], true);
    s.delete(&id).await;
    let r = s.daemon(&id, Method::GET, "/health").send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "conflict");
    s.cleanup().await;
}

#[test]
fn server_refuses_public_address_without_a_key() {
    let out = std::process::Command::new(sbx_bin())
        .args([
            "server",
            "--api-addr",
            "0.0.0.0:0",
            "--data-dir",
            "/var/tmp/sbx-e2e-refuse",
        ])
        .env_remove("SBX_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("API key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_sandbox_that_cannot_start_is_a_503_and_leaves_nothing() {
    let mut s = Server::start().await;
    // Break the runtime's input behind the server's back: no agent to boot.
    std::fs::remove_file(s.data_dir.join("agent/sbx-agent")).unwrap();
    let r = s
        .req(Method::POST, "/sandboxes")
        .json(&json!({"name": "doomed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "unavailable");
    assert!(
        e["message"].as_str().unwrap().contains("failed to start"),
        "{e}"
    );
    let (_, info) = s.get("doomed").await;
    assert_eq!(info["status"], "failed");
    assert!(info["error_details"]["message"].is_string(), "{info}");
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
    // SIGTERM stops the server cleanly, and it leaves no mount behind
    // (its spare volumes included).
    let status = s.stop().unwrap();
    assert!(status.success(), "{status:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let data_dir = s.data_dir.to_string_lossy().to_string();
    assert!(!mounts.contains(&data_dir), "mounts left under {data_dir}");
}

#[tokio::test]
async fn a_sandbox_whose_agent_exits_fails_at_once_with_why() {
    let s = Server::start().await;
    // PID 1 exits at once: the sandbox stops before any agent answers.
    let agent = s.data_dir.join("agent/sbx-agent");
    std::fs::remove_file(&agent).unwrap();
    std::fs::copy("/bin/true", &agent).unwrap();
    let r = s
        .req(Method::POST, "/sandboxes")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    // Not the 30 s health timeout: the executor saw the sandbox stop.
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("stopped before its agent answered"),
        "{e}"
    );
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
    s.cleanup().await;
}

#[tokio::test]
async fn a_stop_right_after_a_delete_finishes_the_teardown() {
    let mut s = Server::start().await;
    let id = s.create(json!({})).await;
    assert_eq!(s.delete(&id).await, 200);
    // The teardown runs in the background; SIGTERM at once must wait for it.
    let status = s.stop().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
    assert!(netns_of(std::slice::from_ref(&id)).is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let data_dir = s.data_dir.to_string_lossy().to_string();
    assert!(!mounts.contains(&data_dir), "mounts left under {data_dir}");
}

#[tokio::test]
async fn a_create_the_host_cannot_hold_is_refused_and_creates_nothing() {
    let refused = |v: &Value, why: &str| {
        assert_eq!(v["code"], "no_resources_available", "{v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{v}");
    };
    let s = Server::start_with(Options {
        args: vec!["--max-sandboxes".into(), "1".into()],
        ..Options::default()
    })
    .await;
    let first = s.create(json!({})).await;
    for body in [json!({}), json!({"wait": false})] {
        let (code, v) = s.post_status("/sandboxes", body).await;
        assert_eq!(code, 503);
        refused(&v, "--max-sandboxes");
    }
    let all = s.api_json(Method::GET, "/sandboxes?all=true").await;
    assert_eq!(all["sandboxes"].as_array().unwrap().len(), 1, "{all}");
    // Room again once the first is gone.
    s.delete(&first).await;
    s.cleanup().await;
    let second = s.create(json!({})).await;
    assert_eq!(s.sh(&second, "echo ok").await, "ok\n");
    // With max_pending_secs a create waits for room instead: placed once
    // the running one is gone; one that waits too long fails saying why.
    let (code, v) = s
        .post_status(
            "/sandboxes",
            json!({"wait": false, "max_pending_secs": 120}),
        )
        .await;
    assert_eq!((code, v["status"].as_str()), (202, Some("pending")), "{v}");
    assert_eq!(v["pending_reason"], "no_resources_available", "{v}");
    let waiting = v["sandbox_id"].as_str().unwrap().to_string();
    let (code, v) = s
        .post_status("/sandboxes", json!({"wait": false, "max_pending_secs": 1}))
        .await;
    assert_eq!(code, 202, "{v}");
    let late = v["sandbox_id"].as_str().unwrap().to_string();
    let status_of = |id: String| {
        let s = &s;
        async move { s.get(&id).await.1 }
    };
    let mut v = Value::Null;
    for _ in 0..100 {
        v = status_of(late.clone()).await;
        if v["status"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["termination_reason"], "no_resources_available", "{v}");
    v = status_of(waiting.clone()).await;
    assert_eq!(
        (v["status"].as_str(), v["pending_reason"].as_str()),
        (Some("pending"), Some("no_resources_available")),
        "{v}"
    );
    let (code, err) = s
        .post_status("/sandboxes", json!({"max_pending_secs": 100000}))
        .await;
    assert_eq!(code, 400, "{err}");
    s.delete(&second).await;
    for _ in 0..300 {
        v = status_of(waiting.clone()).await;
        if v["status"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(s.sh(&waiting, "echo placed").await, "placed\n");
    s.cleanup().await;
    drop(s);

    // A reserve larger than the host's memory leaves room for nothing.
    let s = Server::start_with(Options {
        args: vec!["--memory-reserve-mb".into(), "100000000".into()],
        ..Options::default()
    })
    .await;
    let (code, v) = s.post_status("/sandboxes", json!({})).await;
    assert_eq!(code, 503);
    refused(&v, "--memory-reserve-mb");
    let all = s.api_json(Method::GET, "/sandboxes?all=true").await;
    assert!(all["sandboxes"].as_array().unwrap().is_empty(), "{all}");
    drop(s);

    // `--max-pending-secs`: creates that say nothing wait for room; one
    // that asks for 0 is still refused at once.
    let s = Server::start_with(Options {
        args: ["--max-sandboxes", "1", "--max-pending-secs", "60"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })
    .await;
    let first = s.create(json!({})).await;
    let (code, v) = s.post_status("/sandboxes", json!({"wait": false})).await;
    assert_eq!(
        (code, v["pending_reason"].as_str()),
        (202, Some("no_resources_available")),
        "{v}"
    );
    let waiting = v["sandbox_id"].as_str().unwrap().to_string();
    let (code, v) = s
        .post_status("/sandboxes", json!({"max_pending_secs": 0}))
        .await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(s.delete(&first).await, 200);
    let mut v = Value::Null;
    for _ in 0..300 {
        v = s.get(&waiting).await.1;
        if v["status"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(v["status"], "running", "{v}");
    s.cleanup().await;
}
