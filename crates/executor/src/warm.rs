//! Reading a suspend image back into the page cache while it waits.
//!
//! A suspend writes its memory image with O_DIRECT (steady pauses, see
//! `sbx_runtime`), so nothing of it is cached, and a resume reads all of
//! it from disk. On this host (a VM) a read of data written a moment
//! before ran at 1.6 GB/s or, as often, at 0.4 GB/s: `runsc restore`'s
//! memory load took 170 or 700 ms for 256 MB, and that was the whole
//! spread of resume times. Read in the background right after the
//! suspend, while the old sandbox is torn down, the image is in the cache
//! by the time a resume wants it. The pages are clean and the kernel
//! evicts them first under pressure; none are read when memory is short.

use std::io::Read;
use std::path::PathBuf;

/// An image is read only while the host has this many times its size
/// available.
const HEADROOM: u64 = 4;

/// Reads the files in `dir` into the page cache in the background, with
/// idle I/O priority so that other work's reads and writes go first (on a
/// thread of its own: the priority stays with the thread).
pub fn into_page_cache(dir: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("sbx-warm".into())
        .spawn(move || {
            let files: Vec<_> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .collect();
            let size: u64 = files
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            if available_bytes().is_none_or(|a| a < size.saturating_mul(HEADROOM)) {
                return;
            }
            idle_io_priority();
            let mut buf = vec![0u8; 4 << 20];
            for path in files {
                if let Ok(mut f) = std::fs::File::open(path) {
                    while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("no thread to warm a suspend image: {e}");
    }
}

/// The host's available memory (`MemAvailable`).
fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Gives the calling thread the idle I/O class (best effort: schedulers
/// without classes ignore it).
fn idle_io_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: ioprio_set on the calling thread (who = 0) with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_reports_its_available_memory() {
        assert!(available_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn idle_priority_applies_to_the_calling_thread_only() {
        fn class_of_this_thread() -> libc::c_long {
            // SAFETY: ioprio_get on the calling thread.
            unsafe {
                libc::syscall(libc::SYS_ioprio_get, 1 as libc::c_long, 0 as libc::c_long) >> 13
            }
        }
        let before = class_of_this_thread();
        let inside = std::thread::spawn(|| {
            idle_io_priority();
            class_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!(inside, 3);
        assert_eq!(class_of_this_thread(), before);
    }
}
