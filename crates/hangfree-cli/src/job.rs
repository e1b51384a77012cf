//! What the command line and its workers say to each other through the engine: a job
//! (the shell command and where its output goes) and its result. Both are JSON, so
//! that a failing test shows them readably; the engine never looks inside.

use serde::{Deserialize, Serialize};

/// One job, as a task's payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    /// The command, given to `sh -c` (or started directly if it is a simple command).
    pub cmd: String,
    /// File that receives the job's standard output.
    pub stdout: String,
    /// File that receives the job's standard error.
    pub stderr: String,
    /// `PARALLEL_SEQ` in the job's environment.
    pub seq: u64,
    /// `PARALLEL_JOBSLOT` in the job's environment; 0: the worker's own slot.
    pub slot: usize,
    /// Largest resident memory of the job's whole process tree, in bytes.
    pub mem_limit: Option<u64>,
    /// The engine's grace period between SIGTERM and SIGKILL, in milliseconds.
    pub grace_ms: u64,
}

/// Why a job ended, as the results file names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// The shell exited (with status 0 or not).
    Exit,
    /// The shell was killed by a signal nobody in hangfree sent.
    Signal,
    /// The job passed its time limit and was stopped.
    Timeout,
    /// The job's process tree passed the memory limit and was killed.
    Memory,
    /// `--halt now`, Ctrl-C or SIGTERM stopped the job.
    Halt,
    /// The job could not be run (the shell could not be started, the worker died).
    Error,
}

/// What a worker answers for a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobResult {
    /// Exit code of the shell: 0 if a signal killed it (as GNU parallel logs it), -1 if
    /// hangfree killed it (memory).
    pub exitval: i32,
    /// The signal that killed the shell, or 0.
    pub signal: i32,
    /// Start, in seconds since the Unix epoch.
    pub start: f64,
    /// Seconds from start to the shell's exit.
    pub runtime: f64,
    /// Peak resident memory in bytes: the largest process of the job as the kernel counts
    /// it, or the largest sum over the tree seen while a memory limit was watched.
    pub peak_rss: u64,
    /// Why the job ended (exit, signal or memory).
    pub reason: Reason,
    /// Bytes in the job's stdout file when it ended (its whole tree gone), if known.
    pub out_len: Option<u64>,
    /// Bytes in the job's stderr file when it ended, if known.
    pub err_len: Option<u64>,
}
