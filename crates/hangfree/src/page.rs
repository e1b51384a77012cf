//! The progress page: one page of memory a worker shares with its pool, so the pool knows
//! what the worker started without a message (a system call) per task or per item.
//!
//! The worker makes it (a memfd), maps it, and passes the descriptor along with its
//! `Ready` frame (`SCM_RIGHTS`); the pool maps the same page. Two words make "started at
//! most once" exact, each changed by the worker with a compare-and-swap and by the pool,
//! when it stops the worker, with a swap to [`REVOKED`]:
//!
//! - **claim**: the id of the last task the worker started, swapped in before it starts
//!   one;
//! - **item**: inside a chunk, how many of its items the worker started (the low 32 bits
//!   of the chunk's id in the high half, so a count is never read for the wrong chunk).
//!
//! Whoever swaps second sees the other's value: revoking tells the pool the last task and
//! item the worker started, and a worker that finds the page revoked starts nothing more.
//! So what was sent to it but not started runs elsewhere, never on both. Each item's
//! start time is there too (`CLOCK_MONOTONIC`), for per-item time limits in a chunk. The
//! page outlives the worker: after its death the pool still reads what it last wrote.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The value of a revoked word: the worker must start nothing more.
pub const REVOKED: u64 = u64::MAX;

const MAGIC: u64 = 0x6861_6e67_6672_6565; // "hangfree"
const PAGE_LEN: usize = 4096;

#[repr(C)]
struct Layout {
    magic: AtomicU64,
    claim: AtomicU64,
    item: AtomicU64,
    /// When the last item started, in nanoseconds of `CLOCK_MONOTONIC`.
    item_started: AtomicU64,
}

/// A mapped progress page (either side).
#[derive(Debug)]
pub struct Page {
    ptr: NonNull<Layout>,
    fd: OwnedFd,
    /// Worker side: the task it claimed last (the shared word may already say REVOKED).
    claimed: AtomicU64,
}

// SAFETY: every access goes through the atomics of `Layout`.
unsafe impl Send for Page {}
unsafe impl Sync for Page {}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: mapped by `map`, PAGE_LEN long, unmapped once.
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), PAGE_LEN);
        }
    }
}

/// What a page said when the pool revoked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The last task the worker started (0: none).
    pub task: u64,
    /// How many items of that task (a chunk) it started.
    pub items: u32,
}

fn ns(clock: rustix::time::ClockId) -> u64 {
    let t = rustix::time::clock_gettime(clock);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

fn monotonic_ns() -> u64 {
    ns(rustix::time::ClockId::Monotonic)
}

/// `CLOCK_MONOTONIC` to the kernel's tick (1-4 ms), for a few nanoseconds a reading: what
/// a worker stamps each item with (a limit is seconds; the fine clock would cost a
/// map of tiny calls more than its calls).
pub fn coarse_ns() -> u64 {
    ns(rustix::time::ClockId::MonotonicCoarse)
}

fn item_word(task: u64, started: u32) -> u64 {
    ((task & 0xffff_ffff) << 32) | u64::from(started)
}

/// Swaps `new(current)` into `word` unless it is revoked; false if it is.
fn swap_unless_revoked(word: &AtomicU64, new: impl Fn(u64) -> u64) -> bool {
    let mut cur = word.load(Ordering::Acquire);
    loop {
        if cur == REVOKED {
            return false;
        }
        match word.compare_exchange_weak(cur, new(cur), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

impl Page {
    /// Makes a new page (the worker side).
    pub fn create() -> io::Result<Page> {
        let fd = crate::memfd::sealed("hangfree-progress", PAGE_LEN as u64)?;
        let page = Page::map(fd)?;
        page.layout().magic.store(MAGIC, Ordering::Release);
        Ok(page)
    }

    fn map(fd: OwnedFd) -> io::Result<Page> {
        let st = rustix::fs::fstat(&fd)?;
        if (st.st_size as usize) < PAGE_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "progress page too small"));
        }
        // SAFETY: a fresh shared mapping of a file at least PAGE_LEN long; the pointer is
        // only used through the atomics of `Layout`, which fits in the page.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                PAGE_LEN,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<Layout>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Page { ptr, fd, claimed: AtomicU64::new(0) })
    }

    /// Maps a page received from a worker (the pool side), checking it was made by
    /// [`Page::create`]: a memfd of plain shared memory sealed against shrinking.
    pub fn from_worker(fd: OwnedFd) -> io::Result<Page> {
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("not a hangfree progress page: {what}"));
        crate::memfd::check_from_worker(&fd, bad)?;
        let page = Page::map(fd)?;
        if page.layout().magic.load(Ordering::Acquire) != MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a hangfree progress page"));
        }
        Ok(page)
    }

    fn layout(&self) -> &Layout {
        // SAFETY: valid for the mapping's life, which is `self`'s.
        unsafe { self.ptr.as_ref() }
    }

    /// The page's descriptor, to pass to the pool.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Worker side: claims `task` before starting it. False if the pool revoked the
    /// page: the worker must not start it (nor anything else).
    pub fn claim(&self, task: u64) -> bool {
        let l = self.layout();
        if !swap_unless_revoked(&l.claim, |_| task) {
            return false;
        }
        self.claimed.store(task, Ordering::Relaxed);
        l.item_started.store(coarse_ns(), Ordering::Relaxed);
        // Revoked in between: the pool has already read this chunk as not started, and
        // the worker's first `start_item` will say no.
        swap_unless_revoked(&l.item, |_| item_word(task, 0));
        true
    }

    /// Worker side: item `index` of the claimed chunk starts now (items start in order).
    /// False if the pool revoked the page: the worker must not start it.
    pub fn start_item(&self, index: u32) -> bool {
        self.start_item_at(index, coarse_ns())
    }

    /// [`Page::start_item`] with the time already read ([`coarse_ns`]), for a loop that
    /// reads the clock for its own reasons too: a clock read a cheap item's loop need
    /// not pay twice.
    pub fn start_item_at(&self, index: u32, now_ns: u64) -> bool {
        let l = self.layout();
        l.item_started.store(now_ns, Ordering::Relaxed);
        let task = self.claimed.load(Ordering::Relaxed);
        swap_unless_revoked(&l.item, |_| item_word(task, index.saturating_add(1)))
    }

    /// Pool side: the worker may start nothing more. Says what it started last; a page
    /// revoked twice says task [`REVOKED`] the second time.
    pub fn revoke(&self) -> Revoked {
        let l = self.layout();
        let task = l.claim.swap(REVOKED, Ordering::AcqRel);
        let item = l.item.swap(REVOKED, Ordering::AcqRel);
        let items = if item != REVOKED && item >> 32 == task & 0xffff_ffff { item as u32 } else { 0 };
        Revoked { task, items }
    }

    /// Pool side, without revoking: the task the worker claimed last, how many of its
    /// items it started, and when the last of those (or the task) started.
    pub fn progress(&self) -> (u64, u32, Instant) {
        let l = self.layout();
        let task = l.claim.load(Ordering::Acquire);
        let item = l.item.load(Ordering::Acquire);
        let started = l.item_started.load(Ordering::Relaxed);
        let items = if item != REVOKED && item >> 32 == task & 0xffff_ffff { item as u32 } else { 0 };
        let (now_i, now_ns) = (Instant::now(), monotonic_ns());
        let at = now_i.checked_sub(Duration::from_nanos(now_ns.saturating_sub(started))).unwrap_or(now_i);
        (task, items, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Page, Page) {
        let w = Page::create().unwrap();
        let fd = rustix::io::fcntl_dupfd_cloexec(w.fd(), 3).unwrap();
        (w, Page::from_worker(fd).unwrap())
    }

    #[test]
    fn the_pool_sees_the_workers_claims_and_items() {
        let (w, p) = pair();
        assert_eq!(p.progress().0, 0);
        assert!(w.claim(7));
        assert_eq!(p.progress().0, 7);
        assert_eq!(p.progress().1, 0);
        let before = Instant::now();
        assert!(w.start_item(0));
        assert!(w.start_item(1));
        let (task, items, started) = p.progress();
        assert_eq!((task, items), (7, 2));
        assert!(started + Duration::from_millis(50) >= before && started <= Instant::now() + Duration::from_millis(1));
        // A new claim starts the count again.
        assert!(w.claim(8));
        assert_eq!(p.revoke(), Revoked { task: 8, items: 0 });
    }

    #[test]
    fn after_a_revoke_the_worker_starts_nothing() {
        let (w, p) = pair();
        assert!(w.claim(1));
        assert!(w.claim(2));
        assert!(w.start_item(0));
        assert_eq!(p.revoke(), Revoked { task: 2, items: 1 });
        assert!(!w.start_item(1));
        assert!(!w.claim(3));
        assert_eq!(p.revoke().task, REVOKED);
    }

    #[test]
    fn racing_starts_and_a_revoke_agree_on_what_started() {
        for round in 0..300u64 {
            let (w, p) = pair();
            let t = std::thread::spawn(move || {
                let mut started = (0u64, 0u32);
                for task in 1..=50u64 {
                    if !w.claim(task) {
                        break;
                    }
                    started = (task, 0);
                    for i in 0..(round % 7) as u32 {
                        if !w.start_item(i) {
                            return started;
                        }
                        started.1 = i + 1;
                    }
                }
                started
            });
            std::thread::yield_now();
            let r = p.revoke();
            let (task, items) = t.join().unwrap();
            assert_eq!((r.task, r.items), (task, items), "the pool's view and the worker's must agree");
        }
    }

    #[test]
    fn a_descriptor_that_is_no_page_is_refused() {
        let fd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, PAGE_LEN as u64).unwrap();
        assert!(Page::from_worker(fd).is_err());
        let small = rustix::fs::memfd_create("y", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(Page::from_worker(small).is_err());
    }

    #[test]
    fn only_a_page_sealed_against_shrinking_is_taken() {
        use rustix::fs::{MemfdFlags, SealFlags};
        let made = Page::create().unwrap();
        let copy = rustix::io::dup(made.fd()).unwrap();
        assert!(Page::from_worker(copy).is_ok(), "a page made by Page::create is taken");
        // A page-sized memfd with the magic but no seal: its worker could truncate it
        // under the pool's mapping.
        let fd = rustix::fs::memfd_create("z", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, PAGE_LEN as u64).unwrap();
        let unsealed = Page::map(rustix::io::dup(&fd).unwrap()).unwrap();
        unsealed.layout().magic.store(MAGIC, Ordering::Release);
        let Err(err) = Page::from_worker(rustix::io::dup(&fd).unwrap()) else {
            panic!("an unsealed page is refused");
        };
        assert!(err.to_string().contains("not sealed against shrinking"), "{err}");
        rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW).unwrap();
        assert!(Page::from_worker(fd).is_err(), "sealed, but not against shrinking");
    }
}
