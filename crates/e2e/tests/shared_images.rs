//! Custom images across servers sharing one PostgreSQL (the image catalog)
//! and one S3 bucket (the images' files): an image made through one server
//! is listed, built on and booted through another, which brings its files
//! from the bucket when it first needs them; a removal through one server
//! holds on every server. A real PostgreSQL and a real S3 server
//! (SeaweedFS), each started by the test on the bridge of a network of
//! its own, each server in a network namespace on it.

use reqwest::Method;
use sbx_e2e::*;
use sbx_testkit::net::TestNet;
use sbx_testkit::postgres::Postgres;
use sbx_testkit::s3::S3Server;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// Two servers on database `db` and bucket `sbx`, each on a host of its own
/// (network namespaces 0 and 1 of a [`TestNet`] whose bridge PostgreSQL and
/// S3 listen on). Bind all five in this order: the servers, declared last,
/// are dropped first (their cleanup needs the database), the network last.
async fn two_servers(db: &str) -> (TestNet, Postgres, S3Server, Server, Server) {
    let net = TestNet::new(2);
    let pg = Postgres::start_on(net.gateway(), &net.cidr());
    let s3 = S3Server::start_on(net.gateway());
    s3.create_bucket("sbx");
    let opts = Options {
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
        key: Some("e2e-images-key-0123456789".into()),
        ..Default::default()
    };
    let (a, b) = Server::start_pair(opts, (net.host(0), net.host(1))).await;
    (net, pg, s3, a, b)
}

/// Whether server `s` holds image `id`'s files.
fn holds(s: &Server, id: &str) -> bool {
    s.data_dir.join("custom-images").join(id).exists()
}

/// `sbx image build -t NAME DIR` through server `s`; panics unless it works.
fn build(s: &Server, name: &str, dir: &Path) {
    let out = s
        .cli()
        .args(["image", "build", "-t", name, "--progress", "plain"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The names `sbx image ls --json` shows through server `s`.
fn listed(s: &Server) -> Vec<String> {
    let out = s.cli().args(["image", "ls", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn images_made_through_one_server_are_listed_booted_and_removed_through_another() {
    let (_net, _pg, s3, a, b) = two_servers("images").await;
    // A small image built on A: busybox, no RUN.
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
    build(&a, "tiny", dir.path());
    let tiny = a.api_json(Method::GET, "/images/tiny").await;
    let tiny_id = tiny["id"].as_str().unwrap().to_string();

    // B, started before it, lists it at once (API and CLI) and builds on
    // it: the base comes from the bucket once A has stored it there.
    let on_b = b.api_json(Method::GET, "/images/tiny").await;
    assert_eq!(on_b["id"], tiny_id.as_str(), "{on_b}");
    assert!(listed(&b).contains(&"tiny".to_string()));
    assert!(!holds(&b, &tiny_id));
    let derived = tempfile::tempdir().unwrap();
    std::fs::write(derived.path().join("more"), "built on b\n").unwrap();
    std::fs::write(
        derived.path().join("Dockerfile"),
        "FROM tiny\nCOPY more /more\n",
    )
    .unwrap();
    build(&b, "derived", derived.path());
    assert!(holds(&b, &tiny_id));
    // A boots B's image, which it has never seen, from the bucket.
    assert!(listed(&a).contains(&"derived".to_string()));
    let on_a = a.create(json!({"image": "derived"})).await;
    assert_eq!(
        a.sh(&on_a, "cat /hello /more").await,
        "built on a\nbuilt on b\n"
    );
    assert!(a.host_leftovers().iter().any(|l| l.contains(&on_a)));
    // B boots A's image.
    let on_b = b.create(json!({"image": "tiny"})).await;
    assert_eq!(b.sh(&on_b, "cat /hello").await, "built on a\n");
    assert!(b.host_leftovers().iter().any(|l| l.contains(&on_b)));

    // Removed through A: off every list, no create names it; a sandbox of
    // it keeps running, and keeps it in the bucket.
    let out = a.cli().args(["image", "rm", "tiny"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = b.api_json(Method::GET, "/images/tiny").await;
    assert_eq!(gone["code"], "not_found", "{gone}");
    assert!(!listed(&b).contains(&"tiny".to_string()));
    let (code, e) = b.post_status("/sandboxes", json!({"image": "tiny"})).await;
    assert_eq!(code, 400, "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("unknown image \"tiny\"")
            && message.contains("default")
            && message.contains("derived"),
        "{e}"
    );
    let r = b.req(Method::DELETE, "/images/tiny").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(b.sh(&on_b, "cat /hello").await, "built on a\n");
    // A runs nothing of it: its copy goes; the manifest stays for B's.
    wait_until(Duration::from_secs(30), || !holds(&a, &tiny_id)).await;
    let manifest = format!("image-{tiny_id}");
    assert!(!s3.keys("sbx", &manifest).is_empty());
    assert!(holds(&b, &tiny_id));
    // Once nothing uses it: gone from B and from the bucket.
    assert_eq!(b.delete(&on_b).await, 200);
    wait_until(Duration::from_secs(30), || {
        !holds(&b, &tiny_id) && s3.keys("sbx", &manifest).is_empty()
    })
    .await;
    // The other image is untouched.
    assert_eq!(a.sh(&on_a, "cat /more").await, "built on b\n");
    assert_eq!(a.delete(&on_a).await, 200);
    for s in [&a, &b] {
        s.cleanup().await;
        assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
    }
}

/// A data dir from before the catalog: images on disk, no rows. The start
/// adds them to the catalog (the newest of a name keeps it), and an older
/// image of the name, unused, goes.
#[tokio::test]
async fn images_on_disk_join_the_catalog_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static");
    std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY bin /bin\nCOPY hello /hello\n",
    )
    .unwrap();
    let mut s = Server::start().await;
    let mut ids = Vec::new();
    for text in ["one\n", "two\n"] {
        std::fs::write(dir.path().join("hello"), text).unwrap();
        build(&s, "kept", dir.path());
        let v = s.api_json(Method::GET, "/images/kept").await;
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    assert!(holds(&s, &ids[0]) && holds(&s, &ids[1]));
    // The state store is lost (as a store from before images had rows).
    s.stop();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(s.data_dir.join(f));
    }
    s.respawn().await;
    let v = s.api_json(Method::GET, "/images/kept").await;
    assert_eq!(v["id"], ids[1].as_str(), "{v}");
    assert_eq!(
        listed(&s).iter().filter(|n| n.as_str() == "kept").count(),
        1
    );
    wait_until(Duration::from_secs(30), || !holds(&s, &ids[0])).await;
    let id = s.create(json!({"image": "kept"})).await;
    assert_eq!(s.sh(&id, "cat /hello").await, "two\n");
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}
