//! Bounded per-process output logs and the pipe readers that fill them.

use chrono::{DateTime, Utc};
use futures::Stream;
use sbx_api::daemon::{OutputEvent, OutputStream, RunEvent};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Lines kept per process.
pub const MAX_LINES: usize = 10_000;
/// Bytes of line text kept per process.
pub const MAX_BYTES: usize = 4 << 20;
/// Longer lines are split.
const MAX_LINE: usize = 256 << 10;
/// How long a pipe may stay silent after its process exited before we stop
/// reading (a backgrounded grandchild may hold it open forever).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
struct Line {
    seq: u64,
    stream: OutputStream,
    text: String,
    timestamp: DateTime<Utc>,
}

impl Line {
    fn event(&self) -> OutputEvent {
        OutputEvent {
            line: self.text.clone(),
            timestamp: self.timestamp,
            stream: Some(self.stream),
        }
    }
}

struct Inner {
    lines: VecDeque<Line>,
    bytes: usize,
    next_seq: u64,
    open_streams: u8,
}

/// Output of one process: both streams interleaved in arrival order.
/// Followers wake on a version counter and read by sequence number.
pub struct OutputLog {
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
}

impl OutputLog {
    /// `open_streams`: how many pipes feed this log (0 when all are discarded).
    pub fn new(open_streams: u8) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                lines: VecDeque::new(),
                bytes: 0,
                next_seq: 0,
                open_streams,
            }),
            version: watch::Sender::new(0),
        })
    }

    fn push(&self, stream: OutputStream, text: String) -> OutputEvent {
        let line = {
            let mut inner = self.inner.lock().unwrap();
            let line = Line {
                seq: inner.next_seq,
                stream,
                text,
                timestamp: Utc::now(),
            };
            inner.next_seq += 1;
            inner.bytes += line.text.len();
            inner.lines.push_back(line.clone());
            while inner.lines.len() > MAX_LINES
                || (inner.bytes > MAX_BYTES && inner.lines.len() > 1)
            {
                let old = inner.lines.pop_front().unwrap();
                inner.bytes -= old.text.len();
            }
            line
        };
        self.version.send_modify(|v| *v += 1);
        line.event()
    }

    fn close_stream(&self) {
        {
            let mut inner = self.inner.lock().unwrap();
            inner.open_streams = inner.open_streams.saturating_sub(1);
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// True once every pipe feeding this log is finished.
    pub fn is_done(&self) -> bool {
        self.inner.lock().unwrap().open_streams == 0
    }

    pub async fn wait_done(&self) {
        let mut rx = self.version.subscribe();
        while !self.is_done() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The retained lines of `filter` (both streams when `None`).
    pub fn snapshot(&self, filter: Option<OutputStream>) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        inner
            .lines
            .iter()
            .filter(|l| filter.is_none() || filter == Some(l.stream))
            .map(|l| l.text.clone())
            .collect()
    }

    fn collect_from(
        &self,
        seq: u64,
        filter: Option<OutputStream>,
    ) -> (Vec<OutputEvent>, u64, bool) {
        let inner = self.inner.lock().unwrap();
        let events = inner
            .lines
            .iter()
            .filter(|l| l.seq >= seq && (filter.is_none() || filter == Some(l.stream)))
            .map(Line::event)
            .collect();
        (events, inner.next_seq, inner.open_streams == 0)
    }

    /// Replays retained lines, then yields live ones until every pipe is done.
    pub fn follow(
        self: Arc<Self>,
        filter: Option<OutputStream>,
    ) -> impl Stream<Item = OutputEvent> {
        let rx = self.version.subscribe();
        let state = (self, rx, 0u64, VecDeque::<OutputEvent>::new());
        futures::stream::unfold(
            state,
            move |(log, mut rx, mut seq, mut pending)| async move {
                loop {
                    if let Some(ev) = pending.pop_front() {
                        return Some((ev, (log, rx, seq, pending)));
                    }
                    rx.borrow_and_update();
                    let (events, next, done) = log.collect_from(seq, filter);
                    seq = next;
                    if !events.is_empty() {
                        pending.extend(events);
                        continue;
                    }
                    if done || rx.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )
    }
}

/// Reads `fd` into `log` and the journal line by line (and into `sink`, with backpressure,
/// when given) until EOF, or until the pipe has been silent for a short grace
/// period after `exited` turned true.
pub async fn pump(
    fd: OwnedFd,
    pid: i32,
    stream: OutputStream,
    log: Arc<OutputLog>,
    mut sink: Option<mpsc::Sender<RunEvent>>,
    mut exited: watch::Receiver<bool>,
) {
    let mut chunks = crate::blocking::read_chunks(std::fs::File::from(fd), 4);
    let mut partial: Vec<u8> = Vec::new();
    let emit = |bytes: &[u8], sink: &mut Option<mpsc::Sender<RunEvent>>| {
        let ev = log.push(stream, String::from_utf8_lossy(bytes).into_owned());
        crate::journal::journal().output(pid, stream, ev.line.clone(), ev.timestamp);
        ev_to_sink(ev, sink)
    };
    loop {
        let read = tokio::select! {
            r = chunks.recv() => r,
            _ = async {
                let _ = exited.wait_for(|e| *e).await;
                tokio::time::sleep(DRAIN_GRACE).await;
            } => break,
        };
        let Some(chunk) = read else { break };
        partial.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(pos) = partial[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            if let Some(f) = emit(&partial[start..end], &mut sink) {
                f.await;
            }
            start = end + 1;
        }
        partial.drain(..start);
        while partial.len() >= MAX_LINE {
            let rest = partial.split_off(MAX_LINE);
            if let Some(f) = emit(&partial, &mut sink) {
                f.await;
            }
            partial = rest;
        }
    }
    if !partial.is_empty() {
        if let Some(f) = emit(&partial, &mut sink) {
            f.await;
        }
    }
    drop(sink);
    log.close_stream();
}

/// Sends to the sink; a closed sink (client gone) is dropped.
fn ev_to_sink(
    ev: OutputEvent,
    sink: &mut Option<mpsc::Sender<RunEvent>>,
) -> Option<impl std::future::Future<Output = ()>> {
    let tx = sink.clone()?;
    let closed = tx.is_closed();
    if closed {
        *sink = None;
        return None;
    }
    Some(async move {
        let _ = tx.send(RunEvent::Output(ev)).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn follow_replays_then_streams_live_until_done() {
        let log = OutputLog::new(2);
        log.push(OutputStream::Stdout, "a".into());
        log.push(OutputStream::Stderr, "b".into());
        let mut all = Box::pin(log.clone().follow(None));
        let mut err = Box::pin(log.clone().follow(Some(OutputStream::Stderr)));
        assert_eq!(all.next().await.unwrap().line, "a");
        assert_eq!(all.next().await.unwrap().line, "b");
        assert_eq!(err.next().await.unwrap().line, "b");
        let l2 = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            l2.push(OutputStream::Stdout, "c".into());
            l2.close_stream();
            l2.close_stream();
        });
        assert_eq!(all.next().await.unwrap().line, "c");
        assert!(all.next().await.is_none());
        assert!(err.next().await.is_none());
        assert_eq!(log.snapshot(Some(OutputStream::Stdout)), vec!["a", "c"]);
    }

    #[test]
    fn log_is_bounded() {
        let log = OutputLog::new(1);
        for i in 0..(MAX_LINES + 10) {
            log.push(OutputStream::Stdout, i.to_string());
        }
        let lines = log.snapshot(None);
        assert_eq!(lines.len(), MAX_LINES);
        assert_eq!(lines[0], "10");
    }
}
