//! The fast spawn path: `posix_spawn(3)`, which glibc implements with
//! `clone(CLONE_VM | CLONE_VFORK)`. Under gVisor that is several times
//! cheaper than the `fork` + `exec` that `std::process::Command` needs as soon
//! as a `pre_exec` hook is set, because no address space is copied.
//!
//! This is the only module with the raw spawn FFI; everything it needs from
//! the caller is already resolved (absolute or relative path with a `/`,
//! NUL-terminated argv and envp, the three descriptors for 0/1/2).
//!
//! The child:
//! - leads a new session (`POSIX_SPAWN_SETSID`), so its process group id is
//!   its pid and the whole group can be signalled;
//! - starts with an empty signal mask and every catchable signal at its
//!   default disposition (the agent ignores SIGPIPE and tokio installs
//!   handlers; neither must leak into user processes);
//! - gets `stdio[i]` on fd `i` and no other descriptor: every descriptor of
//!   the agent is `O_CLOEXEC`, and `dup2` clears the flag on the copies only;
//! - changes to `cwd` first, when given (`posix_spawn_file_actions_addchdir_np`,
//!   glibc >= 2.29).

use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr;

/// What to spawn. `argv` and `envp` become NULL-terminated pointer arrays.
pub struct Request<'a> {
    pub path: &'a CStr,
    pub argv: &'a [CString],
    pub envp: &'a [CString],
    pub cwd: Option<&'a CStr>,
    /// Installed as the child's fds 0, 1 and 2.
    pub stdio: [BorrowedFd<'a>; 3],
}

/// Maps a `posix_spawn*` return value (an errno, not -1) to a result.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// An initialised `posix_spawnattr_t`, destroyed on drop.
struct Attr(libc::posix_spawnattr_t);

impl Attr {
    fn new() -> io::Result<Self> {
        let mut raw = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        // SAFETY: posix_spawnattr_init initialises the object it is given.
        check(unsafe { libc::posix_spawnattr_init(raw.as_mut_ptr()) })?;
        // SAFETY: initialised just above (it returned 0).
        Ok(Attr(unsafe { raw.assume_init() }))
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: the attribute object was initialised in `Attr::new`.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// An initialised `posix_spawn_file_actions_t`, destroyed on drop.
struct Actions(libc::posix_spawn_file_actions_t);

impl Actions {
    fn new() -> io::Result<Self> {
        let mut raw = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        // SAFETY: posix_spawn_file_actions_init initialises the object.
        check(unsafe { libc::posix_spawn_file_actions_init(raw.as_mut_ptr()) })?;
        // SAFETY: initialised just above (it returned 0).
        Ok(Actions(unsafe { raw.assume_init() }))
    }
}

impl Drop for Actions {
    fn drop(&mut self) {
        // SAFETY: the object was initialised in `Actions::new`.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// Adds glibc's internal signals (32 and 33, which `sigfillset` leaves out)
/// to `set`: without them in the "set to default" set, glibc's spawn child
/// sets them to SIG_IGN, which `exec` would pass on to the program (a
/// forked child gets them at their default, like every other signal).
///
/// # Safety
/// `set` must point to an initialised `sigset_t`.
unsafe fn add_internal_signals(set: *mut libc::sigset_t) {
    // glibc's sigset_t is an array of unsigned longs, signal n at bit n - 1
    // (what its internal __sigaddset does).
    let words = set.cast::<libc::c_ulong>();
    let bits = libc::c_ulong::BITS as usize;
    for sig in [32usize, 33] {
        let bit = sig - 1;
        // SAFETY: bit 32 is within the first 64 bits of the 1024-bit set.
        unsafe { *words.add(bit / bits) |= 1 << (bit % bits) };
    }
}

/// Spawns `req` in a new session and returns the child's pid. Errors are
/// those of `execve` (e.g. ENOENT, EACCES, ENOEXEC) or of the file actions.
///
/// glibc reaps a child whose `exec` failed itself, so callers that reap with
/// `waitpid(-1)` must keep that from racing with this call (the agent spawns
/// under the reaper lock).
pub fn spawn(req: &Request<'_>) -> io::Result<i32> {
    // A source below 3 could be overwritten by an earlier dup2 of the
    // sequence; move such sources out of the way (close-on-exec copies).
    let mut moved: Vec<OwnedFd> = Vec::new();
    let mut src = [-1; 3];
    for (i, fd) in req.stdio.iter().enumerate() {
        src[i] = if fd.as_raw_fd() < 3 {
            // std duplicates with F_DUPFD_CLOEXEC starting at 3.
            let copy = fd.try_clone_to_owned()?;
            if copy.as_raw_fd() < 3 {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            let raw = copy.as_raw_fd();
            moved.push(copy);
            raw
        } else {
            fd.as_raw_fd()
        };
    }

    let mut attr = Attr::new()?;
    let mut actions = Actions::new()?;
    let flags = libc::POSIX_SPAWN_SETSID as libc::c_int
        | libc::POSIX_SPAWN_SETSIGMASK
        | libc::POSIX_SPAWN_SETSIGDEF;
    let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: every pointer is to a live, initialised (or, for the sigset
    // initialisers, to-be-initialised) object owned by this frame; the
    // sigsets are initialised by sigemptyset/sigfillset before being read.
    // posix_spawn skips SIGKILL/SIGSTOP, which cannot be caught anyway.
    unsafe {
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigfillset(all.as_mut_ptr());
        add_internal_signals(all.as_mut_ptr());
        check(libc::posix_spawnattr_setflags(
            &mut attr.0,
            flags as libc::c_short,
        ))?;
        check(libc::posix_spawnattr_setsigmask(
            &mut attr.0,
            empty.as_ptr(),
        ))?;
        check(libc::posix_spawnattr_setsigdefault(
            &mut attr.0,
            all.as_ptr(),
        ))?;
        if let Some(cwd) = req.cwd {
            check(libc::posix_spawn_file_actions_addchdir_np(
                &mut actions.0,
                cwd.as_ptr(),
            ))?;
        }
        for (target, fd) in src.iter().enumerate() {
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions.0,
                *fd,
                target as libc::c_int,
            ))?;
        }
    }

    let argv: Vec<*mut libc::c_char> = req
        .argv
        .iter()
        .map(|a| a.as_ptr() as *mut libc::c_char)
        .chain(std::iter::once(ptr::null_mut()))
        .collect();
    let envp: Vec<*mut libc::c_char> = req
        .envp
        .iter()
        .map(|e| e.as_ptr() as *mut libc::c_char)
        .chain(std::iter::once(ptr::null_mut()))
        .collect();
    let mut pid: libc::pid_t = 0;
    // SAFETY: `path`, `argv` and `envp` are NUL-terminated strings / NULL-
    // terminated arrays that outlive the call (posix_spawn does not keep
    // them; the vfork'd child has exec'd or exited when it returns); `attr`
    // and `actions` are initialised; the descriptors in `src` stay open until
    // after the call (borrowed from the caller or held in `moved`).
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            req.path.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    };
    drop(moved);
    check(rc)?;
    Ok(pid)
}
