//! Where chunk and manifest objects live: a local directory ([`LocalDir`])
//! or an S3-compatible object store ([`S3`](crate::S3)).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::{Ctx, Result};

/// The two kinds of objects a backend holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A zstd-compressed chunk, named by the lowercase hex BLAKE3 hash of its
    /// uncompressed content.
    Chunk,
    /// A JSON manifest, named by its id.
    Manifest,
}

/// One object found by [`Backend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    /// Stored (compressed) size in bytes.
    pub size: u64,
}

/// How [`Backend::lock`] locks the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Writers and readers: many at a time.
    Shared,
    /// Garbage collection: alone.
    Exclusive,
}

/// A held store lock; released on drop.
pub struct LockGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl LockGuard {
    /// Wraps whatever keeps a backend's lock held until dropped.
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        LockGuard(Box::new(held))
    }
}

/// Takes the store lock for a backend that has none of its own: many hosts
/// sharing one bucket coordinate through a `Locker` they all reach (e.g.
/// PostgreSQL advisory locks), since some S3 servers ignore the conditional
/// writes a lock in the bucket would need.
pub trait Locker: Send + Sync {
    /// Blocks until the lock is held in `mode`; released when the guard
    /// drops (on any thread).
    fn lock(&self, mode: LockMode) -> Result<LockGuard>;
}

/// A readers-writer lock within one process: shared holders coexist, an
/// exclusive holder is alone. Like `flock`, it favours neither side (a
/// shared lock is granted whenever no exclusive one is held), so a thread
/// may take a second shared lock while it holds one. Clones share the lock.
#[derive(Debug, Clone, Default)]
pub struct LocalLocker(Arc<LockState>);

#[derive(Debug, Default)]
struct LockState {
    held: Mutex<Held>,
    released: Condvar,
}

#[derive(Debug, Default)]
struct Held {
    shared: usize,
    exclusive: bool,
}

impl Locker for LocalLocker {
    fn lock(&self, mode: LockMode) -> Result<LockGuard> {
        let state = &*self.0;
        let mut held = state.held.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let free = match mode {
                LockMode::Shared => !held.exclusive,
                LockMode::Exclusive => !held.exclusive && held.shared == 0,
            };
            if free {
                break;
            }
            held = state
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        match mode {
            LockMode::Shared => held.shared += 1,
            LockMode::Exclusive => held.exclusive = true,
        }
        Ok(LockGuard::new(LocalRelease {
            state: self.0.clone(),
            mode,
        }))
    }
}

struct LocalRelease {
    state: Arc<LockState>,
    mode: LockMode,
}

impl Drop for LocalRelease {
    fn drop(&mut self) {
        let mut held = self
            .state
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match self.mode {
            LockMode::Shared => held.shared -= 1,
            LockMode::Exclusive => held.exclusive = false,
        }
        drop(held);
        self.state.released.notify_all();
    }
}

/// Storage of named objects. Names are validated by the [`Store`](crate::Store)
/// before they reach a backend.
pub trait Backend: Send + Sync {
    /// The whole object, or `None` if it does not exist.
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Vec<u8>>>;
    /// Hands the object's bytes to `sink` in pieces, in order, as they
    /// arrive (nothing need hold it whole); `false` if it does not exist.
    /// An error of `sink` ends the read and is returned.
    fn get_with(
        &self,
        kind: Kind,
        name: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<bool> {
        match self.get(kind, name)? {
            Some(data) => sink(&data).map(|()| true),
            None => Ok(false),
        }
    }
    /// Stores an object atomically: readers see the old object, nothing, or
    /// the whole new one; never a prefix. Replaces an existing object.
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<()>;
    fn exists(&self, kind: Kind, name: &str) -> Result<bool>;
    /// Deletes an object; `false` if it did not exist.
    fn delete(&self, kind: Kind, name: &str) -> Result<bool>;
    fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>>;
    /// Makes every `put` that returned before this call durable.
    fn sync(&self) -> Result<()>;
    /// Blocks until the store lock is held in `mode`.
    fn lock(&self, mode: LockMode) -> Result<LockGuard>;
    /// Removes leftovers of interrupted writes. Called by gc only while it
    /// holds the exclusive lock; returns how many were removed.
    fn remove_temporaries(&self) -> Result<u64>;
    /// Where the objects are, for logs; never includes credentials.
    fn describe(&self) -> String {
        "a custom backend".to_owned()
    }
}

/// A store in a local directory:
///
/// ```text
/// dir/lock                    flock: shared by writers/readers, exclusive by gc
/// dir/chunks/ab/abcdef….zst   chunk, named by the hex BLAKE3 of its content
/// dir/manifests/<id>.json     manifest
/// dir/tmp/                    objects being written (renamed into place)
/// ```
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl LocalDir {
    /// Opens (creating if needed) a store directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let root = dir.as_ref().to_path_buf();
        for sub in ["chunks", "manifests", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).ctx("create directory", &p)?;
        }
        Ok(LocalDir { root })
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        match kind {
            Kind::Chunk => self
                .root
                .join("chunks")
                .join(name.get(..2).unwrap_or("__"))
                .join(format!("{name}.zst")),
            Kind::Manifest => self.root.join("manifests").join(format!("{name}.json")),
        }
    }
}

/// Removes a temporary file on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

impl Backend for LocalDir {
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Vec<u8>>> {
        let p = self.path(kind, name);
        match fs::read(&p) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", &p),
        }
    }

    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(kind, name);
        let parent = dest.parent().unwrap_or(&self.root);
        if kind == Kind::Chunk {
            fs::create_dir_all(parent).ctx("create directory", parent)?;
        }
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let mut tmp = TempFile {
            path: self
                .root
                .join("tmp")
                .join(format!("{}-{seq}.tmp", std::process::id())),
            armed: true,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp.path)
            .ctx("create", &tmp.path)?;
        f.write_all(data).ctx("write", &tmp.path)?;
        // Data reaches the disk before the name does: after a crash a name
        // never points at a partial object.
        f.sync_all().ctx("fsync", &tmp.path)?;
        drop(f);
        fs::rename(&tmp.path, &dest).ctx("rename into place", &dest)?;
        tmp.armed = false;
        if kind == Kind::Manifest {
            fsync_dir(parent)?;
        }
        Ok(())
    }

    fn exists(&self, kind: Kind, name: &str) -> Result<bool> {
        let p = self.path(kind, name);
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx("stat", &p),
        }
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<bool> {
        let p = self.path(kind, name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx("delete", &p),
        }
    }

    fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        let (dirs, suffix) = match kind {
            Kind::Manifest => (vec![self.root.join("manifests")], ".json"),
            Kind::Chunk => {
                let base = self.root.join("chunks");
                let mut dirs = Vec::new();
                for e in fs::read_dir(&base).ctx("list", &base)? {
                    let e = e.ctx("list", &base)?;
                    if e.file_type().ctx("stat", &e.path())?.is_dir() {
                        dirs.push(e.path());
                    }
                }
                (dirs, ".zst")
            }
        };
        let mut out = Vec::new();
        for dir in dirs {
            for e in fs::read_dir(&dir).ctx("list", &dir)? {
                let e = e.ctx("list", &dir)?;
                let Some(name) = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(suffix))
                    .map(str::to_owned)
                else {
                    continue;
                };
                let md = match e.metadata() {
                    Ok(md) => md,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(err).ctx("stat", &e.path()),
                };
                if md.is_file() {
                    out.push(ObjectInfo {
                        name,
                        size: md.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn sync(&self) -> Result<()> {
        let f = File::open(&self.root).ctx("open", &self.root)?;
        // SAFETY: plain syscall on a valid open descriptor.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error()).ctx("syncfs", &self.root);
        }
        Ok(())
    }

    fn lock(&self, mode: LockMode) -> Result<LockGuard> {
        let p = self.root.join("lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .ctx("open", &p)?;
        let op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        };
        loop {
            // SAFETY: plain syscall on a valid open descriptor; the lock lives
            // as long as the file, which the guard owns.
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                return Ok(LockGuard::new(f));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).ctx("flock", &p);
            }
        }
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn remove_temporaries(&self) -> Result<u64> {
        let dir = self.root.join("tmp");
        let mut n = 0;
        for e in fs::read_dir(&dir).ctx("list", &dir)? {
            let p = e.ctx("list", &dir)?.path();
            match fs::remove_file(&p) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).ctx("delete", &p),
            }
        }
        Ok(n)
    }
}
