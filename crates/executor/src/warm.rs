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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An image is read only while the host has this many times its size
/// available.
const HEADROOM: u64 = 4;

/// A read of an image into the page cache under way.
#[derive(Clone, Default)]
pub struct Warming(Arc<AtomicBool>);

impl Warming {
    /// Stops the read at its next 4 MB (the sandbox is going away; a
    /// resume lets it run: two streams fill the cache sooner than one).
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Reads the files in `dir` into the page cache in the background, until
/// stopped.
pub fn into_page_cache(dir: PathBuf) -> Warming {
    let warming = Warming::default();
    let stopped = warming.0.clone();
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
            if crate::host::meminfo_kb("MemAvailable")
                .map(|kb| kb * 1024)
                .is_none_or(|a| a < size.saturating_mul(HEADROOM))
            {
                return;
            }
            // Spliced to /dev/null: the pages are read into the cache, and
            // not copied out of it (a read() would copy 256 MB on a CPU a
            // resume at once may want).
            let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
                return;
            };
            for path in files {
                if let Ok(f) = std::fs::File::open(path) {
                    while !stopped.load(Ordering::Relaxed) && splice_to(&f, &null, 4 << 20) > 0 {}
                }
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("no thread to warm a suspend image: {e}");
    }
    warming
}

/// Moves up to `len` bytes from `from`'s position on to `to` with
/// `sendfile`; what it moved (0 at the end or on an error).
fn splice_to(from: &std::fs::File, to: &std::fs::File, len: usize) -> usize {
    use std::os::fd::AsRawFd;
    // SAFETY: two open descriptors; a null offset uses `from`'s own.
    let n = unsafe { libc::sendfile(to.as_raw_fd(), from.as_raw_fd(), std::ptr::null_mut(), len) };
    usize::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `path`'s pages are in the page cache (`mincore`).
    fn cached_pages(path: &std::path::Path) -> usize {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        let page = 4096;
        // SAFETY: a shared read-only mapping of an open file of `len`
        // bytes, unmapped below; `vec` has one byte per page.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(at, libc::MAP_FAILED);
            let mut vec = vec![0u8; len.div_ceil(page)];
            assert_eq!(libc::mincore(at, len, vec.as_mut_ptr()), 0);
            libc::munmap(at, len);
            vec.iter().filter(|b| *b & 1 == 1).count()
        }
    }

    #[test]
    fn an_image_out_of_the_page_cache_is_read_back_into_it() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("pages");
        std::fs::write(&path, vec![1u8; 9 << 20]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        // SAFETY: an advice call on an open descriptor.
        let evicted = unsafe {
            use std::os::fd::AsRawFd;
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
        };
        assert_eq!(evicted, 0);
        let pages = (9 << 20) / 4096;
        let before = cached_pages(&path);
        assert!(before < pages, "{before} of {pages} pages still cached");
        let _w = into_page_cache(dir.path().to_path_buf());
        for _ in 0..500 {
            if cached_pages(&path) == pages {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(cached_pages(&path), pages);
        assert!(std::fs::read(&path).unwrap().iter().all(|b| *b == 1));
    }

    #[test]
    fn a_stopped_read_leaves_the_files_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pages"), vec![1u8; 9 << 20]).unwrap();
        let w = into_page_cache(dir.path().to_path_buf());
        w.stop();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            std::fs::read(dir.path().join("pages")).unwrap().len(),
            9 << 20
        );
    }
}
