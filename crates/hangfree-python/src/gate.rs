//! The exit gate: what keeps this module's threads away from a finalizing interpreter.
//!
//! Every wait of this module releases the GIL ([`detach`]) and takes it back when it ends.
//! On CPython before 3.14, a thread that takes the GIL back once finalization has begun is
//! ended with `pthread_exit`. PyO3 turns that into a hang when it happens in its own
//! `PyEval_RestoreThread`, but a thread that gets the GIL back a moment *before*
//! finalization runs Python code again (its result callbacks, or any finalizer a garbage
//! collection runs while one of this module's calls builds its return value), and when it
//! is ended there, the forced unwind runs through Rust frames: their cleanups drop Python
//! objects without the GIL while the main thread tears the interpreter down (a crash at
//! exit), and PyO3's catch of the unwind aborts.
//!
//! So the package's exit handler closes this gate ([`close_gate`]) once it has stopped its
//! pools: from then on a thread other than the closing one (the one that goes on to
//! finalize) that comes back from a wait parks for good, without the GIL, instead of
//! returning to Python. The process ends with it parked.

use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Threads that found the gate open and have not yet got the GIL back: [`close_gate`] waits for
/// them, so that none is still on its way back into Python once it returns.
static PASSING: AtomicUsize = AtomicUsize::new(0);

/// How long [`close_gate`] waits for the threads passing the gate, at most (they only need the
/// GIL, which it releases meanwhile).
const PASSING_WAIT: Duration = Duration::from_secs(1);

/// The threads (kernel thread ids) parked at the closed gate.
static PARKED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread closed the gate: it is the one that runs the exit handlers and then
    /// finalizes, and goes on using pools meanwhile (their `__del__` at teardown).
    static CLOSER: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the GIL released; then, once the gate is closed, parks this thread for
/// good instead of taking the GIL back (unless it closed the gate).
pub fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    let r = py.detach(|| {
        let r = f();
        pass_or_stop();
        r
    });
    PASSING.fetch_sub(1, Ordering::SeqCst);
    r
}

/// Counts this thread as passing (until [`detach`] has the GIL back), or parks it for good
/// if the gate is closed. Counted before the check: [`close_gate`] either sees the count or
/// this thread sees the gate closed.
fn pass_or_stop() {
    PASSING.fetch_add(1, Ordering::SeqCst);
    if !CLOSED.load(Ordering::SeqCst) || CLOSER.with(Cell::get) {
        return;
    }
    PASSING.fetch_sub(1, Ordering::SeqCst);
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    PARKED.lock().unwrap_or_else(|e| e.into_inner()).push(tid);
    loop {
        std::thread::park();
    }
}

/// Closes the gate (see the module's documentation); called by the exit handler, on the
/// thread that will finalize the interpreter.
#[pyfunction]
pub fn close_gate(py: Python<'_>) {
    CLOSER.with(|c| c.set(true));
    CLOSED.store(true, Ordering::SeqCst);
    // The threads already past the check wait for the GIL: let them have it.
    py.detach(|| {
        let deadline = Instant::now() + PASSING_WAIT;
        while PASSING.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// The native ids (`threading.get_native_id()`) of the threads parked at the closed gate.
#[pyfunction]
pub fn parked_threads() -> Vec<i32> {
    PARKED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
