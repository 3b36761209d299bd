//! `GET /metrics`: the server's metrics in the OpenMetrics text format
//! (which Prometheus scrapes), through `prometheus-client`: an explicit
//! registry per server, no process-wide recorder.
//!
//! Two kinds of metric:
//! - kept current as things happen (histograms of create, restore and
//!   resume latency and of snapshot pauses; counters of the bytes put into
//!   the blob store), observed on the node that did the work, counted since
//!   its server started;
//! - read at scrape time ([`Scrape`]): sandboxes by status and node and the
//!   completed snapshots' bytes (one grouped query each on the state store,
//!   so the same cluster-wide numbers on every server sharing it), and the
//!   local node's capacity and use (from `/proc` and the executor).
//!
//! Warm pools do not exist yet, so there is no claim-latency histogram:
//! a metric that is always empty would only mislead a dashboard.

use crate::api::ApiState;
use crate::error::ApiResult;
use crate::lifecycle::Manager;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::{encode, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sbx_api::sandbox::SandboxStatus;
use sbx_api::snapshot::SnapshotType;
use std::time::Duration;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency buckets: a warm create is a few
/// hundred ms, a create that waits for an image or fetches a snapshot from
/// S3 can take minutes.
const LATENCY_BUCKETS: [f64; 15] = [
    0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upper bounds (seconds) of the snapshot-pause buckets: a small memory
/// snapshot pauses its sandbox for tens of ms, a large one for seconds.
const PAUSE_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabels {
    status: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn pause_histogram() -> Histogram {
    Histogram::new(PAUSE_BUCKETS)
}

/// What blob-store bytes are for (label `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    Snapshot,
    Image,
}

impl BlobKind {
    fn as_str(self) -> &'static str {
        match self {
            BlobKind::Snapshot => "snapshot",
            BlobKind::Image => "image",
        }
    }
}

/// The metrics a server keeps current (one per server, in its [`Manager`]).
pub struct Metrics {
    registry: Registry,
    create: Histogram,
    restore: Histogram,
    resume: Histogram,
    claim: Histogram,
    pause: HistogramFamily<TypeLabel>,
    logical: Family<KindLabel, Counter>,
    stored: Family<KindLabel, Counter>,
    deduplicated: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let create = Histogram::new(LATENCY_BUCKETS);
        let restore = Histogram::new(LATENCY_BUCKETS);
        let resume = Histogram::new(LATENCY_BUCKETS);
        let claim = Histogram::new(LATENCY_BUCKETS);
        let pause: HistogramFamily<TypeLabel> = Family::new_with_constructor(pause_histogram);
        let logical = Family::<KindLabel, Counter>::default();
        let stored = Family::<KindLabel, Counter>::default();
        let deduplicated = Family::<KindLabel, Counter>::default();
        registry.register(
            "sbx_sandbox_create_seconds",
            "Time from a create request (the sandbox recorded) to the sandbox running, of sandboxes not restored from a snapshot, observed by the node that launched them",
            create.clone(),
        );
        registry.register(
            "sbx_sandbox_restore_seconds",
            "Time from a create request from a snapshot (the sandbox recorded) to the restored sandbox running, observed by the node that launched it",
            restore.clone(),
        );
        registry.register(
            "sbx_sandbox_resume_seconds",
            "Time from a resume (API or automatic) to the sandbox running again",
            resume.clone(),
        );
        registry.register(
            "sbx_pool_claim_seconds",
            "Time from a claim on a warm pool to its sandbox running (a warm one at once; else one started for it)",
            claim.clone(),
        );
        registry.register(
            "sbx_snapshot_pause_seconds",
            "How long a capture paused its sandbox (the executor's pause_ms), by snapshot type",
            pause.clone(),
        );
        registry.register(
            "sbx_blob_logical_bytes",
            "Bytes this server put into the blob store (snapshots' and images' files before chunking), by kind",
            logical.clone(),
        );
        registry.register(
            "sbx_blob_stored_bytes",
            "Compressed bytes of new chunks this server wrote to the blob store, by kind",
            stored.clone(),
        );
        registry.register(
            "sbx_blob_deduplicated_bytes",
            "Logical bytes this server put into the blob store that took no new space (chunks already stored, and compression): logical minus stored, by kind",
            deduplicated.clone(),
        );
        Self {
            registry,
            create,
            restore,
            resume,
            claim,
            pause,
            logical,
            stored,
            deduplicated,
        }
    }

    /// A sandbox recorded at `created_at` runs now; `restored`: from a snapshot.
    pub fn sandbox_started(&self, restored: bool, created_at: DateTime<Utc>) {
        // Recorded by another server, whose clock may be ahead of this one.
        let secs = (Utc::now() - created_at)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64();
        if restored {
            self.restore.observe(secs);
        } else {
            self.create.observe(secs);
        }
    }

    /// A sandbox resumed, `took` after it was asked to.
    pub fn sandbox_resumed(&self, took: Duration) {
        self.resume.observe(took.as_secs_f64());
    }

    /// A claim on a pool got a running sandbox, `took` after it came.
    pub fn pool_claimed(&self, took: Duration) {
        self.claim.observe(took.as_secs_f64());
    }

    /// A capture paused its sandbox for `pause_ms`.
    pub fn snapshot_paused(&self, kind: SnapshotType, pause_ms: u64) {
        self.pause
            .get_or_create(&TypeLabel {
                r#type: kind.as_str().to_string(),
            })
            .observe(pause_ms as f64 / 1000.0);
    }

    /// `logical` bytes went into the blob store, `stored` of them as new chunks.
    pub fn blob_put(&self, kind: BlobKind, logical: u64, stored: u64) {
        let label = KindLabel {
            kind: kind.as_str().to_string(),
        };
        self.logical.get_or_create(&label).inc_by(logical);
        self.stored.get_or_create(&label).inc_by(stored);
        self.deduplicated
            .get_or_create(&label)
            .inc_by(logical.saturating_sub(stored));
    }

    /// The text of a scrape: what is kept here, then `scrape`.
    pub fn render(&self, scrape: &Scrape) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode_registry(&mut out, &self.registry).expect("encode metrics");
        encode(&mut out, &scrape.registry()).expect("encode metrics");
        out
    }
}

/// The local node's capacity and use, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeReport {
    pub node: String,
    pub cpus: u64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub sandboxes_running: u64,
    pub max_sandboxes: Option<u64>,
}

/// What a scrape reads from the state store and the host.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Sandboxes per (status, node).
    pub sandboxes: Vec<(SandboxStatus, String, u64)>,
    /// Completed snapshots: count, logical bytes, stored bytes.
    pub snapshots: Option<(u64, u64, u64)>,
    /// `None`: this server runs no node (`--no-local-node`).
    pub node: Option<NodeReport>,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, node: &str, value: u64) {
    let family = Family::<NodeLabel, Gauge>::default();
    family
        .get_or_create(&NodeLabel {
            node: node.to_string(),
        })
        .set(value.min(i64::MAX as u64) as i64);
    registry.register(name, help, family);
}

impl Scrape {
    /// Reads the state store and the local node now.
    pub async fn read(m: &Manager) -> ApiResult<Self> {
        let sandboxes = m
            .store
            .count_by_status_and_node()
            .await?
            .into_iter()
            // Rows from before nodes are the single host's.
            .map(|(status, node, n)| (status, node.unwrap_or_else(|| m.node_id.clone()), n))
            .collect();
        let snapshots = Some(m.store.completed_snapshot_bytes().await?);
        let node = m.runs_sandboxes().then(|| {
            let kb = |field| sbx_executor::meminfo_kb(field).unwrap_or(0) * 1024;
            NodeReport {
                node: m.node_id.clone(),
                cpus: m.host.cpus as u64,
                memory_total_bytes: kb("MemTotal"),
                memory_available_bytes: kb("MemAvailable"),
                sandboxes_running: m.running_here().len() as u64,
                max_sandboxes: m.admission.max_sandboxes.map(|n| n as u64),
            }
        });
        Ok(Self {
            sandboxes,
            snapshots,
            node,
        })
    }

    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        let sandboxes = Family::<SandboxLabels, Gauge>::default();
        for (status, node, n) in &self.sandboxes {
            sandboxes
                .get_or_create(&SandboxLabels {
                    status: status.as_str().to_string(),
                    node: node.clone(),
                })
                .set(*n as i64);
        }
        r.register(
            "sbx_sandboxes",
            "Sandboxes in the state store by status and node (the same cluster-wide numbers on every server sharing the store; final statuses included)",
            sandboxes,
        );
        if let Some((count, logical, stored)) = self.snapshots {
            let g = |v: u64| {
                let g = Gauge::<i64>::default();
                g.set(v.min(i64::MAX as u64) as i64);
                g
            };
            r.register(
                "sbx_snapshots_completed",
                "Snapshots in the blob store (completed), cluster-wide",
                g(count),
            );
            r.register(
                "sbx_snapshots_logical_bytes",
                "Logical bytes of the completed snapshots (files and memory image), cluster-wide",
                g(logical),
            );
            r.register(
                "sbx_snapshots_stored_bytes",
                "Compressed bytes the completed snapshots added to the blob store when they were stored, cluster-wide",
                g(stored),
            );
        }
        if let Some(n) = &self.node {
            let id = &n.node;
            gauge(
                &mut r,
                "sbx_node_cpus",
                "CPUs of this node's host",
                id,
                n.cpus,
            );
            gauge(
                &mut r,
                "sbx_node_memory_total_bytes",
                "Memory of this node's host (MemTotal)",
                id,
                n.memory_total_bytes,
            );
            gauge(
                &mut r,
                "sbx_node_memory_available_bytes",
                "Memory this node's host has available now (MemAvailable)",
                id,
                n.memory_available_bytes,
            );
            gauge(
                &mut r,
                "sbx_node_sandboxes_running",
                "Sandboxes running on this node now",
                id,
                n.sandboxes_running,
            );
            if let Some(max) = n.max_sandboxes {
                gauge(
                    &mut r,
                    "sbx_node_max_sandboxes",
                    "Most sandboxes this node runs at once (--max-sandboxes)",
                    id,
                    max,
                );
            }
        }
        r
    }
}

/// `GET /metrics`: behind the API key like every control-plane route but
/// `/healthz`; a server without keys answers loopback peers only.
pub async fn handler(State(state): State<ApiState>) -> ApiResult<Response> {
    let scrape = Scrape::read(&state.manager).await?;
    let text = state.manager.metrics.render(&scrape);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Samples of an exposition: `name{labels}` → value (labels as written).
    fn samples(text: &str) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (key, value) = line.rsplit_once(' ').expect("sample line");
            out.insert(key.to_string(), value.parse().expect("number"));
        }
        out
    }

    #[test]
    fn histograms_and_counters_are_rendered() {
        let m = Metrics::new();
        m.sandbox_started(false, Utc::now() - chrono::Duration::milliseconds(400));
        m.sandbox_started(false, Utc::now() + chrono::Duration::seconds(5));
        m.sandbox_started(true, Utc::now() - chrono::Duration::seconds(2));
        m.sandbox_resumed(Duration::from_millis(120));
        m.snapshot_paused(SnapshotType::Memory, 80);
        m.blob_put(BlobKind::Snapshot, 1000, 300);
        m.blob_put(BlobKind::Snapshot, 500, 600);
        let text = m.render(&Scrape::default());
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        let s = samples(&text);
        assert_eq!(s["sbx_sandbox_create_seconds_count"], 2.0);
        // One at ~0.4 s, one from a clock ahead counted as 0.
        assert_eq!(s["sbx_sandbox_create_seconds_bucket{le=\"0.025\"}"], 1.0);
        assert_eq!(s["sbx_sandbox_create_seconds_bucket{le=\"0.5\"}"], 2.0);
        assert_eq!(s["sbx_sandbox_restore_seconds_count"], 1.0);
        assert!(s["sbx_sandbox_restore_seconds_sum"] >= 2.0);
        assert_eq!(s["sbx_sandbox_resume_seconds_bucket{le=\"0.1\"}"], 0.0);
        assert_eq!(s["sbx_sandbox_resume_seconds_bucket{le=\"0.2\"}"], 1.0);
        assert_eq!(
            s["sbx_snapshot_pause_seconds_bucket{le=\"0.1\",type=\"memory\"}"],
            1.0
        );
        assert_eq!(s["sbx_snapshot_pause_seconds_sum{type=\"memory\"}"], 0.08);
        assert_eq!(s["sbx_blob_logical_bytes_total{kind=\"snapshot\"}"], 1500.0);
        assert_eq!(s["sbx_blob_stored_bytes_total{kind=\"snapshot\"}"], 900.0);
        // Never negative: a put that stored more than it read saves nothing.
        assert_eq!(
            s["sbx_blob_deduplicated_bytes_total{kind=\"snapshot\"}"],
            700.0
        );
        assert_eq!(s["sbx_pool_claim_seconds_count"], 0.0, "no claims yet");
    }

    #[test]
    fn scrape_gauges_are_rendered_with_their_labels() {
        let m = Metrics::new();
        let scrape = Scrape {
            sandboxes: vec![
                (SandboxStatus::Running, "n1".into(), 3),
                (SandboxStatus::Suspended, "n2".into(), 1),
            ],
            snapshots: Some((2, 5u64 << 40, 1234)),
            node: Some(NodeReport {
                node: "n1".into(),
                cpus: 2,
                memory_total_bytes: 8 << 30,
                memory_available_bytes: 5 << 30,
                sandboxes_running: 3,
                max_sandboxes: None,
            }),
        };
        let text = m.render(&scrape);
        let s = samples(&text);
        assert_eq!(s["sbx_sandboxes{status=\"running\",node=\"n1\"}"], 3.0);
        assert_eq!(s["sbx_sandboxes{status=\"suspended\",node=\"n2\"}"], 1.0);
        assert_eq!(s["sbx_snapshots_completed"], 2.0);
        assert_eq!(s["sbx_snapshots_logical_bytes"], (5u64 << 40) as f64);
        assert_eq!(s["sbx_snapshots_stored_bytes"], 1234.0);
        assert_eq!(s["sbx_node_cpus{node=\"n1\"}"], 2.0);
        assert_eq!(
            s["sbx_node_memory_total_bytes{node=\"n1\"}"],
            (8u64 << 30) as f64
        );
        assert_eq!(
            s["sbx_node_memory_available_bytes{node=\"n1\"}"],
            (5u64 << 30) as f64
        );
        assert_eq!(s["sbx_node_sandboxes_running{node=\"n1\"}"], 3.0);
        assert!(!text.contains("sbx_node_max_sandboxes"), "not capped");
        assert!(text.contains("# TYPE sbx_sandboxes gauge"), "{text}");
        // No local node: no node gauges.
        let text = m.render(&Scrape {
            node: None,
            ..scrape
        });
        assert!(!text.contains("sbx_node_"), "{text}");
    }

    #[test]
    fn a_capped_node_reports_its_cap() {
        let text = Metrics::new().render(&Scrape {
            node: Some(NodeReport {
                node: "n".into(),
                max_sandboxes: Some(7),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(samples(&text)["sbx_node_max_sandboxes{node=\"n\"}"], 7.0);
    }
}
