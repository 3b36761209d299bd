//! Types of the in-sandbox daemon routes (`/api/v1/...` on port 9501).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who a process runs as: `"root"`, `"1000:1000"`, `"nobody"`, or a structure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProcessUser {
    Spec(String),
    Ids {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gid: Option<u32>,
    },
}

/// `POST /api/v1/processes/run`: run to completion, streamed as SSE.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRequest {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Seconds; the process is killed and the run ends `timed_out` after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ProcessUser>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdinMode {
    Closed,
    Pipe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    Capture,
    Discard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicyKind {
    Never,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartPolicy {
    #[serde(default = "default_policy")]
    pub policy: RestartPolicyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
}

fn default_policy() -> RestartPolicyKind {
    RestartPolicyKind::OnFailure
}
fn default_initial_backoff() -> u64 {
    500
}
fn default_max_backoff() -> u64 {
    30_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default = "default_initial_delay")]
    pub initial_delay_ms: u64,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_hc_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
}

fn default_initial_delay() -> u64 {
    5_000
}
fn default_interval() -> u64 {
    1_000
}
fn default_hc_timeout() -> u64 {
    500
}
fn default_failure_threshold() -> u32 {
    3
}

/// `POST /api/v1/processes`: start a background process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StartProcessRequest {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_mode: Option<StdinMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_mode: Option<OutputMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_mode: Option<OutputMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ProcessUser>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    Running,
    Exited,
    Signaled,
    OomKilled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManagedStatus {
    Starting,
    Running,
    BackingOff,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Disabled,
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagedExit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub ended_at: DateTime<Utc>,
}

/// Supervisor state of a process started with a name, restart policy or health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagedInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub status: ManagedStatus,
    pub restart_count: u32,
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    pub health_status: HealthStatus,
    pub consecutive_health_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ManagedExit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub status: ProcessStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub stdin_writable: bool,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalRequest {
    pub signal: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalResponse {
    pub success: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// `GET /processes/{p}/stdout|stderr|output`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputResponse {
    pub pid: i32,
    pub lines: Vec<String>,
    pub line_count: usize,
}

/// One output line, as an SSE `data:` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputEvent {
    pub line: String,
    pub timestamp: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<OutputStream>,
}

/// First event of `processes/run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartedEvent {
    pub pid: i32,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    Exited,
    Signaled,
    OomKilled,
    TimedOut,
}

/// Last event of `processes/run`: `exit_code` or `signal` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    pub reason: ExitReason,
}

/// Any event of the `processes/run` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunEvent {
    Output(OutputEvent),
    Started(StartedEvent),
    Exit(ExitEvent),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthResponse {
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub version: String,
    pub uptime_secs: u64,
    pub running_processes: usize,
    pub total_processes: usize,
    /// Whether any process other than the daemon exists in the sandbox
    /// (every one descends from it, started processes' orphans included).
    /// A sandbox without one may be frozen by the host while idle.
    #[serde(default)]
    pub has_processes: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirListing {
    pub path: String,
    pub entries: Vec<DirEntry>,
}

/// `POST /api/v1/pty`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreatePtyRequest {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default = "default_rows")]
    pub rows: u16,
    #[serde(default = "default_cols")]
    pub cols: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ProcessUser>,
}

fn default_rows() -> u16 {
    24
}
fn default_cols() -> u16 {
    80
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatePtyResponse {
    pub session_id: String,
    pub token: String,
}

/// PTY WebSocket frame opcodes (first byte of every binary frame).
pub mod pty_op {
    /// client→server: input bytes; server→client: output bytes.
    pub const DATA: u8 = 0x00;
    /// client→server: cols u16 BE, rows u16 BE.
    pub const RESIZE: u8 = 0x01;
    /// client→server, first frame: ready to receive output.
    pub const READY: u8 = 0x02;
    /// server→client: exit code i32 BE; then close 1000 `exit:N`.
    pub const EXIT: u8 = 0x03;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_events_round_trip() {
        let exit: RunEvent = serde_json::from_str(r#"{"exit_code":0,"reason":"exited"}"#).unwrap();
        assert!(matches!(
            exit,
            RunEvent::Exit(ExitEvent {
                exit_code: Some(0),
                ..
            })
        ));
        let line: RunEvent = serde_json::from_str(
            r#"{"line":"hi","timestamp":"2026-01-01T00:00:00Z","stream":"stderr"}"#,
        )
        .unwrap();
        assert!(matches!(
            line,
            RunEvent::Output(OutputEvent {
                stream: Some(OutputStream::Stderr),
                ..
            })
        ));
        let started: RunEvent =
            serde_json::from_str(r#"{"pid":7,"started_at":"2026-01-01T00:00:00Z"}"#).unwrap();
        assert!(matches!(
            started,
            RunEvent::Started(StartedEvent { pid: 7, .. })
        ));
    }

    #[test]
    fn user_accepts_string_and_structure() {
        let u: ProcessUser = serde_json::from_str(r#""1000:1000""#).unwrap();
        assert_eq!(u, ProcessUser::Spec("1000:1000".into()));
        let u: ProcessUser = serde_json::from_str(r#"{"uid":5}"#).unwrap();
        assert!(matches!(u, ProcessUser::Ids { uid: Some(5), .. }));
    }
}
