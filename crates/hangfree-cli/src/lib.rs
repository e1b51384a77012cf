//! `hangfree`: GNU parallel's command line on hangfree's engine, where no job can hang
//! the run. See the crate's README for what it does and how it differs.
//!
//! The library holds the whole command line, so that the `hangfree` binary and the
//! Python package's `hangfree` command (a console script calling into the extension)
//! are one implementation: [`main_with`].

mod direct;
mod input;
mod job;
mod joblog;
mod output;
mod run;
mod spec;
mod template;
mod worker;

use std::ffi::OsString;
use std::sync::OnceLock;

use clap::{Args, Parser, Subcommand};

/// A process pool that can never hang, for shell jobs.
#[derive(Parser, Debug)]
#[command(name = "hangfree", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs a command once per argument (or combination of arguments), in parallel, as
    /// GNU parallel does: `hangfree run gzip ::: *.log`.
    Run(Box<RunArgs>),
    /// The worker program of the pool (internal).
    #[command(name = "__worker", hide = true)]
    Worker,
}

/// `hangfree run`'s flags. Flags go before the command; everything from the first word
/// that is not a flag is the command and its input sources (`:::`, `::::`).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Jobs to run at once: N, N% of the cores, +N or -N cores [default: the cores].
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    jobs: Option<String>,
    /// Stop a job after DUR: seconds (30, 0.5), a duration (1m30s), or N% of the median
    /// runtime of the jobs that succeeded so far (200%).
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// How a job is stopped: GNU's SIG,MS,...,KILL syntax, as SIGTERM, the sum of the
    /// TERM waits, SIGKILL to the job's whole process tree.
    #[arg(long = "term-seq", alias = "termseq", value_name = "SEQ", default_value = spec::DEFAULT_TERM_SEQ)]
    term_seq: String,
    /// Run a failing job up to N times in all (GNU's meaning: 1 is no retry).
    #[arg(long, value_name = "N", default_value_t = 1)]
    retries: u32,
    /// Kill a job whose process tree's resident memory passes SIZE (512MiB, 2G).
    #[arg(long = "mem-limit", value_name = "SIZE")]
    mem_limit: Option<String>,
    /// Stop early: now|soon,fail|success|done=N|P% (now,fail=1 stops at the first failure).
    #[arg(long, value_name = "WHEN")]
    halt: Option<String>,
    /// Print outputs in the order of the input, not of completion.
    #[arg(short = 'k', long = "keep-order")]
    keep_order: bool,
    /// Prefix each output line with the job's arguments and a tab.
    #[arg(long)]
    tag: bool,
    /// Print output as whole lines while jobs run, instead of each job's output at once.
    #[arg(long = "line-buffer", alias = "lb")]
    line_buffer: bool,
    /// Group each job's output (the default; accepted for GNU parallel's command lines).
    #[arg(long, conflicts_with = "line_buffer")]
    group: bool,
    /// Log each finished job in GNU parallel's tab-separated format.
    #[arg(long, value_name = "FILE")]
    joblog: Option<String>,
    /// Skip the jobs the job log lists.
    #[arg(long, requires = "joblog")]
    resume: bool,
    /// Skip the jobs the job log lists as succeeded; run the failed ones again.
    #[arg(long = "resume-failed", requires = "joblog", conflicts_with = "resume")]
    resume_failed: bool,
    /// Run again the commands the job log lists as failed (no input is read).
    #[arg(long = "retry-failed", requires = "joblog", conflicts_with_all = ["resume", "resume_failed"])]
    retry_failed: bool,
    /// Write one JSON record per job (the job log's fields, attempt, reason, peak RSS,
    /// stdout and stderr) to FILE.
    #[arg(long, value_name = "FILE")]
    results: Option<String>,
    /// Show a progress bar on stderr (when it is a terminal).
    #[arg(long)]
    bar: bool,
    /// Show the estimated time left on stderr (when it is a terminal).
    #[arg(long)]
    eta: bool,
    /// Accepted and ignored.
    #[arg(long = "will-cite")]
    will_cite: bool,
    /// Print the commands instead of running them.
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// Read arguments from FILE (one input source per -a).
    #[arg(short = 'a', long = "arg-file", value_name = "FILE")]
    arg_file: Vec<String>,
    /// Records are separated by NUL bytes instead of newlines (for find -print0).
    #[arg(short = '0', long = "null")]
    null: bool,
    /// Put each worker in a cgroup of its own, so that processes that left the job's
    /// process group (setsid daemons) die with it even when the worker is killed from
    /// outside (kill -9, the OOM killer).
    #[arg(long)]
    cgroup: bool,
    /// The command, then input sources: `::: ARGS...`, `:::: FILES...`.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    rest: Vec<OsString>,
}

/// The command that starts this command line's own worker (`COMMAND... __worker`).
static WORKER: OnceLock<Vec<OsString>> = OnceLock::new();

/// The worker command given to [`main_with`], if any.
pub(crate) fn worker_command() -> Option<&'static [OsString]> {
    WORKER.get().map(|v| v.as_slice())
}

/// Runs the command line `args` (the program name first) and returns its exit status;
/// `worker` is the command that runs this same command line (its `__worker` argument is
/// added): the binary's own path, or the Python interpreter with `-m hangfree._cli`.
/// `__worker` never returns.
pub fn main_with(args: Vec<OsString>, worker: Vec<OsString>) -> i32 {
    let _ = WORKER.set(worker);
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { run::EXIT_ERROR } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match cli.cmd {
        Cmd::Worker => worker::main(),
        Cmd::Run(args) => run::main(*args),
    }
}
