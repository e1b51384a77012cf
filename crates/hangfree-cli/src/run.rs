//! `hangfree run`: reads the jobs, checks every flag before anything runs, then feeds
//! the engine one job per task and turns outcomes into output, the job log, retries,
//! halts and the exit status.
//!
//! One thread does it all, in a loop: submit jobs while slots are free, take the next
//! outcome (or wake every 20 ms for `--line-buffer`, the progress bar, and signals). The
//! engine does the rest: time limits, the term sequence, killing a job's process group,
//! workers dying with this process.
//!
//! Where nothing depends on which jobs run at the same time (see [`Plan::pipelined`]),
//! the loop keeps more jobs in the engine than there are workers: the engine then has the
//! next job at hand when one ends, and sends one job ahead to each worker whose jobs are
//! short, so that a worker starts its next job without waiting for the round trip
//! through the engine and this loop. A job's slot is then its worker's own. When the run
//! stops (an input error, a closed stdout), the jobs still queued in the engine are
//! cancelled; those already sent ahead run.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hangfree::{EventKind, LossCause, Outcome, Pool, Sink, Task, TaskError, WorkerCommand};

use crate::RunArgs;
use crate::input::{Combinations, Source};
use crate::job::{JobResult, JobSpec, Reason};
use crate::joblog::{self, Entry};
use crate::output::{self, Stream, Tail};
use crate::spec::{self, Halt, HaltOn, Timeout};
use crate::template::Template;

/// GNU parallel's status for an error other than failed jobs.
pub const EXIT_ERROR: i32 = 255;

/// How often the loop wakes without an outcome, to copy lines and redraw the bar.
const TICK: Duration = Duration::from_millis(20);

/// Successful jobs needed before `--timeout N%` has a median to work from.
const MEDIAN_MIN: usize = 3;

/// Jobs kept waiting in the engine, beyond one running and one sent ahead per worker,
/// when jobs may wait there. The run loop shares two cores with the workers and their
/// jobs: it may not run for some milliseconds, and the workers must not run out of jobs
/// meanwhile (with twice -j jobs in the engine, a quarter of the gaps between two jobs of
/// 1 ms were over 1.4 ms, a tenth over 6 ms, on a 2-core machine at load 6).
const QUEUED: usize = 32;

/// A job is sent ahead to a busy worker only if that worker's recent jobs took less than
/// this (and its current one has not yet). A job sent ahead cannot be taken back: behind
/// a job that turns out long, it waits while another worker may idle. Behind short ones
/// it saves the round trip between two jobs (a few hundred microseconds, ~1-3% of a job
/// this long).
const SEND_AHEAD_BELOW: Duration = Duration::from_millis(20);

/// One job: its arguments and, for `--retry-failed`, the command from the log.
struct Job {
    seq: u64,
    args: Vec<String>,
    fixed: Option<String>,
}

/// Everything checked and ready before the first job starts.
struct Plan {
    args: RunArgs,
    template: Option<Template>,
    jobs: Box<dyn Iterator<Item = Result<Job, String>> + Send>,
    total: Option<u64>,
    workers: usize,
    timeout: Option<Timeout>,
    grace: Duration,
    mem_limit: Option<u64>,
    halt: Option<Halt>,
    joblog: Option<joblog::Writer>,
    results: Option<std::fs::File>,
}

impl Plan {
    /// Whether jobs may wait in the engine (and in a worker's channel) before they start:
    /// only when no job's command or stop depends on what else runs. A `{%}` in the
    /// command is filled in when the job is submitted, from the slots free then; `--halt`
    /// must start no job after the one that reaches it; `--timeout N%` measures a job from
    /// its submission.
    fn pipelined(&self) -> bool {
        !self.template.as_ref().is_some_and(|t| t.uses_slot())
            && self.halt.is_none()
            && !matches!(self.timeout, Some(Timeout::OfMedian(_)))
    }
}

/// Runs `hangfree run` and returns the exit status.
pub fn main(args: RunArgs) -> i32 {
    match prepare(args) {
        Ok(plan) => execute(plan),
        Err(msg) => {
            eprintln!("hangfree: {msg}");
            EXIT_ERROR
        }
    }
}

fn prepare(args: RunArgs) -> Result<Plan, String> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let workers = match &args.jobs {
        Some(j) => spec::parse_jobs(j, cores)?,
        None => cores,
    };
    let timeout = args.timeout.as_deref().map(spec::parse_timeout).transpose()?;
    let grace = spec::parse_term_seq(&args.term_seq)?.grace;
    let mem_limit = args
        .mem_limit
        .as_deref()
        .map(|m| hangfree::memory::parse_size(m).map_err(|e| format!("--mem-limit: {e}")))
        .transpose()?;
    let halt = args.halt.as_deref().map(spec::parse_halt).transpose()?.flatten();
    if args.retries == 0 {
        return Err("--retries must be at least 1 (the number of runs in all)".into());
    }

    let words: Vec<String> = args.rest.iter().map(|w| w.to_string_lossy().into_owned()).collect();
    let split = words.iter().position(|w| w == ":::" || w == "::::").unwrap_or(words.len());
    let (command, mut inputs) = (&words[..split], &words[split..]);
    let mut sources: Vec<Source> = Vec::new();
    for f in &args.arg_file {
        sources.push(Source::file(f)?);
    }
    while let Some((sep, rest)) = inputs.split_first() {
        let end = rest.iter().position(|w| w == ":::" || w == "::::").unwrap_or(rest.len());
        if sep == ":::" {
            sources.push(Source::Args(rest[..end].to_vec()));
        } else {
            if end == 0 {
                return Err(":::: needs at least one file".into());
            }
            for f in &rest[..end] {
                sources.push(Source::file(f)?);
            }
        }
        inputs = &rest[end..];
    }

    let log = match &args.joblog {
        Some(path) if args.resume || args.resume_failed || args.retry_failed => Some(joblog::read(path)?),
        _ => None,
    };
    let mut template = None;
    let mut jobs: Vec<Job>;
    let mut stream: Option<Combinations> = None;
    if args.retry_failed {
        if !sources.is_empty() {
            return Err("--retry-failed takes the commands from the job log; give no input sources".into());
        }
        let log = log.as_ref().expect("read above");
        jobs = log
            .values()
            .filter(|e| !e.ok())
            .map(|e| Job { seq: e.seq, args: vec![e.command.clone()], fixed: Some(e.command.clone()) })
            .collect();
    } else {
        if sources.is_empty() {
            if std::io::stdin().is_terminal() && !args.dry_run {
                eprintln!("hangfree: reading arguments from the terminal, one per line (end with Ctrl-D)");
            }
            sources.push(Source::stdin());
        }
        let t = Template::parse(command, sources.len())?;
        let combos = Combinations::new(sources, if args.null { 0 } else { b'\n' })?;
        template = Some(t);
        stream = Some(combos);
        jobs = Vec::new();
    }
    // Everything must be known up front to check a log against the input, to count the
    // jobs for a bar or a percentage; otherwise jobs start as input arrives.
    let need_all = log.is_some()
        || args.bar
        || args.eta
        || matches!(halt, Some(Halt { threshold: spec::Threshold::Percent(_), .. }));
    let mut total = None;
    let jobs: Box<dyn Iterator<Item = Result<Job, String>> + Send> = if let Some(combos) = stream {
        let numbered = combos.zip(1u64..).map(|(a, seq)| a.map(|args| Job { seq, args, fixed: None }));
        if need_all {
            jobs = numbered.collect::<Result<Vec<Job>, String>>()?;
            if let (Some(log), Some(t)) = (&log, &template) {
                check_log(log, &jobs, t, &args)?;
                let keep = |j: &Job| match log.get(&j.seq) {
                    None => true,
                    Some(e) => args.resume_failed && !e.ok(),
                };
                jobs.retain(keep);
            }
            total = Some(jobs.len() as u64);
            Box::new(jobs.into_iter().map(Ok))
        } else {
            Box::new(numbered)
        }
    } else {
        total = Some(jobs.len() as u64);
        Box::new(jobs.into_iter().map(Ok))
    };

    let joblog = match &args.joblog {
        Some(_) if args.dry_run => None,
        Some(path) => Some(joblog::Writer::open(path, log.is_some())?),
        None => None,
    };
    let results = match &args.results {
        Some(_) if args.dry_run => None,
        Some(path) => Some(std::fs::File::create(path).map_err(|e| format!("cannot write results file {path}: {e}"))?),
        None => None,
    };
    Ok(Plan { args, template, jobs, total, workers, timeout, grace, mem_limit, halt, joblog, results })
}

/// Refuses a job log whose commands are not the ones this input makes.
fn check_log(log: &BTreeMap<u64, Entry>, jobs: &[Job], t: &Template, args: &RunArgs) -> Result<(), String> {
    let path = args.joblog.as_deref().unwrap_or_default();
    if t.uses_slot() {
        // The slot is part of a logged command and depends on timing; only counts compare.
        return match log.keys().next_back() {
            Some(&last) if last > jobs.len() as u64 => {
                Err(format!("job log {path} has job {last}, but the input makes only {} jobs", jobs.len()))
            }
            _ => Ok(()),
        };
    }
    for e in log.values() {
        let Some(j) = jobs.get((e.seq as usize).wrapping_sub(1)) else {
            return Err(format!("job log {path} has job {}, but the input makes only {} jobs", e.seq, jobs.len()));
        };
        let cmd = t.fill(&j.args, j.seq, 0);
        if cmd != e.command {
            return Err(format!(
                "job log {path} does not match this command and input: job {} was {:?} and would now be {:?}; \
                 use another --joblog, or run without --resume",
                e.seq, e.command, cmd
            ));
        }
    }
    Ok(())
}

/// A job handed to the engine.
struct Running {
    job: Job,
    /// Position in the output order (`-k`).
    ord: u64,
    attempt: u32,
    slot: usize,
    cmd: String,
    out: PathBuf,
    err: PathBuf,
    submitted: Instant,
    submitted_wall: f64,
    out_tail: Tail,
    err_tail: Tail,
    /// The task's id in the pool.
    id: u64,
    /// Whether the job started with a time limit; with `--timeout N%`, the first jobs
    /// start before there is a median.
    limited: bool,
    /// Cancelled by the loop for passing `--timeout N%` once a median was known.
    late: bool,
}

/// A job that has ended, waiting for its turn to print (`-k`) or for its stopped worker
/// to be gone (time-outs).
struct Finished {
    run: Running,
    entry: Entry,
    reason: Reason,
    peak_rss: u64,
    /// The final sizes of the job's stdout and stderr files, where its worker said them:
    /// an empty file is then neither opened nor emptied.
    lens: (Option<u64>, Option<u64>),
}

/// A timed-out job whose worker is still being stopped: its tree may still run.
struct Dying {
    /// The job, to print and log once the worker is gone; `None` if it runs again.
    fin: Option<Finished>,
    /// Its slot, free again once the worker is gone (0: the worker's own).
    slot: usize,
    /// The worker's pidfd, if it could be opened.
    fd: Option<OwnedFd>,
    /// When to stop waiting for the worker.
    limit: Instant,
    pid: i32,
}

/// Sends each outcome to the main loop with the key of its submission.
struct ToLoop {
    key: u64,
    tx: mpsc::Sender<(u64, Outcome)>,
}

impl Sink for ToLoop {
    fn complete(&self, _index: usize, outcome: Outcome) {
        let _ = self.tx.send((self.key, outcome));
    }
}

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn jobs(n: u64) -> &'static str {
    if n == 1 { "job" } else { "jobs" }
}

fn now_wall() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// The loop's state.
struct Runner {
    plan_args: RunArgs,
    template: Option<Template>,
    /// Jobs handed to the engine at most: `workers`, or twice that when `pipelined`.
    in_engine: usize,
    /// Jobs may wait in the engine, and take their worker's slot (see [`Plan::pipelined`]).
    pipelined: bool,
    timeout: Option<Timeout>,
    mem_limit: Option<u64>,
    grace: Duration,
    halt: Option<Halt>,
    total: Option<u64>,
    joblog: Option<joblog::Writer>,
    results: Option<std::fs::File>,
    dir: tempfile::TempDir,
    running: HashMap<u64, Running>,
    retry: VecDeque<(Job, u64, u32)>,
    free_slots: BTreeSet<usize>,
    /// Timed-out jobs whose worker is still being stopped, with its pidfd and a limit.
    dying: Vec<Dying>,
    /// Ended jobs waiting for their turn to print (`-k`), by output order.
    ready: BTreeMap<u64, Finished>,
    next_ord: u64,
    next_key: u64,
    /// Output files of ended jobs, copied out and free for the next job: the worker
    /// truncates them, which costs far less than creating and deleting two files a job
    /// (on ext4, inode allocation was a tenth of a short job's whole cost).
    spare_files: Vec<(PathBuf, PathBuf)>,
    successes: Vec<f64>,
    done: u64,
    failed: u64,
    succeeded: u64,
    /// Set when no more jobs are started: halt, a signal, an input error.
    stopping: bool,
    halt_status: Option<i32>,
    error: bool,
    killed_pids: Arc<Mutex<HashSet<i32>>>,
    bar: indicatif::ProgressBar,
    stop_bound: Duration,
}

fn execute(plan: Plan) -> i32 {
    let pipelined = plan.pipelined();
    let Plan { args, template, mut jobs, total, workers, timeout, grace, mem_limit, halt, joblog, results } = plan;
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        for (i, job) in jobs.by_ref().enumerate() {
            match job {
                Ok(j) => {
                    let cmd = j.fixed.clone().unwrap_or_else(|| {
                        template.as_ref().expect("a template without a fixed command").fill(
                            &j.args,
                            j.seq,
                            i % workers + 1,
                        )
                    });
                    let _ = writeln!(out, "{cmd}");
                }
                Err(e) => {
                    eprintln!("hangfree: {e}");
                    return EXIT_ERROR;
                }
            }
        }
        return 0;
    }
    let Some((exe, exe_args)) = crate::worker_command().and_then(|w| w.split_first()) else {
        eprintln!("hangfree: no command to start its workers with");
        return EXIT_ERROR;
    };
    let dir = match tempfile::Builder::new().prefix("hangfree-run-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("hangfree: cannot create a directory for job output: {e}");
            return EXIT_ERROR;
        }
    };
    let mut worker = WorkerCommand::new(exe).args(exe_args).arg("__worker");
    let mut startup = hangfree::pool::defaults::STARTUP_TIMEOUT;
    if pipelined {
        for slot in 1..=workers {
            let path = crate::worker::slot_file(dir.path(), slot);
            if let Err(e) = std::fs::File::create(&path) {
                eprintln!("hangfree: cannot create {}: {e}", path.display());
                return EXIT_ERROR;
            }
        }
        // A worker that replaces a stopped one waits for that one's slot: the grace
        // period, the engine's wait for a killed worker, and a margin.
        let wait = grace + hangfree::pool::defaults::KILL_WAIT + Duration::from_secs(2);
        let slots = format!("{workers} {} {}", wait.as_millis(), dir.path().display());
        worker = worker.env(crate::worker::ENV_SLOTS, slots);
        // The wait is part of the worker's start-up, which must not time out first.
        startup = startup.max(wait + Duration::from_secs(10));
    }
    let killed_pids: Arc<Mutex<HashSet<i32>>> = Arc::default();
    let seen = killed_pids.clone();
    let mut builder =
        Pool::builder(worker).workers(workers).startup_timeout(startup).grace(grace).cgroup(args.cgroup).on_event(
            move |e| {
                if e.kind == EventKind::Kill {
                    if let Some(pid) = e.pid {
                        seen.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
                    }
                }
            },
        );
    builder = if pipelined {
        builder.prefetch(2).prefetch_below(SEND_AHEAD_BELOW)
    } else {
        // A job is sent only to an idle worker, so that the slot it was given at
        // submission is free when it starts.
        builder.prefetch(1)
    };
    if let Some(Timeout::Fixed(d)) = timeout {
        builder = builder.task_timeout(d);
    }
    let pool = match builder.build() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hangfree: {e}");
            return EXIT_ERROR;
        }
    };
    catch_signals();
    let bar = progress_bar(&args, total);
    let stop_bound = pool.shutdown_bound();
    let mut r = Runner {
        plan_args: args,
        template,
        in_engine: if pipelined { workers.saturating_mul(2).saturating_add(QUEUED) } else { workers },
        pipelined,
        timeout,
        mem_limit,
        grace,
        halt,
        total,
        joblog,
        results,
        dir,
        running: HashMap::new(),
        retry: VecDeque::new(),
        free_slots: (1..=workers).collect(),
        dying: Vec::new(),
        ready: BTreeMap::new(),
        next_ord: 0,
        next_key: 0,
        spare_files: Vec::new(),
        successes: Vec::new(),
        done: 0,
        failed: 0,
        succeeded: 0,
        stopping: false,
        halt_status: None,
        error: false,
        killed_pids,
        bar,
        stop_bound,
    };
    // Input is read on a thread of its own: a pipe slow to deliver must not keep the loop
    // from outcomes, output and Ctrl-C.
    let (job_tx, job_rx) = mpsc::sync_channel(r.in_engine);
    let reader = std::thread::Builder::new().name("hangfree-input".into()).spawn(move || {
        for job in jobs {
            if job_tx.send(job).is_err() {
                return;
            }
        }
    });
    if let Err(e) = reader {
        eprintln!("hangfree: cannot start the input thread: {e}");
        return EXIT_ERROR;
    }
    let (tx, rx) = mpsc::channel();
    let mut feed = Feed { jobs: job_rx, tx, ord: 0, input_done: false };
    let mut terminated = false;
    let mut unqueued = false;
    loop {
        if SIGNALLED.load(Ordering::SeqCst) != 0 && !terminated {
            terminated = true;
            r.stopping = true;
            pool.terminate();
        }
        if r.stopping && r.pipelined && !unqueued && !terminated {
            unqueued = true;
            for run in r.running.values() {
                // Its outcome (cancelled) ends it as stopped by the halt: neither printed
                // nor logged, as a job never started.
                pool.cancel_if_queued(run.id);
            }
        }
        feed.top_up(&mut r, &pool);
        if r.running.is_empty() && (r.stopping || feed.input_done && r.retry.is_empty()) {
            break;
        }
        match rx.recv_timeout(TICK) {
            Ok((key, outcome)) => {
                r.outcome(&pool, key, outcome);
                while let Ok((key, outcome)) = rx.try_recv() {
                    // Each ended job's place is filled before the next outcome: copying
                    // outputs can take this thread longer than the workers take to run the
                    // jobs waiting in the engine.
                    feed.top_up(&mut r, &pool);
                    r.outcome(&pool, key, outcome);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => unreachable!("the loop holds a sender"),
        }
        r.tick(&pool);
    }
    pool.close();
    let joined = pool.join(Some(r.stop_bound));
    r.finish_dying(true);
    r.flush_all();
    r.bar.finish_and_clear();
    if let Err(e) = joined {
        r.say(&format!("the workers did not all stop in time: {e}"));
    }
    let sig = SIGNALLED.load(Ordering::SeqCst);
    if sig != 0 {
        return 128 + sig;
    }
    if let Some(s) = r.halt_status {
        return s;
    }
    if r.error {
        return EXIT_ERROR;
    }
    r.failed.min(101) as i32
}

/// Where the loop takes jobs from: retries first, then the input thread's.
struct Feed {
    jobs: mpsc::Receiver<Result<Job, String>>,
    tx: mpsc::Sender<(u64, Outcome)>,
    /// The next job's position in the output order.
    ord: u64,
    input_done: bool,
}

impl Feed {
    /// Submits jobs until the engine holds as many as it may (or input has none ready).
    fn top_up(&mut self, r: &mut Runner, pool: &Pool) {
        while !r.stopping && r.running.len() < r.in_engine && (r.pipelined || !r.free_slots.is_empty()) {
            let (job, job_ord, attempt) = if let Some(x) = r.retry.pop_front() {
                x
            } else if self.input_done {
                break;
            } else {
                match self.jobs.try_recv() {
                    Ok(Ok(j)) => {
                        self.ord += 1;
                        (j, self.ord - 1, 1)
                    }
                    Ok(Err(e)) => {
                        r.say(&e);
                        r.error = true;
                        r.stopping = true;
                        self.input_done = true;
                        break;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.input_done = true;
                        break;
                    }
                }
            };
            if let Err(e) = r.submit(pool, &self.tx, job, job_ord, attempt) {
                r.say(&e);
                r.error = true;
                r.stopping = true;
            }
        }
    }
}

/// Whether a job's output file of final size `len` (if known) holds bytes past `tail`.
fn unread(len: Option<u64>, tail: &Tail) -> bool {
    len.is_none_or(|l| l > tail.offset)
}

/// Truncates the file at `path` to nothing; false if it cannot.
fn emptied(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: truncate(2) on a NUL-terminated path.
    unsafe { libc::truncate(c.as_ptr(), 0) == 0 }
}

fn progress_bar(args: &RunArgs, total: Option<u64>) -> indicatif::ProgressBar {
    if !(args.bar || args.eta) || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    let template = if args.bar {
        "{wide_bar} {pos}/{len} jobs, {elapsed} elapsed, ETA {eta}"
    } else {
        "{pos}/{len} jobs done, {elapsed} elapsed, ETA {eta}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

impl Runner {
    fn say(&self, msg: &str) {
        self.bar.suspend(|| eprintln!("hangfree: {msg}"));
    }

    fn submit(
        &mut self,
        pool: &Pool,
        tx: &mpsc::Sender<(u64, Outcome)>,
        job: Job,
        ord: u64,
        attempt: u32,
    ) -> Result<(), String> {
        // 0: the worker's own slot (see `worker::take_slot`).
        let slot = if self.pipelined { 0 } else { self.free_slots.pop_first().unwrap_or(1) };
        let cmd = match &job.fixed {
            Some(c) => c.clone(),
            None => self.template.as_ref().expect("a template without a fixed command").fill(&job.args, job.seq, slot),
        };
        let key = self.next_key;
        self.next_key += 1;
        let (out, err) = self.spare_files.pop().unwrap_or_else(|| {
            (self.dir.path().join(format!("{key}.out")), self.dir.path().join(format!("{key}.err")))
        });
        let spec = JobSpec {
            cmd: cmd.clone(),
            stdout: out.to_string_lossy().into_owned(),
            stderr: err.to_string_lossy().into_owned(),
            seq: job.seq,
            slot,
            mem_limit: self.mem_limit,
            grace_ms: self.grace.as_millis() as u64,
        };
        let mut task =
            Task::new(serde_json::to_vec(&spec).expect("a job serializes")).label(format!("job {}", job.seq));
        let limit = self.relative_limit();
        if let Some(l) = limit {
            task = task.timeout(l);
        }
        let ids = pool.submit_to(Arc::new(ToLoop { key, tx: tx.clone() }), vec![task], 1).map_err(|e| e.to_string())?;
        let run = Running {
            job,
            ord,
            attempt,
            slot,
            cmd,
            out,
            err,
            submitted: Instant::now(),
            submitted_wall: now_wall(),
            out_tail: Tail::default(),
            err_tail: Tail::default(),
            id: ids.start,
            limited: limit.is_some() || matches!(self.timeout, Some(Timeout::Fixed(_))),
            late: false,
        };
        self.running.insert(key, run);
        Ok(())
    }

    /// Turns an engine outcome into a finished job (or a retry).
    fn outcome(&mut self, pool: &Pool, key: u64, outcome: Outcome) {
        let Some(mut run) = self.running.remove(&key) else { return };
        // A timed-out job keeps its slot until its tree is gone (see `finish_dying`).
        let stopping_tree = matches!(outcome, Outcome::Failed(TaskError::TimedOut { .. }));
        if run.slot != 0 && !stopping_tree {
            self.free_slots.insert(run.slot);
        }
        if let Outcome::Failed(TaskError::TimedOut { limit, .. }) = &outcome {
            // The engine's clock starts with the job, which may have waited behind another
            // in its worker's channel: it started `limit` ago, for the job log.
            if let Some(began) = Instant::now().checked_sub(*limit).filter(|&b| b > run.submitted) {
                run.submitted_wall += (began - run.submitted).as_secs_f64();
                run.submitted = began;
            }
        }
        let elapsed = run.submitted.elapsed().as_secs_f64();
        let entry = |exitval, signal, start, runtime| Entry {
            seq: run.job.seq,
            start,
            runtime,
            exitval,
            signal,
            command: run.cmd.clone(),
        };
        let mut lens = (None, None);
        let (entry, reason, peak_rss, dying_pid) = match outcome {
            Outcome::Value(bytes) => match serde_json::from_slice::<JobResult>(&bytes) {
                Ok(res) => {
                    lens = (res.out_len, res.err_len);
                    (entry(res.exitval, res.signal, res.start, res.runtime), res.reason, res.peak_rss, None)
                }
                Err(e) => {
                    self.say(&format!("job {}: unreadable answer from its worker: {e}", run.job.seq));
                    (entry(-1, 0, run.submitted_wall, elapsed), Reason::Error, 0, None)
                }
            },
            Outcome::Raised(msg) => {
                self.say(&format!("job {}: {}", run.job.seq, String::from_utf8_lossy(&msg)));
                (entry(-1, 0, run.submitted_wall, elapsed), Reason::Error, 0, None)
            }
            Outcome::Failed(TaskError::TimedOut { pid, limit, .. }) => {
                self.say(&format!(
                    "job {} timed out after {:.3} s and is stopped: {}",
                    run.job.seq,
                    limit.as_secs_f64(),
                    run.cmd
                ));
                (entry(-1, libc::SIGTERM, run.submitted_wall, elapsed), Reason::Timeout, 0, Some(pid))
            }
            Outcome::Failed(TaskError::Cancelled(_)) if run.late => {
                // The worker is being stopped; its pid is not known here, so the output
                // is copied now, without waiting for the tree to be gone.
                (entry(-1, libc::SIGTERM, run.submitted_wall, elapsed), Reason::Timeout, 0, None)
            }
            Outcome::Failed(TaskError::Terminated(_)) | Outcome::Failed(TaskError::Cancelled(_)) => {
                (entry(-1, libc::SIGTERM, run.submitted_wall, elapsed), Reason::Halt, 0, None)
            }
            Outcome::Failed(TaskError::WorkerLost(w)) => {
                self.say(&w.to_string());
                let sig = match w.cause {
                    LossCause::Exited(hangfree::ExitStatus::Signal(s)) => s,
                    _ => 0,
                };
                (entry(-1, sig, run.submitted_wall, elapsed), Reason::Error, 0, None)
            }
            Outcome::Failed(e) => {
                self.say(&e.to_string());
                (entry(-1, 0, run.submitted_wall, elapsed), Reason::Error, 0, None)
            }
        };
        if !entry.ok() && reason != Reason::Halt && run.attempt < self.plan_args.retries && !self.stopping {
            let _ = std::fs::remove_file(&run.out);
            let _ = std::fs::remove_file(&run.err);
            if let Some(pid) = dying_pid {
                self.wait_for_worker(None, run.slot, pid);
            }
            self.retry.push_back((run.job, run.ord, run.attempt + 1));
            return;
        }
        let fin = Finished { run, entry, reason, peak_rss, lens };
        self.count(pool, &fin);
        match dying_pid {
            // The job is still being stopped (its worker had SIGTERM; SIGKILL may follow):
            // its output and log line wait until the worker is gone.
            Some(pid) => {
                let slot = fin.run.slot;
                self.wait_for_worker(Some(fin), slot, pid);
            }
            None => self.ended(fin),
        }
    }

    /// Keeps a timed-out job's slot (and the job, to print and log) until its worker,
    /// which is stopping the job's tree, is gone.
    fn wait_for_worker(&mut self, fin: Option<Finished>, slot: usize, pid: i32) {
        let fd = rustix::process::Pid::from_raw(pid)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
        let limit = Instant::now() + self.stop_bound;
        self.dying.push(Dying { fin, slot, fd, limit, pid });
    }

    /// Counts an ended job toward the exit status and `--halt`, and stops if it says so.
    fn count(&mut self, pool: &Pool, fin: &Finished) {
        if fin.reason == Reason::Halt {
            return;
        }
        self.done += 1;
        self.bar.inc(1);
        let ok = fin.entry.ok();
        if ok {
            self.succeeded += 1;
            let pos = self.successes.partition_point(|&x| x < fin.entry.runtime);
            self.successes.insert(pos, fin.entry.runtime);
        } else {
            self.failed += 1;
        }
        let Some(h) = self.halt else { return };
        if self.stopping {
            return;
        }
        let (n, counts) = match h.on {
            HaltOn::Fail => (self.failed, !ok),
            HaltOn::Success => (self.succeeded, ok),
            HaltOn::Done => (self.done, true),
        };
        if !counts || !h.reached(n, self.total.unwrap_or(0)) {
            return;
        }
        self.stopping = true;
        self.halt_status = Some(match h.on {
            HaltOn::Fail if h.threshold == spec::Threshold::Count(1) && fin.entry.exitval > 0 => fin.entry.exitval,
            HaltOn::Success => 0,
            _ => self.failed.min(101) as i32,
        });
        let why = match h.on {
            HaltOn::Fail => "failed",
            HaltOn::Success => "succeeded",
            HaltOn::Done => "done",
        };
        if h.now {
            self.say(&format!("halting now: {n} {} {why}; stopping the {} running", jobs(n), self.running.len()));
            pool.terminate();
        } else {
            self.say(&format!("halting soon: {n} {} {why}; waiting for the {} running", jobs(n), self.running.len()));
        }
    }

    /// A job whose outcome is final: print it when its turn comes.
    fn ended(&mut self, fin: Finished) {
        let ord = fin.run.ord;
        self.ready.insert(ord, fin);
        if self.plan_args.keep_order {
            while let Some(f) = self.ready.remove(&self.next_ord) {
                self.next_ord += 1;
                self.emit(f);
            }
            // Ords of jobs never started (halt, signal) leave gaps; flush_all prints the rest.
        } else {
            let f = self.ready.remove(&ord).expect("inserted above");
            self.emit(f);
        }
    }

    /// Prints a job's output and writes its log and result lines.
    fn emit(&mut self, mut f: Finished) {
        let tag = self.plan_args.tag.then(|| f.run.job.args.join(" "));
        let printed = f.reason != Reason::Halt;
        if printed {
            let (out, err) = (&f.run.out, &f.run.err);
            let (ot, et) = (&mut f.run.out_tail, &mut f.run.err_tail);
            let (copy_out, copy_err) = (unread(f.lens.0, ot), unread(f.lens.1, et));
            let res = self.bar.suspend(|| {
                if copy_out {
                    output::copy(out, ot, Stream::Out, tag.as_deref(), false)?;
                }
                if copy_err {
                    output::copy(err, et, Stream::Err, tag.as_deref(), false)?;
                }
                Ok::<(), std::io::Error>(())
            });
            if let Err(e) = res {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    // Whoever reads our output is gone: stop, as a shell pipeline would.
                    self.stopping = true;
                } else {
                    self.say(&format!("job {}: cannot copy its output: {e}", f.run.job.seq));
                }
            }
        }
        // As GNU parallel, jobs stopped by a halt or a signal are not logged: `--resume`
        // runs them again.
        if let (Some(log), true) = (&mut self.joblog, printed) {
            if let Err(e) = log.write(&f.entry) {
                self.say(&format!("cannot write the job log: {e}"));
            }
        }
        if let Some(file) = &mut self.results {
            let record = serde_json::json!({
                "seq": f.entry.seq,
                "host": ":",
                "starttime": f.entry.start,
                "jobruntime": f.entry.runtime,
                "send": 0,
                "receive": 0,
                "exitval": f.entry.exitval,
                "signal": f.entry.signal,
                "command": f.entry.command,
                "args": f.run.job.args,
                "attempt": f.run.attempt,
                "reason": f.reason,
                "peak_rss": f.peak_rss,
                "stdout": output::read_text(&f.run.out),
                "stderr": output::read_text(&f.run.err),
            });
            if let Err(e) = writeln!(file, "{record}") {
                self.bar.suspend(|| eprintln!("hangfree: cannot write the results file: {e}"));
            }
        }
        // Only a job whose worker saw its whole tree gone (it exited, was killed by a
        // signal or for memory) leaves files nothing writes to any more: a job stopped by
        // the engine may leave a process behind that still holds them. They are emptied
        // here, not only by the next job's worker, so that `--line-buffer` never reads
        // this job's lines as the next one's before its worker has opened them.
        let reusable = matches!(f.reason, Reason::Exit | Reason::Signal | Reason::Memory);
        let empty = |len: Option<u64>, path: &std::path::Path| len == Some(0) || emptied(path);
        if reusable && empty(f.lens.0, &f.run.out) && empty(f.lens.1, &f.run.err) {
            self.spare_files.push((f.run.out, f.run.err));
        } else {
            let _ = std::fs::remove_file(&f.run.out);
            let _ = std::fs::remove_file(&f.run.err);
        }
    }

    /// `--timeout N%`: the limit for a job starting now, if there is a median yet.
    fn relative_limit(&self) -> Option<Duration> {
        match self.timeout {
            Some(Timeout::OfMedian(f)) if self.successes.len() >= MEDIAN_MIN => {
                let median = self.successes[self.successes.len() / 2];
                Some(Duration::from_secs_f64((median * f).max(0.001)))
            }
            _ => None,
        }
    }

    /// Work between outcomes: jobs that started before `--timeout N%` had a median and
    /// have passed it since, lines of running jobs, stopped jobs whose worker is gone.
    fn tick(&mut self, pool: &Pool) {
        if let Some(limit) = self.relative_limit() {
            for run in self.running.values_mut().filter(|r| !r.limited && !r.late) {
                if run.submitted.elapsed() > limit {
                    run.late = true;
                    // Cancelling stops the worker with the same escalation as a time limit.
                    pool.cancel(run.id);
                    let msg = format!(
                        "job {} timed out after {:.3} s and is stopped: {}",
                        run.job.seq,
                        limit.as_secs_f64(),
                        run.cmd
                    );
                    self.bar.suspend(|| eprintln!("hangfree: {msg}"));
                }
            }
        }
        self.finish_dying(false);
        if !self.plan_args.line_buffer {
            return;
        }
        let keep_order = self.plan_args.keep_order;
        let next = self.next_ord;
        let tag_on = self.plan_args.tag;
        let bar = self.bar.clone();
        for run in self.running.values_mut() {
            if keep_order && run.ord != next {
                continue;
            }
            let tag = tag_on.then(|| run.job.args.join(" "));
            let _ = bar.suspend(|| -> std::io::Result<()> {
                output::copy(&run.out, &mut run.out_tail, Stream::Out, tag.as_deref(), true)?;
                output::copy(&run.err, &mut run.err_tail, Stream::Err, tag.as_deref(), true)?;
                Ok(())
            });
        }
    }

    /// Ends time-outs whose worker has exited (or all of them, at the end).
    fn finish_dying(&mut self, all: bool) {
        let mut i = 0;
        while i < self.dying.len() {
            let Dying { fd, limit, .. } = &self.dying[i];
            let gone = match fd {
                Some(fd) => {
                    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
                    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
                }
                None => true,
            };
            if gone || all || Instant::now() > *limit {
                let Dying { fin, slot, pid, .. } = self.dying.swap_remove(i);
                if slot != 0 {
                    self.free_slots.insert(slot);
                }
                let Some(mut fin) = fin else { continue };
                // As GNU parallel logs it: the runtime includes the term sequence.
                fin.entry.runtime = fin.run.submitted.elapsed().as_secs_f64();
                let marker = crate::worker::killed_marker(&fin.run.out.to_string_lossy());
                let worker_killed = std::fs::remove_file(&marker).is_ok();
                if self.killed_pids.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid) || worker_killed {
                    fin.entry.signal = libc::SIGKILL;
                }
                self.ended(fin);
            } else {
                i += 1;
            }
        }
    }

    /// Prints what still waits for its turn: after a halt or a signal, jobs that were never
    /// started leave gaps in the order.
    fn flush_all(&mut self) {
        let rest = std::mem::take(&mut self.ready);
        for (_, f) in rest {
            self.emit(f);
        }
    }
}
