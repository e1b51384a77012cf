//! Outcomes and errors: the one place that words what happened to a task.
//!
//! Every task ends in exactly one [`Outcome`]. Failures that are not the task's own
//! exception are a [`TaskError`], whose messages name the task, the worker's pid and the
//! exit code or signal name. The fronts translate these; they do not reword them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::wire::ProtocolError;

/// Names a task in messages: its id and, when the submitter gave one, a label such as
/// `square(3)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRef {
    /// The id the pool gave the task; unique within its pool.
    pub id: u64,
    /// A human-readable name given at submission, if any.
    pub label: Option<Arc<str>>,
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.label {
            Some(l) => write!(f, "task {} ({})", self.id, l),
            None => write!(f, "task {}", self.id),
        }
    }
}

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
    /// The status could not be read (for example, the host set SIGCHLD to be ignored, so
    /// the kernel reaped the worker before the pool could look).
    Unknown,
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => match signal_name(s) {
                Some(n) => write!(f, "signal {n}"),
                None => write!(f, "signal {s}"),
            },
            ExitStatus::Unknown => f.write_str("an unknown status"),
        }
    }
}

/// The conventional name of a Linux signal number (`SIGSEGV` for 11).
pub fn signal_name(sig: i32) -> Option<&'static str> {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(sig).ok().and_then(|i| NAMES.get(i)).copied().filter(|n| !n.is_empty())
}

/// Why a worker stopped being usable while it held a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossCause {
    /// The process exited or was killed by someone other than the pool.
    Exited(ExitStatus),
    /// The process closed its channel but kept running; the pool stopped it.
    ChannelClosed,
    /// The pool stopped the process (for another task: a time limit, the memory limit,
    /// a cancel, a protocol error) while this task was started or its outcome unsent.
    Stopped,
}

impl fmt::Display for LossCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossCause::Exited(st) => write!(f, "died with {st}"),
            LossCause::ChannelClosed => f.write_str("closed its channel and was stopped"),
            LossCause::Stopped => f.write_str("was stopped by the pool for another task"),
        }
    }
}

/// One earlier run of a task whose worker died (see the pool's `retries`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The worker that ran it.
    pub pid: i32,
    /// What happened to that worker.
    pub cause: LossCause,
}

/// A task's worker died under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerLost {
    /// The task that was running.
    pub task: TaskRef,
    /// The worker's process id.
    pub pid: i32,
    /// What happened to the worker.
    pub cause: LossCause,
    /// The last few KiB the worker wrote to its stderr (lossy UTF-8).
    pub stderr_tail: String,
    /// The worker was killed by a SIGKILL the pool did not send while the kernel's count
    /// of OOM kills went up: most likely the OOM killer.
    pub probably_oom: bool,
    /// Earlier runs of the same task whose workers also died, oldest first (only with
    /// retries); the task was quarantined after the last.
    pub earlier: Vec<Attempt>,
    /// The task (an item of a chunk) had finished, but its outcome had not left the
    /// worker: it is lost with it. It is not run again (each item runs at most once).
    pub finished: bool,
}

impl fmt::Display for WorkerLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: worker {} {}", self.task, self.pid, self.cause)?;
        if self.probably_oom {
            f.write_str(" (probably killed by the OOM killer)")?;
        }
        f.write_str(if self.finished {
            " after it finished, before its outcome was sent (it is not run again)"
        } else {
            " while running it"
        })?;
        if !self.earlier.is_empty() {
            write!(f, "; it killed {} workers in {} attempts:", self.earlier.len() + 1, self.earlier.len() + 1)?;
            for (i, a) in self.earlier.iter().enumerate() {
                write!(f, " attempt {}: worker {} {};", i + 1, a.pid, a.cause)?;
            }
            write!(f, " attempt {}: worker {} {}", self.earlier.len() + 1, self.pid, self.cause)?;
        }
        write_tail(f, &self.stderr_tail)
    }
}

fn timed_out_text(task: &TaskRef, limit: &Duration, pid: &i32, stack: &Option<String>, requested: &bool) -> String {
    let mut s = format!("{task}: timed out after {:.3} s; worker {pid} was stopped", limit.as_secs_f64());
    match stack {
        Some(st) => {
            s.push_str("; it was at:\n");
            s.push_str(st.trim_end());
        }
        None if *requested => s.push_str(
            "; its stack could not be taken in time (it was not running interpreted code: \
             stuck in a native call?)",
        ),
        None => {}
    }
    s
}

fn write_tail(f: &mut fmt::Formatter<'_>, tail: &str) -> fmt::Result {
    let t = tail.trim_end();
    if t.is_empty() { Ok(()) } else { write!(f, "; worker stderr ends with:\n{t}") }
}

/// Why the pool could not start workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartupFailure {
    /// The worker's initializer failed; the payload is what the worker sent.
    InitFailed {
        /// The worker's description of the failure (the Python front sends a pickled
        /// exception with its traceback).
        payload: Vec<u8>,
        /// The worker's stderr tail.
        stderr_tail: String,
    },
    /// The worker process exited before it was ready.
    ExitedEarly {
        /// How it ended.
        status: ExitStatus,
        /// The worker's stderr tail.
        stderr_tail: String,
    },
    /// The worker was not ready within the start-up timeout.
    Timeout(Duration),
    /// The worker process could not be started at all.
    Spawn(String),
    /// The worker broke the channel protocol or closed its channel before it was ready.
    Broken(String),
}

impl fmt::Display for StartupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupFailure::InitFailed { payload, stderr_tail } => {
                write!(f, "the worker initializer failed")?;
                if let Ok(s) = std::str::from_utf8(payload) {
                    if !s.is_empty() {
                        write!(f, ": {}", s.trim_end())?;
                    }
                }
                write_tail(f, stderr_tail)
            }
            StartupFailure::ExitedEarly { status, stderr_tail } => {
                write!(f, "the worker exited with {status} before it was ready")?;
                write_tail(f, stderr_tail)
            }
            StartupFailure::Timeout(d) => {
                write!(f, "the worker was not ready within {:.3} s", d.as_secs_f64())
            }
            StartupFailure::Spawn(e) => write!(f, "the worker could not be started: {e}"),
            StartupFailure::Broken(e) => f.write_str(e),
        }
    }
}

/// Why a task failed, other than by raising.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The worker running the task died.
    #[error("{0}")]
    WorkerLost(WorkerLost),
    /// The task ran past its time limit; its worker was stopped (SIGTERM to the group,
    /// the grace period, then SIGKILL).
    #[error("{}", timed_out_text(.task, .limit, .pid, .stack, .stack_requested))]
    TimedOut {
        /// The task.
        task: TaskRef,
        /// The limit it passed.
        limit: Duration,
        /// The worker that was stopped.
        pid: i32,
        /// Where the task was stuck, as the worker reported it when asked (see the pool's
        /// `stack_dump`), before the worker was stopped.
        stack: Option<String>,
        /// Whether the pool asked the worker for its stack.
        stack_requested: bool,
    },
    /// The worker running the task passed the pool's memory limit; it was stopped.
    #[error("{task}: worker {pid} passed the memory limit of {} (peak seen {}) and was stopped", crate::memory::format_size(*limit), crate::memory::format_size(*peak))]
    MemoryLimit {
        /// The task.
        task: TaskRef,
        /// The worker that was stopped.
        pid: i32,
        /// The limit, in bytes.
        limit: u64,
        /// The largest resident size seen, in bytes.
        peak: u64,
    },
    /// The task was cancelled before it finished.
    #[error("{0}: cancelled")]
    Cancelled(TaskRef),
    /// The pool was terminated before the task finished.
    #[error("{0}: the pool was terminated before the task finished")]
    Terminated(TaskRef),
    /// The pool cannot start workers, so the task will never run.
    #[error("{task}: the pool cannot start workers: {failure}")]
    StartupFailed {
        /// The task.
        task: TaskRef,
        /// What keeps failing.
        failure: StartupFailure,
    },
    /// The worker running the task sent bytes that break the protocol; it was stopped.
    #[error("{task}: worker {pid} broke the channel protocol ({error}) and was stopped")]
    Protocol {
        /// The task.
        task: TaskRef,
        /// The worker that was stopped.
        pid: i32,
        /// What was wrong with its bytes.
        error: ProtocolError,
    },
    /// The pool itself failed — its supervisor thread panicked, a bug in hangfree — so
    /// the task may or may not have run. Every worker was killed; the pool takes no more
    /// tasks ([`crate::SubmitError::Failed`]).
    #[error("{task}: the pool failed: {reason}")]
    PoolFailed {
        /// The task.
        task: TaskRef,
        /// What happened, with the panic's message.
        reason: Arc<str>,
    },
}

impl TaskError {
    /// The task this error is about.
    pub fn task(&self) -> &TaskRef {
        match self {
            TaskError::WorkerLost(w) => &w.task,
            TaskError::TimedOut { task, .. }
            | TaskError::MemoryLimit { task, .. }
            | TaskError::StartupFailed { task, .. }
            | TaskError::Protocol { task, .. }
            | TaskError::PoolFailed { task, .. } => task,
            TaskError::Cancelled(t) | TaskError::Terminated(t) => t,
        }
    }
}

/// How a task ended. Each task gets exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The worker returned this value.
    Value(Vec<u8>),
    /// The task raised; the payload is the worker's description of the error.
    Raised(Vec<u8>),
    /// The task failed for a reason other than its own error.
    Failed(TaskError),
}

impl Outcome {
    /// `Ok` with the value, `Err` with the raised payload or the failure.
    pub fn into_result(self) -> Result<Vec<u8>, OutcomeError> {
        match self {
            Outcome::Value(v) => Ok(v),
            Outcome::Raised(p) => Err(OutcomeError::Raised(p)),
            Outcome::Failed(e) => Err(OutcomeError::Failed(e)),
        }
    }

    /// Whether the task produced a value.
    pub fn is_value(&self) -> bool {
        matches!(self, Outcome::Value(_))
    }
}

/// The error side of [`Outcome::into_result`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutcomeError {
    /// The task raised; the payload is the worker's description of the error.
    #[error("the task raised: {}", String::from_utf8_lossy(.0))]
    Raised(Vec<u8>),
    /// The task failed for another reason.
    #[error(transparent)]
    Failed(#[from] TaskError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_task_pid_and_signal() {
        let e = TaskError::WorkerLost(WorkerLost {
            task: TaskRef { id: 7, label: Some("square(3)".into()) },
            pid: 4242,
            cause: LossCause::Exited(ExitStatus::Signal(11)),
            stderr_tail: "Fatal Python error: Segmentation fault\n".into(),
            probably_oom: false,
            earlier: vec![],
            finished: false,
        });
        assert_eq!(
            e.to_string(),
            "task 7 (square(3)): worker 4242 died with signal SIGSEGV while running it; \
             worker stderr ends with:\nFatal Python error: Segmentation fault"
        );
        assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
        let quarantined = TaskError::WorkerLost(WorkerLost {
            task: TaskRef { id: 9, label: None },
            pid: 30,
            cause: LossCause::Exited(ExitStatus::Signal(9)),
            stderr_tail: String::new(),
            probably_oom: true,
            earlier: vec![Attempt { pid: 10, cause: LossCause::Exited(ExitStatus::Code(1)) }],
            finished: false,
        });
        assert_eq!(
            quarantined.to_string(),
            "task 9: worker 30 died with signal SIGKILL (probably killed by the OOM killer) while \
             running it; it killed 2 workers in 2 attempts: attempt 1: worker 10 died with exit \
             code 1; attempt 2: worker 30 died with signal SIGKILL"
        );
        let t = TaskError::TimedOut {
            task: TaskRef { id: 4, label: Some("f()".into()) },
            limit: Duration::from_millis(1500),
            pid: 7,
            stack: Some("  File \"x.py\", line 3, in f\n".into()),
            stack_requested: true,
        };
        assert_eq!(
            t.to_string(),
            "task 4 (f()): timed out after 1.500 s; worker 7 was stopped; it was at:\n  File \"x.py\", line 3, in f"
        );
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(64), None);
    }
}
