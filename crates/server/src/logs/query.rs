//! Reads of a sandbox's log as the client asks for them: level, process
//! and body filters, `head`/`tail`, `nextToken` paging; and the processes
//! the log has seen.

use super::store::{scan, Kind, Record};
use sbx_api::logs::LogProcess;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

/// Records a page holds when neither `head` nor `tail` is given.
pub const DEFAULT_PAGE: usize = 1000;
/// The most records one page holds.
pub const MAX_PAGE: usize = 10_000;

/// Which records match.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter {
    /// Levels wanted (none: all).
    pub levels: Vec<u8>,
    /// Process ids (pids, in digits) wanted (none: all records).
    pub process_ids: Vec<String>,
    /// A substring the body must contain.
    pub body: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        (self.levels.is_empty() || self.levels.contains(&r.l))
            && (self.process_ids.is_empty()
                || r.p
                    .is_some_and(|p| self.process_ids.iter().any(|id| *id == p.to_string())))
            && self.body.as_deref().is_none_or(|b| r.b.contains(b))
    }
}

/// Which part of the matching records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The first N from the start (or the token).
    Head(usize),
    /// The last N.
    Tail(usize),
}

/// One page of records.
#[derive(Debug, Default)]
pub struct Page {
    pub records: Vec<Record>,
    /// The first matching record not in the page (more follow).
    pub next: Option<u64>,
    /// Where records newer than those read will start.
    pub cursor: u64,
}

/// Reads the records of the log in `dir` numbered `from` or later.
pub fn read(dir: &Path, from: u64, filter: &Filter, window: Window) -> std::io::Result<Page> {
    let mut page = Page {
        cursor: from,
        ..Default::default()
    };
    match window {
        Window::Head(n) => {
            let n = n.min(MAX_PAGE);
            scan(dir, from, |r| {
                if !filter.matches(&r) {
                    page.cursor = r.n + 1;
                    return true;
                }
                if page.records.len() >= n {
                    page.next = Some(r.n);
                    page.cursor = r.n;
                    return false;
                }
                page.cursor = r.n + 1;
                page.records.push(r);
                true
            })?;
        }
        Window::Tail(n) => {
            let n = n.min(MAX_PAGE);
            let mut last = VecDeque::with_capacity(n.min(1024));
            scan(dir, from, |r| {
                page.cursor = r.n + 1;
                if n > 0 && filter.matches(&r) {
                    if last.len() == n {
                        last.pop_front();
                    }
                    last.push_back(r);
                }
                true
            })?;
            page.records = last.into();
        }
    }
    Ok(page)
}

/// The processes the log in `dir` has records of, by pid.
pub fn processes(dir: &Path) -> std::io::Result<Vec<LogProcess>> {
    let mut procs: BTreeMap<i32, LogProcess> = BTreeMap::new();
    scan(dir, 0, |r| {
        let Some(pid) = r.p else { return true };
        let p = procs.entry(pid).or_insert_with(|| LogProcess {
            process_id: pid.to_string(),
            process_pid: pid.to_string(),
            process_command: String::new(),
            process_managed_id: String::new(),
            process_managed_name: String::new(),
            first_seen: r.t,
            last_seen: r.t,
            log_count: 0,
        });
        p.first_seen = p.first_seen.min(r.t);
        p.last_seen = p.last_seen.max(r.t);
        match r.k {
            Kind::Stdout | Kind::Stderr => p.log_count += 1,
            Kind::Start => {
                p.process_command =
                    r.a.get("command")
                        .and_then(|v| v.as_str())
                        .unwrap_or(&r.b)
                        .to_string();
                let s = |k: &str| r.a.get(k).and_then(|v| v.as_str()).map(str::to_string);
                p.process_managed_id = s("managedId").unwrap_or_default();
                p.process_managed_name = s("managedName").unwrap_or_default();
            }
            Kind::Exit | Kind::Event => {}
        }
        true
    })?;
    let mut out: Vec<LogProcess> = procs.into_values().collect();
    out.sort_by_key(|p| p.first_seen);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::store::SandboxLog;

    /// pid 10 prints `out i` (stdout) for even i and `err i` (stderr) for odd
    /// i; pid 11 starts and prints `other`; an event in between.
    fn sample(dir: &Path) {
        let mut log = SandboxLog::open(dir.to_path_buf(), 1 << 20).unwrap();
        let mut recs = Vec::new();
        let mut start = Record::new(1, 2, Kind::Start, "sh -c x".into());
        start.p = Some(10);
        recs.push(start);
        for i in 0..20u64 {
            let (k, l, b) = if i % 2 == 0 {
                (Kind::Stdout, 3, format!("out {i}"))
            } else {
                (Kind::Stderr, 5, format!("err {i}"))
            };
            let mut r = Record::new(10 + i, l, k, b);
            r.p = Some(10);
            recs.push(r);
        }
        recs.push(Record::new(40, 3, Kind::Event, "sandbox suspended".into()));
        let mut start = Record::new(50, 2, Kind::Start, "python3 app.py".into());
        start.p = Some(11);
        start.a.insert("managedId".into(), "web".into());
        start.a.insert("managedName".into(), "web".into());
        recs.push(start);
        let mut other = Record::new(60, 3, Kind::Stdout, "other".into());
        other.p = Some(11);
        recs.push(other);
        log.append(recs).unwrap();
    }

    fn bodies(p: &Page) -> Vec<&str> {
        p.records.iter().map(|r| r.b.as_str()).collect()
    }

    #[test]
    fn filters_select_levels_processes_and_bodies() {
        let tmp = tempfile::tempdir().unwrap();
        sample(tmp.path());
        let all = Window::Head(DEFAULT_PAGE);
        let errors = Filter {
            levels: vec![5],
            ..Default::default()
        };
        let p = read(tmp.path(), 0, &errors, all).unwrap();
        assert_eq!(p.records.len(), 10);
        assert!(bodies(&p).iter().all(|b| b.starts_with("err")));
        assert_eq!(p.next, None);
        assert_eq!(p.cursor, 24, "past every record read");
        let of_11 = Filter {
            process_ids: vec!["11".into()],
            ..Default::default()
        };
        let p = read(tmp.path(), 0, &of_11, all).unwrap();
        assert_eq!(bodies(&p), ["python3 app.py", "other"]);
        let body = Filter {
            body: Some("1".into()),
            levels: vec![3],
            ..Default::default()
        };
        let p = read(tmp.path(), 0, &body, all).unwrap();
        assert_eq!(
            bodies(&p),
            ["out 10", "out 12", "out 14", "out 16", "out 18"]
        );
        // No process filter: the lifecycle event is there too.
        let p = read(tmp.path(), 0, &Filter::default(), all).unwrap();
        assert!(bodies(&p).contains(&"sandbox suspended"));
        assert_eq!(p.records.len(), 24);
    }

    #[test]
    fn head_pages_with_a_token_and_tail_takes_the_last() {
        let tmp = tempfile::tempdir().unwrap();
        sample(tmp.path());
        let out = Filter {
            levels: vec![3],
            process_ids: vec!["10".into()],
            ..Default::default()
        };
        let mut from = 0;
        let mut seen = Vec::new();
        loop {
            let p = read(tmp.path(), from, &out, Window::Head(4)).unwrap();
            seen.extend(p.records.iter().map(|r| r.b.clone()));
            match p.next {
                Some(n) => {
                    assert_eq!(p.records.len(), 4);
                    from = n;
                }
                None => break,
            }
        }
        let want: Vec<String> = (0..20).step_by(2).map(|i| format!("out {i}")).collect();
        assert_eq!(seen, want);
        let p = read(tmp.path(), 0, &out, Window::Tail(3)).unwrap();
        assert_eq!(bodies(&p), ["out 14", "out 16", "out 18"]);
        assert_eq!(p.next, None);
        assert_eq!(p.cursor, 24);
        // Following: nothing new past the cursor until a record arrives.
        let p2 = read(tmp.path(), p.cursor, &Filter::default(), Window::Head(10)).unwrap();
        assert!(p2.records.is_empty());
        assert_eq!(p2.cursor, 24);
        let mut log = SandboxLog::open(tmp.path().to_path_buf(), 1 << 20).unwrap();
        log.append(vec![Record::new(
            99,
            3,
            Kind::Event,
            "sandbox terminated".into(),
        )])
        .unwrap();
        let p3 = read(tmp.path(), p2.cursor, &Filter::default(), Window::Head(10)).unwrap();
        assert_eq!(bodies(&p3), ["sandbox terminated"]);
        assert_eq!(p3.cursor, 25);
    }

    #[test]
    fn processes_are_listed_with_counts_and_commands() {
        let tmp = tempfile::tempdir().unwrap();
        sample(tmp.path());
        let procs = processes(tmp.path()).unwrap();
        assert_eq!(procs.len(), 2);
        assert_eq!(procs[0].process_id, "10");
        assert_eq!(procs[0].process_command, "sh -c x");
        assert_eq!(procs[0].log_count, 20);
        assert_eq!((procs[0].first_seen, procs[0].last_seen), (1, 29));
        assert_eq!(procs[1].process_managed_name, "web");
        assert_eq!(procs[1].log_count, 1);
        assert!(processes(&tmp.path().join("none")).unwrap().is_empty());
    }
}
