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
            let mut buf = vec![0u8; 4 << 20];
            for path in files {
                if let Ok(mut f) = std::fs::File::open(path) {
                    while !stopped.load(Ordering::Relaxed)
                        && matches!(f.read(&mut buf), Ok(n) if n > 0)
                    {}
                }
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("no thread to warm a suspend image: {e}");
    }
    warming
}

#[cfg(test)]
mod tests {
    use super::*;

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
