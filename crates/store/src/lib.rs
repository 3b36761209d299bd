//! Content-addressed blob store for sbx images and snapshots.
//!
//! Input streams are cut into content-defined chunks with FastCDC (2020),
//! min 64 KiB / avg 256 KiB / max 1 MiB for files: small enough that a
//! rewritten part of a file costs a few chunks. Memory images are cut 4x
//! coarser ([`Chunking::Coarse`]): a 500 MB checkpoint is ~500 objects, as
//! each object fetched from S3 costs a request. Each chunk is named by
//! the BLAKE3 hash of its content and stored zstd-compressed once; a second
//! snapshot of a mostly unchanged input stores only the chunks that changed.
//!
//! A [`Manifest`] names what a snapshot or image consists of: byte streams
//! (e.g. a gVisor `pages.img`) and directory trees (e.g. an overlay upper
//! dir), each file an ordered list of chunk refs. Chunks no manifest
//! references are removed by [`Store::gc`].
//!
//! On disk (see [`LocalDir`]): `chunks/ab/abcdef….zst`,
//! `manifests/<id>.json`, `tmp/`, and a `lock` file. In an S3-compatible
//! bucket (see [`S3`]): the same names under an optional key prefix, and the
//! lock in a [`Locker`]. [`Store::open_url`] opens either from one string
//! ([`BlobsUrl`]).
//!
//! Writes go through a [`Writer`], which holds the store's shared lock from
//! the first chunk to the manifest commit, so gc (exclusive lock) never
//! deletes chunks of a snapshot that is still being written. Do not call
//! [`Store::gc`] on a thread that holds a `Writer`: it would wait forever.

mod backend;
mod location;
mod s3;
mod tree;

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};

use fastcdc::v2020::StreamCDC;
use serde::{Deserialize, Serialize};

pub use backend::{Backend, Kind, LocalDir, LocalLocker, LockGuard, LockMode, Locker, ObjectInfo};
pub use location::{BlobsUrl, S3Config, S3Credentials, DEFAULT_REGION};
pub use s3::S3;
pub use tree::{Entry, EntryKind, Tree};

/// Smallest chunk FastCDC cuts (except a stream's last one).
pub const MIN_CHUNK: u32 = 64 * 1024;
/// Target average chunk size.
pub const AVG_CHUNK: u32 = 256 * 1024;
/// Largest chunk of [`Chunking::Fine`].
pub const MAX_CHUNK: u32 = 1024 * 1024;
/// Largest chunk of any stream ([`Chunking::Coarse`]'s); also the bound on a
/// chunk ref's `len` accepted on read.
pub const MAX_COARSE_CHUNK: u32 = 8 * 1024 * 1024;

/// How a stream is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunking {
    /// 64 KiB / 256 KiB / 1 MiB (min / average / max): files, whose small
    /// changes should cost little.
    #[default]
    Fine,
    /// 512 KiB / 2 MiB / 8 MiB: large images read whole, such as a
    /// checkpoint's memory, where each chunk's request to an S3 server costs
    /// more than the bytes a finer cut would share (measured on SeaweedFS
    /// here, 276 MB: 256 KiB objects took 2.4x as long to fetch as 1 MiB
    /// ones, which took 1.3x as long as 2 MiB ones, as long as 4 MiB ones).
    Coarse,
}

impl Chunking {
    fn sizes(self) -> (u32, u32, u32) {
        match self {
            Chunking::Fine => (MIN_CHUNK, AVG_CHUNK, MAX_CHUNK),
            Chunking::Coarse => (8 * MIN_CHUNK, 8 * AVG_CHUNK, MAX_COARSE_CHUNK),
        }
    }
}
const ZSTD_LEVEL: i32 = 3;
/// Threads that fetch one stream's chunks at once.
const READ_WORKERS: usize = 12;
/// What a fetching thread decompresses, hashes and writes at a time: small
/// enough to stay in a core's cache between the three.
const PIECE: usize = 256 << 10;
/// How far (in chunks) a fetch may run ahead of the stream's writer.
const READ_AHEAD: usize = 16;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("chunk {0} is missing from the store")]
    MissingChunk(String),
    #[error("chunk {hash} is corrupt: {reason}")]
    CorruptChunk { hash: String, reason: String },
    #[error("manifest {0:?} not found")]
    ManifestNotFound(String),
    #[error("invalid manifest id {0:?} (1-200 of [A-Za-z0-9._-], not starting with '.')")]
    InvalidId(String),
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("{}: {reason}", path.display())]
    InvalidInput { path: PathBuf, reason: String },
    #[error("restore destination {} already exists", .0.display())]
    DestinationExists(PathBuf),
    /// A request to a remote backend failed (after its retries).
    #[error("{op} {key}: {source}")]
    Remote {
        op: &'static str,
        /// The object, e.g. `s3://bucket/prefix/manifests/x.json`.
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid blob store URL: {0}")]
    InvalidUrl(String),
    /// A backend cannot be set up (e.g. no credentials).
    #[error("blob store: {0}")]
    Config(String),
}

/// Adds the operation and path to an I/O error.
pub(crate) trait Ctx<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// One chunk of a stream: its BLAKE3 hash and uncompressed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    #[serde(with = "hex_hash")]
    pub hash: blake3::Hash,
    pub len: u32,
}

/// A byte stream: `size` bytes, the concatenation of `chunks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRef {
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

/// What a snapshot or image consists of; stored as `manifests/<id>.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Named byte streams, e.g. `"pages.img"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub streams: BTreeMap<String, StreamRef>,
    /// Named directory trees, e.g. `"upper"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trees: BTreeMap<String, Tree>,
    /// The caller's own data (base image, resources, …); opaque to the store.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
}

impl Manifest {
    /// Every stream of the manifest, tree files included.
    pub fn all_streams(&self) -> impl Iterator<Item = &StreamRef> {
        self.streams.values().chain(
            self.trees
                .values()
                .flat_map(|t| t.entries.iter())
                .filter_map(|e| match &e.kind {
                    EntryKind::File { stream } => Some(stream),
                    _ => None,
                }),
        )
    }
}

/// What a put read and what it added to the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutStats {
    /// Bytes read from the input.
    pub logical_bytes: u64,
    /// Uncompressed bytes of chunks that were not in the store before.
    pub new_bytes: u64,
    /// Compressed bytes written for those chunks.
    pub stored_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    /// `put_dir` entries left out: sockets and device nodes other than
    /// overlay whiteouts.
    pub skipped_entries: u64,
}

/// What [`Store::gc`] found and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub manifests: u64,
    pub chunks_kept: u64,
    pub chunks_deleted: u64,
    /// Stored (compressed) bytes freed.
    pub bytes_deleted: u64,
    /// Leftovers of interrupted writes removed.
    pub temporaries_removed: u64,
}

/// A chunk store; cheap to clone, usable from many threads.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend.describe())
    }
}

fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_owned()))
    }
}

fn validate_stream(s: &StreamRef) -> Result<()> {
    let mut total = 0u64;
    for c in &s.chunks {
        if c.len == 0 || c.len > MAX_COARSE_CHUNK {
            return Err(Error::InvalidManifest(format!(
                "chunk {} has length {}",
                c.hash, c.len
            )));
        }
        total += u64::from(c.len);
    }
    if total != s.size {
        return Err(Error::InvalidManifest(format!(
            "stream size {} but chunks add up to {total}",
            s.size
        )));
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) a store in a local directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Ok(Store::with_backend(Arc::new(LocalDir::open(dir)?)))
    }

    /// Opens the store a [`BlobsUrl`] names: a directory path, `file://…`
    /// or `s3://BUCKET[/PREFIX]?endpoint=URL&region=R` (credentials from
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`).
    pub fn open_url(url: &str) -> Result<Store> {
        BlobsUrl::parse(url)?.open()
    }

    pub fn with_backend(backend: Arc<dyn Backend>) -> Store {
        Store { backend }
    }

    /// Where the store is, for logs (no credentials), e.g. a directory or
    /// `s3://bucket/prefix at http://127.0.0.1:8333`.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Starts writing: holds the shared lock until the `Writer` is dropped,
    /// so gc waits for it.
    pub fn writer(&self) -> Result<Writer<'_>> {
        Ok(Writer {
            store: self,
            _lock: self.backend.lock(LockMode::Shared)?,
        })
    }

    pub fn manifest(&self, id: &str) -> Result<Manifest> {
        validate_id(id)?;
        let data = self
            .backend
            .get(Kind::Manifest, id)?
            .ok_or_else(|| Error::ManifestNotFound(id.to_owned()))?;
        serde_json::from_slice(&data)
            .map_err(|e| Error::InvalidManifest(format!("manifest {id:?}: {e}")))
    }

    /// Ids of all committed manifests, sorted.
    pub fn list_manifests(&self) -> Result<Vec<String>> {
        Ok(self
            .backend
            .list(Kind::Manifest)?
            .into_iter()
            .map(|o| o.name)
            .filter(|n| validate_id(n).is_ok())
            .collect())
    }

    /// Deletes a manifest (its chunks go at the next gc); `false` if there
    /// was none.
    pub fn delete_manifest(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        self.backend.delete(Kind::Manifest, id)
    }

    /// Writes a stream's bytes to `out`, verifying every chunk; returns the
    /// number of bytes written.
    pub fn read_stream(&self, stream: &StreamRef, out: &mut impl Write) -> Result<u64> {
        let _lock = self.backend.lock(LockMode::Shared)?;
        self.read_stream_locked(stream, out, Path::new("<output>"))
    }

    /// Writes a stream's bytes into `file` (from its start), verifying every
    /// chunk: each fetching thread writes its chunks in place, so nothing
    /// waits for order. Returns the number of bytes written.
    pub fn read_stream_to_file(&self, stream: &StreamRef, file: &File, path: &Path) -> Result<u64> {
        let _lock = self.backend.lock(LockMode::Shared)?;
        validate_stream(stream)?;
        let chunks = &stream.chunks;
        let offsets: Vec<u64> = chunks
            .iter()
            .scan(0u64, |at, c| {
                let here = *at;
                *at += u64::from(c.len);
                Some(here)
            })
            .collect();
        file.set_len(stream.size).ctx("size", path)?;
        let next = AtomicUsize::new(0);
        let failed = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..READ_WORKERS.min(chunks.len()) {
                s.spawn(|| {
                    let work = || -> Result<()> {
                        let mut dec = zstd::stream::raw::Decoder::new().ctx("zstd", path)?;
                        let mut buf = vec![0; PIECE];
                        loop {
                            let i = next.fetch_add(1, Relaxed);
                            if i >= chunks.len() {
                                return Ok(());
                            }
                            let at = (file, offsets[i], path);
                            self.read_chunk_at(&mut dec, &mut buf, &chunks[i], at)?;
                        }
                    };
                    if let Err(e) = work() {
                        // The others stop at their next chunk.
                        next.store(chunks.len(), Relaxed);
                        failed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(e);
                    }
                });
            }
        });
        match failed.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(e) => Err(e),
            None => Ok(stream.size),
        }
    }

    fn read_stream_locked(
        &self,
        stream: &StreamRef,
        out: &mut impl Write,
        out_path: &Path,
    ) -> Result<u64> {
        validate_stream(stream)?;
        let chunks = &stream.chunks;
        if chunks.len() < 2 {
            let mut dec = zstd::bulk::Decompressor::new().ctx("zstd", out_path)?;
            for c in chunks {
                out.write_all(&self.read_chunk(&mut dec, c)?)
                    .ctx("write", out_path)?;
            }
            return Ok(stream.size);
        }
        // Chunks are fetched by a few threads at once (an S3 GET's latency
        // would otherwise add up: ~1,000 of them per 256 MB) and written in
        // order; no thread runs more than READ_AHEAD chunks ahead of the
        // writer, so memory stays bounded.
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let written = (Mutex::new(0usize), Condvar::new());
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<Vec<u8>>)>(READ_AHEAD);
        std::thread::scope(|s| {
            for _ in 0..READ_WORKERS.min(chunks.len()) {
                let (tx, next, stop, written) = (tx.clone(), &next, &stop, &written);
                s.spawn(move || {
                    let mut dec = match zstd::bulk::Decompressor::new().ctx("zstd", out_path) {
                        Ok(d) => d,
                        Err(e) => return drop(tx.send((next.fetch_add(1, Relaxed), Err(e)))),
                    };
                    loop {
                        let i = next.fetch_add(1, Relaxed);
                        if i >= chunks.len() {
                            return;
                        }
                        let (done, moved) = written;
                        let mut w = done.lock().unwrap_or_else(PoisonError::into_inner);
                        while i >= *w + READ_AHEAD && !stop.load(Relaxed) {
                            w = moved.wait(w).unwrap_or_else(PoisonError::into_inner);
                        }
                        drop(w);
                        if stop.load(Relaxed) {
                            return;
                        }
                        if tx.send((i, self.read_chunk(&mut dec, &chunks[i]))).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let rx = rx; // dropped with this scope's result: blocked senders end
            let mut arrived = BTreeMap::new();
            let mut want = 0;
            let result = rx.iter().try_for_each(|(i, data)| {
                arrived.insert(i, data);
                while let Some(data) = arrived.remove(&want) {
                    out.write_all(&data?).ctx("write", out_path)?;
                    want += 1;
                    *written.0.lock().unwrap_or_else(PoisonError::into_inner) = want;
                    written.1.notify_all();
                }
                Ok(())
            });
            if result.is_err() {
                stop.store(true, Relaxed);
                written.1.notify_all();
            }
            drop(rx);
            result?;
            if want != chunks.len() {
                return Err(io::Error::other("a chunk was lost")).ctx("read", out_path);
            }
            Ok(stream.size)
        })
    }

    fn read_chunk(&self, dec: &mut zstd::bulk::Decompressor<'_>, c: &ChunkRef) -> Result<Vec<u8>> {
        let name = c.hash.to_hex();
        let z = self
            .backend
            .get(Kind::Chunk, &name)?
            .ok_or_else(|| Error::MissingChunk(name.to_string()))?;
        let corrupt = |reason: String| Error::CorruptChunk {
            hash: name.to_string(),
            reason,
        };
        let data = dec
            .decompress(&z, c.len as usize)
            .map_err(|e| corrupt(format!("zstd: {e}")))?;
        if data.len() != c.len as usize {
            return Err(corrupt(format!("{} bytes, expected {}", data.len(), c.len)));
        }
        if blake3::hash(&data) != c.hash {
            return Err(corrupt("content does not match its hash".into()));
        }
        Ok(data)
    }

    /// Writes chunk `c` into `file` at `offset`, checked as
    /// [`read_chunk`](Self::read_chunk) checks it, without holding it whole:
    /// it is decompressed as it arrives, a piece at a time into `buf`, each
    /// piece hashed and written while it is still in the CPU's cache. What
    /// a chunk that fails the checks wrote is for the caller to discard.
    fn read_chunk_at(
        &self,
        dec: &mut zstd::stream::raw::Decoder<'static>,
        buf: &mut [u8],
        c: &ChunkRef,
        (file, offset, path): (&File, u64, &Path),
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let name = c.hash.to_hex();
        let corrupt = |reason: String| Error::CorruptChunk {
            hash: name.to_string(),
            reason,
        };
        dec.reinit().ctx("zstd", path)?;
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        // 0 once a whole frame was decoded.
        let mut hint = 1;
        let mut sink = |piece: &[u8]| -> Result<()> {
            let mut input = InBuffer::around(piece);
            loop {
                let mut out = OutBuffer::around(&mut *buf);
                hint = dec
                    .run(&mut input, &mut out)
                    .map_err(|e| corrupt(format!("zstd: {e}")))?;
                let n = out.pos();
                if n > 0 {
                    let data = &buf[..n];
                    if written + n as u64 > u64::from(c.len) {
                        return Err(corrupt(format!("more than {} bytes", c.len)));
                    }
                    hasher.update(data);
                    file.write_all_at(data, offset + written)
                        .ctx("write", path)?;
                    written += n as u64;
                }
                // All input taken and nothing held back for want of room.
                if input.pos() == piece.len() && n < buf.len() {
                    return Ok(());
                }
            }
        };
        if !self.backend.get_with(Kind::Chunk, &name, &mut sink)? {
            return Err(Error::MissingChunk(name.to_string()));
        }
        if hint != 0 {
            return Err(corrupt("zstd: the frame ends early".into()));
        }
        if written != u64::from(c.len) {
            return Err(corrupt(format!("{written} bytes, expected {}", c.len)));
        }
        if hasher.finalize() != c.hash {
            return Err(corrupt("content does not match its hash".into()));
        }
        Ok(())
    }

    /// Recreates a tree at `dest`, which must not exist. The tree is built
    /// under a temporary name beside `dest` and renamed into place when
    /// whole (and synced); on failure it is removed. Ownership, whiteouts
    /// and `trusted.*` xattrs need root; without root, ownership is left as
    /// is and the rest fails.
    pub fn restore_dir(&self, tree: &Tree, dest: impl AsRef<Path>) -> Result<()> {
        let _lock = self.backend.lock(LockMode::Shared)?;
        tree::restore(self, tree, dest.as_ref(), true)
    }

    /// [`restore_dir`](Self::restore_dir) without the sync: the tree is
    /// whole when it appears, but may not be on disk yet (a syncfs flushes
    /// every dirty page of the file system, others' too: it can take
    /// seconds). For a copy the caller can tell apart and fetch again after
    /// a power loss.
    pub fn restore_dir_unsynced(&self, tree: &Tree, dest: impl AsRef<Path>) -> Result<()> {
        let _lock = self.backend.lock(LockMode::Shared)?;
        tree::restore(self, tree, dest.as_ref(), false)
    }

    /// Removes what interrupted writes left (a server killed mid-upload):
    /// run at start, before anything writes. Waits for running writers.
    pub fn remove_temporaries(&self) -> Result<u64> {
        let _lock = self.backend.lock(LockMode::Exclusive)?;
        self.backend.remove_temporaries()
    }

    /// Deletes every chunk that no manifest references, and leftovers of
    /// interrupted writes. Waits for running writers; a manifest that cannot
    /// be parsed aborts gc before anything is deleted.
    pub fn gc(&self) -> Result<GcStats> {
        let _lock = self.backend.lock(LockMode::Exclusive)?;
        let mut stats = GcStats {
            temporaries_removed: self.backend.remove_temporaries()?,
            ..GcStats::default()
        };
        let mut live = HashSet::new();
        for id in self.list_manifests()? {
            let m = match self.manifest(&id) {
                Err(Error::ManifestNotFound(_)) => continue, // deleted meanwhile
                r => r?,
            };
            stats.manifests += 1;
            live.extend(
                m.all_streams()
                    .flat_map(|s| s.chunks.iter().map(|c| c.hash)),
            );
        }
        for obj in self.backend.list(Kind::Chunk)? {
            let keep = blake3::Hash::from_hex(&obj.name)
                .map(|h| live.contains(&h))
                .unwrap_or(true); // not ours: leave it
            if keep {
                stats.chunks_kept += 1;
            } else if self.backend.delete(Kind::Chunk, &obj.name)? {
                stats.chunks_deleted += 1;
                stats.bytes_deleted += obj.size;
            }
        }
        Ok(stats)
    }
}

/// Writes chunks and commits manifests while holding the store's shared lock.
pub struct Writer<'a> {
    store: &'a Store,
    _lock: LockGuard,
}

impl Writer<'_> {
    /// Chunks and stores a stream; memory stays bounded by a few chunks per
    /// worker whatever the input size.
    pub fn put_stream(&self, input: impl Read) -> Result<(StreamRef, PutStats)> {
        self.with_chunker(|c| c.stream(input, Path::new("<input>"), Chunking::Fine))
    }

    pub fn put_file(&self, path: impl AsRef<Path>) -> Result<(StreamRef, PutStats)> {
        self.put_file_chunked(path, Chunking::Fine)
    }

    /// [`put_file`](Self::put_file) with chunks cut as `chunking` says.
    pub fn put_file_chunked(
        &self,
        path: impl AsRef<Path>,
        chunking: Chunking,
    ) -> Result<(StreamRef, PutStats)> {
        let path = path.as_ref();
        let f = File::open(path).ctx("open", path)?;
        self.with_chunker(|c| c.stream(f, path, chunking))
    }

    /// Stores a directory tree: regular files, directories, symlinks, FIFOs
    /// and overlayfs whiteouts (character devices 0/0), with mode, uid/gid,
    /// mtime and xattrs (so overlay opaque markers are kept). Sockets and
    /// other device nodes are skipped and counted in
    /// [`PutStats::skipped_entries`]. Hard links are stored as separate files
    /// (their content is deduplicated).
    pub fn put_dir(&self, path: impl AsRef<Path>) -> Result<(Tree, PutStats)> {
        self.with_chunker(|c| tree::walk(c, path.as_ref()))
    }

    /// Makes a manifest visible under `id` (replacing any with that id) once
    /// every chunk it references is durably in the store.
    pub fn commit_manifest(&self, id: &str, manifest: &Manifest) -> Result<()> {
        validate_id(id)?;
        let mut checked = HashSet::new();
        for s in manifest.all_streams() {
            validate_stream(s)?;
            for c in &s.chunks {
                if checked.insert(c.hash)
                    && !self.store.backend.exists(Kind::Chunk, &c.hash.to_hex())?
                {
                    return Err(Error::MissingChunk(c.hash.to_string()));
                }
            }
        }
        for t in manifest.trees.values() {
            tree::validate(t)?;
        }
        let json = serde_json::to_vec(manifest)
            .map_err(|e| Error::InvalidManifest(format!("serialize: {e}")))?;
        self.store.backend.sync()?;
        self.store.backend.put(Kind::Manifest, id, &json)
    }

    /// Runs `f` with a chunker whose hashing, compression and chunk writes
    /// happen on a small pool of threads.
    fn with_chunker<T>(&self, f: impl FnOnce(&mut Chunker) -> Result<T>) -> Result<(T, PutStats)> {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4);
        let backend = &*self.store.backend;
        let seen = Mutex::new(HashSet::new());
        let (tx, rx) = mpsc::sync_channel::<Job>(workers * 2);
        let rx = Mutex::new(rx);
        std::thread::scope(|s| {
            for _ in 0..workers {
                let (rx, seen) = (&rx, &seen);
                s.spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = job else { break };
                    let r = store_chunk(backend, seen, &job.data).map(|(hash, new, stored)| Done {
                        idx: job.idx,
                        chunk: ChunkRef {
                            hash,
                            len: job.data.len() as u32,
                        },
                        new,
                        stored,
                    });
                    let _ = job.reply.send(r);
                });
            }
            let mut chunker = Chunker {
                jobs: tx,
                stats: PutStats::default(),
            };
            let out = f(&mut chunker);
            let stats = chunker.stats;
            drop(chunker); // closes the job queue: workers end
            out.map(|t| (t, stats))
        })
    }
}

struct Job {
    data: Vec<u8>,
    idx: usize,
    reply: mpsc::Sender<Result<Done>>,
}

struct Done {
    idx: usize,
    chunk: ChunkRef,
    new: bool,
    stored: u64,
}

/// Hashes a chunk and stores it unless the store (or this put) has it:
/// returns (hash, newly stored, compressed bytes written).
fn store_chunk(
    backend: &dyn Backend,
    seen: &Mutex<HashSet<blake3::Hash>>,
    data: &[u8],
) -> Result<(blake3::Hash, bool, u64)> {
    let hash = blake3::hash(data);
    if !seen.lock().unwrap_or_else(|e| e.into_inner()).insert(hash) {
        return Ok((hash, false, 0));
    }
    let name = hash.to_hex();
    if backend.exists(Kind::Chunk, &name)? {
        return Ok((hash, false, 0));
    }
    let z =
        zstd::bulk::compress(data, ZSTD_LEVEL).ctx("zstd compress", Path::new(name.as_str()))?;
    backend.put(Kind::Chunk, &name, &z)?;
    Ok((hash, true, z.len() as u64))
}

/// Feeds streams to the worker pool of one put.
pub(crate) struct Chunker {
    jobs: mpsc::SyncSender<Job>,
    stats: PutStats,
}

impl Chunker {
    pub(crate) fn stream(
        &mut self,
        input: impl Read,
        path: &Path,
        chunking: Chunking,
    ) -> Result<StreamRef> {
        let (reply, replies) = mpsc::channel();
        let mut chunks: Vec<Option<ChunkRef>> = Vec::new();
        let mut size = 0u64;
        let (min, avg, max) = chunking.sizes();
        for (idx, c) in StreamCDC::new(input, min, avg, max).enumerate() {
            let c = c.map_err(io::Error::from).ctx("read", path)?;
            size += c.length as u64;
            chunks.push(None);
            while let Ok(done) = replies.try_recv() {
                self.accept(done, &mut chunks)?;
            }
            let job = Job {
                data: c.data,
                idx,
                reply: reply.clone(),
            };
            if self.jobs.send(job).is_err() {
                return Err(io::Error::other("chunk workers stopped")).ctx("store", path);
            }
        }
        drop(reply);
        for done in replies {
            self.accept(done, &mut chunks)?;
        }
        self.stats.logical_bytes += size;
        let chunks = chunks
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| io::Error::other("a chunk was lost"))
            .ctx("store", path)?;
        Ok(StreamRef { size, chunks })
    }

    fn accept(&mut self, done: Result<Done>, chunks: &mut [Option<ChunkRef>]) -> Result<()> {
        let d = done?;
        self.stats.chunks += 1;
        if d.new {
            self.stats.new_chunks += 1;
            self.stats.new_bytes += u64::from(d.chunk.len);
            self.stats.stored_bytes += d.stored;
        }
        chunks[d.idx] = Some(d.chunk);
        Ok(())
    }

    pub(crate) fn skipped(&mut self) {
        self.stats.skipped_entries += 1;
    }
}

mod hex_hash {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &blake3::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(h.to_hex().as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<blake3::Hash, D::Error> {
        let s = String::deserialize(d)?;
        blake3::Hash::from_hex(&s).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests;
