//! Persisted sandbox logs: every process's output lines (with pid and
//! timestamp) and the sandbox's lifecycle events, kept on the host under
//! `<data-dir>/logs/<sandbox id>/` after the sandbox ends, within a budget
//! per sandbox, an overall one and an age (`Budget`).
//!
//! Lines are captured by the agent (its journal, `GET /api/v1/logs`) and
//! collected by the host (`collect`): one long-poll per running sandbox,
//! answered when there is output, appended a batch at a time. Lifecycle
//! events are appended by the server where it changes a sandbox's state.

pub mod collect;
pub mod query;
pub mod store;

use crate::api::ApiState;
use crate::error::{ApiError, ApiResult, Path as PathParams};
use axum::extract::{RawQuery, State};
use axum::Json;
use sbx_api::logs::{level, LogEntry, LogProcessesResponse, LogsResponse};
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use store::{Kind, Record, SandboxLog};

/// How much log the host keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes per sandbox: its oldest lines go first.
    pub per_sandbox: u64,
    /// Bytes over all sandboxes: the oldest lines of any go first.
    pub total: u64,
    /// Lines older than this go; so do whole logs of ended sandboxes.
    pub max_age: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            per_sandbox: 16 << 20,
            total: 1 << 30,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The logs of every sandbox of this host.
pub struct Logs {
    root: PathBuf,
    budget: Budget,
    open: Mutex<HashMap<String, Arc<Mutex<SandboxLog>>>>,
    pub(crate) collectors: collect::Collectors,
}

/// Whether `id` can name a log directory.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Logs {
    /// Logs kept under `root` (made if missing).
    pub fn new(root: PathBuf, budget: Budget) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&root)?;
        Ok(Arc::new(Self {
            root,
            budget,
            open: Mutex::new(HashMap::new()),
            collectors: collect::Collectors::default(),
        }))
    }

    fn dir(&self, id: &str) -> Option<PathBuf> {
        valid_id(id).then(|| self.root.join(id))
    }

    fn log(&self, id: &str) -> std::io::Result<Arc<Mutex<SandboxLog>>> {
        let dir = self
            .dir(id)
            .ok_or_else(|| std::io::Error::other(format!("not a sandbox id: {id:?}")))?;
        let mut open = self.open.lock().unwrap();
        if let Some(l) = open.get(id) {
            return Ok(l.clone());
        }
        let log = Arc::new(Mutex::new(SandboxLog::open(dir, self.budget.per_sandbox)?));
        open.insert(id.to_string(), log.clone());
        Ok(log)
    }

    /// Appends records to the log of `id`.
    pub fn append(&self, id: &str, records: Vec<Record>) -> std::io::Result<()> {
        self.log(id)?.lock().unwrap().append(records)
    }

    /// The agent journal's number to collect next for `id`.
    pub fn agent_next(&self, id: &str) -> Option<u64> {
        self.log(id).ok()?.lock().unwrap().agent_next
    }

    /// Appends a lifecycle event: `event` names it (`created`, `running`,
    /// `failed`…), `body` says it, `attrs` (an object) adds to it.
    pub fn event(&self, id: &str, lvl: u8, event: &str, body: String, attrs: serde_json::Value) {
        let mut r = Record::new(store::now_ns(), lvl, Kind::Event, body);
        r.a.insert("event".into(), event.into());
        if let serde_json::Value::Object(m) = attrs {
            r.a.extend(m.into_iter().filter(|(_, v)| !v.is_null()));
        }
        if let Err(e) = self.append(id, vec![r]) {
            tracing::warn!(sandbox = id, "cannot write a log event: {e}");
        }
    }

    /// An informational lifecycle event without attributes.
    pub fn info(&self, id: &str, event: &str, body: impl Into<String>) {
        self.event(id, level::INFO, event, body.into(), serde_json::Value::Null);
    }

    /// Applies the age and overall budgets; `live`: sandboxes that may
    /// still write (their newest segment stays unless over the total).
    pub fn sweep(&self, live: &HashSet<String>) {
        let now = SystemTime::now();
        let old = |t: Option<SystemTime>| {
            t.and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > self.budget.max_age)
        };
        let ids: Vec<String> = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| valid_id(n))
                .collect(),
            Err(e) => {
                tracing::warn!("cannot list the logs: {e}");
                return;
            }
        };
        // (modified, id, first) of every segment kept by the age rule.
        let mut all = Vec::new();
        let mut total = 0u64;
        for id in &ids {
            let Ok(log) = self.log(id) else { continue };
            let mut log = log.lock().unwrap();
            let segs: Vec<_> = log.segments().to_vec();
            for (i, s) in segs.iter().enumerate() {
                let newest = i + 1 == segs.len();
                let modified = log.modified(s.first);
                if old(modified) && !(newest && live.contains(id)) {
                    log.remove_segment(s.first);
                } else {
                    total += s.bytes;
                    all.push((modified.unwrap_or(now), id.clone(), s.first, s.bytes));
                }
            }
        }
        if total > self.budget.total {
            all.sort();
            for (_, id, first, bytes) in all {
                if total <= self.budget.total {
                    break;
                }
                if let Ok(log) = self.log(&id) {
                    log.lock().unwrap().remove_segment(first);
                    total -= bytes;
                }
            }
        }
        // Logs left empty go, and what is not in use is closed.
        let mut open = self.open.lock().unwrap();
        open.retain(|id, log| {
            let empty = log.lock().unwrap().segments().is_empty();
            if empty && !live.contains(id) {
                let _ = std::fs::remove_dir(log.lock().unwrap().dir());
            }
            live.contains(id) || Arc::strong_count(log) > 1
        });
    }

    /// The wire form of a record of sandbox `id` in namespace `ns`.
    pub fn entry(ns: &str, id: &str, r: &Record) -> LogEntry {
        let mut attrs = r.a.clone();
        let stream = match r.k {
            Kind::Stdout => Some("stdout"),
            Kind::Stderr => Some("stderr"),
            _ => None,
        };
        if let Some(s) = stream {
            attrs.insert("stream".into(), s.into());
        }
        if let Some(p) = r.p {
            attrs.insert("pid".into(), p.into());
            attrs.insert("processId".into(), p.to_string().into());
        }
        LogEntry {
            timestamp: r.t,
            uuid: record_uuid(id, r.n),
            namespace: ns.to_string(),
            application: String::new(),
            body: r.b.clone(),
            log_attributes: serde_json::Value::Object(attrs).to_string(),
            sandbox_id: id.to_string(),
            level: r.l,
        }
    }
}

/// A UUID (version 8: name-based, SHA-256) for record `n` of sandbox `id`.
fn record_uuid(id: &str, n: u64) -> String {
    let mut h = sha2::Sha256::new();
    h.update(id.as_bytes());
    h.update(n.to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The query of `GET …/logs`: `level` (repeated, 1–6 or a name),
/// `processId` (repeated), `nextToken`, `head`, `tail`, `body`.
#[derive(Debug, Default, PartialEq)]
struct LogsQuery {
    filter: query::Filter,
    from: u64,
    window: Option<query::Window>,
}

fn parse_level(v: &str) -> Option<u8> {
    Some(match v.to_ascii_lowercase().as_str() {
        "trace" => level::TRACE,
        "debug" => level::DEBUG,
        "info" => level::INFO,
        "warn" | "warning" => level::WARN,
        "error" => level::ERROR,
        "fatal" => level::FATAL,
        n => n.parse().ok().filter(|l| (1..=6).contains(l))?,
    })
}

impl LogsQuery {
    fn parse(raw: Option<&str>) -> ApiResult<Self> {
        let mut q = LogsQuery::default();
        let mut head = None;
        let mut tail = None;
        let count = |k: &str, v: &str| {
            v.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("{k} must be a count (got {v:?})")))
        };
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "level" | "levels" => q.filter.levels.push(parse_level(&v).ok_or_else(|| {
                    ApiError::bad_request(format!("level must be 1-6 or a level name (got {v:?})"))
                })?),
                "processId" | "process_id" => q.filter.process_ids.push(v.into_owned()),
                "body" => q.filter.body = Some(v.into_owned()).filter(|b| !b.is_empty()),
                "nextToken" | "next_token" => {
                    q.from = v.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "nextToken {v:?} is not one this server gave"
                        ))
                    })?
                }
                "head" => head = Some(count("head", &v)?),
                "tail" => tail = Some(count("tail", &v)?),
                _ => {}
            }
        }
        q.window = match (head, tail) {
            (Some(_), Some(_)) => return Err(ApiError::bad_request("give head or tail, not both")),
            (Some(n), None) => Some(query::Window::Head(n)),
            (None, Some(n)) => Some(query::Window::Tail(n)),
            (None, None) => None,
        };
        Ok(q)
    }
}

fn namespace(params: &HashMap<String, String>) -> String {
    params
        .get("ns")
        .cloned()
        .unwrap_or_else(|| "default".into())
}

async fn find(state: &ApiState, params: &HashMap<String, String>) -> ApiResult<(String, String)> {
    let ns = namespace(params);
    let id = &params["id"];
    let row = state
        .manager
        .store
        .find(&ns, id)
        .await?
        .ok_or_else(|| ApiError::not_found("sandbox", id))?;
    Ok((ns, row.id))
}

/// `GET …/sandboxes/{id}/logs`.
pub async fn logs(
    State(state): State<ApiState>,
    PathParams(params): PathParams<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<LogsResponse>> {
    let q = LogsQuery::parse(raw.as_deref())?;
    let (ns, id) = find(&state, &params).await?;
    let dir = state
        .manager
        .logs
        .dir(&id)
        .ok_or_else(|| ApiError::not_found("sandbox", &id))?;
    let window = q.window.unwrap_or(query::Window::Head(query::DEFAULT_PAGE));
    let page = tokio::task::spawn_blocking(move || query::read(&dir, q.from, &q.filter, window))
        .await
        .map_err(|e| ApiError::internal(format!("log read: {e}")))?
        .map_err(|e| ApiError::internal(format!("log read: {e}")))?;
    Ok(Json(LogsResponse {
        logs: page
            .records
            .iter()
            .map(|r| Logs::entry(&ns, &id, r))
            .collect(),
        next_token: page.next.map(|n| n.to_string()),
        cursor: page.cursor.to_string(),
    }))
}

/// `GET …/sandboxes/{id}/processes`: the processes the logs have seen.
pub async fn processes(
    State(state): State<ApiState>,
    PathParams(params): PathParams<HashMap<String, String>>,
) -> ApiResult<Json<LogProcessesResponse>> {
    let (_, id) = find(&state, &params).await?;
    let dir = state
        .manager
        .logs
        .dir(&id)
        .ok_or_else(|| ApiError::not_found("sandbox", &id))?;
    let processes = tokio::task::spawn_blocking(move || query::processes(&dir))
        .await
        .map_err(|e| ApiError::internal(format!("log read: {e}")))?
        .map_err(|e| ApiError::internal(format!("log read: {e}")))?;
    Ok(Json(LogProcessesResponse { processes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_read_as_the_client_sends_it() {
        let q = LogsQuery::parse(Some(
            "level=3&level=5&processId=p1&processId=p2&nextToken=12&head=5&body=hello%20x",
        ))
        .unwrap();
        assert_eq!(q.filter.levels, [3, 5]);
        assert_eq!(q.filter.process_ids, ["p1", "p2"]);
        assert_eq!(q.filter.body.as_deref(), Some("hello x"));
        assert_eq!(q.from, 12);
        assert_eq!(q.window, Some(query::Window::Head(5)));
        assert_eq!(LogsQuery::parse(None).unwrap(), LogsQuery::default());
        let q = LogsQuery::parse(Some("tail=3&level=warn")).unwrap();
        assert_eq!(q.window, Some(query::Window::Tail(3)));
        assert_eq!(q.filter.levels, [4]);
        for bad in [
            "level=7",
            "level=loud",
            "head=-1",
            "nextToken=abc",
            "head=1&tail=1",
        ] {
            let e = LogsQuery::parse(Some(bad)).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn record_uuids_are_stable_and_well_formed() {
        let a = record_uuid("sbx1", 7);
        assert_eq!(a, record_uuid("sbx1", 7));
        assert_ne!(a, record_uuid("sbx1", 8));
        assert_ne!(a, record_uuid("sbx2", 7));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('8'));
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn entries_carry_the_process_and_stream() {
        let mut r = Record::new(5, 5, Kind::Stderr, "oops".into());
        r.p = Some(42);
        let e = Logs::entry("ns1", "sbx1", &r);
        assert_eq!((e.timestamp, e.level, e.body.as_str()), (5, 5, "oops"));
        let attrs: serde_json::Value = serde_json::from_str(&e.log_attributes).unwrap();
        assert_eq!(attrs["stream"], "stderr");
        assert_eq!(attrs["processId"], "42");
        assert_eq!(attrs["pid"], 42);
        assert_eq!(e.namespace, "ns1");
    }

    fn fill(logs: &Logs, id: &str, lines: usize) {
        for _ in 0..lines {
            let r = Record::new(1, 3, Kind::Stdout, "y".repeat(1000));
            logs.append(id, vec![r]).unwrap();
        }
    }

    #[test]
    fn the_overall_budget_and_age_remove_the_oldest_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let budget = Budget {
            per_sandbox: 64 << 10,
            total: 100 << 10,
            max_age: Duration::from_secs(3600),
        };
        let logs = Logs::new(tmp.path().to_path_buf(), budget).unwrap();
        fill(&logs, "sbxold", 60);
        // Older than the newer log's segments.
        let past = SystemTime::now() - Duration::from_secs(60);
        for s in store::segments(&tmp.path().join("sbxold")).unwrap() {
            let f = std::fs::File::options()
                .write(true)
                .open(
                    tmp.path()
                        .join("sbxold")
                        .join(format!("{:020}.jsonl", s.first)),
                )
                .unwrap();
            f.set_modified(past).unwrap();
        }
        fill(&logs, "sbxnew", 60);
        let size = |id: &str| -> u64 {
            store::segments(&tmp.path().join(id))
                .unwrap()
                .iter()
                .map(|s| s.bytes)
                .sum()
        };
        assert!(size("sbxold") <= (64 << 10) + (16 << 10) + 2048);
        let live: HashSet<String> = ["sbxnew".to_string()].into();
        logs.sweep(&live);
        assert!(size("sbxold") + size("sbxnew") <= 100 << 10);
        assert!(size("sbxnew") > size("sbxold"), "the older log lost more");
        // Past the age: an ended sandbox's whole log goes.
        let past = SystemTime::now() - Duration::from_secs(7200);
        for s in store::segments(&tmp.path().join("sbxold")).unwrap() {
            std::fs::File::options()
                .write(true)
                .open(
                    tmp.path()
                        .join("sbxold")
                        .join(format!("{:020}.jsonl", s.first)),
                )
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
        logs.sweep(&live);
        assert!(!tmp.path().join("sbxold").exists());
        assert!(size("sbxnew") > 0);
    }
}
