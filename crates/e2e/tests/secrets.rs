//! Secrets with a real server and real sandboxes: set through the CLI and
//! the API, injected into the entrypoint and every process, kept by memory
//! images, current in fresh boots — and their values nowhere else: not in
//! the server's log, not in any answer the test received, not in the state
//! database, not in the sandboxes' metadata on disk.

use sbx_e2e::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every answer body the test received, to grep for secret values.
#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

impl Seen {
    fn add(&self, text: impl Into<String>) {
        self.0.lock().unwrap().push(text.into());
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        self.add(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A CLI run: its stdout and stderr are answers too.
    fn cli(&self, out: Output) -> Output {
        self.add(String::from_utf8_lossy(&out.stdout));
        self.add(String::from_utf8_lossy(&out.stderr));
        out
    }

    fn holding(&self, needle: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b.contains(needle))
            .cloned()
            .collect()
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A value no log or answer would hold by chance.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos:x}", std::process::id())
}

/// Creates a sandbox (blocking): its status and answer.
async fn create(s: &Server, seen: &Seen, body: Value) -> (u16, Value) {
    seen.send(s.req(reqwest::Method::POST, "/sandboxes").json(&body))
        .await
}

/// Whether `$NAME` in a command started in sandbox `id` is `value`, and
/// whether the entrypoint had it too (it wrote its environment to
/// /tmp/entry.env). The value goes in as a request's variable: no answer
/// ever carries it.
async fn check_env(s: &Server, seen: &Seen, id: &str, name: &str, value: &str) {
    let script = format!(
        "test \"${name}\" = \"$EXPECTED\" || {{ echo exec-differs; exit 1; }}; \
         grep -qxF \"{name}=$EXPECTED\" /tmp/entry.env || {{ echo entry-differs; exit 2; }}"
    );
    // The entrypoint writes its file as it starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s
            .run(
                id,
                json!({"command": "sh", "args": ["-c", script], "env": {"EXPECTED": value}}),
            )
            .await;
        seen.add(format!("{r:?}"));
        if r.exit["exit_code"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} in {id}: {} {}",
            r.stdout,
            r.stderr
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Takes a snapshot of `id` and waits until it can be restored.
async fn snapshot(s: &Server, seen: &Seen, id: &str, kind: &str) -> String {
    let (code, v) = seen
        .send(
            s.req(reqwest::Method::POST, &format!("/sandboxes/{id}/snapshot"))
                .json(&json!({"snapshot_type": kind})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let sid = v["snapshot_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, v) = seen
            .send(s.req(reqwest::Method::GET, &format!("/snapshots/{sid}")))
            .await;
        if v["status"] == "completed" {
            return sid;
        }
        assert!(v["status"] != "failed", "{v}");
        assert!(Instant::now() < deadline, "snapshot stuck: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Files under `dir` named `name`, recursively (not following links).
fn files_named(dir: &Path, name: &str, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            files_named(&e.path(), name, out);
        } else if e.file_name() == name {
            out.push(e.path());
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

const ENTRYPOINT: &str = "env > /tmp/entry.env; exec sleep 100000";

#[tokio::test]
async fn secrets_reach_sandboxes_and_nowhere_else() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("server.log");
    let s = Server::start_with(Options {
        log: Some(log.clone()),
        env: vec![("RUST_LOG".into(), "debug".into())],
        ..Default::default()
    })
    .await;
    let seen = Seen::default();
    let token = unique("tok");
    let token2 = unique("tok2");
    let password = format!("it's \"quoted\" $HOME & {}", unique("pw"));
    let values = [token.clone(), token2.clone(), password.clone()];

    // Set through the CLI (stdin; the trailing newline is dropped) and the API.
    let mut child = s
        .cli()
        .args(["secret", "set", "API_TOKEN"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = seen.cli(child.wait_with_output().unwrap());
    assert_eq!(ok(&out).trim(), "API_TOKEN");
    let (code, v) = seen
        .send(
            s.req(reqwest::Method::PUT, "/secrets/DB_PASSWORD")
                .json(&json!({"value": password})),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["name"], "DB_PASSWORD");
    assert!(v.get("value").is_none(), "{v}");

    // Listed by name and date only.
    let table = ok(&seen.cli(s.cli().args(["secret", "ls"]).output().unwrap()));
    assert!(
        table.contains("API_TOKEN") && table.contains("DB_PASSWORD"),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&ok(
        &seen.cli(s.cli().args(["secret", "ls", "--json"]).output().unwrap())
    ))
    .unwrap();
    let names: Vec<&str> = listed["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["API_TOKEN", "DB_PASSWORD"]);
    assert!(listed["secrets"][0]["created_at"].is_string());

    // Bad input: a clear JSON error, and nothing changes.
    for (path, body, want) in [
        ("/secrets/1BAD", json!({"value": token2}), 400),
        ("/secrets/SBX_TOKEN", json!({"value": token2}), 400),
        ("/secrets/BAD-NAME", json!({"value": token2}), 400),
        ("/secrets/API_TOKEN", json!({"value": 5}), 400),
        ("/secrets/API_TOKEN", json!({"valu": token2}), 400),
        (
            "/secrets/API_TOKEN",
            json!({"value": "x".repeat(64 * 1024 + 1)}),
            413,
        ),
    ] {
        let (code, v) = seen
            .send(s.req(reqwest::Method::PUT, path).json(&body))
            .await;
        assert_eq!(code, want, "{path} {body}: {v}");
        assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
    }
    let (code, v) = seen
        .send(s.req(reqwest::Method::DELETE, "/secrets/NOT_THERE"))
        .await;
    assert_eq!((code, v["code"].as_str()), (404, Some("not_found")), "{v}");
    let (_, v) = seen.send(s.req(reqwest::Method::GET, "/secrets")).await;
    assert_eq!(v["secrets"].as_array().unwrap().len(), 2, "{v}");

    // An unknown name is a 400 naming it, and creates nothing.
    let (code, v) = create(
        &s,
        &seen,
        json!({"secret_names": ["API_TOKEN", "NO_SUCH_SECRET"]}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("NO_SUCH_SECRET"),
        "{v}"
    );
    let (_, v) = seen
        .send(s.req(reqwest::Method::GET, "/sandboxes?all=true"))
        .await;
    assert!(v["sandboxes"].as_array().unwrap().is_empty(), "{v}");

    // In the entrypoint's environment and in every command's.
    let (code, v) = create(
        &s,
        &seen,
        json!({
            "name": "sec-box",
            "secret_names": ["API_TOKEN", "DB_PASSWORD"],
            "entrypoint": ["sh", "-c", ENTRYPOINT],
        }),
    )
    .await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    let id = v["sandbox_id"].as_str().unwrap().to_string();
    // Its runtime spec carries the environment: the owner's only.
    let config =
        std::fs::metadata(s.data_dir.join("sandboxes").join(&id).join("config.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&config.permissions()) & 0o077,
        0
    );
    check_env(&s, &seen, &id, "API_TOKEN", &token).await;
    check_env(&s, &seen, &id, "DB_PASSWORD", &password).await;
    // And through `sbx exec`.
    let expected = format!("E={token}");
    let out = seen.cli(
        s.cli()
            .args(["exec", "sec-box", "-e", &expected, "--", "sh", "-c"])
            .arg("test \"$API_TOKEN\" = \"$E\"")
            .output()
            .unwrap(),
    );
    ok(&out);
    let (_, info) = seen
        .send(s.req(reqwest::Method::GET, &format!("/sandboxes/{id}")))
        .await;
    assert_eq!(info["secret_names"], json!(["API_TOKEN", "DB_PASSWORD"]));

    // A new value: a memory image keeps the old one, a fresh boot (a
    // filesystem restore) gets the new one.
    let (code, _) = seen
        .send(
            s.req(reqwest::Method::PUT, "/secrets/API_TOKEN")
                .json(&json!({"value": token2})),
        )
        .await;
    assert_eq!(code, 200);
    let mem = snapshot(&s, &seen, &id, "memory").await;
    let fs = snapshot(&s, &seen, &id, "filesystem").await;
    let (code, v) = create(&s, &seen, json!({"snapshot_id": mem})).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    let warm = v["sandbox_id"].as_str().unwrap().to_string();
    check_env(&s, &seen, &warm, "API_TOKEN", &token).await;
    let (code, v) = create(
        &s,
        &seen,
        json!({"snapshot_id": mem, "secret_names": ["DB_PASSWORD"]}),
    )
    .await;
    assert_eq!(code, 400, "a memory restore cannot change its secrets: {v}");
    let (code, v) = create(&s, &seen, json!({"snapshot_id": fs})).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    let cold = v["sandbox_id"].as_str().unwrap().to_string();
    check_env(&s, &seen, &cold, "API_TOKEN", &token2).await;
    check_env(&s, &seen, &cold, "DB_PASSWORD", &password).await;

    // Suspended and resumed: its memory still has the value it had.
    let (code, v) = seen
        .send(s.req(
            reqwest::Method::POST,
            "/sandboxes/sec-box/suspend?wait_ms=30000",
        ))
        .await;
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("suspended")),
        "{v}"
    );
    let mut metas = Vec::new();
    files_named(&s.data_dir.join("sandboxes"), "meta.json", &mut metas);
    assert!(!metas.is_empty(), "sandboxes keep meta.json");
    for m in &metas {
        let bytes = std::fs::read(m).unwrap();
        for v in &values {
            assert!(!contains(&bytes, v), "{} holds a secret value", m.display());
        }
    }
    let (code, v) = seen
        .send(s.req(
            reqwest::Method::POST,
            "/sandboxes/sec-box/resume?wait_ms=30000",
        ))
        .await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    check_env(&s, &seen, &id, "API_TOKEN", &token).await;

    // Deleted: running sandboxes keep it, new ones cannot name it.
    ok(&seen.cli(
        s.cli()
            .args(["secret", "rm", "DB_PASSWORD"])
            .output()
            .unwrap(),
    ));
    check_env(&s, &seen, &cold, "DB_PASSWORD", &password).await;
    let (code, v) = create(&s, &seen, json!({"secret_names": ["DB_PASSWORD"]})).await;
    assert_eq!(code, 400, "{v}");
    let out = seen.cli(
        s.cli()
            .args(["secret", "rm", "DB_PASSWORD"])
            .output()
            .unwrap(),
    );
    assert!(!out.status.success());

    // The state database holds sealed values only (its WAL included).
    let mut db_files = 0;
    for e in std::fs::read_dir(&s.data_dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("state.db") {
            db_files += 1;
            let bytes = std::fs::read(e.path()).unwrap();
            for v in &values {
                assert!(
                    !contains(&bytes, v),
                    "{} holds a plaintext value",
                    e.path().display()
                );
            }
        }
    }
    assert!(db_files > 0);
    let key = std::fs::metadata(s.data_dir.join("secrets.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );

    // Nothing the test received, nothing the server logged.
    for v in &values {
        let found = seen.holding(v);
        assert!(
            found.is_empty(),
            "an answer holds a secret value: {found:?}"
        );
    }
    for sb in [&id, &warm, &cold] {
        seen.send(s.req(reqwest::Method::DELETE, &format!("/sandboxes/{sb}")))
            .await;
    }
    s.cleanup().await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("secret set") && text.contains("sandbox running"),
        "the server's log was captured"
    );
    for v in &values {
        assert!(
            !text.contains(v.as_str()),
            "the server's log holds a secret value"
        );
    }
}
