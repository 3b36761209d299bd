//! The store's behaviour, on each backend: every test in `both!` runs as
//! `local::NAME` (a directory) and `s3::NAME` (a bucket on a SeaweedFS the
//! test starts).

use super::*;
use sbx_testkit::s3::S3Server;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Deterministic pseudo-random bytes (splitmix64).
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    // Start from a mixed seed so that different seeds are not shifted
    // copies of one sequence.
    let mut state = (seed ^ 0xD1B5_4A32_D192_ED03).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    state ^= state >> 33;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A store to test, and a scratch directory (not the store's) for inputs
/// and restores.
struct Fixture {
    scratch: tempfile::TempDir,
    store: Store,
    /// Dropped after `store`.
    at: At,
}

enum At {
    Local(tempfile::TempDir),
    S3 { server: S3Server, backend: Arc<S3> },
}

const BUCKET: &str = "sbx-store";
const PREFIX: &str = "tests/store";

impl Fixture {
    fn local() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            scratch: tempfile::tempdir().unwrap(),
            store: Store::open(dir.path().join("store")).unwrap(),
            at: At::Local(dir),
        }
    }

    /// A fresh server of the test's own, bucket [`BUCKET`], keys under
    /// [`PREFIX`].
    fn s3() -> Fixture {
        let server = S3Server::start();
        server.create_bucket(BUCKET);
        let backend = Arc::new(s3_backend(&server, BUCKET, PREFIX));
        Fixture {
            scratch: tempfile::tempdir().unwrap(),
            store: Store::with_backend(backend.clone()),
            at: At::S3 { server, backend },
        }
    }

    fn dir(&self) -> &Path {
        self.scratch.path()
    }

    fn backend(&self) -> &dyn Backend {
        &*self.store.backend
    }

    fn raw_chunk(&self, h: &blake3::Hash) -> Vec<u8> {
        self.backend()
            .get(Kind::Chunk, &h.to_hex())
            .unwrap()
            .expect("chunk is stored")
    }

    fn set_raw_chunk(&self, h: &blake3::Hash, data: &[u8]) {
        self.backend().put(Kind::Chunk, &h.to_hex(), data).unwrap();
    }

    fn has_chunk(&self, h: &blake3::Hash) -> bool {
        self.backend().exists(Kind::Chunk, &h.to_hex()).unwrap()
    }

    /// What is in the store besides chunks and manifests (leftovers of
    /// writes): the local store's `tmp/`; any S3 key outside the layout.
    fn strays(&self) -> Vec<String> {
        match &self.at {
            At::Local(d) => fs::read_dir(d.path().join("store/tmp"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            At::S3 { backend, .. } => backend
                .all_keys()
                .unwrap()
                .into_iter()
                .filter(|k| !is_layout_key(k, PREFIX))
                .collect(),
        }
    }
}

/// `PREFIX/chunks/ab/ab….zst` (64 hex digits) or `PREFIX/manifests/ID.json`.
fn is_layout_key(key: &str, prefix: &str) -> bool {
    let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    match rest.split('/').collect::<Vec<_>>()[..] {
        ["chunks", dir, file] => file.strip_suffix(".zst").is_some_and(|h| {
            h.len() == 64 && h.starts_with(dir) && blake3::Hash::from_hex(h).is_ok()
        }),
        ["manifests", file] => file
            .strip_suffix(".json")
            .is_some_and(|id| validate_id(id).is_ok()),
        _ => false,
    }
}

fn s3_config(server: &S3Server, bucket: &str, prefix: &str) -> S3Config {
    let BlobsUrl::S3(mut config) =
        BlobsUrl::parse(&server.url_with_prefix(bucket, prefix)).unwrap()
    else {
        panic!("not an S3 URL")
    };
    // Not through the environment: tests run in parallel threads.
    config.credentials = Some(S3Credentials {
        access_key_id: server.access_key().into(),
        secret_access_key: server.secret_key().into(),
        session_token: None,
    });
    config
}

fn s3_backend(server: &S3Server, bucket: &str, prefix: &str) -> S3 {
    S3::open(&s3_config(server, bucket, prefix)).unwrap()
}

/// Runs each named `fn NAME(f: Fixture)` as `local::NAME` and `s3::NAME`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[test]
            fn $name() {
                super::$name(super::Fixture::local())
            })*
        }
        mod s3 {
            $(#[test]
            fn $name() {
                super::$name(super::Fixture::s3())
            })*
        }
    };
}

both!(
    round_trip_sizes,
    second_put_stores_only_changed_chunks,
    duplicate_chunks_within_one_put_count_once,
    tree_round_trip,
    gc_keeps_shared_chunks_and_waits_for_writers,
    corruption_is_detected,
    a_long_read_fails_cleanly_wherever_it_fails,
    coarse_chunks_are_fewer_and_read_back_the_same,
    manifest_visible_only_after_commit_and_failures_leave_nothing,
    hostile_trees_are_rejected,
);

fn read_all(store: &Store, s: &StreamRef) -> Vec<u8> {
    let mut out = Vec::new();
    assert_eq!(store.read_stream(s, &mut out).unwrap(), s.size);
    out
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.count())
}

fn round_trip_sizes(f: Fixture) {
    let store = &f.store;
    for (i, len) in [0usize, 1, 300 * 1024, 10 << 20].into_iter().enumerate() {
        let data = random_bytes(i as u64, len);
        let w = store.writer().unwrap();
        let (s, stats) = w.put_stream(&data[..]).unwrap();
        assert_eq!(s.size, len as u64);
        assert_eq!(stats.logical_bytes, len as u64);
        assert_eq!(stats.new_bytes, len as u64, "random data is all new");
        assert!(s.chunks.iter().all(|c| c.len <= MAX_CHUNK));
        if len >= MAX_CHUNK as usize {
            assert!(s.chunks.len() > 1);
        }
        let m = Manifest {
            streams: [("data".to_owned(), s.clone())].into(),
            meta: serde_json::json!({"n": i}),
            ..Manifest::default()
        };
        w.commit_manifest(&format!("m{i}"), &m).unwrap();
        drop(w);
        let back = store.manifest(&format!("m{i}")).unwrap();
        assert_eq!(back, m);
        assert_eq!(read_all(store, &back.streams["data"]), data);
    }
    assert_eq!(store.list_manifests().unwrap(), ["m0", "m1", "m2", "m3"]);
}

fn second_put_stores_only_changed_chunks(f: Fixture) {
    let (dir, store) = (f.dir(), &f.store);
    let mut data = random_bytes(7, 64 << 20);
    let file = dir.join("big");
    fs::write(&file, &data).unwrap();
    let w = store.writer().unwrap();
    let (s1, st1) = w.put_file(&file).unwrap();
    assert_eq!(st1.new_bytes, 64 << 20);
    let mid = 32 << 20;
    data[mid..mid + (1 << 20)].copy_from_slice(&random_bytes(8, 1 << 20));
    fs::write(&file, &data).unwrap();
    let (s2, st2) = w.put_file(&file).unwrap();
    assert_eq!(st2.logical_bytes, 64 << 20);
    // Measured: 1 639 810 new bytes of 67 108 864 (2.4 %), 5 of 207 chunks.
    assert!(
        st2.new_bytes * 100 < st2.logical_bytes * 5,
        "new {} of {}",
        st2.new_bytes,
        st2.logical_bytes
    );
    let m = Manifest {
        streams: [("a".to_owned(), s1), ("b".to_owned(), s2.clone())].into(),
        ..Manifest::default()
    };
    w.commit_manifest("snap", &m).unwrap();
    drop(w);
    assert_eq!(read_all(store, &s2), data);
}

fn duplicate_chunks_within_one_put_count_once(f: Fixture) {
    let store = &f.store;
    let w = store.writer().unwrap();
    let (s, st) = w.put_stream(&vec![0u8; 8 << 20][..]).unwrap();
    assert_eq!(s.chunks.len(), 8);
    assert_eq!(st.new_chunks, 1);
    assert_eq!(st.new_bytes, 1 << 20);
    assert!(st.stored_bytes < 4096);
}

fn set_mtime(p: &Path, sec: i64) {
    tree::sys::set_mtime(p, sec, 123_456_789).unwrap();
}

fn tree_round_trip(f: Fixture) {
    let (dir, store) = (f.dir(), &f.store);
    let src = dir.join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::create_dir(src.join("empty")).unwrap();
    fs::create_dir(src.join("ro")).unwrap();
    fs::write(src.join("ro/f"), b"read-only dir").unwrap();
    fs::write(src.join("a/small"), b"hello").unwrap();
    fs::write(src.join("a/b/big"), random_bytes(1, 3 << 20)).unwrap();
    fs::write(src.join("a/same"), random_bytes(1, 3 << 20)).unwrap();
    fs::write(src.join("zero"), b"").unwrap();
    fs::write(src.join("suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("a/small"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("b/big", src.join("a/rel")).unwrap();
    symlink("/nonexistent/target", src.join("dangling")).unwrap();
    tree::sys::mknod(&src.join("fifo"), libc::S_IFIFO, 0).unwrap();
    let whiteout = tree::sys::mknod(&src.join("a/deleted"), libc::S_IFCHR, 0).is_ok();
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::os::unix::fs::lchown(src.join("a/small"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(src.join("dangling"), Some(42), Some(43)).unwrap();
    }
    let opaque = xattr_set(&src.join("a/b"), "trusted.overlay.opaque", b"y");
    let _listener = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    for p in ["a/b/big", "a/rel", "dangling", "ro", "a/b", "a", ""] {
        set_mtime(&src.join(p), 1_600_000_000);
    }

    let w = store.writer().unwrap();
    let (tree, stats) = w.put_dir(&src).unwrap();
    assert_eq!(stats.skipped_entries, 1, "the socket");
    assert_eq!(
        stats.new_bytes,
        (3 << 20) + 5 + 10 + 13,
        "a/same dedups against a/b/big"
    );
    let m = Manifest {
        trees: [("upper".to_owned(), tree.clone())].into(),
        ..Manifest::default()
    };
    w.commit_manifest("layer", &m).unwrap();
    drop(w);

    let tree = store
        .manifest("layer")
        .unwrap()
        .trees
        .remove("upper")
        .unwrap();
    let kinds: Vec<_> = tree
        .entries
        .iter()
        .map(|e| e.path.to_str().unwrap())
        .collect();
    let mut expected = vec![
        "", "a", "a/b", "a/b/big", "a/rel", "a/same", "a/small", "dangling", "empty", "fifo", "ro",
        "ro/f", "suid", "zero",
    ];
    if whiteout {
        expected.insert(4, "a/deleted");
    }
    assert_eq!(kinds, expected);

    let dest = dir.join("restored");
    store.restore_dir(&tree, &dest).unwrap();
    assert_eq!(
        fs::read(dest.join("a/b/big")).unwrap(),
        random_bytes(1, 3 << 20)
    );
    assert_eq!(
        fs::read_link(dest.join("a/rel")).unwrap(),
        Path::new("b/big")
    );
    assert_eq!(count_files(&dest.join("empty")), 0);
    if whiteout {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let md = fs::symlink_metadata(dest.join("a/deleted")).unwrap();
        assert!(md.file_type().is_char_device());
        assert_eq!(md.rdev(), 0);
    }
    if opaque {
        assert_eq!(
            tree.entries[2]
                .xattrs
                .get("trusted.overlay.opaque")
                .map(Vec::as_slice),
            Some(&b"y"[..])
        );
    }
    // Walking the restored tree gives the same tree: same names, kinds,
    // content hashes, modes, owners, mtimes and xattrs.
    let w = store.writer().unwrap();
    let (again, _) = w.put_dir(&dest).unwrap();
    assert_eq!(again, tree);
    drop(w);
    // No temporary restore directory is left beside the destination.
    assert_eq!(count_files(dir), 2, "src, restored");
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) -> bool {
    tree::sys::set_xattr(p, name, value).is_ok()
}

fn gc_keeps_shared_chunks_and_waits_for_writers(f: Fixture) {
    let store = &f.store;
    let base = random_bytes(1, 4 << 20);
    let mut extended = base.clone();
    extended.extend(random_bytes(2, 2 << 20));
    let w = store.writer().unwrap();
    let (a, _) = w.put_stream(&base[..]).unwrap();
    let (b, sb) = w.put_stream(&extended[..]).unwrap();
    assert!(sb.new_bytes < (3 << 20), "b shares a's chunks");
    let (orphan, _) = w.put_stream(&random_bytes(3, 1 << 20)[..]).unwrap();
    let one = |s: &StreamRef| Manifest {
        streams: [("s".to_owned(), s.clone())].into(),
        ..Manifest::default()
    };
    w.commit_manifest("a", &one(&a)).unwrap();
    w.commit_manifest("b", &one(&b)).unwrap();

    // gc waits while a writer holds the store.
    let gc = {
        let store = store.clone();
        std::thread::spawn(move || store.gc().unwrap())
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!gc.is_finished());
    drop(w);
    let st = gc.join().unwrap();
    assert_eq!(st.manifests, 2);
    assert_eq!(
        st.chunks_deleted,
        orphan.chunks.len() as u64,
        "only the uncommitted put"
    );
    assert!(!f.has_chunk(&orphan.chunks[0].hash));
    assert!(f.has_chunk(&a.chunks[0].hash));

    assert!(store.delete_manifest("a").unwrap());
    assert!(!store.delete_manifest("a").unwrap());
    let st = store.gc().unwrap();
    let only_a: HashSet<_> = a
        .chunks
        .iter()
        .map(|c| c.hash)
        .filter(|h| !b.chunks.iter().any(|c| c.hash == *h))
        .collect();
    assert_eq!(st.chunks_deleted, only_a.len() as u64);
    assert_eq!(read_all(store, &b), extended);

    assert!(store.delete_manifest("b").unwrap());
    let st = store.gc().unwrap();
    assert_eq!(st.chunks_kept, 0);
    assert!(store.backend.list(Kind::Chunk).unwrap().is_empty());
}

fn corruption_is_detected(f: Fixture) {
    let (dir, store) = (f.dir(), &f.store);
    let data = random_bytes(5, 2 << 20);
    let w = store.writer().unwrap();
    let (s, _) = w.put_stream(&data[..]).unwrap();
    drop(w);
    let victim = s.chunks[1].hash;
    let good = f.raw_chunk(&victim);
    // Read in order, and in place into a file (a piece at a time): both
    // refuse every corrupt chunk.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("out");
    let out = File::create(&path).unwrap();
    let corrupt = |why: &str| {
        let err = store.read_stream(&s, &mut io::sink()).unwrap_err();
        assert!(matches!(err, Error::CorruptChunk { .. }), "{why}: {err}");
        assert!(err.to_string().contains(&victim.to_hex().to_string()));
        let err = store.read_stream_to_file(&s, &out, &path).unwrap_err();
        assert!(matches!(err, Error::CorruptChunk { .. }), "{why}: {err}");
        assert!(err.to_string().contains(&victim.to_hex().to_string()));
    };
    assert_eq!(store.read_stream_to_file(&s, &out, &path).unwrap(), 2 << 20);
    assert!(std::fs::read(&path).unwrap() == data);

    // Valid zstd, wrong content.
    let mut other = random_bytes(6, s.chunks[1].len as usize);
    f.set_raw_chunk(&victim, &zstd::bulk::compress(&other, 3).unwrap());
    corrupt("other content");

    // Truncated frame.
    f.set_raw_chunk(&victim, &good[..good.len() / 2]);
    corrupt("truncated");

    // Not zstd at all.
    f.set_raw_chunk(&victim, &other[..1000]);
    corrupt("not zstd");

    // The right content, then more.
    let mut longer = data[..s.chunks[0].len as usize + s.chunks[1].len as usize].to_vec();
    longer.drain(..s.chunks[0].len as usize);
    longer.extend_from_slice(&other[..4096]);
    f.set_raw_chunk(&victim, &zstd::bulk::compress(&longer, 3).unwrap());
    corrupt("longer");

    // Wrong length.
    other.truncate(10);
    f.set_raw_chunk(&victim, &zstd::bulk::compress(&other, 3).unwrap());
    corrupt("shorter");

    assert!(f.backend().delete(Kind::Chunk, &victim.to_hex()).unwrap());
    assert!(matches!(
        store.read_stream(&s, &mut io::sink()),
        Err(Error::MissingChunk(_))
    ));
    let w = store.writer().unwrap();
    let m = Manifest {
        streams: [("s".to_owned(), s.clone())].into(),
        ..Manifest::default()
    };
    assert!(matches!(
        w.commit_manifest("m", &m),
        Err(Error::MissingChunk(_))
    ));
    drop(w);
    assert!(store.list_manifests().unwrap().is_empty());

    // A failed restore leaves nothing behind.
    let mut t = Tree::default();
    t.entries.push(Entry {
        path: PathBuf::new(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: BTreeMap::new(),
    });
    let mut file = t.entries[0].clone();
    file.path = "f".into();
    file.kind = EntryKind::File { stream: s };
    t.entries.push(file);
    let dest = dir.join("out");
    assert!(matches!(
        store.restore_dir(&t, &dest),
        Err(Error::MissingChunk(_))
    ));
    assert_eq!(count_files(dir), 0, "nothing is left");
}

/// A memory image is cut coarser than files: ~8x fewer chunks, each at
/// most 8 MiB, and reads back byte for byte; an unchanged second put stores
/// nothing.
fn coarse_chunks_are_fewer_and_read_back_the_same(f: Fixture) {
    let store = &f.store;
    let data = random_bytes(21, 16 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("pages.img");
    std::fs::write(&file, &data).unwrap();
    let w = store.writer().unwrap();
    let (fine, _) = w.put_file(&file).unwrap();
    let (coarse, _) = w.put_file_chunked(&file, Chunking::Coarse).unwrap();
    let (_, again) = w.put_file_chunked(&file, Chunking::Coarse).unwrap();
    assert_eq!(again.new_bytes, 0);
    drop(w);
    assert!(coarse.chunks.iter().all(|c| c.len <= MAX_COARSE_CHUNK));
    assert!(coarse.chunks.iter().any(|c| c.len > MAX_CHUNK));
    assert!(
        coarse.chunks.len() * 5 < fine.chunks.len(),
        "{} coarse, {} fine",
        coarse.chunks.len(),
        fine.chunks.len()
    );
    assert_eq!(read_all(store, &coarse), data);
    assert_eq!(read_all(store, &fine), data);
    // Written in place by the fetching threads, over what the file held.
    let back = tmp.path().join("back.img");
    std::fs::write(&back, vec![7u8; 20 << 20]).unwrap();
    let out = File::options().write(true).open(&back).unwrap();
    let n = store.read_stream_to_file(&coarse, &out, &back).unwrap();
    drop(out);
    assert_eq!(n, data.len() as u64);
    assert!(
        std::fs::read(&back).unwrap() == data,
        "the file holds the stream, no more"
    );
}

/// Chunks are fetched several at once, ahead of the writer: a chunk
/// missing past that window, or a writer that fails, ends the read with
/// the error (no thread left waiting), and what was written is in order.
fn a_long_read_fails_cleanly_wherever_it_fails(f: Fixture) {
    let store = &f.store;
    let data = random_bytes(9, 24 << 20);
    let w = store.writer().unwrap();
    let (s, _) = w.put_stream(&data[..]).unwrap();
    drop(w);
    assert!(s.chunks.len() > 64, "{} chunks", s.chunks.len());

    /// Takes `limit` bytes, then fails.
    struct Fails {
        got: Vec<u8>,
        limit: usize,
    }
    impl Write for Fails {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.got.len() + buf.len() > self.limit {
                return Err(io::Error::other("disk full"));
            }
            self.got.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut out = Fails {
        got: Vec::new(),
        limit: 3 << 20,
    };
    let err = store.read_stream(&s, &mut out).unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(out.got, data[..out.got.len()], "written in order");

    let victim = s.chunks[s.chunks.len() - 3].hash;
    assert!(f.backend().delete(Kind::Chunk, &victim.to_hex()).unwrap());
    let mut got = Vec::new();
    assert!(matches!(
        store.read_stream(&s, &mut got),
        Err(Error::MissingChunk(_))
    ));
    assert_eq!(got, data[..got.len()], "written in order up to the gap");
    assert!(got.len() < data.len());
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("out");
    let out = File::create(&path).unwrap();
    assert!(matches!(
        store.read_stream_to_file(&s, &out, &path),
        Err(Error::MissingChunk(_))
    ));
}

fn manifest_visible_only_after_commit_and_failures_leave_nothing(f: Fixture) {
    let store = &f.store;
    let w = store.writer().unwrap();
    let (s, _) = w.put_stream(&random_bytes(9, 1 << 20)[..]).unwrap();
    assert!(store.list_manifests().unwrap().is_empty());
    assert!(matches!(
        store.manifest("m"),
        Err(Error::ManifestNotFound(_))
    ));
    let m = Manifest {
        streams: [("s".to_owned(), s)].into(),
        ..Manifest::default()
    };
    w.commit_manifest("m", &m).unwrap();
    assert_eq!(store.list_manifests().unwrap(), ["m"]);

    /// Fails after yielding some data.
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(0x5a);
            self.0 -= n;
            Ok(n)
        }
    }
    let err = w.put_stream(Failing(3 << 20)).unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert_eq!(f.strays(), Vec::<String>::new());
    drop(w);

    for bad in ["", ".hidden", "a/b", "../x", "a b"] {
        assert!(matches!(store.manifest(bad), Err(Error::InvalidId(_))));
    }
    f.backend()
        .put(Kind::Manifest, "broken", b"{not json")
        .unwrap();
    assert!(matches!(
        store.manifest("broken"),
        Err(Error::InvalidManifest(_))
    ));
    assert!(
        store.gc().is_err(),
        "gc refuses to sweep with an unreadable manifest"
    );
}

fn hostile_trees_are_rejected(f: Fixture) {
    let (dir, store) = (f.dir(), &f.store);
    let entry = |p: &str, kind: EntryKind| Entry {
        path: p.into(),
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: BTreeMap::new(),
    };
    let link = EntryKind::Symlink {
        target: "/etc".into(),
    };
    let cases = [
        vec![],
        vec![
            entry("", EntryKind::Dir),
            entry("../escape", EntryKind::Dir),
        ],
        vec![entry("", EntryKind::Dir), entry("/abs", EntryKind::Dir)],
        vec![
            entry("", EntryKind::Dir),
            entry("l", link),
            entry("l/passwd", EntryKind::Fifo),
        ],
        vec![entry("x", EntryKind::Dir)],
        vec![entry("", EntryKind::Fifo)],
    ];
    for entries in cases {
        let t = Tree { entries };
        let r = store.restore_dir(&t, dir.join("out"));
        assert!(matches!(r, Err(Error::InvalidManifest(_))), "{t:?}: {r:?}");
    }
    assert!(!dir.join("out").exists());
}

#[test]
fn temporaries_of_a_killed_writer_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    // What a writer killed mid-upload leaves.
    std::fs::write(dir.path().join("store/tmp/4242-7.tmp"), b"half a chunk").unwrap();
    assert_eq!(store.remove_temporaries().unwrap(), 1);
    assert_eq!(count_files(&dir.path().join("store/tmp")), 0);
}

#[test]
fn local_locker_is_a_readers_writer_lock() {
    let l = LocalLocker::default();
    let a = l.lock(LockMode::Shared).unwrap();
    let b = l.lock(LockMode::Shared).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let held = {
        let l = l.clone();
        std::thread::spawn(move || {
            let g = l.lock(LockMode::Exclusive).unwrap();
            tx.send(()).unwrap();
            // Held on this thread, released on another.
            g
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(rx.try_recv().is_err(), "exclusive waits for both readers");
    drop(a);
    std::thread::sleep(Duration::from_millis(50));
    assert!(rx.try_recv().is_err());
    drop(b);
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let g = held.join().unwrap();
    let reader = {
        let l = l.clone();
        std::thread::spawn(move || drop(l.lock(LockMode::Shared).unwrap()))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !reader.is_finished(),
        "a reader waits for the exclusive holder"
    );
    drop(g);
    reader.join().unwrap();
}

/// Keys land where the layout says, and stores under different prefixes
/// of one bucket neither see nor collect each other's objects.
#[test]
fn s3_layout_and_prefixes() {
    let server = S3Server::start();
    server.create_bucket("shared");
    let stores: Vec<(&str, Arc<S3>)> = ["", "a", "b/c"]
        .into_iter()
        .map(|p| (p, Arc::new(s3_backend(&server, "shared", p))))
        .collect();
    let mut streams = Vec::new();
    for (i, (prefix, backend)) in stores.iter().enumerate() {
        let store = Store::with_backend(backend.clone());
        let port = server.port();
        let at = if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        };
        assert_eq!(
            store.describe(),
            format!("s3://shared{at} at http://127.0.0.1:{port}")
        );
        assert!(format!("{store:?}").contains("s3://shared"));
        let w = store.writer().unwrap();
        // The first MiB is the same in every store, the second its own.
        let mut data = random_bytes(100, 1 << 20);
        data.extend(random_bytes(101 + i as u64, 1 << 20));
        let (s, _) = w.put_stream(&data[..]).unwrap();
        let m = Manifest {
            streams: [("s".to_owned(), s.clone())].into(),
            ..Manifest::default()
        };
        w.commit_manifest(&format!("m{i}"), &m).unwrap();
        streams.push((data, s));
    }
    let keys = stores[1].1.all_keys().unwrap();
    for (i, (prefix, _)) in stores.iter().enumerate() {
        let p = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        assert!(
            keys.contains(&format!("{p}manifests/m{i}.json")),
            "{keys:?}"
        );
        let h = streams[i].1.chunks[0].hash.to_hex();
        assert!(
            keys.contains(&format!("{p}chunks/{}/{h}.zst", &h[..2])),
            "{keys:?}"
        );
    }
    for (i, (_, backend)) in stores.iter().enumerate() {
        let store = Store::with_backend(backend.clone());
        // The unprefixed store's listing does not reach into a/ or b/c/.
        assert_eq!(store.list_manifests().unwrap(), [format!("m{i}")]);
        assert!(store.delete_manifest(&format!("m{i}")).unwrap());
        let st = store.gc().unwrap();
        assert_eq!((st.manifests, st.chunks_kept), (0, 0));
        assert_eq!(st.chunks_deleted, streams[i].1.chunks.len() as u64);
        assert_eq!(st.temporaries_removed, 0);
        // The others' chunks (of the same content too) are still there.
        for (j, (data, s)) in streams.iter().enumerate().skip(i + 1) {
            let other = Store::with_backend(stores[j].1.clone());
            assert!(read_all(&other, s) == *data, "store {j}");
        }
    }
    assert_eq!(stores[0].1.all_keys().unwrap(), Vec::<String>::new());
}

/// The server's code calls the store from async code too (at start): that
/// works on both runtime flavours, and dropping the store there is fine.
#[test]
fn s3_from_async_contexts() {
    let f = Fixture::s3();
    let store = f.store.clone();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = store.clone();
    multi.block_on(async move {
        // On a worker thread…
        let s2 = s.clone();
        tokio::spawn(async move {
            assert_eq!(s2.remove_temporaries().unwrap(), 0);
            let w = s2.writer().unwrap();
            let (st, _) = w.put_stream(&random_bytes(1, 300 << 10)[..]).unwrap();
            let m = Manifest {
                streams: [("s".to_owned(), st)].into(),
                ..Manifest::default()
            };
            w.commit_manifest("async", &m).unwrap();
        })
        .await
        .unwrap();
        // …and in block_on itself.
        assert_eq!(s.list_manifests().unwrap(), ["async"]);
    });
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    current.block_on(async {
        assert!(store.manifest("async").is_ok());
        // A backend opened and dropped inside async code.
        let At::S3 { server, .. } = &f.at else {
            unreachable!()
        };
        let other = Store::with_backend(Arc::new(s3_backend(server, BUCKET, PREFIX)));
        assert_eq!(other.list_manifests().unwrap(), ["async"]);
        drop(other);
    });
    multi.block_on(async {
        let other = Store::with_backend(Arc::new(s3_backend(
            match &f.at {
                At::S3 { server, .. } => server,
                At::Local(_) => unreachable!(),
            },
            BUCKET,
            PREFIX,
        )));
        tokio::spawn(async move { drop(other) }).await.unwrap();
    });
}

/// A locker given with `with_locker` is the one the store locks with.
#[test]
fn s3_uses_the_given_locker() {
    #[derive(Default)]
    struct Counting {
        inner: LocalLocker,
        shared: AtomicUsize,
        exclusive: AtomicUsize,
    }
    impl Locker for Counting {
        fn lock(&self, mode: LockMode) -> Result<LockGuard> {
            match mode {
                LockMode::Shared => &self.shared,
                LockMode::Exclusive => &self.exclusive,
            }
            .fetch_add(1, Ordering::SeqCst);
            self.inner.lock(mode)
        }
    }
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let locker = Arc::new(Counting::default());
    let url = BlobsUrl::S3(s3_config(&server, BUCKET, ""));
    let store = url.open_with_locker(locker.clone()).unwrap();
    let w = store.writer().unwrap();
    w.put_stream(&b"x"[..]).unwrap();
    drop(w);
    store.gc().unwrap();
    assert_eq!(locker.shared.load(Ordering::SeqCst), 1);
    assert_eq!(locker.exclusive.load(Ordering::SeqCst), 1);
}

/// Refused requests are errors that name the object, not the secret.
#[test]
fn s3_errors() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let mut config = s3_config(&server, BUCKET, "p");
    config.credentials.as_mut().unwrap().secret_access_key = "wrong-secret".into();
    let store = Store::with_backend(Arc::new(S3::open(&config).unwrap()));
    let err = store.manifest("m").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Remote { op: "get", .. }), "{err:?}");
    assert!(msg.contains("s3://sbx-store/p/manifests/m.json"), "{msg}");
    assert!(!msg.contains("wrong-secret"), "{msg}");

    // A bucket that does not exist.
    let store = Store::with_backend(Arc::new(s3_backend(&server, "no-such-bucket", "")));
    let err = store.list_manifests().unwrap_err();
    assert!(matches!(err, Error::Remote { op: "list", .. }), "{err:?}");
}
