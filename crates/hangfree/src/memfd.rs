//! The shared-memory files a worker gives its pool (the progress page, the arena): made
//! sealed by the worker, checked by the pool before it maps them.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{MemfdFlags, SealFlags};

/// A memfd of `len` bytes that can no longer shrink, grow or change its seals.
pub(crate) fn sealed(name: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Refuses a file from a worker that the pool could not map safely: one that could
/// shrink under the mapping (a worker that truncated it would crash the pool with
/// SIGBUS), or that is not plain shared memory (a hugetlbfs file, sealable too, faults
/// with SIGBUS when the huge pages run out). `bad` names what the file should have been.
pub(crate) fn check_from_worker(fd: &OwnedFd, bad: impl Fn(&str) -> io::Error) -> io::Result<()> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| bad("no seals"))?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err(bad("not sealed against shrinking"));
    }
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    if rustix::fs::fstatfs(fd)?.f_type as u64 != TMPFS_MAGIC {
        return Err(bad("not plain shared memory"));
    }
    Ok(())
}
