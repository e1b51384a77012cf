//! Brief polling before sleeping, shared by every waiter of the engine.
//!
//! On a small VM a wake-up across CPUs costs tens of microseconds — more than a whole
//! round trip of a short task. After activity the next event usually comes within
//! microseconds, so each waiter (the caller, the supervisor, the worker) first polls for
//! a short while. Polling yields the CPU on every turn: with two CPUs and three or more
//! threads in play, a waiter that kept its CPU would starve the very thread it waits for
//! (measured: a 25 µs round trip became 250 µs with plain busy-waiting).

use std::time::{Duration, Instant};

/// How long the supervisor and callers poll before they sleep.
pub const WAIT: Duration = Duration::from_micros(100);

/// How long a worker polls for its next task after answering one.
pub const WORKER: Duration = Duration::from_micros(100);

/// Calls `ready` until it returns true or `limit` has passed, yielding the CPU between
/// calls; returns the last answer. A zero limit asks once.
pub fn poll_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::yield_now();
    }
}
