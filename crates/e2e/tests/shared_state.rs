//! `sbx server` with its state in PostgreSQL (`--state`) and its snapshots
//! and images in S3 (`--blobs`): a real PostgreSQL and a real S3 server
//! (SeaweedFS), each started by the test with its data in a temp dir. Where
//! a test runs servers side by side, each is on a host of its own: a network
//! namespace on the bridge of a network of the test's ([`TestNet`]), where
//! PostgreSQL and S3 listen too. A test of one server keeps all on
//! 127.0.0.1.

use reqwest::Method;
use sbx_e2e::*;
use sbx_testkit::net::{Host, TestNet};
use sbx_testkit::postgres::Postgres;
use sbx_testkit::s3::S3Server;
use serde_json::json;
use std::time::Duration;

/// Server options for state in `pg` and blobs in bucket `sbx` of `s3`.
fn on(pg: &Postgres, s3: &S3Server, db: &str) -> Options {
    s3.create_bucket("sbx");
    Options {
        args: vec![
            "--state".into(),
            pg.create_database(db),
            "--blobs".into(),
            s3.url("sbx"),
        ],
        env: vec![
            ("AWS_ACCESS_KEY_ID".into(), s3.access_key().into()),
            ("AWS_SECRET_ACCESS_KEY".into(), s3.secret_key().into()),
        ],
        ..Default::default()
    }
}

/// Ends every sandbox of `servers` and checks their hosts hold nothing.
async fn clean(servers: &[&Server]) {
    for s in servers {
        s.cleanup().await;
    }
    for s in servers {
        assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
    }
}

/// A shared API key of servers on hosts of the test's network.
const KEY: &str = "e2e-cluster-key-0123456789";

/// Two servers on one database and bucket (`db`), each with its own node
/// on a host of its own: network namespaces 0 and 1 of a [`TestNet`] whose
/// bridge PostgreSQL and S3 listen on. Nodes are lost after `lost_secs`.
/// Bind all five in this order: the servers, declared last, are dropped
/// first (their cleanup needs the database), the network last.
async fn two_servers(db: &str, lost_secs: u32) -> (TestNet, Postgres, S3Server, Server, Server) {
    let net = TestNet::new(2);
    let pg = Postgres::start_on(net.gateway(), &net.cidr());
    let s3 = S3Server::start_on(net.gateway());
    let mut opts = on(&pg, &s3, db);
    opts.args
        .extend(["--node-lost-secs".into(), lost_secs.to_string()]);
    // Both nodes are on this one host, where a sandbox's network namespace
    // has the same name on either: a suspend releases it at once, so that
    // the other node can resume the sandbox.
    opts.args
        .extend(["--suspend-linger-secs".into(), "0".into()]);
    opts.key = Some(KEY.into());
    let (a, b) = Server::start_pair(opts, (net.host(0), net.host(1))).await;
    (net, pg, s3, a, b)
}

/// Options of a control plane on `db` that runs no sandboxes and takes
/// nodes presenting `token`; nodes are lost after 8 s.
fn control_plane(pg: &Postgres, s3: &S3Server, db: &str, token: &str) -> Options {
    let mut opts = on(pg, s3, db);
    opts.args.extend(
        [
            "--no-local-node",
            "--node-token",
            token,
            "--node-lost-secs",
            "8",
        ]
        .map(String::from),
    );
    opts
}

/// A node that joins control plane `cp` with `token`, in `host`'s network
/// namespace (`None`: the test's own); it shares `cp`'s API key.
async fn join_node(cp: &Server, token: &str, host: Option<Host>) -> Server {
    Server::start_with(Options {
        command: ["node", "--server", &cp.api, "--node-token", token]
            .map(String::from)
            .to_vec(),
        key: cp.key.clone(),
        netns: host,
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn a_server_on_postgres_and_s3_keeps_sandboxes_and_snapshots_across_restarts() {
    let pg = Postgres::start();
    let s3 = S3Server::start();
    let mut s = Server::start_with(on(&pg, &s3, "sbx")).await;
    assert!(
        !s.data_dir.join("state.db").exists(),
        "the state is in PostgreSQL, not in the data dir"
    );
    let id = s.create(json!({"name": "keeper"})).await;
    s.sh(&id, "echo kept > /root/f").await;
    // A name is unique among live sandboxes: PostgreSQL's partial index.
    let (code, err) = s.post_status("/sandboxes", json!({"name": "keeper"})).await;
    assert_eq!(code, 409, "{err}");
    let snap = s.snapshot(&id, "filesystem").await;
    let sid = snap["snapshot_id"].as_str().unwrap().to_string();
    // `completed`: its manifest and chunks are in the bucket, not in the data dir.
    assert_eq!(s3.keys("sbx", &format!("manifests/{sid}")).len(), 1);
    assert!(!s3.keys("sbx", "chunks/").is_empty());
    assert!(!s.data_dir.join("store/manifests").exists());

    // Killed and started again: everything is read back from PostgreSQL.
    s.kill9();
    s.respawn().await;
    let (code, v) = s.get("keeper").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(s.sh("keeper", "cat /root/f").await, "kept\n");
    let listed = s.api_json(Method::GET, "/snapshots").await;
    assert_eq!(
        listed["snapshots"][0]["snapshot_id"],
        sid.as_str(),
        "{listed}"
    );
    let copy = s.create(json!({"snapshot_id": sid})).await;
    assert_eq!(s.sh(&copy, "cat /root/f").await, "kept\n");

    // The server's own node is listed; drained, it takes no new sandboxes
    // and stays drained across a restart.
    let nodes = nodes_of(&s).await;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1, "{nodes}");
    let node = nodes["nodes"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(nodes["nodes"][0]["alive"], true, "{nodes}");
    assert_eq!(nodes["nodes"][0]["usage"]["sandboxes"], 2, "{nodes}");
    let drained = s.cli().args(["node", "drain", &node]).output().unwrap();
    assert!(drained.status.success(), "{drained:?}");
    let (code, err) = s.post_status("/sandboxes", json!({})).await;
    assert_eq!(code, 503, "{err}");
    assert_eq!(err["code"], "no_executors_available", "{err}");
    s.stop();
    s.respawn().await;
    let listed = s.cli().args(["node", "ls"]).output().unwrap();
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.contains(&node) && table.contains("draining"),
        "{table}"
    );
    let undrain = format!("/v1/nodes/{node}/undrain");
    let r = s.req_root(Method::POST, &undrain).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .req_root(Method::POST, "/v1/nodes/nope/drain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Deletes are recorded there too.
    assert_eq!(s.delete(&copy).await, 200);
    let (code, _) = s.get(&copy).await;
    assert_eq!(code, 200, "an ended sandbox stays listed as ended");
    let r = s
        .req(Method::DELETE, &format!("/snapshots/{sid}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // Its manifest leaves the bucket, and chunks nothing else uses with it.
    wait_until(Duration::from_secs(30), || {
        s3.keys("sbx", &format!("manifests/{sid}")).is_empty()
    })
    .await;
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}

/// The node ids of servers `a` and `b` (each known by its proxy address).
async fn node_ids(a: &Server, b: &Server) -> (String, String) {
    let nodes = nodes_of(a).await;
    let id = |s: &Server| {
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["address"] == s.proxy.trim_start_matches("http://"))
            .map(|n| n["id"].as_str().unwrap().to_string())
            .unwrap()
    };
    (id(a), id(b))
}

async fn nodes_of(s: &Server) -> serde_json::Value {
    let r = s.req_root(Method::GET, "/v1/nodes").send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Two servers on one database: each recovers and sweeps only its own
/// node's sandboxes.
#[tokio::test]
async fn servers_sharing_a_database_leave_each_others_sandboxes_alone() {
    // Nodes report every 2 s.
    let (_net, _pg, _s3, a, mut b) = two_servers("shared", 8).await;
    let on_a = a.create(json!({})).await;
    let on_b = b.create(json!({})).await;
    let nodes = nodes_of(&a).await;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2, "{nodes}");
    // B killed and started again: its recovery keeps A's sandbox running.
    b.kill9();
    b.respawn().await;
    assert_eq!(a.sh(&on_a, "echo alive").await, "alive\n");
    assert_eq!(b.sh(&on_b, "echo alive").await, "alive\n");
    let (_, v) = b.get(&on_a).await;
    assert_eq!(v["status"], "running", "{v}");
    // Either server's proxy reaches either server's sandboxes.
    assert_eq!(b.sh(&on_a, "echo via b").await, "via b\n");
    assert_eq!(a.sh(&on_b, "echo via a").await, "via a\n");
    // Lifecycle work on another node's sandbox goes to that node's server.
    let (code, snap) = b
        .post_status(
            &format!("/sandboxes/{on_a}/snapshot"),
            json!({"snapshot_type": "filesystem"}),
        )
        .await;
    assert_eq!(code, 200, "{snap}");
    let sid = snap["snapshot_id"].as_str().unwrap();
    assert_eq!(
        b.wait_snapshot(sid, &["completed"]).await["status"],
        "completed"
    );
    // Restored on B (from the bucket), then deleted through A: B drops its copy.
    let copy = b.create(json!({"snapshot_id": sid})).await;
    assert_eq!(b.sh(&copy, "echo restored").await, "restored\n");
    assert_eq!(b.delete(&copy).await, 200);
    let r = a
        .req(Method::DELETE, &format!("/snapshots/{sid}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let b_copy = b.data_dir.join("snapshots").join(sid);
    wait_until(Duration::from_secs(30), || !b_copy.exists()).await;
    assert!(!b_copy.exists(), "B's copy of the deleted snapshot is gone");
    // Ended through A, B's sandbox is removed from B's host by B.
    assert_eq!(a.delete(&on_b).await, 200);
    wait_until(Duration::from_secs(30), || b.host_leftovers().is_empty()).await;
    assert!(b.host_leftovers().is_empty(), "{:?}", b.host_leftovers());
    assert_eq!(a.sh(&on_a, "echo still").await, "still\n");
    clean(&[&a, &b]).await;
}

/// Takes a `kind` snapshot of a sandbox that ran `script`, on a server of
/// `opts` that then goes with its sandboxes: the snapshot is in the blob
/// store only. Its id.
async fn stored_snapshot(opts: &Options, script: &str, kind: &str) -> String {
    let a = Server::start_with(opts.clone()).await;
    let id = a.create(json!({})).await;
    a.sh(&id, script).await;
    let snap = a.snapshot(&id, kind).await;
    a.cleanup().await;
    snap["snapshot_id"].as_str().unwrap().to_string()
}

/// Restores snapshot `sid` on a fresh server of `opts`: what `/root/sum`
/// sums is intact, and the host holds nothing once it is ended.
async fn restores_intact_on_a_fresh_host(opts: &Options, sid: &str) {
    let b = Server::start_with(opts.clone()).await;
    let copy = b.create(json!({"snapshot_id": sid})).await;
    assert_eq!(
        b.sh(&copy, "md5sum -c /root/sum >/dev/null && echo intact")
            .await,
        "intact\n"
    );
    b.cleanup().await;
    assert!(b.host_leftovers().is_empty(), "{:?}", b.host_leftovers());
}

/// A memory snapshot restores on a host that has none of it (its memory
/// image fetched while the sandbox is prepared) with what its memory held;
/// one whose memory image cannot be fetched fails with the reason and
/// leaves nothing on the host.
#[tokio::test]
async fn a_stored_memory_snapshot_restores_on_a_fresh_host_or_fails_cleanly() {
    let pg = Postgres::start();
    let s3 = S3Server::start();
    let opts = on(&pg, &s3, "sbx");
    // 32 MB of random bytes in memory (a tmpfs) and their sum on disk.
    let sid = stored_snapshot(
        &opts,
        "head -c 33554432 /dev/urandom > /dev/shm/blob; md5sum /dev/shm/blob > /root/sum",
        "memory",
    )
    .await;

    restores_intact_on_a_fresh_host(&opts, &sid).await;

    // Its memory image's largest chunk goes from the bucket.
    let (code, manifest) = s3.signed_request("GET", &format!("/sbx/manifests/{sid}.json"), b"");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&manifest));
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let chunks = manifest["streams"]["checkpoint/pages.img"]["chunks"]
        .as_array()
        .unwrap_or_else(|| panic!("no memory image in {manifest}"));
    let largest = chunks
        .iter()
        .max_by_key(|c| c["len"].as_u64().unwrap())
        .unwrap();
    let hash = largest["hash"].as_str().unwrap();
    let key = s3
        .keys("sbx", "chunks/")
        .into_iter()
        .find(|k| k.contains(hash))
        .unwrap_or_else(|| panic!("chunk {hash} is not in the bucket"));
    let (code, body) = s3.signed_request("DELETE", &format!("/sbx/{key}"), b"");
    assert!(
        code == 204 || code == 200,
        "{code} {}",
        String::from_utf8_lossy(&body)
    );

    let c = Server::start_with(opts).await;
    let (code, v) = c
        .post_status("/sandboxes", json!({"snapshot_id": sid}))
        .await;
    let said = v.to_string();
    assert!(
        code >= 400 || v["status"] == "failed",
        "a restore without its memory image: {code} {v}"
    );
    assert!(said.contains(&sid) && said.contains(hash), "{said}");
    wait_until(Duration::from_secs(30), || c.host_leftovers().is_empty()).await;
    assert!(
        !c.data_dir.join("snapshots").join(&sid).exists(),
        "a partial copy of the snapshot was left"
    );
    c.cleanup().await;
}

/// A snapshot stored in S3 restores on a host that never saw it: a second
/// server with an empty data dir on the same database and bucket.
#[tokio::test]
async fn a_stored_snapshot_restores_on_a_fresh_host() {
    let pg = Postgres::start();
    let s3 = S3Server::start();
    let opts = on(&pg, &s3, "sbx");
    let sid = stored_snapshot(
        &opts,
        "seq 1 200000 > /root/numbers; md5sum /root/numbers > /root/sum",
        "filesystem",
    )
    .await;
    restores_intact_on_a_fresh_host(&opts, &sid).await;
}

/// A server whose node takes no more sandboxes places a create on another
/// node sharing its database, which fetches the image from the bucket;
/// either proxy reaches the sandbox.
#[tokio::test]
async fn a_create_a_drained_node_cannot_take_runs_on_another_node() {
    let (_net, _pg, _s3, a, b) = two_servers("placed", 60).await;
    // A small image built on A (busybox, no RUN), stored in the bucket.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static");
    for applet in ["sh", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    std::fs::write(dir.path().join("hello"), "built on a\n").unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY bin /bin\nCOPY hello /hello\n",
    )
    .unwrap();
    let out = a
        .cli()
        .args(["image", "build", "-t", "tiny", "--progress", "plain"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut stored = false;
    for _ in 0..300 {
        let image = a.api_json(Method::GET, "/images/tiny").await;
        if image["stored_bytes"].as_u64().is_some() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "the image reached the bucket");

    let (node_a, node_b) = node_ids(&a, &b).await;
    let drain = format!("/v1/nodes/{node_a}/drain");
    let r = a.req_root(Method::POST, &drain).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let id = a.create(json!({"image": "tiny"})).await;
    assert_eq!(a.sh(&id, "cat /hello").await, "built on a\n");
    assert_eq!(b.sh(&id, "cat /hello").await, "built on a\n");
    assert!(
        b.host_leftovers().iter().any(|l| l.contains(&id)),
        "it runs on B: {:?}",
        b.host_leftovers()
    );
    assert!(a.host_leftovers().iter().all(|l| !l.contains(&id)));
    // With B drained too, no node takes it.
    let drain = format!("/v1/nodes/{node_b}/drain");
    let r = a.req_root(Method::POST, &drain).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (code, err) = a.post_status("/sandboxes", json!({})).await;
    assert_eq!(code, 503, "{err}");
    assert_eq!(a.delete(&id).await, 200);
    wait_until(Duration::from_secs(30), || b.host_leftovers().is_empty()).await;
    clean(&[&a, &b]).await;
}

/// A node that stops reporting is lost: its running sandboxes fail with
/// `node_lost`; back, it removes them from its host.
#[tokio::test]
async fn a_silent_node_loses_its_sandboxes_and_cleans_up_when_back() {
    let (_net, _pg, _s3, a, mut b) = two_servers("lost", 4).await;
    let id = b.create(json!({})).await;
    b.kill9();
    // The sandbox still runs on B's host; A gives it up.
    let mut row = serde_json::Value::Null;
    for _ in 0..200 {
        row = a.get(&id).await.1;
        if row["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(row["status"], "failed", "{row}");
    assert_eq!(row["termination_reason"], "node_lost", "{row}");
    assert!(
        !b.host_leftovers().is_empty(),
        "still on B's host until B is back"
    );
    b.respawn().await;
    wait_until(Duration::from_secs(30), || b.host_leftovers().is_empty()).await;
    assert!(b.host_leftovers().is_empty(), "{:?}", b.host_leftovers());
    let nodes = nodes_of(&a).await;
    assert!(
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["alive"] == true),
        "{nodes}"
    );
    clean(&[&a, &b]).await;
}

/// A suspended sandbox is also stored in the bucket: when its node is
/// drained or gone, a resume through another server (asked for, or by a
/// request to the sandbox) brings it back on that server's node, with its
/// memory and files; its old node drops its own copy.
#[tokio::test]
async fn a_suspended_sandbox_resumes_on_another_node_when_its_own_cannot() {
    let (_net, pg, s3, a, mut b) = two_servers("moved", 8).await;
    let id = a.create(json!({"name": "mover"})).await;
    // On the disk, and in memory only (/tmp is the sentry's tmpfs).
    a.sh("mover", "echo disk > /root/kept; echo memory > /tmp/mem")
        .await;
    // Stored: in the bucket, and recorded (its node may be killed next).
    let stored = |n: usize| {
        let found = s3.keys("sbx", "manifests/suspend-");
        assert!(found.len() <= 1, "{found:?}");
        let spec = pg.query(
            "moved",
            &format!("SELECT spec FROM sandboxes WHERE id = '{id}'"),
        );
        found.len() == n && (n == 0 || spec.contains("suspend_image"))
    };
    a.suspend("mover").await;
    wait_until(Duration::from_secs(60), || stored(1)).await;
    let (node_a, node_b) = node_ids(&a, &b).await;

    // Its node drained: resumed through B, it runs on B.
    let r = a
        .req_root(Method::POST, &format!("/v1/nodes/{node_a}/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (code, v) = b
        .post_status("/sandboxes/mover/resume?wait_ms=30000", json!({}))
        .await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    assert_eq!(
        b.sh("mover", "cat /root/kept /tmp/mem").await,
        "disk\nmemory\n"
    );
    assert!(
        b.host_leftovers().iter().any(|l| l.contains(&id)),
        "{:?}",
        b.host_leftovers()
    );
    wait_until(Duration::from_secs(30), || a.host_leftovers().is_empty()).await;
    // Resumed, it is no longer kept in the bucket.
    wait_until(Duration::from_secs(30), || stored(0)).await;

    // Suspended on B, and B gone: a request for it through A resumes it on A.
    let r = a
        .req_root(Method::POST, &format!("/v1/nodes/{node_a}/undrain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    b.sh("mover", "echo again > /tmp/mem").await;
    a.suspend("mover").await;
    wait_until(Duration::from_secs(60), || stored(1)).await;
    b.kill9();
    let mut alive = true;
    for _ in 0..200 {
        let nodes = nodes_of(&a).await;
        alive = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == node_b.as_str() && n["alive"] == true);
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive, "B is seen gone");
    assert_eq!(
        a.sh("mover", "cat /root/kept /tmp/mem").await,
        "disk\nagain\n"
    );
    assert!(
        a.host_leftovers().iter().any(|l| l.contains(&id)),
        "{:?}",
        a.host_leftovers()
    );
    // Back, B removes its copy.
    b.respawn().await;
    wait_until(Duration::from_secs(30), || b.host_leftovers().is_empty()).await;
    clean(&[&a, &b]).await;
}

/// A control plane that runs no sandboxes (`--no-local-node`) and nodes
/// that joined it with the node token (`sbx node --server URL`, no state,
/// blob store or S3 key of their own), each server on a host of its own: a
/// network namespace on a bridge of the test's, where PostgreSQL and S3
/// listen too. Every request goes to the control plane, every sandbox runs
/// on a node; a drained node takes none, the other one does.
#[tokio::test]
async fn a_node_joins_a_control_plane_that_runs_no_sandboxes() {
    const TOKEN: &str = "e2e-node-token-0123456789";
    // Declared first, dropped last: after the servers, PostgreSQL and S3.
    let net = TestNet::new(3);
    let pg = Postgres::start_on(net.gateway(), &net.cidr());
    let s3 = S3Server::start_on(net.gateway());
    let cp = Server::start_with(Options {
        netns: Some(net.host(0)),
        key: Some(KEY.into()),
        ..control_plane(&pg, &s3, "joined", TOKEN)
    })
    .await;
    // No node yet: refused, nothing recorded.
    let (code, err) = cp.post_status("/sandboxes", json!({})).await;
    assert_eq!(
        (code, err["code"].as_str()),
        (503, Some("no_executors_available")),
        "{err}"
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("sbx node --server"),
        "{err}"
    );
    let listed = cp.api_json(Method::GET, "/sandboxes").await;
    assert_eq!(listed["sandboxes"].as_array().unwrap().len(), 0, "{listed}");
    // Unless it may wait: then it is pending until a node joins.
    let out = cp
        .cli()
        .args(["create", "early", "--no-wait", "--max-pending-secs", "600"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pending (no_executors_available)"),
        "{stderr}"
    );
    // The join answers only the node token.
    let http = reqwest::Client::new();
    let join = format!("{}/v1/cluster/join", cp.api);
    for bearer in [None, Some("wrong-token-0123456789")] {
        let mut r = http.post(&join);
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body = r.text().await.unwrap();
        assert!(!body.contains("postgres"), "{body}");
    }
    assert!(nodes_of(&cp).await["nodes"].as_array().unwrap().is_empty());

    let node = join_node(&cp, TOKEN, Some(net.host(1))).await;
    let nodes = nodes_of(&cp).await;
    let listed = nodes["nodes"].as_array().unwrap();
    let node_id = std::fs::read_to_string(node.data_dir.join("node-id")).unwrap();
    let node_id = node_id.trim();
    assert_eq!(listed.len(), 1, "{nodes}");
    assert_eq!(listed[0]["id"], node_id, "{nodes}");
    // Known by its own host's address.
    let proxy_at = |s: &Server| format!("{}:{}", s.ip(), s.proxy_port);
    assert_eq!(listed[0]["address"], proxy_at(&node), "{nodes}");
    assert!(
        !node.data_dir.join("state.db").exists(),
        "its state is the cluster's"
    );
    // The sandbox that waited for a node runs there now.
    let mut early = serde_json::Value::Null;
    for _ in 0..300 {
        early = cp.get("early").await.1;
        if early["status"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(early["status"], "running", "{early}");
    assert_eq!(cp.sh("early", "echo waited").await, "waited\n");
    assert_eq!(cp.delete("early").await, 200);
    // A secret set through the control plane opens on the node (the join
    // handed it the cluster's secrets key).
    let r = cp
        .req(Method::PUT, "/secrets/JOINED")
        .json(&json!({"value": "sealed-by-the-control-plane"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let with_secret = cp.create(json!({"secret_names": ["JOINED"]})).await;
    assert_eq!(
        cp.sh(&with_secret, "echo $JOINED").await,
        "sealed-by-the-control-plane\n"
    );
    assert_eq!(cp.delete(&with_secret).await, 200);

    // Created, used, snapshotted, restored, suspended and resumed through
    // the control plane; all of it on the node's host.
    let id = cp.create(json!({"name": "far"})).await;
    assert_eq!(cp.sh("far", "echo hi > /root/f; cat /root/f").await, "hi\n");
    assert!(
        node.host_leftovers().iter().any(|l| l.contains(&id)),
        "{:?}",
        node.host_leftovers()
    );
    assert!(cp.host_leftovers().is_empty(), "{:?}", cp.host_leftovers());
    // Its logs are kept on the node, read through the control plane.
    let printed = |logs: &serde_json::Value| {
        logs["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["body"] == "hi")
    };
    let mut logs = serde_json::Value::Null;
    for _ in 0..100 {
        logs = cp.api_json(Method::GET, "/sandboxes/far/logs").await;
        if printed(&logs) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(printed(&logs), "{logs}");
    let snap = cp.snapshot("far", "filesystem").await;
    let sid = snap["snapshot_id"].as_str().unwrap();
    assert_eq!(s3.keys("sbx", &format!("manifests/{sid}")).len(), 1);
    let copy = cp.create(json!({"snapshot_id": sid})).await;
    assert_eq!(cp.sh(&copy, "cat /root/f").await, "hi\n");
    for step in ["suspend", "resume"] {
        let (code, v) = cp
            .post_status(&format!("/sandboxes/far/{step}?wait_ms=30000"), json!({}))
            .await;
        assert_eq!(code, 200, "{step}: {v}");
    }
    assert_eq!(cp.sh("far", "cat /root/f").await, "hi\n");
    assert_eq!(cp.delete(&copy).await, 200);
    assert_eq!(cp.delete("far").await, 200);
    wait_until(Duration::from_secs(30), || node.host_leftovers().is_empty()).await;

    // A second node on a third host: with the first drained, creates run
    // there; the control plane's proxy reaches the sandboxes of both.
    let on_first = cp.create(json!({})).await;
    let second = join_node(&cp, TOKEN, Some(net.host(2))).await;
    let nodes = nodes_of(&cp).await;
    let listed = nodes["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{nodes}");
    assert!(listed.iter().all(|n| n["alive"] == true), "{nodes}");
    assert!(
        listed.iter().any(|n| n["address"] == proxy_at(&second)),
        "{nodes}"
    );
    let r = cp
        .req_root(Method::POST, &format!("/v1/nodes/{node_id}/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let on_second = cp.create(json!({})).await;
    let runs_on = |s: &Server, id: &str| s.host_leftovers().iter().any(|l| l.contains(id));
    assert!(runs_on(&node, &on_first), "{:?}", node.host_leftovers());
    assert!(
        runs_on(&second, &on_second),
        "{:?}",
        second.host_leftovers()
    );
    assert!(!runs_on(&node, &on_second), "{:?}", node.host_leftovers());
    assert!(
        !runs_on(&second, &on_first),
        "{:?}",
        second.host_leftovers()
    );
    assert_eq!(cp.sh(&on_first, "echo first").await, "first\n");
    assert_eq!(cp.sh(&on_second, "echo second").await, "second\n");
    assert_eq!(cp.delete(&on_first).await, 200);
    assert_eq!(cp.delete(&on_second).await, 200);
    clean(&[&cp, &node, &second]).await;
    // A node cannot join with the wrong token: it stops with the reason
    // (run in the test's own network namespace, it reaches the control
    // plane over the bridge).
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let out = std::process::Command::new(sbx_bin())
        .args([
            "node",
            "--server",
            &cp.api,
            "--node-token",
            "wrong-token-0123456789",
        ])
        .arg("--data-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("node token"), "{stderr}");
}

/// Two control-plane replicas (no local node, and no runsc on their PATH:
/// a control plane needs no runtime) on one PostgreSQL, one node:
/// a replica killed while a create through it waits for the node loses
/// nothing. The node launches what was recorded, and the other replica
/// serves it.
#[tokio::test]
async fn a_replica_killed_mid_create_loses_nothing_the_other_cannot_finish() {
    const TOKEN: &str = "e2e-replica-token-0123456789";
    // Each replica and the node on a host of its own.
    let net = TestNet::new(3);
    let pg = Postgres::start_on(net.gateway(), &net.cidr());
    let s3 = S3Server::start_on(net.gateway());
    let mut opts = control_plane(&pg, &s3, "replicas", TOKEN);
    opts.key = Some(KEY.into());
    // A control plane needs no runtime: these find no runsc on their PATH.
    let no_runsc = tempfile::tempdir().unwrap();
    opts.env
        .push(("PATH".into(), no_runsc.path().display().to_string()));
    let (mut first, second) = Server::start_pair(opts, (net.host(0), net.host(1))).await;
    let node = join_node(&second, TOKEN, Some(net.host(2))).await;
    let create = first
        .req(Method::POST, "/sandboxes")
        .json(&json!({"name": "midway"}))
        .send();
    let creating = tokio::spawn(create);
    // Killed as soon as the create is recorded, before it runs if the race
    // allows (the node launches it in a few hundred ms).
    let mut seen = serde_json::Value::Null;
    for _ in 0..1000 {
        let (code, v) = second.get("midway").await;
        if code == 200 {
            seen = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill9();
    assert!(seen.is_object(), "the create was never recorded");
    assert!(
        ["pending", "running"].contains(&seen["status"].as_str().unwrap()),
        "{seen}"
    );
    // The killed replica's client got an answer or a broken connection,
    // never a hang.
    let _ = tokio::time::timeout(Duration::from_secs(10), creating)
        .await
        .expect("the create's client is not left waiting");
    let v = second
        .wait_status("midway", "running", Duration::from_secs(30))
        .await;
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(second.sh("midway", "echo finished").await, "finished\n");
    assert!(
        node.host_leftovers()
            .iter()
            .any(|l| l.contains("sandboxes/")),
        "{:?}",
        node.host_leftovers()
    );
    assert_eq!(second.delete("midway").await, 200);
    wait_until(Duration::from_secs(30), || node.host_leftovers().is_empty()).await;
    clean(&[&second, &node]).await;
}

#[tokio::test]
async fn a_bad_state_url_stops_the_start_with_a_clear_error() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let out = std::process::Command::new(sbx_bin())
        .args(["server", "--data-dir"])
        .arg(tmp.path())
        .args(["--state", "mysql://root:secret@127.0.0.1/x"])
        .args(["--api-addr", "127.0.0.1:0", "--proxy-addr", "127.0.0.1:0"])
        .arg("--agent-bin")
        .arg(agent_bin())
        .args(["--cgroup-parent", "sbx-e2e-bad-state"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected sqlite:PATH or postgres://"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}
