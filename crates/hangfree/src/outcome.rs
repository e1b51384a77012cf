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
        "", "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
        "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT",
        "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU",
        "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS",
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
}

impl fmt::Display for WorkerLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            LossCause::Exited(st) => {
                write!(f, "{}: worker {} died with {} while running it", self.task, self.pid, st)?
            }
            LossCause::ChannelClosed => write!(
                f,
                "{}: worker {} closed its channel while running it and was stopped",
                self.task, self.pid
            )?,
        }
        write_tail(f, &self.stderr_tail)
    }
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
    #[error("{task}: timed out after {:.3} s; worker {pid} was stopped", limit.as_secs_f64())]
    TimedOut {
        /// The task.
        task: TaskRef,
        /// The limit it passed.
        limit: Duration,
        /// The worker that was stopped.
        pid: i32,
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
}

impl TaskError {
    /// The task this error is about.
    pub fn task(&self) -> &TaskRef {
        match self {
            TaskError::WorkerLost(w) => &w.task,
            TaskError::TimedOut { task, .. }
            | TaskError::StartupFailed { task, .. }
            | TaskError::Protocol { task, .. } => task,
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
        });
        assert_eq!(
            e.to_string(),
            "task 7 (square(3)): worker 4242 died with signal SIGSEGV while running it; \
             worker stderr ends with:\nFatal Python error: Segmentation fault"
        );
        assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(64), None);
    }
}
