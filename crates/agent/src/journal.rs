//! The journal: every process's output lines, starts and ends in one
//! numbered sequence, bounded, for the host to collect into the sandbox's
//! persisted logs (`GET /api/v1/logs?from=SEQ`). The host asks for what
//! follows the last entry it stored and the request waits on a channel
//! until there is some: an idle sandbox is never woken by it.

use chrono::{DateTime, Utc};
use sbx_api::daemon::{ExitEvent, OutputStream};
use sbx_api::logs::{JournalBatch, JournalEntry, JournalKind};
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// Entries kept for a host that has not collected them yet.
pub const MAX_ENTRIES: usize = 20_000;
/// Bytes of entry text kept.
pub const MAX_BYTES: usize = 8 << 20;
/// Accounted per entry besides its text.
const OVERHEAD: usize = 64;

struct Inner {
    entries: VecDeque<JournalEntry>,
    bytes: usize,
    next: u64,
}

pub struct Journal {
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
}

/// The agent's one journal.
pub fn journal() -> &'static Journal {
    static J: OnceLock<Journal> = OnceLock::new();
    J.get_or_init(Journal::new)
}

impl Default for Journal {
    fn default() -> Self {
        Self::new()
    }
}

impl Journal {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                bytes: 0,
                next: 0,
            }),
            version: watch::Sender::new(0),
        }
    }

    fn push(&self, mut entry: JournalEntry) {
        {
            let mut inner = self.inner.lock().unwrap();
            entry.seq = inner.next;
            inner.next += 1;
            inner.bytes += entry.text.len() + OVERHEAD;
            inner.entries.push_back(entry);
            while inner.entries.len() > MAX_ENTRIES
                || (inner.bytes > MAX_BYTES && inner.entries.len() > 1)
            {
                let old = inner.entries.pop_front().unwrap();
                inner.bytes -= old.text.len() + OVERHEAD;
            }
        }
        self.version.send_modify(|v| *v += 1);
    }

    fn entry(pid: i32, kind: JournalKind, text: String, ts: DateTime<Utc>) -> JournalEntry {
        JournalEntry {
            seq: 0,
            timestamp: ts,
            pid,
            kind,
            text,
            managed_id: None,
            managed_name: None,
            exit: None,
        }
    }

    /// A line of a process's output.
    pub fn output(&self, pid: i32, stream: OutputStream, text: String, ts: DateTime<Utc>) {
        let kind = match stream {
            OutputStream::Stdout => JournalKind::Stdout,
            OutputStream::Stderr => JournalKind::Stderr,
        };
        self.push(Self::entry(pid, kind, text, ts));
    }

    /// A process started: its command line, and its managed id and name.
    pub fn started(
        &self,
        pid: i32,
        command_line: String,
        managed: Option<(String, Option<String>)>,
        ts: DateTime<Utc>,
    ) {
        let mut e = Self::entry(pid, JournalKind::Started, command_line, ts);
        if let Some((id, name)) = managed {
            e.managed_id = Some(id);
            e.managed_name = name;
        }
        self.push(e);
    }

    /// A process ended (after its last output line).
    pub fn exited(&self, pid: i32, exit: ExitEvent) {
        let text = match (exit.exit_code, exit.signal) {
            _ if exit.oom_killed => "killed: out of memory".to_string(),
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "ended".to_string(),
        };
        let mut e = Self::entry(pid, JournalKind::Exited, text, Utc::now());
        e.exit = Some(exit);
        self.push(e);
    }

    /// Entries from `from` on, at most `max`.
    pub fn batch(&self, from: u64, max: usize) -> JournalBatch {
        let inner = self.inner.lock().unwrap();
        let first = inner.entries.front().map_or(inner.next, |e| e.seq);
        let skip = from.saturating_sub(first) as usize;
        JournalBatch {
            first,
            next: inner.next,
            entries: inner.entries.iter().skip(skip).take(max).cloned().collect(),
        }
    }

    /// Like [`Journal::batch`], but when nothing is there yet waits up to
    /// `wait` for an entry, then `linger` more so that one answer carries a
    /// burst of lines.
    pub async fn wait(
        &self,
        from: u64,
        max: usize,
        wait: Duration,
        linger: Duration,
    ) -> JournalBatch {
        let mut rx = self.version.subscribe();
        rx.borrow_and_update();
        if self.inner.lock().unwrap().next <= from && !wait.is_zero() {
            let arrived = tokio::time::timeout(wait, async {
                while self.inner.lock().unwrap().next <= from {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await
            .is_ok();
            if arrived && !linger.is_zero() {
                tokio::time::sleep(linger).await;
            }
        }
        self.batch(from, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_numbered_and_bounded() {
        let j = Journal::new();
        for i in 0..(MAX_ENTRIES + 5) {
            j.output(7, OutputStream::Stdout, i.to_string(), Utc::now());
        }
        let b = j.batch(0, 3);
        assert_eq!(b.first, 5);
        assert_eq!(b.next, MAX_ENTRIES as u64 + 5);
        assert_eq!(b.entries[0].seq, 5);
        assert_eq!(b.entries[0].text, "5");
        assert_eq!(b.entries.len(), 3);
        let tail = j.batch(b.next - 1, 10);
        assert_eq!(tail.entries.len(), 1);
        assert!(j.batch(b.next, 10).entries.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_read_answers_when_an_entry_arrives() {
        let j: &'static Journal = Box::leak(Box::new(Journal::new()));
        j.started(3, "echo hi".into(), None, Utc::now());
        // Something is there: no wait.
        let b = j.wait(0, 10, Duration::from_secs(30), Duration::ZERO).await;
        assert_eq!(b.entries[0].kind, JournalKind::Started);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            j.output(3, OutputStream::Stderr, "late".into(), Utc::now());
        });
        let b = j
            .wait(1, 10, Duration::from_secs(30), Duration::from_millis(1))
            .await;
        assert_eq!(b.entries.len(), 1);
        assert_eq!(b.entries[0].text, "late");
        assert_eq!(b.entries[0].kind, JournalKind::Stderr);
        // Nothing arrives: an empty answer after the wait.
        let b = j
            .wait(2, 10, Duration::from_millis(10), Duration::ZERO)
            .await;
        assert!(b.entries.is_empty());
        assert_eq!(b.next, 2);
    }
}
