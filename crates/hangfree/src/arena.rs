//! The arena: shared memory through which large payloads travel instead of the channel.
//!
//! A worker makes one memfd (sealed against shrinking, so a mapping of it can never fault
//! with SIGBUS), maps it and passes it along with its progress page in the `Ready` frame.
//! It holds a head page and two areas of [`AREA`] bytes: one the pool writes task
//! payloads into, one the worker writes its answers into. A frame whose kind byte has
//! [`wire::IN_ARENA`] set carries, instead of its payload, a 16-byte descriptor: where in
//! the sender's area the payload is (offset and length, u64 little-endian). The payload
//! then crosses no socket: it is copied into the area by the sender and out of it by the
//! receiver, and the pages are reused from one payload to the next.
//!
//! Who may overwrite what:
//!
//! - **to the worker**: the pool places each task's payload in a free region and keeps it
//!   until the worker has answered the task (or is gone); tasks sent ahead each have their
//!   own region. The worker copies the payload out before it runs the task.
//! - **to the pool**: the worker writes an answer at offset 0, and only when the pool has
//!   copied out every answer sent before (the head's `consumed` count, which only the pool
//!   writes, equals the worker's own count of answers sent through the arena); otherwise
//!   the answer goes through the channel as usual. The pool copies an answer out as soon
//!   as it reads its frame, before it hands it on: nothing the caller holds lives in the
//!   arena.
//!
//! Every descriptor is checked against the area before any byte is copied: one that names
//! bytes outside it is a protocol error.
//!
//! Only payloads up to [`MAX_PAYLOAD`] go this way. The arena saves copies, but each copy
//! is of the whole payload, one after the other (the pool's, then the worker's), where the
//! channel overlaps the writer's and the reader's copies piece by piece in the caches:
//! measured on 2 cores, a 1 MiB echo took a third of the CPU time and half the time
//! through the arena, a 4 MiB one a quarter less CPU time in about the same time, and a
//! 16 MiB one as much CPU time and half as long again. Larger payloads stay on the channel.
//!
//! [`wire::IN_ARENA`]: crate::wire::IN_ARENA

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Payloads from this size travel through the arena (when there is room); smaller ones
/// cost less as bytes on the channel than as a descriptor and a copy.
pub const THRESHOLD: usize = 64 * 1024;

/// The largest payload that travels through the arena: 4 MiB of buffers and their pickle.
pub const MAX_PAYLOAD: usize = (4 << 20) + (64 << 10);

/// Whether a payload of `len` bytes travels through the arena (when there is room).
pub fn wanted(len: usize) -> bool {
    (THRESHOLD..=MAX_PAYLOAD).contains(&len)
}

/// The size of each of the two areas: room for a few of the largest payloads (a task
/// running and those sent ahead). Pages are allocated as payloads first touch them.
pub const AREA: usize = 16 << 20;

/// The size of a descriptor frame's payload.
pub const DESCRIPTOR_LEN: usize = 16;

const HEAD: usize = 4096;
const TOTAL: usize = HEAD + 2 * AREA;
const MAGIC: u64 = 0x6866_6172_656e_6131; // "hfarena1"

#[repr(C)]
struct Head {
    magic: AtomicU64,
    /// How many answers the pool has copied out of the worker's area.
    consumed: AtomicU64,
    /// Set by the pool when it maps the arena: a pool that predates arenas would take an
    /// answer's descriptor for a frame of an unknown kind.
    accepted: AtomicU64,
}

/// One of the two areas, named by who writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// Written by the pool (task payloads), read by the worker.
    ToWorker,
    /// Written by the worker (answers), read by the pool.
    ToPool,
}

impl Area {
    fn base(self) -> usize {
        match self {
            Area::ToWorker => HEAD,
            Area::ToPool => HEAD + AREA,
        }
    }
}

/// A descriptor that does not name a payload inside the area.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid arena descriptor: {0}")]
pub struct DescriptorError(pub String);

/// The descriptor of a payload at `offset` in an area, `len` bytes long.
pub fn descriptor(offset: usize, len: usize) -> [u8; DESCRIPTOR_LEN] {
    let mut d = [0u8; DESCRIPTOR_LEN];
    d[..8].copy_from_slice(&(offset as u64).to_le_bytes());
    d[8..].copy_from_slice(&(len as u64).to_le_bytes());
    d
}

/// Where the payload a descriptor names is in its area; an error unless it is exactly
/// [`DESCRIPTOR_LEN`] bytes naming at most `max` bytes inside the area.
pub fn parse_descriptor(payload: &[u8], max: u64) -> Result<Range<usize>, DescriptorError> {
    let d: &[u8; DESCRIPTOR_LEN] = payload
        .try_into()
        .map_err(|_| DescriptorError(format!("{} bytes instead of {DESCRIPTOR_LEN}", payload.len())))?;
    let offset = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(d[8..].try_into().expect("8 bytes"));
    if len > max {
        return Err(DescriptorError(format!("{len} bytes exceed the limit of {max} bytes")));
    }
    match offset.checked_add(len) {
        Some(end) if end <= AREA as u64 => Ok(offset as usize..end as usize),
        _ => Err(DescriptorError(format!("{len} bytes at offset {offset} pass the area's end ({AREA})"))),
    }
}

/// A mapped arena (either side).
#[derive(Debug)]
pub struct Arena {
    ptr: NonNull<u8>,
    fd: OwnedFd,
}

// SAFETY: the head is used through atomics only; the areas are copied to and from with raw
// pointers, each region by one side at a time (see the module's rules).
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: mapped by `map`, TOTAL long, unmapped once.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), TOTAL);
        }
    }
}

impl Arena {
    /// Makes a new arena (the worker side). Only address space and the head page are
    /// taken now; an area's pages are allocated as payloads first touch them.
    pub fn create() -> io::Result<Arena> {
        let fd = crate::memfd::sealed("hangfree-arena", TOTAL as u64)?;
        let arena = Arena::map(fd)?;
        arena.head().magic.store(MAGIC, Ordering::Release);
        Ok(arena)
    }

    fn map(fd: OwnedFd) -> io::Result<Arena> {
        // SAFETY: a fresh shared mapping of a file at least TOTAL long that cannot shrink;
        // the pointer is only used within TOTAL bytes.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                TOTAL,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Arena { ptr, fd })
    }

    /// Maps an arena received from a worker (the pool side). It must be a memfd sealed
    /// against shrinking (a worker that could truncate it would crash the pool with
    /// SIGBUS), at least as large as an arena, of plain shared memory, made by
    /// [`Arena::create`].
    pub fn from_worker(fd: OwnedFd) -> io::Result<Arena> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("not a hangfree arena: {what}"));
        crate::memfd::check_from_worker(&fd, bad)?;
        if (rustix::fs::fstat(&fd)?.st_size as u64) < TOTAL as u64 {
            return Err(bad("too small"));
        }
        let arena = Arena::map(fd)?;
        if arena.head().magic.load(Ordering::Acquire) != MAGIC {
            return Err(bad("wrong magic"));
        }
        arena.head().accepted.store(1, Ordering::Release);
        Ok(arena)
    }

    fn head(&self) -> &Head {
        // SAFETY: the head page is valid for the mapping's life and used through atomics.
        unsafe { self.ptr.cast::<Head>().as_ref() }
    }

    /// The arena's descriptor, to pass to the pool.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn at(&self, area: Area, offset: usize, len: usize) -> *mut u8 {
        assert!(offset.checked_add(len).is_some_and(|end| end <= AREA), "region outside the area");
        // SAFETY: within the mapping (checked above).
        unsafe { self.ptr.as_ptr().add(area.base() + offset) }
    }

    /// Copies `parts`, end to end, into `area` from `offset`.
    ///
    /// # Panics
    ///
    /// If they do not fit in the area there.
    pub fn write(&self, area: Area, offset: usize, parts: &[&[u8]]) {
        let total = parts.iter().map(|p| p.len()).sum();
        let mut dst = self.at(area, offset, total);
        for p in parts {
            // SAFETY: `at` checked that all of `total` fits; the region is the writer's
            // alone until its descriptor is sent.
            unsafe {
                std::ptr::copy_nonoverlapping(p.as_ptr(), dst, p.len());
                dst = dst.add(p.len());
            }
        }
    }

    /// A copy of the bytes `range` of `area` (a range from [`parse_descriptor`]).
    pub fn read(&self, area: Area, range: Range<usize>) -> Vec<u8> {
        let mut v = Vec::with_capacity(range.len());
        let src = self.at(area, range.start, range.len());
        // SAFETY: in the mapping (checked by `at`), into fresh capacity of that length. A
        // misbehaving peer writing meanwhile can only garble the bytes copied.
        unsafe {
            std::ptr::copy_nonoverlapping(src, v.as_mut_ptr(), range.len());
            v.set_len(range.len());
        }
        v
    }

    /// The bytes `range` of `area`, borrowed.
    ///
    /// # Safety
    ///
    /// Nothing may write the range while the slice lives: the caller is the side the
    /// region was handed to (the worker, for a task's payload it has not answered yet).
    pub unsafe fn slice(&self, area: Area, range: Range<usize>) -> &[u8] {
        let src = self.at(area, range.start, range.len());
        // SAFETY: in the mapping (checked by `at`); unchanged meanwhile per the contract.
        unsafe { std::slice::from_raw_parts(src, range.len()) }
    }

    /// Worker side: whether the pool mapped the arena (and so reads answers from it).
    pub fn accepted(&self) -> bool {
        self.head().accepted.load(Ordering::Acquire) == 1
    }

    /// How many answers the pool has copied out of the worker's area.
    pub fn consumed(&self) -> u64 {
        self.head().consumed.load(Ordering::Acquire)
    }

    /// Pool side: one more answer was copied out; the worker may reuse its area.
    pub fn mark_consumed(&self) {
        self.head().consumed.fetch_add(1, Ordering::AcqRel);
    }
}

/// The pool's bookkeeping of the task payloads it placed in one worker's area: each
/// region stays taken until its task is no longer in flight on that worker.
#[derive(Debug, Default)]
pub struct Placements {
    /// (task id, region), by offset.
    taken: Vec<(u64, Range<usize>)>,
}

impl Placements {
    /// Takes the lowest free region of `len` bytes for `task`; None if none is free.
    /// The lowest, so that the pages in use stay few and already faulted in.
    pub fn place(&mut self, task: u64, len: usize) -> Option<usize> {
        let mut at = 0usize;
        let mut index = self.taken.len();
        for (i, (_, r)) in self.taken.iter().enumerate() {
            if r.start - at >= len {
                index = i;
                break;
            }
            at = r.end;
        }
        if index == self.taken.len() && AREA - at < len {
            return None;
        }
        self.taken.insert(index, (task, at..at + len));
        Some(at)
    }

    /// Frees the regions of tasks `keep` says no.
    pub fn release(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.taken.retain(|(t, _)| keep(*t));
    }

    /// Whether no region is taken.
    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_read_back_and_bad_ones_are_refused() {
        assert_eq!(parse_descriptor(&descriptor(4096, 100), u64::MAX), Ok(4096..4196));
        assert_eq!(parse_descriptor(&descriptor(AREA - 5, 5), u64::MAX), Ok(AREA - 5..AREA));
        assert_eq!(parse_descriptor(&descriptor(0, 0), u64::MAX), Ok(0..0));
        assert!(parse_descriptor(&descriptor(AREA - 5, 6), u64::MAX).is_err());
        assert!(parse_descriptor(&descriptor(0, 100), 99).is_err());
        assert!(wanted(THRESHOLD) && wanted(MAX_PAYLOAD) && !wanted(THRESHOLD - 1) && !wanted(MAX_PAYLOAD + 1));
        const { assert!(3 * MAX_PAYLOAD <= AREA, "room for a running task and two sent ahead") };
        assert!(parse_descriptor(&[0u8; 15], u64::MAX).is_err());
        assert!(parse_descriptor(&[0u8; 17], u64::MAX).is_err());
        // Past 4 GiB and at the edge of u64: refused, never wrapped or truncated.
        let mut d = [0u8; DESCRIPTOR_LEN];
        for (offset, len) in [(u64::MAX, 1), (1, u64::MAX), (u64::MAX, u64::MAX), (1 << 32, 16), (0, (1 << 32) + 1)] {
            d[..8].copy_from_slice(&offset.to_le_bytes());
            d[8..].copy_from_slice(&len.to_le_bytes());
            assert!(parse_descriptor(&d, u64::MAX).is_err(), "{offset} + {len}");
        }
    }

    #[test]
    fn written_bytes_read_back_through_a_second_mapping() {
        let a = Arena::create().unwrap();
        let fd = rustix::io::fcntl_dupfd_cloexec(a.fd(), 3).unwrap();
        let b = Arena::from_worker(fd).unwrap();
        a.write(Area::ToPool, 10, &[b"abc", b"", b"de"]);
        assert_eq!(b.read(Area::ToPool, 10..15), b"abcde");
        b.write(Area::ToWorker, AREA - 3, &[b"xyz"]);
        assert_eq!(unsafe { a.slice(Area::ToWorker, AREA - 3..AREA) }, b"xyz");
        assert_eq!(a.consumed(), 0);
        assert!(a.accepted(), "the pool side mapped it");
        b.mark_consumed();
        assert_eq!(a.consumed(), 1);
    }

    #[test]
    fn a_file_that_could_shrink_is_refused() {
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, TOTAL as u64).unwrap();
        assert!(Arena::from_worker(fd).is_err());
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, TOTAL as u64).unwrap();
        rustix::fs::fcntl_add_seals(&fd, rustix::fs::SealFlags::SHRINK).unwrap();
        assert!(Arena::from_worker(fd).is_err(), "no magic");
    }

    #[test]
    fn placements_take_the_lowest_free_region_and_free_by_task() {
        let mut p = Placements::default();
        assert_eq!(p.place(1, 100), Some(0));
        assert_eq!(p.place(2, 100), Some(100));
        assert_eq!(p.place(3, 50), Some(200));
        p.release(|t| t != 1);
        assert_eq!(p.place(4, 60), Some(0));
        assert_eq!(p.place(5, 60), Some(250), "40 bytes left at 60: too few");
        assert_eq!(p.place(6, AREA), None);
        p.release(|_| false);
        assert!(p.is_empty());
        assert_eq!(p.place(7, AREA), Some(0));
    }
}
