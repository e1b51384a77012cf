//! Waiting on the supervisor's epoll set, on every kernel the engine supports.
//!
//! `epoll_pwait2` (Linux 5.11) takes its timeout in nanoseconds; older kernels lack it and
//! some container seccomp profiles refuse it, with `ENOSYS` or `EPERM`. The first refusal
//! is remembered for the whole process, and every wait after it is an `epoll_wait` whose
//! timeout is whole milliseconds, rounded up: a deadline is never woken for early, and a
//! wait shorter than a millisecond does not turn into a spin.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::event::epoll;

/// `epoll_pwait2` was refused once: use `epoll_wait` from then on.
static PWAIT2_REFUSED: AtomicBool = AtomicBool::new(false);

/// Waits up to `timeout` (`None`: until an event) for events on `ep`, appending them to
/// `events` (at most its spare capacity). An interrupted wait returns no events and no
/// error.
pub(crate) fn wait(ep: &OwnedFd, events: &mut Vec<epoll::Event>, timeout: Option<Duration>) -> io::Result<()> {
    if !PWAIT2_REFUSED.load(Ordering::Relaxed) {
        let ts = timeout.map(|d| rustix::time::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: d.subsec_nanos().into(),
        });
        match epoll::wait(ep, rustix::buffer::spare_capacity(&mut *events), ts.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => PWAIT2_REFUSED.store(true, Ordering::Relaxed),
            Err(e) => return Err(e.into()),
        }
    }
    wait_millis(ep, events, timeout)
}

/// The `epoll_wait` path, for kernels without `epoll_pwait2`.
fn wait_millis(ep: &OwnedFd, events: &mut Vec<epoll::Event>, timeout: Option<Duration>) -> io::Result<()> {
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(d) => d.as_nanos().div_ceil(1_000_000).try_into().unwrap_or(libc::c_int::MAX),
    };
    let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let room = (events.capacity() - events.len()).clamp(1, buf.len());
    // SAFETY: `buf` has room for `room` events; `ep` is an open epoll descriptor.
    let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), buf.as_mut_ptr(), room as libc::c_int, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
    }
    events.extend(buf[..n as usize].iter().map(|ev| epoll::Event {
        flags: epoll::EventFlags::from_bits_retain(ev.events),
        data: epoll::EventData::new_u64(ev.u64),
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{EventfdFlags, eventfd};
    use std::time::Instant;

    /// An epoll set watching one eventfd, and the eventfd.
    fn set() -> (OwnedFd, OwnedFd) {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let efd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        epoll::add(&ep, &efd, epoll::EventData::new_u64(7), epoll::EventFlags::IN).unwrap();
        (ep, efd)
    }

    /// Both paths, checked the same way: the millisecond path directly (the one a refusal
    /// switches to), and `wait` as the kernel running the test has it.
    #[test]
    fn both_paths_time_out_and_report_events() {
        type Waiter = fn(&OwnedFd, &mut Vec<epoll::Event>, Option<Duration>) -> io::Result<()>;
        for (name, f) in [("epoll_wait", wait_millis as Waiter), ("wait", wait as Waiter)] {
            let (ep, efd) = set();
            let mut events = Vec::with_capacity(64);
            let t0 = Instant::now();
            f(&ep, &mut events, Some(Duration::from_micros(300))).unwrap();
            assert!(events.is_empty(), "{name}");
            // Rounded up, never down: a sub-millisecond wait is not a zero one.
            assert!(t0.elapsed() >= Duration::from_micros(300), "{name}: {:?}", t0.elapsed());
            f(&ep, &mut events, Some(Duration::ZERO)).unwrap();
            assert!(events.is_empty(), "{name}");
            rustix::io::write(&efd, &1u64.to_ne_bytes()).unwrap();
            let t0 = Instant::now();
            f(&ep, &mut events, None).unwrap();
            assert!(t0.elapsed() < Duration::from_secs(5), "{name}");
            assert_eq!(events.len(), 1, "{name}");
            assert_eq!({ events[0].data }.u64(), 7, "{name}");
            assert!({ events[0].flags }.contains(epoll::EventFlags::IN), "{name}");
            // A limit past what a millisecond count can hold waits, rather than failing.
            events.clear();
            f(&ep, &mut events, Some(Duration::MAX)).unwrap();
            assert_eq!(events.len(), 1, "{name}");
        }
    }
}
