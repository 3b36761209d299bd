//! Collection of process output from running sandboxes into their logs.
//!
//! One task per sandbox running on this host (found every half second, so
//! launches, resumes, adoptions after a restart and sandboxes placed here
//! by another server are all covered) long-polls the agent's journal
//! (`GET /api/v1/logs?from=N&wait_ms=…`) from the number after the last
//! record stored, appends what comes back in one write, and pauses a
//! moment before asking again, so a burst of output costs a few requests.
//! The request does not hold the sandbox: an idle sandbox freezes as usual
//! and the request simply waits. The agent keeps what was not collected
//! yet (bounded), so a server restart or a suspend loses nothing.

use super::store::{Kind, Record};
use crate::lifecycle::Manager;
use sbx_api::logs::{level, JournalBatch, JournalEntry, JournalKind};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long one poll waits at the agent for output.
const POLL_WAIT_MS: u64 = 50_000;
/// How long the agent waits after the first new line, to answer with more.
const LINGER_MS: u64 = 100;
/// Pause between two answers that carried output.
const PAUSE: Duration = Duration::from_millis(200);
/// Pause after a failed poll.
const RETRY: Duration = Duration::from_secs(1);
/// Entries asked for at once.
const BATCH: usize = 5000;
/// How long a teardown waits for the last lines.
const FINISH_WAIT: Duration = Duration::from_secs(3);
/// How often the age and overall budgets are applied.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

struct Collector {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The collectors of the sandboxes running here.
#[derive(Default)]
pub struct Collectors {
    running: Mutex<HashMap<String, Collector>>,
    /// Running sandboxes not to collect: no row (builders), or an agent
    /// without a journal (started before sbx had one).
    skip: Mutex<HashSet<String>>,
    /// Sandboxes not collected for now (see [`Collectors::hold`]).
    held: Mutex<HashSet<String>>,
    client: std::sync::OnceLock<reqwest::Client>,
}

impl Collectors {
    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("http client")
        })
    }

    /// Collects the last lines of `id` and stops collecting it (before the
    /// sandbox is destroyed).
    pub async fn finish(&self, id: &str) {
        // Not collected again while it is being destroyed.
        self.skip.lock().unwrap().insert(id.to_string());
        let Some(c) = self.running.lock().unwrap().remove(id) else {
            return;
        };
        let _ = c.stop.send(true);
        let abort = c.task.abort_handle();
        if tokio::time::timeout(FINISH_WAIT, c.task).await.is_err() {
            abort.abort();
            tracing::debug!(sandbox = id, "log collection did not finish in time");
        }
    }
}

impl Collectors {
    /// Stops collecting `id` at once, and does not start again until
    /// [`release`](Self::release)d (while it is saved: see the suspend).
    /// What it had not collected stays in the agent's journal (in a memory
    /// image too) and is collected later.
    pub fn hold(&self, id: &str) {
        self.held.lock().unwrap().insert(id.to_string());
        if let Some(c) = self.running.lock().unwrap().remove(id) {
            c.task.abort();
        }
    }

    /// Collects `id` again while it runs here.
    pub fn release(&self, id: &str) {
        self.held.lock().unwrap().remove(id);
    }
}

/// Starts collecting from every sandbox that runs here, and applies the
/// budgets, until aborted.
pub fn start(manager: Arc<Manager>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            tick.tick().await;
            let live = reconcile(&manager);
            if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(tokio::time::Instant::now());
                let logs = manager.logs.clone();
                let _ = tokio::task::spawn_blocking(move || logs.sweep(&live)).await;
            }
        }
    })
}

/// Starts a collector for each running sandbox without one; forgets
/// those that ended. Answers the running sandboxes.
fn reconcile(manager: &Arc<Manager>) -> HashSet<String> {
    let running: HashSet<String> = manager.running_here().into_iter().collect();
    let c = &manager.logs.collectors;
    c.skip.lock().unwrap().retain(|id| running.contains(id));
    let mut tasks = c.running.lock().unwrap();
    tasks.retain(|id, t| running.contains(id) || !t.task.is_finished());
    for id in &running {
        if tasks.get(id).is_some_and(|t| !t.task.is_finished())
            || c.skip.lock().unwrap().contains(id)
            || c.held.lock().unwrap().contains(id)
        {
            continue;
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(collect(manager.clone(), id.clone(), stopped));
        tasks.insert(id.clone(), Collector { stop, task });
    }
    running
}

/// Collects from sandbox `id` while it runs here.
async fn collect(manager: Arc<Manager>, id: String, mut stop: watch::Receiver<bool>) {
    let row = match manager.store.get(&id).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            manager.logs.collectors.skip.lock().unwrap().insert(id);
            return;
        }
        Err(e) => {
            tracing::debug!(sandbox = id, "log collection: {e}");
            tokio::time::sleep(RETRY).await;
            return;
        }
    };
    let logs = manager.logs.clone();
    let stored = logs.agent_next(&id);
    let mut from = stored.unwrap_or(0);
    // A sandbox restored from a memory snapshot inherits its source's
    // journal: only what it printed itself is its own.
    let since = if stored.is_none() {
        row.created_at.timestamp_nanos_opt().unwrap_or(0).max(0) as u64
    } else {
        0
    };
    let mut stopping = false;
    loop {
        stopping = stopping || *stop.borrow();
        let Some(addr) = manager.host().agent_addr(&id) else {
            return;
        };
        let wait = if stopping { 0 } else { POLL_WAIT_MS };
        // The last read thaws a frozen sandbox; the long polls do not hold it.
        let hold = stopping.then(|| manager.host().hold(&id));
        let url = format!(
            "http://{addr}/api/v1/logs?from={from}&max={BATCH}&wait_ms={wait}&linger_ms={LINGER_MS}"
        );
        let poll = fetch(manager.logs.collectors.client(), url, wait);
        let answer = if stopping {
            poll.await
        } else {
            tokio::select! {
                a = poll => a,
                _ = stop.wait_for(|s| *s) => { stopping = true; continue; }
            }
        };
        drop(hold);
        let batch = match answer {
            Ok(Some(b)) => b,
            Ok(None) => {
                tracing::info!(
                    sandbox = id,
                    "the sandbox's agent keeps no journal: no process output in its logs"
                );
                manager.logs.collectors.skip.lock().unwrap().insert(id);
                return;
            }
            Err(e) => {
                if stopping {
                    return;
                }
                tracing::debug!(sandbox = id, "log collection: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.wait_for(|s| *s) => stopping = true,
                }
                continue;
            }
        };
        let full = batch.entries.len() >= BATCH;
        let (records, next) = records(&batch, from, stored.is_some() || from > 0, since);
        from = next;
        if !records.is_empty() {
            let (logs, id2) = (logs.clone(), id.clone());
            match tokio::task::spawn_blocking(move || logs.append(&id2, records)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(sandbox = id, "cannot write logs: {e}"),
                Err(e) => tracing::warn!(sandbox = id, "log write task: {e}"),
            }
        }
        if stopping && !full {
            return;
        }
        if !stopping && !full && !batch.entries.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(PAUSE) => {}
                _ = stop.wait_for(|s| *s) => stopping = true,
            }
        }
    }
}

/// One poll: `Ok(None)` when the agent has no journal route.
async fn fetch(
    client: &reqwest::Client,
    url: String,
    wait_ms: u64,
) -> Result<Option<JournalBatch>, String> {
    let resp = client
        .get(url)
        .timeout(Duration::from_millis(wait_ms + 10_000))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(format!("agent answered {}", resp.status()));
    }
    resp.json().await.map(Some).map_err(|e| e.to_string())
}

/// The records of a batch asked for `from`, and the number to ask for
/// next. `collected`: earlier entries were stored (a gap is worth a
/// warning); entries before `since` (ns) are skipped.
fn records(batch: &JournalBatch, from: u64, collected: bool, since: u64) -> (Vec<Record>, u64) {
    let mut out = Vec::with_capacity(batch.entries.len() + 1);
    if collected && batch.first > from {
        let lost = batch.first - from;
        let mut r = Record::new(
            super::store::now_ns(),
            level::WARN,
            Kind::Event,
            format!("{lost} lines of output were dropped before they could be stored"),
        );
        r.a.insert("event".into(), "lines_dropped".into());
        r.a.insert("count".into(), lost.into());
        out.push(r);
    }
    for e in &batch.entries {
        let t = e.timestamp.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
        if t < since {
            continue;
        }
        out.push(record(e, t));
    }
    let next = batch.entries.last().map_or(batch.next, |e| e.seq + 1);
    (out, next)
}

fn record(e: &JournalEntry, t: u64) -> Record {
    let (l, k, b) = match e.kind {
        JournalKind::Stdout => (level::INFO, Kind::Stdout, e.text.clone()),
        JournalKind::Stderr => (level::ERROR, Kind::Stderr, e.text.clone()),
        JournalKind::Started => (
            level::DEBUG,
            Kind::Start,
            format!("process {} started: {}", e.pid, e.text),
        ),
        JournalKind::Exited => {
            let ok = e.exit.as_ref().is_some_and(|x| x.exit_code == Some(0));
            (
                if ok { level::DEBUG } else { level::WARN },
                Kind::Exit,
                format!("process {} {}", e.pid, e.text),
            )
        }
    };
    let mut r = Record::new(t, l, k, b);
    r.p = Some(e.pid);
    r.q = Some(e.seq);
    match e.kind {
        JournalKind::Started => {
            r.a.insert("event".into(), "process_started".into());
            r.a.insert("command".into(), e.text.clone().into());
            if let Some(m) = &e.managed_id {
                r.a.insert("managedId".into(), m.clone().into());
            }
            if let Some(m) = &e.managed_name {
                r.a.insert("managedName".into(), m.clone().into());
            }
        }
        JournalKind::Exited => {
            r.a.insert("event".into(), "process_exited".into());
            if let Some(x) = &e.exit {
                if let Some(c) = x.exit_code {
                    r.a.insert("exitCode".into(), c.into());
                }
                if let Some(s) = x.signal {
                    r.a.insert("signal".into(), s.into());
                }
                if let Ok(serde_json::Value::String(reason)) = serde_json::to_value(x.reason) {
                    r.a.insert("reason".into(), reason.into());
                }
            }
        }
        _ => {}
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use sbx_api::daemon::{ExitEvent, ExitReason};

    fn entry(seq: u64, secs: i64, kind: JournalKind, text: &str) -> JournalEntry {
        JournalEntry {
            seq,
            timestamp: Utc.timestamp_opt(secs, 5).unwrap(),
            pid: 12,
            kind,
            text: text.into(),
            managed_id: None,
            managed_name: None,
            exit: (kind == JournalKind::Exited).then_some(ExitEvent {
                exit_code: Some(3),
                signal: None,
                oom_killed: false,
                reason: ExitReason::Exited,
            }),
        }
    }

    #[test]
    fn journal_entries_become_records() {
        let batch = JournalBatch {
            first: 0,
            next: 4,
            entries: vec![
                entry(0, 100, JournalKind::Started, "echo hi"),
                entry(1, 101, JournalKind::Stdout, "hi"),
                entry(2, 102, JournalKind::Stderr, "oops"),
                entry(3, 103, JournalKind::Exited, "exited with code 3"),
            ],
        };
        let (recs, next) = records(&batch, 0, false, 0);
        assert_eq!(next, 4);
        let got: Vec<_> = recs.iter().map(|r| (r.l, r.k, r.b.as_str(), r.q)).collect();
        assert_eq!(
            got,
            [
                (2, Kind::Start, "process 12 started: echo hi", Some(0)),
                (3, Kind::Stdout, "hi", Some(1)),
                (5, Kind::Stderr, "oops", Some(2)),
                (4, Kind::Exit, "process 12 exited with code 3", Some(3)),
            ]
        );
        assert_eq!(recs[1].t, 101_000_000_005);
        assert_eq!(recs[0].a["command"], "echo hi");
        assert_eq!(recs[3].a["exitCode"], 3);
        assert_eq!(recs[3].a["reason"], "exited");
        assert!(recs.iter().all(|r| r.p == Some(12)));
    }

    #[test]
    fn gaps_are_reported_and_inherited_entries_skipped() {
        let batch = JournalBatch {
            first: 10,
            next: 12,
            entries: vec![
                entry(10, 100, JournalKind::Stdout, "before"),
                entry(11, 200, JournalKind::Stdout, "after"),
            ],
        };
        // Collected before from 4: 6 lines were lost.
        let (recs, next) = records(&batch, 4, true, 0);
        assert_eq!(next, 12);
        assert_eq!(recs[0].k, Kind::Event);
        assert_eq!(recs[0].a["count"], 6);
        assert_eq!(recs.len(), 3);
        // A restored copy's first poll: only what it printed since it began.
        let (recs, _) = records(&batch, 0, false, 150_000_000_000);
        assert_eq!(
            recs.iter().map(|r| r.b.as_str()).collect::<Vec<_>>(),
            ["after"]
        );
        // Nothing new: ask from the agent's next.
        let empty = JournalBatch {
            first: 0,
            next: 12,
            entries: vec![],
        };
        assert_eq!(records(&empty, 12, true, 0), (vec![], 12));
    }
}
