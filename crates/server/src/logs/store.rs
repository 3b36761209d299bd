//! One sandbox's log on disk: `<logs>/<sandbox id>/<first n>.jsonl`
//! segments of JSON lines, each record numbered (`n`) in order of arrival.
//! Appends go to the newest segment (opened, one `write`, closed: a batch
//! of lines at a time); a full segment starts a new one, and the oldest
//! segments go when the sandbox's budget is exceeded.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Stdout,
    Stderr,
    /// A process started (body: its command line).
    Start,
    /// A process ended.
    Exit,
    /// A lifecycle event of the sandbox.
    Event,
}

/// One stored record (one JSON line; short keys: it is written a lot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Number within the sandbox's log, from 0, in order of arrival.
    pub n: u64,
    /// Nanoseconds since the Unix epoch.
    pub t: u64,
    /// Level, 1 (trace) … 6 (fatal).
    pub l: u8,
    pub k: Kind,
    /// The line (or the event's text).
    pub b: String,
    /// The process, for output, start and exit records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<i32>,
    /// The agent journal's number of it (collected records only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<u64>,
    /// Further attributes (event name, reason, command, managed id…).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub a: serde_json::Map<String, serde_json::Value>,
}

impl Record {
    /// A record to append (`n` is given by the append).
    pub fn new(t: u64, l: u8, k: Kind, b: String) -> Self {
        Self {
            n: 0,
            t,
            l,
            k,
            b,
            p: None,
            q: None,
            a: Default::default(),
        }
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A segment: its first record's number and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub first: u64,
    pub bytes: u64,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.jsonl")
}

/// The segments of the log in `dir`, oldest first (none if it is missing).
pub fn segments(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let bytes = entry.metadata().map_or(0, |m| m.len());
        out.push(Segment { first, bytes });
    }
    out.sort_by_key(|s| s.first);
    Ok(out)
}

/// Calls `f` with every record of the log in `dir` numbered `from` or
/// later, in order, until it answers false. A line being written (or torn
/// by a crash) is skipped; a segment removed meanwhile is skipped.
pub fn scan(dir: &Path, from: u64, mut f: impl FnMut(Record) -> bool) -> std::io::Result<()> {
    let segs = segments(dir)?;
    for (i, seg) in segs.iter().enumerate() {
        if segs.get(i + 1).is_some_and(|next| next.first <= from) {
            continue;
        }
        let file = match std::fs::File::open(dir.join(segment_name(seg.first))) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in std::io::BufReader::new(file).split(b'\n') {
            let line = line?;
            let Ok(rec) = serde_json::from_slice::<Record>(&line) else {
                continue;
            };
            if rec.n < from {
                continue;
            }
            if !f(rec) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A sandbox's log open for appending.
#[derive(Debug)]
pub struct SandboxLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// The number the next record gets.
    next_n: u64,
    /// The agent journal's number to collect next (after the last stored).
    pub agent_next: Option<u64>,
    /// A segment this large starts the next one.
    segment_max: u64,
    /// Oldest segments go while the log is larger.
    budget: u64,
}

impl SandboxLog {
    /// Opens the log in `dir` (made on the first append).
    pub fn open(dir: PathBuf, budget: u64) -> std::io::Result<Self> {
        let mut segments = segments(&dir)?;
        // A line torn by a crash is ended, so the next append starts clean.
        if let Some(last) = segments.last_mut() {
            let path = dir.join(segment_name(last.first));
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)?;
            if last.bytes > 0 {
                use std::io::{Read, Seek, SeekFrom};
                let mut b = [0u8];
                f.seek(SeekFrom::End(-1))?;
                f.read_exact(&mut b)?;
                if b[0] != b'\n' {
                    f.write_all(b"\n")?;
                    last.bytes += 1;
                }
            }
        }
        let mut next_n = segments.last().map_or(0, |s| s.first);
        let mut agent_next = None;
        // The last record's number, and the last collected one's journal number.
        for seg in segments.iter().rev() {
            let mut last_q = None;
            scan_segment(&dir, seg.first, |r| {
                next_n = next_n.max(r.n + 1);
                if let Some(q) = r.q {
                    last_q = Some(q);
                }
            })?;
            if last_q.is_some() {
                agent_next = last_q.map(|q| q + 1);
                break;
            }
        }
        Ok(Self {
            dir,
            segments,
            next_n,
            agent_next,
            segment_max: (budget / 4).clamp(16 << 10, 4 << 20),
            budget,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Appends `records` (numbering them) in one write, then trims the log
    /// to its budget.
    pub fn append(&mut self, records: Vec<Record>) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(records.len() * 96);
        for mut r in records {
            r.n = self.next_n;
            self.next_n += 1;
            if let Some(q) = r.q {
                self.agent_next = Some(q + 1);
            }
            serde_json::to_writer(&mut buf, &r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        if self
            .segments
            .last()
            .is_none_or(|s| s.bytes >= self.segment_max)
        {
            // The first record of this batch starts the new segment.
            let first = self.next_n - buf.iter().filter(|b| **b == b'\n').count() as u64;
            self.segments.push(Segment { first, bytes: 0 });
        }
        std::fs::create_dir_all(&self.dir)?;
        let seg = self.segments.last_mut().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(segment_name(seg.first)))?;
        f.write_all(&buf)?;
        seg.bytes += buf.len() as u64;
        self.trim(self.budget);
        Ok(())
    }

    /// Removes the oldest segments while the log is over `budget` (the
    /// newest stays).
    pub fn trim(&mut self, budget: u64) {
        while self.segments.len() > 1 && self.bytes() > budget {
            let first = self.segments[0].first;
            self.remove_segment(first);
        }
    }

    /// Removes one segment (any: the next append starts a new one).
    pub fn remove_segment(&mut self, first: u64) {
        if let Err(e) = std::fs::remove_file(self.dir.join(segment_name(first))) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), "cannot remove a log segment: {e}");
            }
        }
        self.segments.retain(|s| s.first != first);
    }

    /// When a segment was last written.
    pub fn modified(&self, first: u64) -> Option<SystemTime> {
        std::fs::metadata(self.dir.join(segment_name(first)))
            .and_then(|m| m.modified())
            .ok()
    }
}

fn scan_segment(dir: &Path, first: u64, mut f: impl FnMut(Record)) -> std::io::Result<()> {
    let file = match std::fs::File::open(dir.join(segment_name(first))) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for line in std::io::BufReader::new(file).split(b'\n') {
        if let Ok(rec) = serde_json::from_slice::<Record>(&line?) {
            f(rec);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: u64) -> Record {
        let mut r = Record::new(
            i,
            3,
            Kind::Stdout,
            format!("line {i:04} {}", "x".repeat(200)),
        );
        r.p = Some(7);
        r.q = Some(i);
        r
    }

    fn all(dir: &Path, from: u64) -> Vec<Record> {
        let mut out = Vec::new();
        scan(dir, from, |r| {
            out.push(r);
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn records_are_numbered_and_read_back_after_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sbx1");
        let mut log = SandboxLog::open(dir.clone(), 1 << 20).unwrap();
        assert_eq!(log.agent_next, None);
        log.append((0..3).map(line).collect()).unwrap();
        log.append(vec![Record::new(9, 3, Kind::Event, "running".into())])
            .unwrap();
        let got = all(&dir, 0);
        assert_eq!(got.iter().map(|r| r.n).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(got[3].b, "running");
        assert_eq!(all(&dir, 2).len(), 2);
        // A torn last line (a crash mid-write) is skipped.
        let seg = segments(&dir).unwrap()[0];
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(segment_name(seg.first)))
            .unwrap();
        f.write_all(b"{\"n\":4,\"t\"").unwrap();
        let mut log = SandboxLog::open(dir.clone(), 1 << 20).unwrap();
        // The journal number of the last collected record, not of the event.
        assert_eq!(log.agent_next, Some(3));
        log.append(vec![Record::new(9, 3, Kind::Event, "again".into())])
            .unwrap();
        let got = all(&dir, 0);
        assert_eq!(got.last().unwrap().n, 4);
        assert_eq!(got.last().unwrap().b, "again");
    }

    #[test]
    fn the_budget_removes_the_oldest_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sbx1");
        let budget = 64 << 10;
        let mut log = SandboxLog::open(dir.clone(), budget).unwrap();
        for batch in 0..100u64 {
            log.append((batch * 10..batch * 10 + 10).map(line).collect())
                .unwrap();
        }
        let segs = segments(&dir).unwrap();
        assert!(segs.len() > 1, "{segs:?}");
        let on_disk: u64 = segs.iter().map(|s| s.bytes).sum();
        assert_eq!(on_disk, log.bytes());
        // Within the budget plus at most one segment being filled.
        assert!(on_disk <= budget + (16 << 10) + 4096, "{on_disk}");
        let got = all(&dir, 0);
        assert_eq!(got.last().unwrap().n, 999);
        assert!(got[0].n > 0, "the oldest records are gone");
        // Numbers stay contiguous from the oldest kept.
        for w in got.windows(2) {
            assert_eq!(w[1].n, w[0].n + 1);
        }
        // Reading from a number in a later segment skips earlier ones.
        let from = segs.last().unwrap().first + 1;
        assert_eq!(all(&dir, from)[0].n, from);
        // Reopened: numbering continues.
        let mut log = SandboxLog::open(dir.clone(), budget).unwrap();
        assert_eq!(log.agent_next, Some(1000));
        log.append(vec![line(1000)]).unwrap();
        assert_eq!(all(&dir, 0).last().unwrap().n, 1000);
    }
}
