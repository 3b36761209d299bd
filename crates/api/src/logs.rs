//! Persisted sandbox logs: the control plane's `…/sandboxes/{id}/logs` and
//! `…/sandboxes/{id}/processes` answers (field names as the Tensorlake
//! client parses them), and the agent's journal (`GET /api/v1/logs`) that
//! the host collects them from.

use crate::daemon::ExitEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Log levels, as the client's `level` filter numbers them.
pub mod level {
    pub const TRACE: u8 = 1;
    pub const DEBUG: u8 = 2;
    pub const INFO: u8 = 3;
    pub const WARN: u8 = 4;
    pub const ERROR: u8 = 5;
    pub const FATAL: u8 = 6;
}

/// One persisted log record: a line of a process's output or an event of
/// the sandbox's lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// Unique per record (stable across reads).
    pub uuid: String,
    pub namespace: String,
    /// Always empty: sandboxes belong to no application.
    #[serde(default)]
    pub application: String,
    pub body: String,
    /// A JSON object as a string: `stream`, `processId`, `pid` for output
    /// lines; `event` (and `reason`, `snapshotId`…) for lifecycle events.
    #[serde(rename = "logAttributes")]
    pub log_attributes: String,
    #[serde(rename = "sandboxId")]
    pub sandbox_id: String,
    /// 1 trace … 6 fatal (see [`level`]): stdout is info, stderr error.
    pub level: u8,
}

/// `GET …/sandboxes/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsResponse {
    pub logs: Vec<LogEntry>,
    /// Set when more matching records follow: pass it as `nextToken`.
    #[serde(rename = "nextToken", default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    /// sbx: where newer records will start (a `nextToken` to poll with).
    pub cursor: String,
}

/// A process seen in a sandbox's logs (`GET …/sandboxes/{id}/processes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogProcess {
    /// The value the logs' `processId` filter takes (the pid, in digits).
    #[serde(rename = "processId")]
    pub process_id: String,
    #[serde(rename = "processPid")]
    pub process_pid: String,
    /// Command and arguments, space-separated.
    #[serde(rename = "processCommand")]
    pub process_command: String,
    /// The managed (background) process's id; empty for `run`.
    #[serde(rename = "processManagedId")]
    pub process_managed_id: String,
    /// The managed process's name; empty when it has none.
    #[serde(rename = "processManagedName")]
    pub process_managed_name: String,
    /// Nanoseconds since the Unix epoch of its first and last record.
    #[serde(rename = "firstSeen")]
    pub first_seen: u64,
    #[serde(rename = "lastSeen")]
    pub last_seen: u64,
    /// Output lines kept.
    #[serde(rename = "logCount")]
    pub log_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogProcessesResponse {
    pub processes: Vec<LogProcess>,
}

/// What an agent journal entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalKind {
    Stdout,
    Stderr,
    /// A process started; `text` is its command line.
    Started,
    /// A process ended; `exit` says how.
    Exited,
}

/// One entry of the agent's journal: every process's output lines and its
/// start and end, numbered in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub timestamp: DateTime<Utc>,
    pub pid: i32,
    pub kind: JournalKind,
    pub text: String,
    /// `Started` of a background process: its managed id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_id: Option<String>,
    /// `Started` of a named background process: its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_name: Option<String>,
    /// `Exited`: how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitEvent>,
}

/// `GET /api/v1/logs?from=SEQ`: the entries numbered `from` and later
/// that the agent still holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalBatch {
    /// The oldest entry still held (entries before it were dropped).
    pub first: u64,
    /// The seq the next entry will get.
    pub next: u64,
    pub entries: Vec<JournalEntry>,
}
