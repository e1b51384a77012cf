//! State shared by a pool's handles and its supervisor thread: the inbox of commands,
//! the gate that says what callers may still do, the waker, the counters, and the
//! one-shot replies. It sits below both sides, so neither imports the other.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::{EventfdFlags, eventfd};

use super::ids::TaskId;
use super::stats::Counters;
use super::task::{Sink, Task, TaskState};
use crate::outcome::StartupFailure;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these small states half-written; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What callers may still do.
#[derive(Clone, Debug)]
pub(crate) enum Gate {
    Open,
    Closed,
    Terminated,
    Broken(StartupFailure),
    /// The supervisor panicked (see `Supervisor::fail`); the text says so.
    Failed(Arc<str>),
}

pub(crate) enum Command {
    Submit {
        sink: Arc<dyn Sink>,
        first_id: TaskId,
        tasks: Vec<Task>,
        chunksize: usize,
    },
    Cancel(TaskId),
    /// Cancel only if the task has not been sent to a worker; answer whether it was.
    CancelQueued(TaskId, Arc<Reply<bool>>),
    /// Answer where the task is (see [`TaskState`]).
    State(TaskId, Arc<Reply<TaskState>>),
    Close,
    Terminate,
}

/// A one-shot answer from the supervisor to a caller waiting for it.
pub(crate) struct Reply<T> {
    value: Mutex<Option<T>>,
    cv: Condvar,
}

impl<T> Default for Reply<T> {
    fn default() -> Self {
        Reply { value: Mutex::new(None), cv: Condvar::new() }
    }
}

impl<T> Reply<T> {
    pub fn set(&self, v: T) {
        *lock(&self.value) = Some(v);
        self.cv.notify_all();
    }

    /// Waits for the answer; `None` if the supervisor finished without giving one.
    pub fn wait(&self, shared: &Shared) -> Option<T> {
        let mut g = lock(&self.value);
        loop {
            if let Some(v) = g.take() {
                return Some(v);
            }
            if *lock(&shared.finished) {
                return None;
            }
            // Short slices: the supervisor may finish without reading this command.
            g = self.cv.wait_timeout(g, Duration::from_millis(20)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

pub(crate) struct Inbox {
    pub cmds: Vec<Command>,
    pub gate: Gate,
}

/// State shared by the pool's handles and its supervisor thread.
pub(crate) struct Shared {
    pub inbox: Mutex<Inbox>,
    /// The eventfd that wakes the supervisor; closed when the pool finishes, so a finished
    /// pool holds no descriptor even while its handle lives on.
    pub waker: Mutex<Option<OwnedFd>>,
    pub woken: AtomicBool,
    pub stats: Counters,
    pub finished: Mutex<bool>,
    pub finished_cv: Condvar,
    pub next_id: AtomicU64,
}

impl Shared {
    pub fn new() -> io::Result<Shared> {
        Ok(Shared {
            inbox: Mutex::new(Inbox { cmds: Vec::new(), gate: Gate::Open }),
            waker: Mutex::new(Some(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)),
            woken: AtomicBool::new(false),
            stats: Counters::default(),
            finished: Mutex::new(false),
            finished_cv: Condvar::new(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Wakes the supervisor; only the first wake since it last looked costs a syscall.
    pub fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Some(fd) = lock(&self.waker).as_ref() {
                let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
            }
        }
    }

    pub fn push(&self, cmd: Command) {
        lock(&self.inbox).cmds.push(cmd);
        self.wake();
    }

    pub fn cancel(&self, id: TaskId) {
        self.push(Command::Cancel(id));
    }
}
