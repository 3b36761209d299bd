//! Test harness: starts the built agent on a free port and talks HTTP to it.
#![allow(dead_code)]

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Agent {
    pub child: Child,
    pub port: u16,
    pub base: String,
    pub http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Agent {
    pub async fn start() -> Agent {
        Self::start_with(&[], &[]).await
    }

    /// Starts the agent with extra environment and entrypoint arguments.
    pub async fn start_with(env: &[(&str, &str)], entrypoint: &[&str]) -> Agent {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sbx-agent"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("SBX_AGENT_LOG", "debug")
            .env("SBX_TEST_SECRET", "hidden")
            .env_remove("TERM")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if !entrypoint.is_empty() {
            cmd.arg("--").args(entrypoint);
        }
        let child = cmd.spawn().expect("start agent");
        let agent = Agent {
            child,
            port,
            base: format!("http://127.0.0.1:{port}/api/v1"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = agent.http.get(agent.url("/health")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "agent did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        agent
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}/api/v1{}", self.port, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.http.delete(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST /processes/run`, returning every SSE event.
    pub async fn run(&self, body: Value) -> Vec<Value> {
        let r = self
            .http
            .post(self.url("/processes/run"))
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "run failed: {:?}", r.text().await);
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        parse_sse(&r.text().await.unwrap())
    }

    /// Polls `GET path` until `pred` holds.
    pub async fn wait_for(&self, path: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, v) = self.get(path).await;
            if status == 200 && pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on {path}; last: {status} {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Peak resident memory of the agent process, in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn is_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM lets the agent end its own children.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn parse_sse(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Lines of one stream from run events.
pub fn lines_of(events: &[Value], stream: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["stream"] == stream)
        .map(|e| e["line"].as_str().unwrap().to_string())
        .collect()
}
