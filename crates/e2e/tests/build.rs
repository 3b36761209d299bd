//! Images built from Dockerfiles with `sbx image build`: steps in builder
//! sandboxes, the step cache, multi-stage builds, and the errors a user
//! meets. The Python example installs a small package from PyPI through
//! the host's route, as the fresh-host test does.

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use sbx_e2e::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// Runs `sbx image build`; (success, stdout, stderr).
fn build(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = s
        .cli()
        .args(["image", "build"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Builds `examples/NAME` as image NAME.
fn build_example(s: &Server, name: &str) {
    let example = workspace().join("examples").join(name);
    let (ok, out, err) = build(
        s,
        &["-t", name, "--progress", "plain", example.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), name);
}

/// The events of a `--json` build.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Per step (by its text): whether the build took it from the cache.
fn cached_steps(events: &[Value]) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    for e in events {
        match e["event"].as_str().unwrap() {
            "step" => out.push((e["text"].as_str().unwrap().to_string(), false)),
            "cached" => out.last_mut().unwrap().1 = true,
            _ => {}
        }
    }
    out
}

const PY_DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
FROM default
ARG GREETING=hello
ENV APP_HOME=/srv/app GREETING=${GREETING}
WORKDIR $APP_HOME
RUN pip install --no-cache-dir --disable-pip-version-check tomli-w
COPY app.py ./
COPY --chmod=755 bin/ /usr/local/bin/
COPY . /ctx/
EXPOSE 8080
CMD ["python3", "app.py"]
"#;

const APP: &str = r#"import os, time, tomli_w
open("out.toml", "w").write(tomli_w.dumps({"greeting": os.environ["GREETING"]}))
time.sleep(1e9)
"#;

#[tokio::test]
async fn a_python_image_builds_boots_snapshots_and_rebuilds_from_cache() {
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        &[
            ("Dockerfile", PY_DOCKERFILE),
            ("app.py", APP),
            ("bin/hello", "#!/bin/sh\necho hello from the image\n"),
            ("secret.txt", "not for the image"),
            (".dockerignore", "secret.txt\n"),
        ],
    );
    let dir = ctx.path().to_str().unwrap();
    let s = Server::start().await;
    let (ok, out, err) = build(
        &s,
        &[
            "-t",
            "pyapp",
            "--build-arg",
            "GREETING=bonjour",
            "--progress",
            "plain",
            dir,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "pyapp");
    assert!(err.contains("[4/8] RUN pip install"), "{err}");
    assert!(err.contains("tomli"), "pip's output is shown: {err}");
    assert!(err.contains("warning: Dockerfile line 10: EXPOSE"), "{err}");
    let image = s.api_json(Method::GET, "/images/pyapp").await;
    assert_eq!(image["source"], "build");
    assert_eq!(image["working_dir"], "/srv/app");
    assert_eq!(image["entrypoint"], json!(["python3", "app.py"]));
    assert!(image["env"]
        .as_array()
        .unwrap()
        .contains(&json!("GREETING=bonjour")));

    // It boots with its command running, its files and environment.
    let id = s.create(json!({"image": "pyapp"})).await;
    let mut toml = String::new();
    for _ in 0..100 {
        toml = s.sh(&id, "cat /srv/app/out.toml 2>/dev/null || true").await;
        if !toml.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(toml, "greeting = \"bonjour\"\n");
    assert_eq!(s.sh(&id, "pwd").await, "/srv/app\n");
    assert_eq!(s.sh(&id, "hello").await, "hello from the image\n");
    let ctx_files = s.sh(&id, "ls -a /ctx").await;
    assert!(
        ctx_files.contains("app.py") && !ctx_files.contains("secret.txt"),
        "{ctx_files}"
    );
    // Snapshotted and restored like any sandbox.
    let snap = s.snapshot(&id, "memory").await;
    let restored = s.create(json!({"snapshot_id": snap["snapshot_id"]})).await;
    assert_eq!(s.sh(&restored, "cat /srv/app/out.toml").await, toml);

    // Unchanged: every step from the cache.
    let rebuild = || {
        let (ok, out, err) = build(
            &s,
            &[
                "-t",
                "pyapp",
                "--build-arg",
                "GREETING=bonjour",
                "--json",
                dir,
            ],
        );
        assert!(ok, "{err}");
        events(&out)
    };
    let ev = rebuild();
    for (step, cached) in cached_steps(&ev) {
        let makes_layer = step.starts_with("RUN") || step.starts_with("COPY");
        assert!(!makes_layer || cached, "{step} ran again: {ev:?}");
    }
    assert!(!ev.iter().any(|e| e["event"] == "output"), "{ev:?}");
    assert_eq!(ev.last().unwrap()["event"], "done");
    // A changed file reruns from the step that copies it.
    write(ctx.path(), &[("app.py", &APP.replace("greeting", "salut"))]);
    let steps = cached_steps(&rebuild());
    let of = |prefix: &str| steps.iter().find(|(t, _)| t.starts_with(prefix)).unwrap().1;
    assert!(of("RUN pip"), "{steps:?}");
    assert!(!of("COPY app.py"), "{steps:?}");
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}

#[tokio::test]
async fn multi_stage_builds_and_build_errors() {
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM default AS build\nRUN mkdir -p /out && echo made in stage one > /out/data.txt\n\
                 FROM scratch\nCOPY --from=build /out/data.txt /data.txt\n",
            ),
            ("failing/Dockerfile", "FROM default\nRUN echo about to fail && exit 3\n"),
            ("mount/Dockerfile", "FROM default\nRUN --mount=type=cache,target=/c true\n"),
            ("unknown/Dockerfile", "FROM no-such-image\nRUN true\n"),
        ],
    );
    let dir = ctx.path().to_str().unwrap();
    let s = Server::start().await;
    // From scratch, with a file of the first stage only: the agent still
    // boots it (it is static) and serves its files.
    let (ok, out, err) = build(&s, &["-t", "tiny", "--progress", "plain", dir]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "tiny");
    let id = s.create(json!({"image": "tiny"})).await;
    let r = s
        .daemon(&id, Method::GET, "/files?path=/data.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "made in stage one\n");
    let listing = s.daemon_json(&id, Method::GET, "/files/list?path=/").await;
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"bin") && !names.contains(&"usr"),
        "{names:?}"
    );

    // A failing step: its output, the line, no image.
    let failing = format!("{dir}/failing");
    let (ok, _, err) = build(&s, &["-t", "broken", "--progress", "plain", &failing]);
    assert!(!ok);
    assert!(err.contains("about to fail"), "{err}");
    assert!(
        err.contains("line 2") && err.contains("exited with code 3"),
        "{err}"
    );
    // Errors found before any step: a 400 naming the line.
    for (sub, words) in [("mount", "line 2"), ("unknown", "no-such-image")] {
        let (ok, _, err) = build(&s, &["-t", "broken", &format!("{dir}/{sub}")]);
        assert!(!ok);
        assert!(err.contains(words), "{sub}: {err}");
    }
    let v = s.api_json(Method::GET, "/images/broken").await;
    assert_eq!(v["code"], "not_found", "{v}");
    // No builder sandbox, no scratch directory stays.
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
    let work: Vec<String> = std::fs::read_dir(s.data_dir.join("build-cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(work.is_empty(), "{work:?}");
}

/// A TCP connection to `port` in sandbox `id` through its tunnel.
async fn tunnel(
    s: &Server,
    id: &str,
    port: u16,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/tunnels/tcp?port={port}",
        s.proxy_port
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("X-Tensorlake-Sandbox-Id", id.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("tunnel")
        .0
}

/// One HTTP request to Chromium's DevTools (port 9222 in sandbox `id`)
/// through the sandbox's TCP tunnel; the answer's body.
async fn devtools(s: &Server, id: &str, method: &str, path: &str) -> String {
    let mut ws = tunnel(s, id, 9222).await;
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    ws.send(Message::Binary(request.into_bytes().into()))
        .await
        .unwrap();
    let mut raw = Vec::new();
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) => raw.extend_from_slice(&b),
                Message::Close(_) => break,
                Message::Text(t) => panic!("tunnel error: {t}"),
                _ => {}
            }
            // The whole body, by its Content-Length.
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse::<usize>().ok());
                if len.is_some_and(|n| body.len() >= n) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("DevTools answered");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    body.to_string()
}

/// Waits until one of sandbox `id`'s browser tabs has title `title`.
async fn tab_titled(s: &Server, id: &str, title: &str) {
    for _ in 0..100 {
        let tabs: Value =
            serde_json::from_str(&devtools(s, id, "GET", "/json/list").await).unwrap();
        if tabs.as_array().unwrap().iter().any(|t| t["title"] == title) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no tab titled {title:?} in {id}");
}

/// The browser-agent guide: an image with Chromium built from
/// `examples/browser`, a page that sets a cookie, a memory snapshot
/// copied twice, and each copy's browser answering DevTools through a
/// tunnel with the cookie already there. Chromium comes from Debian's
/// mirror, installed in the builder sandbox as the host installs packages.
#[tokio::test]
async fn the_browser_example_keeps_its_cookie_in_every_copy() {
    let s = Server::start().await;
    build_example(&s, "browser");
    let id = s
        .create(json!({"name": "browser-1", "image": "browser", "resources": {"memory_mb": 2048}}))
        .await;
    // The entrypoint started Chromium; a page server beside it.
    let site = "mkdir -p /srv/site && cd /srv/site \
        && echo '<script>document.cookie=\"session=warm-42; max-age=86400\"; document.title=\"set:\"+document.cookie</script>' > set.html \
        && echo '<script>document.title=\"seen:\"+document.cookie</script>' > show.html";
    s.sh(&id, site).await;
    let r = s
        .daemon(&id, Method::POST, "/processes")
        .json(&json!({"command": "python3", "args": ["-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/srv/site"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let ready = "for i in $(seq 100); do curl -sf -m 2 127.0.0.1:9222/json/version >/dev/null && curl -sf -m 2 127.0.0.1:8000/set.html >/dev/null && exit 0; sleep 0.2; done; exit 1";
    s.sh(&id, ready).await;
    devtools(&s, &id, "PUT", "/json/new?http://127.0.0.1:8000/set.html").await;
    tab_titled(&s, &id, "set:session=warm-42").await;

    let (code, v) = s
        .post_status("/sandboxes/browser-1/copy?times=2", json!({}))
        .await;
    assert_eq!(code, 200, "{v}");
    let copies: Vec<String> = v["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["sandbox_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(copies.len(), 2, "{v}");
    for copy in &copies {
        // The tab of the original, and a new one that finds the cookie.
        tab_titled(&s, copy, "set:session=warm-42").await;
        devtools(&s, copy, "PUT", "/json/new?http://127.0.0.1:8000/show.html").await;
        tab_titled(&s, copy, "seen:session=warm-42").await;
    }
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}

/// The desktop example: built, booted, and its VNC server greets a client
/// that comes through the sandbox's TCP tunnel (what a VNC viewer does).
#[tokio::test]
async fn the_desktop_example_answers_vnc_through_a_tunnel() {
    let s = Server::start().await;
    build_example(&s, "desktop");
    let id = s
        .create(json!({"image": "desktop", "resources": {"memory_mb": 2048}}))
        .await;
    // Port 5901 (0x170D) listening.
    let listening = "for i in $(seq 100); do grep -q ':170D 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done; exit 1";
    s.sh(&id, listening).await;
    let mut ws = tunnel(&s, &id, 5901).await;
    let mut greeting = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while greeting.len() < 12 {
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(b) => greeting.extend_from_slice(&b),
                Message::Text(t) => panic!("tunnel error: {t}"),
                _ => {}
            }
        }
    })
    .await
    .expect("the VNC server greeted");
    assert!(
        greeting.starts_with(b"RFB 003."),
        "{:?}",
        String::from_utf8_lossy(&greeting)
    );
    // The window manager runs on the display.
    assert!(s.sh(&id, "ps -eo args").await.contains("openbox"));
    s.cleanup().await;
    assert!(s.host_leftovers().is_empty(), "{:?}", s.host_leftovers());
}
