//! The cgroup parent of this server's sandboxes (`--cgroup-parent`, default
//! `sbx`): made and prepared by sbx itself before any sandbox, on cgroup v1
//! and v2, whatever an earlier run left behind.
//!
//! - v1: the parent is made in every hierarchy. A new cpuset cgroup starts
//!   with empty `cpuset.cpus`/`cpuset.mems`, and a child cannot be given
//!   CPUs its parent lacks (runsc's `create` then fails with "permission
//!   denied"), so each level of the parent gets them from its own parent.
//! - v2: the parent is made under the unified root and the controllers
//!   sandboxes need are enabled down to it. Pinning uses the v2 cpuset
//!   controller where it can be enabled, and is skipped otherwise.
//!
//! Each sandbox's cgroup is `<parent>/<id>`, or, for a sandbox restored
//! while its previous run was still being removed, another child of the
//! parent that the runtime names (`Runtime::cgroup_name`; with gVisor
//! `r<n>-<id>`, see `sbx_runtime::runs`). The methods below take that name.
//! runsc makes it; runsc and sbx remove it.

use std::path::{Path, PathBuf};

/// Where cgroups are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Controllers a sandbox's cgroup uses under v2.
const V2_CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "memory", "pids", "io"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The prepared parent cgroup of this server's sandboxes.
#[derive(Debug, Clone)]
pub struct CgroupParent {
    name: String,
    root: PathBuf,
    version: Version,
    /// Directories of the parent: one per v1 hierarchy, or the v2 one.
    dirs: Vec<PathBuf>,
    /// The parent's cpuset directory, when sandboxes can be pinned.
    cpuset: Option<PathBuf>,
    /// The parent's directory in the v1 freezer hierarchy.
    freezer: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "invalid cgroup parent {0:?}: use path components of letters, digits, '-', '_' or '.'"
    )]
    InvalidName(String),
    #[error("no cgroup hierarchy under {0}: mount cgroups (v1 or v2) first")]
    NoHierarchy(String),
    #[error("cgroup {path}: {reason}")]
    Io { path: String, reason: String },
}

fn io_err(path: &Path, e: std::io::Error) -> CgroupError {
    CgroupError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Whether `name` is a relative cgroup path sbx may own (`sbx`, `ci/run-7`).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        })
}

impl CgroupParent {
    /// Makes and prepares the parent `name` under the host's cgroup mount.
    pub fn prepare(name: &str) -> Result<Self, CgroupError> {
        Self::prepare_at(Path::new(CGROUP_ROOT), name)
    }

    /// [`Self::prepare`] under another root (tests).
    pub fn prepare_at(root: &Path, name: &str) -> Result<Self, CgroupError> {
        if !is_valid_name(name) {
            return Err(CgroupError::InvalidName(name.into()));
        }
        let version = if root.join("cgroup.controllers").exists() {
            Version::V2
        } else {
            Version::V1
        };
        let mut parent = CgroupParent {
            name: name.to_string(),
            root: root.to_path_buf(),
            version,
            dirs: Vec::new(),
            cpuset: None,
            freezer: None,
        };
        match version {
            Version::V1 => parent.prepare_v1()?,
            Version::V2 => parent.prepare_v2()?,
        }
        Ok(parent)
    }

    fn prepare_v1(&mut self) -> Result<(), CgroupError> {
        let hierarchies = v1_hierarchies(&self.root);
        if hierarchies.is_empty() {
            return Err(CgroupError::NoHierarchy(self.root.display().to_string()));
        }
        for h in hierarchies {
            let dir = h.join(&self.name);
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            if h.join("cpuset.cpus").exists() {
                fill_cpuset(&h, &self.name)?;
                self.cpuset = Some(dir.clone());
            }
            if dir.join("freezer.state").exists() {
                self.freezer = Some(dir.clone());
            }
            self.dirs.push(dir);
        }
        Ok(())
    }

    fn prepare_v2(&mut self) -> Result<(), CgroupError> {
        let dir = self.root.join(&self.name);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        // Enable the controllers level by level, from the root down to the
        // parent: a cgroup can only use what its parent's subtree_control lists.
        let mut level = self.root.clone();
        let mut levels = vec![level.clone()];
        for c in self.name.split('/') {
            level = level.join(c);
            levels.push(level.clone());
        }
        for l in &levels {
            let available =
                std::fs::read_to_string(l.join("cgroup.controllers")).unwrap_or_default();
            let wanted: Vec<String> = V2_CONTROLLERS
                .iter()
                .filter(|c| available.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            for w in wanted {
                // One at a time: a controller that cannot be enabled (e.g.
                // cpuset where a process sits in the way) must not keep
                // the others off.
                if let Err(e) = std::fs::write(l.join("cgroup.subtree_control"), &w) {
                    tracing::debug!(cgroup = %l.display(), controller = w, "cannot enable: {e}");
                }
            }
        }
        let enabled =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        if enabled.split_whitespace().any(|c| c == "cpuset") {
            self.cpuset = Some(dir.clone());
        } else {
            tracing::info!(
                cgroup = %dir.display(),
                "the cgroup v2 cpuset controller is not available here: sandboxes are not pinned to a CPU"
            );
        }
        self.dirs.push(dir);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The cgroup path of the sandbox cgroup named `name`
    /// (`/<parent>/<name>`; for the runtime's spec, the sandbox id).
    pub fn sandbox_path(&self, name: &str) -> String {
        format!("/{}/{name}", self.name)
    }

    /// Whether sandboxes can be pinned to CPUs (a usable cpuset controller).
    pub fn can_pin(&self) -> bool {
        self.cpuset.is_some()
    }

    /// The CPUs the parent's cpuset allows (empty when it has none).
    pub fn allowed_cpus(&self) -> Vec<usize> {
        self.cpuset
            .as_ref()
            .and_then(|d| {
                std::fs::read_to_string(d.join("cpuset.effective_cpus"))
                    .or_else(|_| std::fs::read_to_string(d.join("cpuset.cpus")))
                    .ok()
            })
            .map(|s| parse_cpu_list(&s))
            .unwrap_or_default()
    }

    /// The `cpuset.cpus` file of the sandbox cgroup named `name`, when
    /// sandboxes can be pinned.
    pub fn cpus_file(&self, name: &str) -> Option<PathBuf> {
        self.cpuset
            .as_ref()
            .map(|d| d.join(name).join("cpuset.cpus"))
    }

    /// Gives the sandbox cgroup named `cgroup` the lowest CPU weight: its
    /// processes run only when nothing else wants the CPU.
    pub fn set_lowest_cpu_weight(&self, cgroup: &str) -> std::io::Result<()> {
        let (file, value) = match self.version {
            Version::V1 => {
                let dir = self.dirs.iter().find(|d| d.join("cpu.shares").exists());
                let Some(dir) = dir else {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        "no cgroup v1 cpu hierarchy",
                    ));
                };
                (dir.join(cgroup).join("cpu.shares"), "2")
            }
            Version::V2 => (
                self.root.join(&self.name).join(cgroup).join("cpu.weight"),
                "1",
            ),
        };
        std::fs::write(file, value)
    }

    /// Freezes (or thaws) every process in the sandbox cgroup named
    /// `cgroup`: the cgroup freezer, which stops the sentry's own threads
    /// too (`runsc pause` stops only the sandbox's tasks).
    pub fn set_frozen(&self, cgroup: &str, frozen: bool) -> std::io::Result<()> {
        match (self.version, &self.freezer) {
            (Version::V1, Some(d)) => std::fs::write(
                d.join(cgroup).join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
            (Version::V2, _) => std::fs::write(
                self.root
                    .join(&self.name)
                    .join(cgroup)
                    .join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            ),
            (Version::V1, None) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "no cgroup v1 freezer hierarchy",
            )),
        }
    }

    /// Whether every process in the sandbox cgroup named `cgroup` is frozen
    /// now (a freeze is asynchronous: each task stops at its next safe
    /// point).
    pub fn is_frozen(&self, cgroup: &str) -> bool {
        match (self.version, &self.freezer) {
            (Version::V1, Some(d)) => std::fs::read_to_string(d.join(cgroup).join("freezer.state"))
                .is_ok_and(|s| s.trim() == "FROZEN"),
            (Version::V2, _) => std::fs::read_to_string(
                self.root
                    .join(&self.name)
                    .join(cgroup)
                    .join("cgroup.events"),
            )
            .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1")),
            (Version::V1, None) => false,
        }
    }

    /// Freezes the sandbox cgroup named `cgroup` and waits until all of it
    /// is stopped; thaws it again and fails when that takes longer than
    /// `limit`.
    pub async fn freeze_and_wait(
        &self,
        cgroup: &str,
        limit: std::time::Duration,
    ) -> std::io::Result<()> {
        self.set_frozen(cgroup, true)?;
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_micros(200);
        while !self.is_frozen(cgroup) {
            if started.elapsed() > limit {
                let _ = self.set_frozen(cgroup, false);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("sandbox cgroup {cgroup} did not freeze within {limit:?}"),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    /// Thaws every sandbox cgroup under the parent (after a restart: a
    /// frozen sentry answers no runsc command, not even `list`).
    pub fn thaw_all(&self) {
        let (dir, file, thawed) = match (self.version, &self.freezer) {
            (Version::V1, Some(d)) => (d.clone(), "freezer.state", "THAWED"),
            (Version::V2, _) => (self.root.join(&self.name), "cgroup.freeze", "0"),
            (Version::V1, None) => return,
        };
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in rd.flatten() {
            let f = e.path().join(file);
            if f.exists() {
                if let Err(e) = std::fs::write(&f, thawed) {
                    tracing::warn!(cgroup = %f.display(), "cannot thaw: {e}");
                }
            }
        }
    }

    /// The file `v1` (cgroup v1, in whichever hierarchy has it) or `v2`
    /// (cgroup v2) of the sandbox cgroup named `cgroup`.
    fn sandbox_file(&self, cgroup: &str, v1: &str, v2: &str) -> std::io::Result<PathBuf> {
        let found = match self.version {
            Version::V1 => self
                .dirs
                .iter()
                .map(|d| d.join(cgroup).join(v1))
                .find(|f| f.exists()),
            Version::V2 => {
                Some(self.root.join(&self.name).join(cgroup).join(v2)).filter(|f| f.exists())
            }
        };
        found.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "sandbox cgroup {cgroup} has no {}",
                    if self.version == Version::V1 { v1 } else { v2 }
                ),
            )
        })
    }

    /// Sets the memory limit of the sandbox cgroup named `cgroup` (what the
    /// runtime set at launch from the spec's `memory.limit`). Below what
    /// the cgroup holds, the kernel reclaims first; v1 answers `EBUSY` when
    /// it cannot.
    pub fn set_memory_limit(&self, cgroup: &str, bytes: u64) -> std::io::Result<()> {
        let f = self.sandbox_file(cgroup, "memory.limit_in_bytes", "memory.max")?;
        std::fs::write(f, bytes.to_string())
    }

    /// The memory the sandbox cgroup named `cgroup` holds that reclaim
    /// cannot take: its usage less the inactive file cache (the "working
    /// set").
    pub fn memory_in_use(&self, cgroup: &str) -> std::io::Result<u64> {
        let usage = self.sandbox_file(cgroup, "memory.usage_in_bytes", "memory.current")?;
        let usage: u64 = std::fs::read_to_string(usage)?
            .trim()
            .parse()
            .map_err(std::io::Error::other)?;
        let stat = self.sandbox_file(cgroup, "memory.stat", "memory.stat")?;
        let key = match self.version {
            Version::V1 => "total_inactive_file",
            Version::V2 => "inactive_file",
        };
        let inactive = std::fs::read_to_string(stat)?
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
            .unwrap_or(0);
        Ok(usage.saturating_sub(inactive))
    }

    /// Sets the CPU quota of the sandbox cgroup named `cgroup` to `cpus`
    /// CPUs, over the period the runtime gave it at launch.
    pub fn set_cpu_quota(&self, cgroup: &str, cpus: f64) -> std::io::Result<()> {
        let quota = |period: u64| (cpus * period as f64).round() as u64;
        match self.version {
            Version::V1 => {
                let period = self.sandbox_file(cgroup, "cpu.cfs_period_us", "")?;
                let period: u64 = std::fs::read_to_string(&period)?
                    .trim()
                    .parse()
                    .map_err(std::io::Error::other)?;
                let f = self.sandbox_file(cgroup, "cpu.cfs_quota_us", "")?;
                std::fs::write(f, quota(period).to_string())
            }
            Version::V2 => {
                let f = self.sandbox_file(cgroup, "", "cpu.max")?;
                let now = std::fs::read_to_string(&f)?;
                let period: u64 = now
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(100_000);
                std::fs::write(f, format!("{} {period}", quota(period)))
            }
        }
    }

    /// The processes of the sandbox cgroup named `cgroup` in the cpuset
    /// hierarchy (the sentry and its stubs; not the gofer, which a launch
    /// moves out of it under v1).
    pub fn cpuset_procs(&self, cgroup: &str) -> Vec<i32> {
        self.cpuset
            .as_ref()
            .map(|d| read_procs(&d.join(cgroup)))
            .unwrap_or_default()
    }

    /// Whether sandboxes can be frozen.
    pub fn can_freeze(&self) -> bool {
        self.version == Version::V2 || self.freezer.is_some()
    }

    /// Removes the sandbox cgroup named `name` in every hierarchy (runsc
    /// may leave some). Idempotent.
    pub async fn remove_sandbox(&self, name: &str) {
        for d in &self.dirs {
            let p = d.join(name);
            if p.exists() {
                if let Err(e) = tokio::fs::remove_dir(&p).await {
                    tracing::debug!(cgroup = %p.display(), "cannot remove: {e}");
                }
            }
        }
    }

    /// Kills every process in the sandbox cgroups not named in `keep` and
    /// waits (at most `limit`) until they are gone: at recovery, what a
    /// crash left running of runs nothing records any more (a sentry a
    /// `runsc restore` started before the server was killed). Returns how
    /// many processes were killed.
    pub async fn kill_unused(
        &self,
        keep: &std::collections::HashSet<String>,
        limit: std::time::Duration,
    ) -> usize {
        let started = std::time::Instant::now();
        let mut killed = std::collections::HashSet::new();
        loop {
            let pids: Vec<i32> = self
                .unused(keep)
                .iter()
                .flat_map(|dir| read_procs(dir))
                .collect();
            if pids.is_empty() {
                break;
            }
            if started.elapsed() > limit {
                tracing::warn!(?pids, "processes of unused sandbox cgroups did not exit");
                break;
            }
            for pid in pids {
                // SAFETY: a signal to a process that is in one of our
                // sandbox cgroups (read just above).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed.insert(pid);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        killed.len()
    }

    /// The directories of the sandbox cgroups not named in `keep`, in
    /// every hierarchy.
    fn unused(&self, keep: &std::collections::HashSet<String>) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten())
            .filter(|e| e.path().is_dir() && !keep.contains(&*e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect()
    }

    /// Removes every sandbox cgroup but those named in `keep` (at
    /// recovery, once what runs is adopted: what a crash left of runs
    /// whose names nothing records any more). A cgroup that still holds a
    /// process is left, and said so. Returns the names removed.
    pub fn remove_unused(&self, keep: &std::collections::HashSet<String>) -> Vec<String> {
        let mut removed = Vec::new();
        for dir in self.unused(keep) {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::remove_dir(&dir) {
                Ok(()) => {
                    if !removed.contains(&name) {
                        removed.push(name);
                    }
                }
                Err(err) => tracing::warn!(cgroup = %dir.display(), "cannot remove: {err}"),
            }
        }
        removed
    }

    /// Removes the parent itself when no sandbox cgroup is left in it (at a
    /// clean stop). Levels above the last component are left: they may be
    /// shared. True when it is gone.
    pub fn remove_if_empty(&self) -> bool {
        let busy = self.dirs.iter().any(|d| {
            std::fs::read_dir(d)
                .map(|rd| rd.flatten().any(|e| e.path().is_dir()))
                .unwrap_or(false)
        });
        if busy {
            return false;
        }
        let mut gone = true;
        for d in &self.dirs {
            if let Err(e) = std::fs::remove_dir(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(cgroup = %d.display(), "cannot remove: {e}");
                    gone = false;
                }
            }
        }
        gone
    }
}

/// The cgroup v1 hierarchies mounted under `root`, each once (`cpu` and
/// `cpuacct` are often links to one `cpu,cpuacct`); not the v2 one of a
/// hybrid host.
fn v1_hierarchies(root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut seen = Vec::new();
    let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for d in dirs {
        let Ok(real) = d.canonicalize() else { continue };
        if real.join("cgroup.procs").exists()
            && !real.join("cgroup.controllers").exists()
            && !seen.contains(&real)
        {
            seen.push(real);
        }
    }
    seen
}

/// Gives every level of `name` in the v1 cpuset hierarchy `h` the CPUs and
/// memory nodes of its parent where it has none.
fn fill_cpuset(h: &Path, name: &str) -> Result<(), CgroupError> {
    let mut parent = h.to_path_buf();
    for c in name.split('/') {
        let dir = parent.join(c);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            if own.trim().is_empty() {
                let from = std::fs::read_to_string(parent.join(file))
                    .map_err(|e| io_err(&parent.join(file), e))?;
                std::fs::write(dir.join(file), from.trim())
                    .map_err(|e| io_err(&dir.join(file), e))?;
            }
        }
        parent = dir;
    }
    Ok(())
}

/// The processes in the cgroup directory `dir` (none when it cannot be
/// read).
fn read_procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Parses a cpuset list such as `0-3,6,8-9`.
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let mut ends = part.splitn(2, '-').map(|x| x.trim().parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), None) => cpus.push(a),
            (Some(Ok(a)), Some(Ok(b))) if a <= b => cpus.extend(a..=b),
            _ => {}
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-1\n"), vec![0, 1]);
        assert_eq!(parse_cpu_list("0-3,6,8-9"), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("3-1,x"), Vec::<usize>::new());
    }

    #[test]
    fn parent_names_stay_inside_the_hierarchy() {
        assert!(is_valid_name("sbx"));
        assert!(is_valid_name("ci/run-7.a_b"));
        for bad in ["", "/sbx", "sbx/", "../x", "a/../b", "a b", "a//b", "."] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    /// A v1 layout in a plain directory: cpuset files behave like files,
    /// which is enough to check that each level is filled from its parent.
    #[test]
    fn v1_parent_gets_cpus_and_mems_from_its_parent_at_every_level() {
        let root = tempfile::tempdir().unwrap();
        let cpuset = root.path().join("cpuset");
        let memory = root.path().join("memory");
        for h in [&cpuset, &memory] {
            std::fs::create_dir_all(h).unwrap();
            std::fs::write(h.join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(cpuset.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(cpuset.join("cpuset.mems"), "0\n").unwrap();
        // An earlier run left the first level with empty cpus.
        std::fs::create_dir_all(cpuset.join("ci")).unwrap();
        std::fs::write(cpuset.join("ci/cpuset.cpus"), "\n").unwrap();
        let p = CgroupParent::prepare_at(root.path(), "ci/run1").unwrap();
        assert_eq!(p.version(), Version::V1);
        for level in ["ci", "ci/run1"] {
            let d = cpuset.join(level);
            assert_eq!(
                std::fs::read_to_string(d.join("cpuset.cpus")).unwrap(),
                "0-1"
            );
            assert_eq!(std::fs::read_to_string(d.join("cpuset.mems")).unwrap(), "0");
        }
        assert!(memory.join("ci/run1").is_dir());
        assert!(p.can_pin());
        assert_eq!(p.allowed_cpus(), vec![0, 1]);
        assert_eq!(p.sandbox_path("s1"), "/ci/run1/s1");
        assert_eq!(
            p.cpus_file("s1").unwrap(),
            cpuset.join("ci/run1/s1/cpuset.cpus")
        );
        // Set CPUs are kept (an operator may narrow them).
        std::fs::write(cpuset.join("ci/run1/cpuset.cpus"), "1").unwrap();
        let p = CgroupParent::prepare_at(root.path(), "ci/run1").unwrap();
        assert_eq!(p.allowed_cpus(), vec![1]);
    }

    #[test]
    fn v2_without_a_cpuset_controller_does_not_pin() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        let p = CgroupParent::prepare_at(root.path(), "sbx").unwrap();
        assert_eq!(p.version(), Version::V2);
        assert!(root.path().join("sbx").is_dir());
        assert!(!p.can_pin());
        assert!(p.cpus_file("x").is_none());
        // The controllers it could use were asked for at the root.
        let asked = std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert!(asked.contains("pids"), "{asked}");
    }

    #[test]
    fn the_lowest_cpu_weight_goes_to_the_cpu_controller_of_either_version() {
        let root = tempfile::tempdir().unwrap();
        for h in ["pids", "cpu,cpuacct"] {
            let h = root.path().join(h);
            std::fs::create_dir_all(&h).unwrap();
            std::fs::write(h.join("cgroup.procs"), "").unwrap();
        }
        let p = CgroupParent::prepare_at(root.path(), "t").unwrap();
        let cpu = root.path().join("cpu,cpuacct/t");
        std::fs::write(cpu.join("cpu.shares"), "1024\n").unwrap();
        std::fs::create_dir(cpu.join("sbx1")).unwrap();
        p.set_lowest_cpu_weight("sbx1").unwrap();
        assert_eq!(
            std::fs::read_to_string(cpu.join("sbx1/cpu.shares")).unwrap(),
            "2"
        );

        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        let p = CgroupParent::prepare_at(root.path(), "t").unwrap();
        std::fs::create_dir(root.path().join("t/sbx1")).unwrap();
        p.set_lowest_cpu_weight("sbx1").unwrap();
        let weight = std::fs::read_to_string(root.path().join("t/sbx1/cpu.weight")).unwrap();
        assert_eq!(weight, "1");
    }

    /// Plain files stand for the controllers' files: a resize writes the
    /// limits the launch's files hold, over the launch's CPU period.
    #[test]
    fn resize_writes_memory_and_cpu_limits_of_either_version() {
        let root = tempfile::tempdir().unwrap();
        for h in ["memory", "cpu,cpuacct"] {
            let h = root.path().join(h);
            std::fs::create_dir_all(&h).unwrap();
            std::fs::write(h.join("cgroup.procs"), "").unwrap();
        }
        let p = CgroupParent::prepare_at(root.path(), "t").unwrap();
        let mem = root.path().join("memory/t/s1");
        let cpu = root.path().join("cpu,cpuacct/t/s1");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(mem.join("memory.limit_in_bytes"), "1").unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "300\n").unwrap();
        std::fs::write(
            mem.join("memory.stat"),
            "cache 5\ntotal_inactive_file 100\n",
        )
        .unwrap();
        std::fs::write(cpu.join("cpu.cfs_period_us"), "50000\n").unwrap();
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "50000").unwrap();
        p.set_memory_limit("s1", 4096).unwrap();
        assert_eq!(
            std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(),
            "4096"
        );
        assert_eq!(p.memory_in_use("s1").unwrap(), 200);
        p.set_cpu_quota("s1", 1.5).unwrap();
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "75000"
        );
        assert!(p.set_cpu_quota("gone", 1.0).is_err());

        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let p = CgroupParent::prepare_at(root.path(), "t").unwrap();
        let d = root.path().join("t/s1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("memory.max"), "max").unwrap();
        std::fs::write(d.join("memory.current"), "1000").unwrap();
        std::fs::write(d.join("memory.stat"), "anon 900\ninactive_file 400\n").unwrap();
        std::fs::write(d.join("cpu.max"), "100000 100000\n").unwrap();
        p.set_memory_limit("s1", 8192).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("memory.max")).unwrap(),
            "8192"
        );
        assert_eq!(p.memory_in_use("s1").unwrap(), 600);
        p.set_cpu_quota("s1", 2.0).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("cpu.max")).unwrap(),
            "200000 100000"
        );
    }

    #[test]
    fn unused_sandbox_cgroups_go_and_kept_ones_stay() {
        let root = tempfile::tempdir().unwrap();
        for h in ["pids", "memory"] {
            let h = root.path().join(h);
            std::fs::create_dir_all(&h).unwrap();
            std::fs::write(h.join("cgroup.procs"), "").unwrap();
        }
        let p = CgroupParent::prepare_at(root.path(), "t").unwrap();
        for name in ["sbx1", "r1-sbx1", "sbx2"] {
            std::fs::create_dir(root.path().join("pids/t").join(name)).unwrap();
        }
        std::fs::create_dir(root.path().join("memory/t/r1-sbx1")).unwrap();
        // A plain directory with a file in it stands for a busy cgroup.
        std::fs::write(root.path().join("pids/t/sbx2/cgroup.procs"), "12\n").unwrap();
        let keep = ["sbx1".to_string()].into_iter().collect();
        assert_eq!(p.remove_unused(&keep), vec!["r1-sbx1".to_string()]);
        assert!(root.path().join("pids/t/sbx1").is_dir());
        assert!(root.path().join("pids/t/sbx2").is_dir());
        assert!(!root.path().join("pids/t/r1-sbx1").exists());
        assert!(!root.path().join("memory/t/r1-sbx1").exists());
    }

    /// Real cgroups (root on a host with a v1 pids hierarchy): a process
    /// left in an unused sandbox cgroup is killed, one in a kept cgroup
    /// is not, and the unused cgroup can then go.
    #[tokio::test]
    async fn processes_of_unused_cgroups_are_killed() {
        if !Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
            eprintln!("no cgroup v1 pids hierarchy: nothing to test");
            return;
        }
        let name = format!("sbx-unit-kill-{}", std::process::id());
        let p = CgroupParent::prepare(&name).unwrap();
        let mut sleeps = Vec::new();
        for cgroup in ["r1-sbx1", "sbx1"] {
            let dir = Path::new("/sys/fs/cgroup/pids").join(&name).join(cgroup);
            std::fs::create_dir(&dir).unwrap();
            let child = std::process::Command::new("sleep")
                .arg("600")
                .spawn()
                .unwrap();
            std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
            sleeps.push(child);
        }
        let keep = ["sbx1".to_string()].into_iter().collect();
        let killed = p
            .kill_unused(&keep, std::time::Duration::from_secs(10))
            .await;
        assert_eq!(killed, 1);
        let mut stale = sleeps.remove(0);
        assert!(!stale.wait().unwrap().success());
        let mut kept = sleeps.remove(0);
        assert!(kept.try_wait().unwrap().is_none(), "the kept one runs on");
        assert_eq!(p.remove_unused(&keep), vec!["r1-sbx1".to_string()]);
        kept.kill().unwrap();
        kept.wait().unwrap();
        p.remove_sandbox("sbx1").await;
        assert!(p.remove_if_empty());
    }

    #[test]
    fn the_parent_goes_only_when_no_sandbox_is_left_in_it() {
        let root = tempfile::tempdir().unwrap();
        let h = root.path().join("pids");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(h.join("cgroup.procs"), "").unwrap();
        let p = CgroupParent::prepare_at(root.path(), "t").unwrap();
        std::fs::create_dir(h.join("t/sandbox1")).unwrap();
        assert!(!p.remove_if_empty());
        assert!(h.join("t").is_dir());
        std::fs::remove_dir(h.join("t/sandbox1")).unwrap();
        assert!(p.remove_if_empty());
        assert!(!h.join("t").exists());
    }
}
