//! Images imported from a real OCI registry (Debian's `docker-registry`,
//! the CNCF distribution registry, on 127.0.0.1) and from the archives
//! `skopeo` writes, booted as sandboxes. The image is made here: a
//! busybox-only root filesystem (no Python, no bash) packed by `umoci`.

use reqwest::Method;
use sbx_e2e::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OCI layout at `<dir>/layout`, tag `1`: busybox and its applets, a
/// user `app` (uid 1000); a second layer deletes `/etc/doomed` (a
/// whiteout) and adds `/app/hello`. Config: `FOO=bar`, workdir `/app`,
/// user `app`, command `sleep 1000000`.
fn busybox_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "app", "root", "home/app"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    for applet in [
        "sh", "ls", "cat", "echo", "env", "pwd", "id", "sleep", "ps", "true",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    std::fs::write(rootfs.join("etc/doomed"), "lower layer\n").unwrap();
    std::fs::set_permissions(
        rootfs.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let layout = dir.join("layout");
    let image = format!("{}:1", layout.display());
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    run(Command::new("cp")
        .arg("-a")
        .arg(rootfs.join("."))
        .arg(bundle.join("rootfs")));
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    std::fs::remove_dir_all(&bundle).unwrap();
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    std::fs::remove_file(bundle.join("rootfs/etc/doomed")).unwrap();
    std::fs::write(bundle.join("rootfs/app/hello"), "hi\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "FOO=bar",
        "--config.env",
        "PATH=/bin",
        "--config.workingdir",
        "/app",
        "--config.user",
        "app",
        "--config.cmd",
        "sleep",
        "--config.cmd",
        "1000000",
    ]));
    layout
}

/// Debian's `docker-registry` on 127.0.0.1, its storage in a temp dir.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry-data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        // Killed and reaped on drop, also if it never listens.
        let registry = Registry { child, addr };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&registry.addr).is_ok() {
                return registry;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("docker-registry did not listen on {}", registry.addr);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn skopeo_copy(from: &str, to: &str) {
    run(Command::new("skopeo").args(["copy", "--dest-tls-verify=false", from, to]));
}

/// The output of a successful `sbx` CLI command against `s`, trimmed.
fn cli(s: &Server, args: &[&str]) -> String {
    let out = s.cli().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "sbx {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `sh` on a PTY in sandbox `id`, types `input`; what the terminal
/// showed until the shell exited.
async fn pty_session(s: &Server, id: &str, input: &str) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let p: Value = s
        .daemon(id, Method::POST, "/pty")
        .json(&json!({"command": "sh", "rows": 24, "cols": 80}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (sid, token) = (
        p["session_id"].as_str().unwrap(),
        p["token"].as_str().unwrap(),
    );
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/pty/{sid}/ws?token={token}",
        s.proxy_port
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("X-Tensorlake-Sandbox-Id", id.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Binary(vec![0x02].into())).await.unwrap();
    let mut bytes = vec![0x00];
    bytes.extend_from_slice(input.as_bytes());
    ws.send(Message::Binary(bytes.into())).await.unwrap();
    let mut screen = String::new();
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) if b[0] == 0x00 => {
                    screen.push_str(&String::from_utf8_lossy(&b[1..]))
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the shell exited");
    screen
}

/// The lines of an import's NDJSON answer.
async fn import_events(r: reqwest::Response) -> Vec<Value> {
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn image_dirs(s: &Server) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(s.data_dir.join("custom-images"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn images_from_a_registry_and_archives_boot_with_their_config() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let layout = busybox_image(tmp.path());
    let registry = Registry::start(tmp.path());
    let oci = format!("oci:{}:1", layout.display());
    skopeo_copy(&oci, &format!("docker://{}/tools/bb:1", registry.addr));
    let docker_tar = tmp.path().join("bb-docker.tar");
    let oci_tar = tmp.path().join("bb-oci.tar");
    skopeo_copy(
        &oci,
        &format!("docker-archive:{}:bb:1", docker_tar.display()),
    );
    skopeo_copy(&oci, &format!("oci-archive:{}", oci_tar.display()));

    let s = Server::start().await;
    // From the registry, through the API: progress, then the image.
    let r = s
        .req(Method::POST, "/images/import")
        .json(&json!({"reference": format!("{}/tools/bb:1", registry.addr), "insecure": true}))
        .send()
        .await
        .unwrap();
    let events = import_events(r).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["resolved", "fetched", "fetched", "applied", "applied", "done"],
        "{events:?}"
    );
    let bb = &events[5]["image"];
    assert_eq!(bb["name"], "bb");
    assert_eq!(bb["layers"], 2);
    assert!(
        bb["digest"].as_str().unwrap().starts_with("sha256:"),
        "{bb}"
    );
    assert_eq!(bb["working_dir"], "/app");
    assert_eq!(bb["user"], "app");
    assert_eq!(bb["entrypoint"], json!(["sleep", "1000000"]));
    // From the archives, through the CLI (it uploads them).
    let docker = format!("docker-archive:{}", docker_tar.display());
    assert_eq!(cli(&s, &["image", "import", &docker, "-t", "bbd"]), "bbd");
    let oci = format!("oci-archive:{}", oci_tar.display());
    assert_eq!(cli(&s, &["image", "import", &oci]), "bb-oci");
    let listed: Value = serde_json::from_str(&cli(&s, &["image", "ls", "--json"])).unwrap();
    let names: Vec<&str> = listed["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    for want in ["default", "bb", "bbd", "bb-oci"] {
        assert!(names.contains(&want), "{names:?}");
    }

    // Each boots: the image's env, workdir, user and command; the second
    // layer's whiteout and file; no Python or bash needed.
    let mut ids = Vec::new();
    for image in ["bb", "bbd", "bb-oci"] {
        let id = s.create(json!({"image": image})).await;
        assert_eq!(s.sh(&id, "pwd").await, "/app\n", "{image}");
        assert_eq!(s.sh(&id, "id -u").await, "1000\n", "{image}");
        assert!(s.sh(&id, "env").await.contains("FOO=bar\n"), "{image}");
        assert_eq!(s.sh(&id, "cat /app/hello").await, "hi\n", "{image}");
        assert_eq!(
            s.sh(&id, "ls /etc/doomed 2>&1 || echo absent")
                .await
                .lines()
                .last(),
            Some("absent")
        );
        assert!(
            s.sh(&id, "ps -o args").await.contains("sleep 1000000"),
            "{image}"
        );
        let v = s.api_json(Method::GET, &format!("/sandboxes/{id}")).await;
        assert_eq!(v["image"], image);
        ids.push(id);
    }
    // A request's own user and directory win over the image's.
    let r = s
        .run(
            &ids[0],
            json!({"command": "id", "args": ["-u"], "user": "root", "working_dir": "/tmp"}),
        )
        .await;
    assert_eq!(r.stdout, "0\n");
    // A terminal: busybox's sh on a PTY, as the image's user, in its directory.
    let screen = pty_session(&s, &ids[1], "echo pty:$FOO:$(pwd):$(id -u); exit 7\n").await;
    assert!(screen.contains("pty:bar:/app:1000"), "{screen}");
    // Files in and out.
    let r = s
        .daemon(&ids[0], Method::PUT, "/files?path=/tmp/up.txt")
        .body("uploaded")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        s.sh(&ids[0], "cat /tmp/up.txt").await.trim_end(),
        "uploaded"
    );

    // A memory snapshot of it restores; the image then goes off the list
    // but stays on disk while a sandbox or snapshot uses it.
    s.sh(&ids[0], "echo state > /tmp/state").await;
    let snap = s.snapshot(&ids[0], "memory").await;
    let sid = snap["snapshot_id"].as_str().unwrap().to_string();
    let bb_id = bb["id"].as_str().unwrap().to_string();
    assert_eq!(cli(&s, &["image", "rm", "bb"]), "bb");
    let v = s.api_json(Method::GET, "/images/bb").await;
    assert_eq!(v["code"], "not_found", "{v}");
    let (code, e) = s.post_status("/sandboxes", json!({"image": "bb"})).await;
    assert_eq!(code, 400, "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("bbd") && message.contains("default"),
        "{e}"
    );
    let restored = s.create(json!({"snapshot_id": sid})).await;
    assert_eq!(s.sh(&restored, "cat /tmp/state").await, "state\n");
    assert_eq!(s.sh(&restored, "pwd").await, "/app\n");
    assert!(image_dirs(&s).contains(&bb_id));
    for id in [&ids[0], &restored] {
        assert_eq!(s.delete(id).await, 200);
    }
    assert!(
        image_dirs(&s).contains(&bb_id),
        "the snapshot still uses it"
    );
    let r = s
        .req(Method::DELETE, &format!("/snapshots/{sid}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    wait_until(Duration::from_secs(30), || !image_dirs(&s).contains(&bb_id)).await;
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}

#[tokio::test]
async fn bad_imports_are_clear_errors_and_leave_nothing() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let layout = busybox_image(tmp.path());
    let registry = Registry::start(tmp.path());
    skopeo_copy(
        &format!("oci:{}:1", layout.display()),
        &format!("docker://{}/tools/bb:1", registry.addr),
    );
    let s = Server::start().await;
    let import = |body: Value| s.post_status("/images/import", body);
    let cases = [
        (json!({"reference": ""}), 400, "invalid_argument"),
        (json!({"reference": "Not A Ref"}), 400, "invalid_argument"),
        (
            json!({"reference": format!("oci:{}", layout.display())}),
            400,
            "invalid_argument",
        ),
        (
            json!({"reference": format!("{}/tools/bb:nope", registry.addr), "insecure": true}),
            404,
            "image_not_found",
        ),
        (
            json!({"reference": format!("{}/tools/none:1", registry.addr), "insecure": true}),
            404,
            "image_not_found",
        ),
        (
            json!({"reference": "127.0.0.1:1/x:1", "insecure": true}),
            502,
            "registry_error",
        ),
        (
            json!({"reference": format!("{}/tools/bb:1", registry.addr), "insecure": true, "name": "default"}),
            409,
            "conflict",
        ),
        (
            json!({"reference": format!("{}/tools/bb:1", registry.addr), "insecure": true, "name": "../x"}),
            400,
            "invalid_argument",
        ),
    ];
    for (body, status, code) in cases {
        let (got, e) = import(body.clone()).await;
        assert_eq!(
            (got, e["code"].as_str().unwrap()),
            (status, code),
            "{body}: {e}"
        );
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    for (query, body, status) in [
        (
            "name=x&format=docker-archive",
            &b"not a tar archive at all"[..],
            400,
        ),
        ("name=x&format=zip", &b"x"[..], 400),
        ("format=docker-archive", &b"x"[..], 400),
        ("name=x", &b""[..], 400),
    ] {
        let r = s
            .req(Method::POST, &format!("/images/import-archive?{query}"))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{query}");
        let e: Value = r.json().await.unwrap();
        assert!(
            !e["message"]
                .as_str()
                .unwrap()
                .contains(&s.data_dir.display().to_string()),
            "{e}"
        );
    }
    let v = s.api_json(Method::DELETE, "/images/default").await;
    assert_eq!(v["code"], "invalid_argument", "{v}");
    let v = s.api_json(Method::DELETE, "/images/nope").await;
    assert_eq!(v["code"], "not_found", "{v}");
    // Nothing half-made stays: no image, no temporary, no upload.
    assert_eq!(image_dirs(&s), Vec::<String>::new());
    let v = s.api_json(Method::GET, "/images").await;
    let names: Vec<&str> = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default"]);
}

#[tokio::test]
async fn an_image_lost_from_the_host_comes_back_from_the_store() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let layout = busybox_image(tmp.path());
    let archive = tmp.path().join("bb.tar");
    skopeo_copy(
        &format!("oci:{}:1", layout.display()),
        &format!("oci-archive:{}", archive.display()),
    );
    let mut s = Server::start().await;
    let source = format!("oci-archive:{}", archive.display());
    assert_eq!(cli(&s, &["image", "import", &source, "-t", "kept"]), "kept");
    // Stored in the background after the import; a kill cuts that short
    // (or not), and the next start stores what is not stored.
    s.kill9();
    s.respawn().await;
    let mut image = Value::Null;
    for _ in 0..100 {
        image = s.api_json(Method::GET, "/images/kept").await;
        if image["stored_bytes"].as_u64().is_some_and(|b| b > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        image["stored_bytes"].as_u64().is_some_and(|b| b > 0),
        "{image}"
    );
    let id = image["id"].as_str().unwrap().to_string();
    let manifest = s
        .data_dir
        .join("store/manifests")
        .join(format!("image-{id}.json"));
    assert!(manifest.exists());
    // The host loses the image's files; the next start brings them back.
    s.stop();
    std::fs::remove_dir_all(s.data_dir.join("custom-images").join(&id)).unwrap();
    s.respawn().await;
    let again = s.api_json(Method::GET, "/images/kept").await;
    assert_eq!(again["id"], id.as_str(), "{again}");
    let sandbox = s.create(json!({"image": "kept"})).await;
    assert_eq!(s.sh(&sandbox, "pwd; cat /app/hello").await, "/app\nhi\n");
    // Removed and unused: gone from the store too.
    assert_eq!(s.delete(&sandbox).await, 200);
    assert_eq!(cli(&s, &["image", "rm", "kept"]), "kept");
    wait_until(Duration::from_secs(30), || !manifest.exists()).await;
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}
