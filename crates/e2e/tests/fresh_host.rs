//! What a new user meets on a fresh host: the server answers while it
//! builds its first image, prepares its own cgroups, and its sandboxes trust
//! what the host trusts (pip install from PyPI through the host's route).

use reqwest::Method;
use sbx_e2e::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// `cpuset.cpus` / `cpuset.mems` of a v1 cpuset cgroup directory.
fn cpuset_files(dir: &Path) -> (String, String) {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    (read("cpuset.cpus"), read("cpuset.mems"))
}

fn cpuset_v1() -> bool {
    Path::new("/sys/fs/cgroup/cpuset/cpuset.cpus").exists()
}

#[tokio::test]
async fn a_first_start_answers_at_once_and_starts_sandboxes_once_its_image_is_built() {
    // No shared image: this server builds its own, as on a fresh host.
    let s = Server::start_with(Options {
        shared_images: false,
        wait_ready: false,
        ..Options::default()
    })
    .await;
    let h = s.health().await.expect("healthz answers during the build");
    assert_eq!(h["healthy"], true, "{h}");
    assert_eq!(h["ready"], false, "{h}");
    assert_eq!(h["default_image"]["status"], "building", "{h}");

    // The server made its cgroup parent and gave it CPUs and memory nodes.
    if cpuset_v1() {
        let parent = Path::new("/sys/fs/cgroup/cpuset").join(&s.cgroup_parent);
        let (cpus, mems) = cpuset_files(&parent);
        let (root_cpus, root_mems) = cpuset_files(Path::new("/sys/fs/cgroup/cpuset"));
        assert_eq!((cpus, mems), (root_cpus, root_mems));
    }
    assert!(!cgroup_dirs(&s.cgroup_parent).is_empty());

    // A non-blocking create is accepted and stays pending.
    let (code, pending) = s.post_status("/sandboxes", json!({"wait": false})).await;
    assert_eq!(code, 202);
    assert_eq!(pending["status"], "pending", "{pending}");
    let pending_id = pending["sandbox_id"].as_str().unwrap().to_string();

    // A blocking create whose budget runs out first answers 503 saying why,
    // and leaves nothing behind.
    let r = s
        .req(Method::POST, "/sandboxes")
        .header("X-Tensorlake-Request-Timeout-Ms", "1500")
        .header("X-Tensorlake-Request-Timeout-Grace-Ms", "0")
        .json(&json!({"name": "too-early"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "image_building", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("being built"),
        "{e}"
    );
    let all = s.api_json(Method::GET, "/sandboxes?all=true").await;
    let ids: Vec<&str> = all["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["sandbox_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![pending_id.as_str()], "{all}");

    // The build reports progress, then ends ready.
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut most_steps = 0;
    loop {
        let h = s.health().await.expect("healthz");
        if h["ready"] == true {
            assert_eq!(h["default_image"]["status"], "ready");
            break;
        }
        assert_eq!(h["default_image"]["status"], "building", "{h}");
        most_steps = most_steps.max(h["default_image"]["steps"].as_u64().unwrap_or(0));
        assert!(Instant::now() < deadline, "the image build did not end");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(most_steps > 0, "no build progress was reported");

    // The sandbox created meanwhile starts; a new one starts at once.
    s.wait_status(&pending_id, "running", Duration::from_secs(120))
        .await;
    assert_eq!(s.sh(&pending_id, "echo up").await, "up\n");
    let id = s.create(json!({})).await;
    assert_eq!(
        s.sh(&id, "cat /etc/debian_version | cut -c1-2").await,
        "12\n"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn the_cgroup_parent_is_prepared_whatever_an_earlier_run_left() {
    let mut s = Server::start().await;
    let id = s.create(json!({})).await;
    // The sandbox's cgroup is under this server's own parent.
    assert!(s.cgroup("memory", &id).is_dir());
    s.cleanup().await;
    s.stop();
    // A clean stop with no sandbox left removes the parent.
    assert!(
        cgroup_dirs(&s.cgroup_parent).is_empty(),
        "{:?}",
        cgroup_dirs(&s.cgroup_parent)
    );
    if cpuset_v1() {
        // What a fresh `mkdir` (or an earlier, broken run) leaves: a cpuset
        // parent with no CPUs and no memory nodes, which runsc cannot
        // give a sandbox's cgroup anything from.
        let parent = Path::new("/sys/fs/cgroup/cpuset").join(&s.cgroup_parent);
        std::fs::create_dir(&parent).unwrap();
        assert_eq!(cpuset_files(&parent), (String::new(), String::new()));
    }
    s.spawn().await;
    let id = s.create(json!({"resources": {"cpus": 1}})).await;
    assert_eq!(s.sh(&id, "echo ok").await, "ok\n");
    s.cleanup().await;
}

#[tokio::test]
async fn sandboxes_trust_the_hosts_cas_and_pip_install_from_pypi_works() {
    let Some(host_bundle) = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .into_iter()
    .find(|p| Path::new(p).is_file()) else {
        panic!("this host has no system CA bundle");
    };
    let s = Server::start().await;
    let id = s.create(json!({"name": "seed"})).await;
    // The usual variables point at a copy of the host's bundle.
    let env = s
        .sh(
            &id,
            "for v in SSL_CERT_FILE REQUESTS_CA_BUNDLE PIP_CERT NODE_EXTRA_CA_CERTS CURL_CA_BUNDLE; do printenv $v; done",
        )
        .await;
    let paths: Vec<&str> = env.lines().collect();
    assert_eq!(paths.len(), 5, "{env}");
    assert!(paths.iter().all(|p| *p == paths[0]), "{env}");
    let inside = s.sh(&id, &format!("sha256sum < {}", paths[0])).await;
    let host = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("sha256sum < {host_bundle}"))
        .output()
        .unwrap();
    assert_eq!(inside, String::from_utf8_lossy(&host.stdout));

    // Seed 001: install a package from PyPI, use it, write a file, snapshot,
    // restore, and find both in the restored sandbox. (The one test that
    // reaches a package registry from a sandbox: the host's own route.)
    let before = s
        .run(
            &id,
            json!({"command": "python3", "args": ["-c", "import tomli_w"]}),
        )
        .await;
    assert_ne!(
        before.exit["exit_code"], 0,
        "tomli_w is in the image already"
    );
    let pip = s
        .run(
            &id,
            json!({"command": "pip", "args": ["install", "--no-cache-dir", "--disable-pip-version-check", "tomli-w"]}),
        )
        .await;
    assert_eq!(pip.exit["exit_code"], 0, "pip install failed: {pip:?}");
    let script = "import tomli_w; open('/root/out.toml','w').write(tomli_w.dumps({'answer': 42})); print(open('/root/out.toml').read().strip())";
    let out = s
        .run(&id, json!({"command": "python3", "args": ["-c", script]}))
        .await;
    assert_eq!(out.stdout, "answer = 42\n", "{out:?}");
    let snap = s.snapshot("seed", "filesystem").await;
    let sid = snap["snapshot_id"].as_str().unwrap();
    let restored = s.create(json!({"snapshot_id": sid})).await;
    let check = "import tomli_w; print(open('/root/out.toml').read().strip()); print(tomli_w.dumps({'x': 1}).strip())";
    let out = s
        .run(
            &restored,
            json!({"command": "python3", "args": ["-c", check]}),
        )
        .await;
    assert_eq!(out.stdout, "answer = 42\nx = 1\n", "{out:?}");
    s.cleanup().await;
}

#[tokio::test]
async fn the_ca_bundle_can_be_turned_off_or_chosen() {
    let custom = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(custom.path(), "-----BEGIN CERTIFICATE-----\nnot really\n").unwrap();
    let s = Server::start_with(Options {
        args: vec![
            "--sandbox-ca-bundle".into(),
            custom.path().display().to_string(),
        ],
        ..Options::default()
    })
    .await;
    let id = s.create(json!({})).await;
    assert_eq!(
        s.sh(&id, "cat \"$SSL_CERT_FILE\"").await,
        "-----BEGIN CERTIFICATE-----\nnot really\n"
    );
    s.cleanup().await;
    drop(s);

    let s = Server::start_with(Options {
        args: vec!["--sandbox-ca-bundle".into(), "none".into()],
        ..Options::default()
    })
    .await;
    let id = s.create(json!({})).await;
    assert_eq!(
        s.sh(
            &id,
            "env | grep -c -e SSL_CERT_FILE -e PIP_CERT -e NODE_EXTRA_CA_CERTS || true"
        )
        .await,
        "0\n"
    );
    s.cleanup().await;
}
