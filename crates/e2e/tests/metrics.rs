//! `GET /metrics`: a real server's Prometheus metrics after real work
//! (create, memory snapshot, restore, suspend/resume), read by parsing the
//! exposition.

use reqwest::Method;
use sbx_e2e::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// One sample of an exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of an OpenMetrics/Prometheus text exposition.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                (name.to_string(), parse_labels(body))
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The value of the one sample of `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {want:?}: {found:?}");
    found.first().map(|s| s.value)
}

fn meminfo_bytes(field: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    kb * 1024.0
}

async fn scrape(s: &Server) -> Vec<Sample> {
    let r = s.req_root(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    parse(&text)
}

#[test]
fn the_parser_reads_labels_and_values() {
    let s = parse(
        "# TYPE x gauge\nx 3\ny_bucket{le=\"0.5\",a=\"b\\\"c\"} 2\nz{node=\"n,1\",s=\"r\"} 1.5e3\n# EOF\n",
    );
    assert_eq!(value(&s, "x", &[]), Some(3.0));
    assert_eq!(
        value(&s, "y_bucket", &[("a", "b\"c"), ("le", "0.5")]),
        Some(2.0)
    );
    assert_eq!(value(&s, "z", &[("node", "n,1")]), Some(1500.0));
    assert_eq!(value(&s, "z", &[("node", "n")]), None);
}

#[tokio::test]
async fn metrics_follow_creates_snapshots_restores_and_resumes() {
    let s = Server::start_with(Options {
        key: Some("metrics-key".into()),
        args: vec!["--max-sandboxes".into(), "9".into()],
        ..Default::default()
    })
    .await;

    // Like every route: the key is needed.
    let r = s
        .http
        .get(format!("{}/metrics", s.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let nodes: serde_json::Value = s
        .req_root(Method::GET, "/v1/nodes")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node = nodes["nodes"][0]["id"].as_str().unwrap().to_string();

    // Create, memory snapshot (stored), restore.
    let a = s.create(json!({})).await;
    let snap = s.snapshot(&a, "memory").await;
    assert_eq!(snap["status"], "completed");
    let sid = snap["snapshot_id"].as_str().unwrap();
    let restored = s.create(json!({"snapshot_id": sid})).await;
    // A named sandbox, suspended and resumed.
    let named = s.create(json!({"name": "metered"})).await;
    let (code, v) = s
        .post_status("/sandboxes/metered/suspend?wait_ms=30000", json!({}))
        .await;
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("suspended")),
        "{v}"
    );
    let (code, v) = s
        .post_status("/sandboxes/metered/resume?wait_ms=30000", json!({}))
        .await;
    assert_eq!(code, 200, "{v}");
    s.wait_status(&named, "running", Duration::from_secs(30))
        .await;

    let m = scrape(&s).await;
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&m, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    // Latency histograms: at least the operations done, every bucket
    // cumulative up to +Inf = count.
    for (name, labels, done) in [
        ("sbx_sandbox_create_seconds", vec![], 2.0),
        ("sbx_sandbox_restore_seconds", vec![], 1.0),
        ("sbx_sandbox_resume_seconds", vec![], 1.0),
        ("sbx_snapshot_pause_seconds", vec![("type", "memory")], 1.0),
    ] {
        let count = get(&format!("{name}_count"), &labels);
        assert!(count >= done, "{name}: {count} < {done}");
        let mut inf = labels.clone();
        inf.push(("le", "+Inf"));
        assert_eq!(get(&format!("{name}_bucket"), &inf), count, "{name}");
        let sum = get(&format!("{name}_sum"), &labels);
        assert!(sum > 0.0 && sum < 600.0 * count, "{name} sum {sum}");
    }
    // The sandboxes running, by node.
    let running = get("sbx_sandboxes", &[("status", "running"), ("node", &node)]);
    assert_eq!(running, 3.0, "{a} {restored} {named}");
    assert_eq!(get("sbx_node_sandboxes_running", &[("node", &node)]), 3.0);
    // The node's capacity is the host's.
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    assert_eq!(get("sbx_node_cpus", &[("node", &node)]), cpus);
    let total = meminfo_bytes("MemTotal");
    assert_eq!(
        get("sbx_node_memory_total_bytes", &[("node", &node)]),
        total
    );
    let available = get("sbx_node_memory_available_bytes", &[("node", &node)]);
    let here = meminfo_bytes("MemAvailable");
    assert!(
        available > 0.0 && (available - here).abs() < total * 0.1,
        "available {available}, /proc/meminfo says {here}"
    );
    assert_eq!(get("sbx_node_max_sandboxes", &[("node", &node)]), 9.0);
    // The completed snapshot is in the blob store.
    let logical = get("sbx_blob_logical_bytes_total", &[("kind", "snapshot")]);
    let stored = get("sbx_blob_stored_bytes_total", &[("kind", "snapshot")]);
    let saved = get("sbx_blob_deduplicated_bytes_total", &[("kind", "snapshot")]);
    assert!(stored > 0.0 && logical >= stored, "{logical} {stored}");
    assert_eq!(saved, logical - stored);
    assert_eq!(get("sbx_snapshots_completed", &[]), 1.0);
    assert_eq!(
        get("sbx_snapshots_logical_bytes", &[]),
        snap["size_bytes"].as_f64().unwrap()
    );
    assert_eq!(
        get("sbx_snapshots_stored_bytes", &[]),
        snap["stored_bytes"].as_f64().unwrap()
    );
    assert!(snap["stored_bytes"].as_u64().unwrap() > 0, "{snap}");

    // Gauges follow the state store: a terminated sandbox moves.
    assert_eq!(s.delete(&restored).await, 200);
    let m = scrape(&s).await;
    assert_eq!(
        value(
            &m,
            "sbx_sandboxes",
            &[("status", "running"), ("node", &node)]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &m,
            "sbx_sandboxes",
            &[("status", "terminated"), ("node", &node)]
        ),
        Some(1.0)
    );
    s.cleanup().await;
}
