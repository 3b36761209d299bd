//! Directory trees: walking one into a [`Tree`] and restoring it.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CString, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::{Chunker, Ctx, Error, Result, Store, StreamRef};

/// A directory tree: entries in pre-order (a directory before what it
/// contains), names sorted bytewise; the first entry is the root (`path` "").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

/// One tree entry with its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the tree's root; a JSON string, or an array of bytes when
    /// the name is not UTF-8.
    #[serde(with = "os_path")]
    pub path: PathBuf,
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Permission bits, including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds and nanoseconds since the epoch.
    pub mtime: i64,
    #[serde(default)]
    pub mtime_nsec: u32,
    /// Extended attributes (e.g. `trusted.overlay.opaque`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File {
        stream: StreamRef,
    },
    Symlink {
        #[serde(with = "os_path")]
        target: PathBuf,
    },
    Fifo,
    /// An overlayfs whiteout: a character device 0/0.
    Whiteout,
}

pub(crate) fn walk(chunker: &mut Chunker, root: &Path) -> Result<Tree> {
    let md = fs::symlink_metadata(root).ctx("stat", root)?;
    if !md.is_dir() {
        return Err(Error::InvalidInput {
            path: root.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    let mut entries = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let md = match fs::symlink_metadata(&full) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => {
                continue; // removed while walking
            }
            r => r.ctx("stat", &full)?,
        };
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            let mut names = Vec::new();
            for e in fs::read_dir(&full).ctx("list", &full)? {
                names.push(e.ctx("list", &full)?.file_name());
            }
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            stack.extend(names.into_iter().rev().map(|n| rel.join(n)));
            EntryKind::Dir
        } else if ft.is_file() {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&full)
                .ctx("open", &full)?;
            EntryKind::File {
                stream: chunker.stream(f, &full, crate::Chunking::Fine)?,
            }
        } else if ft.is_symlink() {
            EntryKind::Symlink {
                target: fs::read_link(&full).ctx("readlink", &full)?,
            }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_char_device() && md.rdev() == 0 {
            EntryKind::Whiteout
        } else {
            chunker.skipped();
            continue;
        };
        entries.push(Entry {
            xattrs: sys::xattrs(&full)?,
            path: rel,
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        });
    }
    Ok(Tree { entries })
}

/// Checks what `restore` relies on: the root first, every other path
/// relative and plain (no `..`), its parent a directory listed before it.
pub(crate) fn validate(tree: &Tree) -> Result<()> {
    let bad = |e: &Entry, why: &str| {
        Err(Error::InvalidManifest(format!(
            "tree entry {:?}: {why}",
            e.path
        )))
    };
    let mut dirs = HashSet::new();
    for (i, e) in tree.entries.iter().enumerate() {
        let root = e.path.as_os_str().is_empty();
        if root != (i == 0) {
            return bad(e, "the root must be the first entry and only that");
        }
        if root && e.kind != EntryKind::Dir {
            return bad(e, "the root must be a directory");
        }
        if !root {
            if !e
                .path
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
            {
                return bad(e, "not a plain relative path");
            }
            let parent = e.path.parent().unwrap_or(Path::new(""));
            if !dirs.contains(parent) {
                return bad(e, "parent directory is not listed before it");
            }
        }
        if e.kind == EntryKind::Dir && !dirs.insert(e.path.as_path()) {
            return bad(e, "listed twice");
        }
    }
    if tree.entries.is_empty() {
        return Err(Error::InvalidManifest("tree has no root entry".into()));
    }
    Ok(())
}

static RESTORE_SEQ: AtomicU64 = AtomicU64::new(0);

/// `synced`: durable before visible (one syncfs of the destination's file
/// system); else the caller sees to it.
pub(crate) fn restore(store: &Store, tree: &Tree, dest: &Path, synced: bool) -> Result<()> {
    validate(tree)?;
    if fs::symlink_metadata(dest).is_ok() {
        return Err(Error::DestinationExists(dest.to_path_buf()));
    }
    let name = dest.file_name().ok_or_else(|| Error::InvalidInput {
        path: dest.to_path_buf(),
        reason: "no file name".into(),
    })?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".sbx-restore-{}-{}",
        std::process::id(),
        RESTORE_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dest.with_file_name(tmp_name);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .ctx("create directory", &tmp)?;
    // Durable before visible: one syncfs instead of an fsync per file.
    let r = restore_into(store, tree, &tmp)
        .and_then(|()| if synced { sys::syncfs(&tmp) } else { Ok(()) })
        .and_then(|()| fs::rename(&tmp, dest).ctx("rename into place", dest));
    if r.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    r
}

fn restore_into(store: &Store, tree: &Tree, root: &Path) -> Result<()> {
    let mut dirs = Vec::new();
    for e in &tree.entries {
        let p = root.join(&e.path);
        match &e.kind {
            EntryKind::Dir => {
                if !e.path.as_os_str().is_empty() {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&p)
                        .ctx("create directory", &p)?;
                }
                // Modes and times of directories last: creating children
                // changes the mtime, and a read-only mode would stop them.
                dirs.push((p, e));
                continue;
            }
            EntryKind::File { stream } => {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&p)
                    .ctx("create", &p)?;
                let mut w = BufWriter::with_capacity(1 << 20, f);
                store.read_stream_locked(stream, &mut w, &p)?;
                w.flush().ctx("write", &p)?;
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &p).ctx("symlink", &p)?;
            }
            EntryKind::Fifo => sys::mknod(&p, libc::S_IFIFO, 0)?,
            EntryKind::Whiteout => sys::mknod(&p, libc::S_IFCHR, 0)?,
        }
        apply_metadata(&p, e)?;
    }
    for (p, e) in dirs.into_iter().rev() {
        apply_metadata(&p, e)?;
    }
    Ok(())
}

fn apply_metadata(p: &Path, e: &Entry) -> Result<()> {
    // Ownership before mode: chown clears setuid/setgid.
    sys::lchown(p, e.uid, e.gid)?;
    if !matches!(e.kind, EntryKind::Symlink { .. }) {
        fs::set_permissions(p, fs::Permissions::from_mode(e.mode & 0o7777)).ctx("chmod", p)?;
    }
    for (name, value) in &e.xattrs {
        sys::set_xattr(p, name, value)?;
    }
    sys::set_mtime(p, e.mtime, e.mtime_nsec)
}

pub(crate) mod sys {
    use super::*;

    fn cpath(p: &Path) -> Result<CString> {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::InvalidInput {
            path: p.to_path_buf(),
            reason: "path contains a NUL byte".into(),
        })
    }

    fn check(r: libc::c_int, op: &'static str, p: &Path) -> Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error()).ctx(op, p)
        }
    }

    pub fn mknod(p: &Path, kind: libc::mode_t, dev: libc::dev_t) -> Result<()> {
        let c = cpath(p)?;
        // SAFETY: valid NUL-terminated path.
        check(
            unsafe { libc::mknod(c.as_ptr(), kind | 0o600, dev) },
            "mknod",
            p,
        )
    }

    pub fn syncfs(p: &Path) -> Result<()> {
        let f = fs::File::open(p).ctx("open", p)?;
        // SAFETY: plain syscall on a valid open descriptor.
        let r = unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&f)) };
        check(r, "syncfs", p)
    }

    pub fn lchown(p: &Path, uid: u32, gid: u32) -> Result<()> {
        let c = cpath(p)?;
        // SAFETY: valid NUL-terminated path.
        let r = unsafe { libc::lchown(c.as_ptr(), uid, gid) };
        // Unprivileged restores (tests, tools) keep their own ownership.
        // SAFETY: geteuid has no preconditions.
        if r != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            && unsafe { libc::geteuid() } != 0
        {
            return Ok(());
        }
        check(r, "chown", p)
    }

    pub fn set_mtime(p: &Path, sec: i64, nsec: u32) -> Result<()> {
        let c = cpath(p)?;
        let t = libc::timespec {
            tv_sec: sec as libc::time_t,
            tv_nsec: nsec.min(999_999_999) as _,
        };
        let times = [t, t];
        // SAFETY: valid path and a two-element timespec array.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        check(r, "set mtime", p)
    }

    pub fn set_xattr(p: &Path, name: &str, value: &[u8]) -> Result<()> {
        let c = cpath(p)?;
        let n = CString::new(name)
            .map_err(|_| Error::InvalidManifest(format!("xattr name {name:?}")))?;
        // SAFETY: valid NUL-terminated strings and a value buffer of the given length.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        check(r, "set xattr", p)
    }

    /// All extended attributes of `p` (not following symlinks); names that
    /// are not UTF-8 are left out.
    pub fn xattrs(p: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
        let c = cpath(p)?;
        let mut out = BTreeMap::new();
        let mut names = vec![0u8; 1024];
        let len = loop {
            // SAFETY: buffer pointer and length match.
            let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
                Some(libc::ENOTSUP) => return Ok(out),
                _ => return Err(e).ctx("list xattrs", p),
            }
            if names.len() > 1 << 24 {
                return Err(e).ctx("list xattrs", p);
            }
        };
        for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let Ok(key) = std::str::from_utf8(name) else {
                continue;
            };
            let Ok(cname) = CString::new(name) else {
                continue;
            };
            let mut val = vec![0u8; 256];
            loop {
                // SAFETY: valid strings; buffer pointer and length match.
                let n = unsafe {
                    libc::lgetxattr(
                        c.as_ptr(),
                        cname.as_ptr(),
                        val.as_mut_ptr().cast(),
                        val.len(),
                    )
                };
                if n >= 0 {
                    val.truncate(n as usize);
                    out.insert(key.to_owned(), val);
                    break;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ERANGE) if val.len() < 1 << 24 => val.resize(val.len() * 4, 0),
                    Some(libc::ENODATA) => break, // removed meanwhile
                    _ => return Err(e).ctx("get xattr", p),
                }
            }
        }
        Ok(out)
    }
}

/// Paths as JSON: a string when UTF-8, else an array of bytes.
mod os_path {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        match p.to_str() {
            Some(t) => s.serialize_str(t),
            None => s.collect_seq(p.as_os_str().as_bytes()),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Str(String),
        Bytes(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Str(s) => PathBuf::from(s),
            Repr::Bytes(b) => PathBuf::from(OsString::from_vec(b)),
        })
    }
}
