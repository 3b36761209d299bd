//! The two btrfs operations a capture needs, as ioctls: a read-only
//! snapshot of a subvolume (constant time: it shares every extent) and the
//! removal of a subvolume. Two ioctls do not warrant a crate (the one that
//! exists binds libbtrfsutil, which a static build cannot link).

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
const NAME_MAX_V1: usize = 4088;
const NAME_MAX_V2: usize = 4040;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; NAME_MAX_V1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the qgroup and name unions flattened).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; NAME_MAX_V2],
}

nix::ioctl_write_ptr!(snap_create_v2, 0x94, 23, VolArgsV2);
nix::ioctl_write_ptr!(snap_destroy, 0x94, 15, VolArgs);

/// Whether `path` is on a btrfs filesystem.
pub fn is_btrfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::FsType(BTRFS_SUPER_MAGIC as _))
        .unwrap_or(false)
}

fn name_bytes<const N: usize>(name: &str) -> io::Result<[u8; N]> {
    let c = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let bytes = c.as_bytes_with_nul();
    if bytes.len() > N || name.contains('/') || name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad subvolume name {name:?}"),
        ));
    }
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

/// Makes `dir/name` a read-only snapshot of the subvolume at `source`
/// (a filesystem's root directory is its top subvolume). Subvolumes nested
/// in `source` show in the snapshot as empty directories.
pub fn snapshot_readonly(source: &Path, dir: &Path, name: &str) -> io::Result<()> {
    let src = std::fs::File::open(source)?;
    let parent = std::fs::File::open(dir)?;
    let args = VolArgsV2 {
        fd: src.as_raw_fd() as i64,
        transid: 0,
        flags: BTRFS_SUBVOL_RDONLY,
        unused: [0; 4],
        name: name_bytes(name)?,
    };
    // SAFETY: `args` is a fully initialised btrfs_ioctl_vol_args_v2 and both
    // descriptors stay open for the call.
    unsafe { snap_create_v2(parent.as_raw_fd(), &args) }.map_err(io::Error::from)?;
    Ok(())
}

/// Removes subvolume `dir/name` (and whatever it holds).
pub fn delete_subvolume(dir: &Path, name: &str) -> io::Result<()> {
    let parent = std::fs::File::open(dir)?;
    let args = VolArgs {
        fd: 0,
        name: name_bytes(name)?,
    };
    // SAFETY: `args` is a fully initialised btrfs_ioctl_vol_args and the
    // descriptor stays open for the call.
    unsafe { snap_destroy(parent.as_raw_fd(), &args) }.map_err(io::Error::from)?;
    Ok(())
}

/// Names of the entries of `dir` that start with `prefix`.
pub fn entries_with_prefix(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name())
                .filter(|n| n.as_bytes().starts_with(prefix.as_bytes()))
                .map(|n| n.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_structs_have_the_kernels_size() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
    }

    #[test]
    fn names_are_checked() {
        assert!(name_bytes::<16>("a/b").is_err());
        assert!(name_bytes::<16>("").is_err());
        assert!(name_bytes::<4>("abcd").is_err(), "no room for the NUL");
        assert_eq!(&name_bytes::<4>("abc").unwrap(), b"abc\0");
    }

    #[test]
    fn the_root_filesystem_of_this_test_is_recognised_or_not() {
        // Only that it answers without panicking; the filesystem is the host's.
        let _ = is_btrfs(Path::new("/"));
        assert!(!is_btrfs(Path::new("/proc")));
    }
}
