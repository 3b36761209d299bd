use super::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
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

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

fn read_all(store: &Store, s: &StreamRef) -> Vec<u8> {
    let mut out = Vec::new();
    assert_eq!(store.read_stream(s, &mut out).unwrap(), s.size);
    out
}

fn chunk_path(dir: &Path, h: &blake3::Hash) -> PathBuf {
    let hex = h.to_hex();
    dir.join("store/chunks")
        .join(&hex[..2])
        .join(format!("{hex}.zst"))
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.count())
}

#[test]
fn round_trip_sizes() {
    let (_d, store) = store();
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
        assert_eq!(read_all(&store, &back.streams["data"]), data);
    }
    assert_eq!(store.list_manifests().unwrap(), ["m0", "m1", "m2", "m3"]);
}

#[test]
fn second_put_stores_only_changed_chunks() {
    let (dir, store) = store();
    let mut data = random_bytes(7, 64 << 20);
    let file = dir.path().join("big");
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
    assert_eq!(read_all(&store, &s2), data);
}

#[test]
fn duplicate_chunks_within_one_put_count_once() {
    let (_d, store) = store();
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

#[test]
fn tree_round_trip() {
    let (dir, store) = store();
    let src = dir.path().join("src");
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

    let dest = dir.path().join("restored");
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
    assert_eq!(count_files(dir.path()), 3, "store, src, restored");
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) -> bool {
    tree::sys::set_xattr(p, name, value).is_ok()
}

#[test]
fn gc_keeps_shared_chunks_and_waits_for_writers() {
    let (dir, store) = store();
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
    assert!(!chunk_path(dir.path(), &orphan.chunks[0].hash).exists());

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
    assert_eq!(read_all(&store, &b), extended);

    assert!(store.delete_manifest("b").unwrap());
    let st = store.gc().unwrap();
    assert_eq!(st.chunks_kept, 0);
    assert!(store.backend.list(Kind::Chunk).unwrap().is_empty());
}

#[test]
fn corruption_is_detected() {
    let (dir, store) = store();
    let data = random_bytes(5, 2 << 20);
    let w = store.writer().unwrap();
    let (s, _) = w.put_stream(&data[..]).unwrap();
    drop(w);
    let victim = chunk_path(dir.path(), &s.chunks[1].hash);
    let good = fs::read(&victim).unwrap();

    // Valid zstd, wrong content.
    let mut other = random_bytes(6, s.chunks[1].len as usize);
    fs::write(&victim, zstd::bulk::compress(&other, 3).unwrap()).unwrap();
    let err = store.read_stream(&s, &mut io::sink()).unwrap_err();
    assert!(matches!(err, Error::CorruptChunk { .. }), "{err}");
    assert!(err
        .to_string()
        .contains(&s.chunks[1].hash.to_hex().to_string()));

    // Truncated frame.
    fs::write(&victim, &good[..good.len() / 2]).unwrap();
    assert!(matches!(
        store.read_stream(&s, &mut io::sink()),
        Err(Error::CorruptChunk { .. })
    ));

    // Wrong length.
    other.truncate(10);
    fs::write(&victim, zstd::bulk::compress(&other, 3).unwrap()).unwrap();
    assert!(matches!(
        store.read_stream(&s, &mut io::sink()),
        Err(Error::CorruptChunk { .. })
    ));

    fs::remove_file(&victim).unwrap();
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
    let mut f = Tree::default();
    f.entries.push(Entry {
        path: PathBuf::new(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: BTreeMap::new(),
    });
    let mut file = f.entries[0].clone();
    file.path = "f".into();
    file.kind = EntryKind::File { stream: s };
    f.entries.push(file);
    let dest = dir.path().join("out");
    assert!(matches!(
        store.restore_dir(&f, &dest),
        Err(Error::MissingChunk(_))
    ));
    assert_eq!(count_files(dir.path()), 1, "only the store");
}

#[test]
fn manifest_visible_only_after_commit_and_failures_leave_nothing() {
    let (dir, store) = store();
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
    assert_eq!(count_files(&dir.path().join("store/tmp")), 0);
    drop(w);

    for bad in ["", ".hidden", "a/b", "../x", "a b"] {
        assert!(matches!(store.manifest(bad), Err(Error::InvalidId(_))));
    }
    fs::write(dir.path().join("store/manifests/broken.json"), b"{not json").unwrap();
    assert!(matches!(
        store.manifest("broken"),
        Err(Error::InvalidManifest(_))
    ));
    assert!(
        store.gc().is_err(),
        "gc refuses to sweep with an unreadable manifest"
    );
}

#[test]
fn hostile_trees_are_rejected() {
    let (dir, store) = store();
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
        let r = store.restore_dir(&t, dir.path().join("out"));
        assert!(matches!(r, Err(Error::InvalidManifest(_))), "{t:?}: {r:?}");
    }
    assert!(!dir.path().join("out").exists());
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
