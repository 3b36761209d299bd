//! Warm pools: booted sandboxes handed out by a claim, refilled behind it,
//! capped, recycled when their template changes.

use reqwest::Method;
use sbx_e2e::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn send(s: &Server, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = s.req(method, path);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The pool's containers as (state, id), once `want` of them are idle.
async fn wait_idle(s: &Server, pool: &str, want: usize) -> Vec<(String, String)> {
    let mut containers = Vec::new();
    for _ in 0..300 {
        let (code, v) = send(s, Method::GET, &format!("/sandbox-pools/{pool}"), None).await;
        assert_eq!(code, 200, "{v}");
        containers = v["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["state"].as_str().unwrap().to_string(),
                    c["id"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>();
        let idle = containers.iter().filter(|(st, _)| st == "Idle").count();
        // Idle and running (a warm one still starting is listed idle too).
        let running = futures_running(s, &containers).await;
        if idle == want && running {
            return containers;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pool {pool} never had {want} idle sandboxes: {containers:?}");
}

/// Whether every listed sandbox runs.
async fn futures_running(s: &Server, containers: &[(String, String)]) -> bool {
    for (_, id) in containers {
        if s.get(id).await.1["status"] != "running" {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn a_pool_hands_out_warm_sandboxes_and_refills_within_its_cap() {
    let s = Server::start().await;
    // Bad pools change nothing.
    for bad in [
        json!({"warm_containers": 1000}),
        json!({"warm_containers": 2, "max_containers": 1}),
        json!({"image": "no-such-image"}),
        json!({"resources": {"memory_mb": 1}}),
    ] {
        let (code, v) = send(&s, Method::POST, "/sandbox-pools", Some(bad)).await;
        assert_eq!(code, 400, "{v}");
    }
    let (code, v) = send(&s, Method::GET, "/sandbox-pools/pool-none", None).await;
    assert_eq!(code, 404, "{v}");
    let (code, v) = send(
        &s,
        Method::POST,
        "/sandbox-pools",
        Some(
            json!({"image": "default", "warm_containers": 2, "max_containers": 3,
                    "resources": {"cpus": 1, "memory_mb": 1024}}),
        ),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let pool = v["pool_id"].as_str().unwrap().to_string();
    let warm = wait_idle(&s, &pool, 2).await;
    // Warm sandboxes are the pool's, not listed as the user's.
    let listed = s.api_json(Method::GET, "/sandboxes").await;
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 0, "{listed}");

    // A claim hands over a running warm sandbox, named if asked.
    let claim = format!("/sandbox-pools/{pool}/sandboxes");
    let (code, v) = send(&s, Method::POST, &claim, Some(json!({"name": "mine"}))).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    let first = v["sandbox_id"].as_str().unwrap().to_string();
    assert!(warm.iter().any(|(_, id)| *id == first), "{warm:?} {first}");
    let (_, info) = s.get("mine").await;
    assert_eq!(info["pool_id"], pool.as_str(), "{info}");
    assert_eq!(s.sh("mine", "echo claimed").await, "claimed\n");
    // The pool refills to two warm ones: three in all, its cap.
    let now = wait_idle(&s, &pool, 2).await;
    assert_eq!(now.len(), 3, "{now:?}");
    // Two more claims empty it; the cap keeps it from refilling.
    let mut claimed = vec![first];
    for _ in 0..2 {
        let (code, v) = send(&s, Method::POST, &claim, None).await;
        assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
        claimed.push(v["sandbox_id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, v) = send(&s, Method::GET, &format!("/sandbox-pools/{pool}"), None).await;
    assert_eq!(v["containers"].as_array().unwrap().len(), 3, "{v}");
    // At the cap a claim waits (`pool_at_capacity`) until one ends.
    let r = s
        .req(Method::POST, &claim)
        .header("x-tensorlake-request-timeout-ms", "1500")
        .header("x-tensorlake-request-timeout-grace-ms", "0")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "pending", "{v}");
    assert_eq!(v["pending_reason"], "pool_at_capacity", "{v}");
    let waiting = v["sandbox_id"].as_str().unwrap().to_string();
    // A pool with claimed sandboxes is in use.
    let (code, v) = send(&s, Method::DELETE, &format!("/sandbox-pools/{pool}"), None).await;
    assert_eq!(
        (code, v["code"].as_str()),
        (409, Some("pool_in_use")),
        "{v}"
    );
    assert_eq!(s.delete(&claimed[0]).await, 200);
    let mut v = Value::Null;
    for _ in 0..300 {
        v = s.get(&waiting).await.1;
        if v["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(s.sh(&waiting, "echo waited").await, "waited\n");

    // A new template: warm ones are recycled (none now), new claims get it.
    for id in claimed.iter().skip(1).chain([&waiting]) {
        assert_eq!(s.delete(id).await, 200);
    }
    let (code, v) = send(
        &s,
        Method::PUT,
        &format!("/sandbox-pools/{pool}"),
        Some(json!({"image": "default", "warm_containers": 1,
                    "resources": {"cpus": 1, "memory_mb": 2048}})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["resources"]["memory_mb"], 2048, "{v}");
    let warm = wait_idle(&s, &pool, 1).await;
    let (_, info) = s
        .get(&warm.iter().find(|(st, _)| st == "Idle").unwrap().1)
        .await;
    assert_eq!(info["resources"]["memory_mb"], 2048, "{info}");
    let (code, v) = send(&s, Method::GET, "/sandbox-pools", None).await;
    assert_eq!(
        (code, v["pools"].as_array().unwrap().len()),
        (200, 1),
        "{v}"
    );

    // Every claim that got a running sandbox is in the claim histogram (the
    // one that waited for room is counted by its background task, once it
    // sees its sandbox run).
    let mut claims = 0.0;
    for _ in 0..100 {
        let text = s
            .req_root(Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        claims = text
            .lines()
            .find_map(|l| l.strip_prefix("sbx_pool_claim_seconds_count "))
            .expect("the claim histogram")
            .trim()
            .parse()
            .unwrap();
        if claims >= 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(claims >= 4.0, "{claims}");

    // Deleted, its warm sandboxes go too.
    let (code, v) = send(&s, Method::DELETE, &format!("/sandbox-pools/{pool}"), None).await;
    assert_eq!(code, 200, "{v}");
    s.cleanup().await;
    wait_until(Duration::from_secs(30), || s.host_leftovers().is_empty()).await;
}
