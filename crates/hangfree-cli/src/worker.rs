//! `hangfree __worker`: the worker program of the command line's pool. Each task is one
//! job: `sh -c CMD` (or CMD's program itself, when CMD is a simple command: see
//! [`crate::direct`]), with its output in the files the job names, in this worker's
//! process group, so that the engine's group kill (time limit, Ctrl-C, the pool's death)
//! reaches the whole job.
//!
//! The worker is also a child subreaper: a job's background processes whose parent
//! exited become its children, so it can find every process of a job, even one that left
//! the process group with `setsid`, while it runs. It uses that three ways:
//!
//! - when the shell exits, processes the job left behind are killed: a job's tree ends
//!   with the job;
//! - with a memory limit, the resident memory of the whole tree is summed every 50 ms and
//!   the tree is killed when the sum passes the limit;
//! - on the engine's SIGTERM (the job passed its time limit, or the run is stopping) the
//!   worker forwards it to processes outside its group and waits for the tree to exit, so
//!   that the job gets the whole grace period (the engine kills what is left of the group
//!   the moment the worker exits), then SIGKILLs the tree itself just before the engine's
//!   SIGKILL, which would not reach processes outside the group.
//!
//! When the run sends jobs ahead (see `run.rs`), the job slot (`{%}`,
//! `PARALLEL_JOBSLOT`) is the worker's own, not the job's: a job sent ahead waits behind
//! another in some worker's channel, and which one is known only to the engine. The
//! worker takes a slot at start-up (see [`take_slot`]) and keeps it for its life.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hangfree::wire::Kind;
use hangfree::worker::WorkerChannel;

use crate::job::{JobResult, JobSpec, Reason};

/// How often the tree's memory is summed when a job has a memory limit.
const MEMORY_POLL: Duration = Duration::from_millis(50);

/// The variable that gives the worker its job slots to choose from: `J WAIT_MS DIR`, the
/// slots 1..=J as the files [`slot_file`] in DIR, and how long to wait for one.
pub const ENV_SLOTS: &str = "HANGFREE_RUN_SLOTS";

static TERM_ASKED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM_ASKED.store(true, Ordering::SeqCst);
}

/// Runs the worker until the pool shuts it down; never returns.
pub fn main() -> ! {
    let mut ch = match WorkerChannel::from_stdin() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hangfree worker: {e}");
            std::process::exit(70);
        }
    };
    // SAFETY: plain prctl and sigaction calls; the handler only stores to an atomic.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        // No SA_RESTART: the signal must interrupt the wait for the job.
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
    // The slot this worker took, and the locked file that holds it until the worker exits.
    let mut own_slot: Option<(usize, File)> = None;
    loop {
        let frame = match ch.recv() {
            Ok(Some(f)) => f,
            Ok(None) => hangfree::worker::kill_own_group(),
            Err(e) => {
                eprintln!("hangfree worker: {e}");
                std::process::exit(71);
            }
        };
        let (kind, payload) = match frame.kind {
            Kind::Init => {
                if let Some(v) = std::env::var_os(ENV_SLOTS) {
                    match take_slot(&v.to_string_lossy()) {
                        Ok(s) => own_slot = Some(s),
                        Err(e) => {
                            // Never two running jobs with one slot: a worker without one
                            // does not start (the pool counts a start-up failure).
                            eprintln!("hangfree worker: {e}");
                            std::process::exit(73);
                        }
                    }
                }
                (Kind::Ready, Vec::new())
            }
            Kind::Shutdown => std::process::exit(0),
            Kind::Task => match serde_json::from_slice::<JobSpec>(&frame.payload) {
                Ok(spec) => match run(&spec, own_slot.as_ref().map_or(0, |s| s.0)) {
                    Ok(r) => (Kind::Value, serde_json::to_vec(&r).expect("a result serializes")),
                    Err(e) => (Kind::Raised, e.into_bytes()),
                },
                Err(e) => (Kind::Raised, format!("bad job: {e}").into_bytes()),
            },
            other => {
                eprintln!("hangfree worker: unexpected {other:?}");
                std::process::exit(72);
            }
        };
        if ch.send(kind, frame.task_id, &payload).is_err() {
            hangfree::worker::kill_own_group();
        }
    }
}

/// A job slot for this worker's life: the first of the slot files that no other live
/// worker holds, locked (`flock`) until this worker exits. A worker being stopped still
/// holds its slot while its job's tree gets the term sequence, so its replacement waits
/// for it here, before it says it is ready, for at most WAIT_MS (the grace period and the
/// engine's wait for a killed worker, and a margin); past that, an error.
fn take_slot(var: &str) -> Result<(usize, File), String> {
    let mut it = var.splitn(3, ' ');
    let (Some(n), Some(wait), Some(dir)) = (it.next(), it.next(), it.next()) else {
        return Err(format!("malformed {ENV_SLOTS}: {var:?}"));
    };
    let n: usize = n.parse().map_err(|_| format!("malformed {ENV_SLOTS}: {var:?}"))?;
    let wait: u64 = wait.parse().map_err(|_| format!("malformed {ENV_SLOTS}: {var:?}"))?;
    let deadline = Instant::now() + Duration::from_millis(wait);
    loop {
        for slot in 1..=n {
            let path = slot_file(Path::new(dir), slot);
            // Opened close-on-exec (std's default): no job inherits the lock.
            let f = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
                return Ok((slot, f));
            }
        }
        if TERM_ASKED.load(Ordering::SeqCst) {
            std::process::exit(143);
        }
        if Instant::now() >= deadline {
            return Err(format!("no free job slot among {n} after {wait} ms"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The file whose lock is job slot `slot` (see [`take_slot`]).
pub fn slot_file(dir: &Path, slot: usize) -> PathBuf {
    dir.join(format!("slot-{slot}"))
}

/// Runs one job; `own_slot` is this worker's slot, for a job that names none (0).
fn run(spec: &JobSpec, own_slot: usize) -> Result<JobResult, String> {
    let slot = if spec.slot != 0 { spec.slot } else { own_slot };
    if slot == 0 {
        return Err("the job has no slot and the worker none of its own".into());
    }
    let create = |path: &str| File::create(path).map_err(|e| format!("cannot create {path}: {e}"));
    let (out, err) = (create(&spec.stdout)?, create(&spec.stderr)?);
    let start_wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let started = Instant::now();
    let job_env = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .env("PARALLEL_SEQ", spec.seq.to_string())
            .env("PARALLEL_JOBSLOT", slot.to_string())
            .env_remove(ENV_SLOTS)
            .env_remove("HANGFREE_PARENT_PID")
            .env_remove("HANGFREE_MAX_FRAME");
    };
    // A simple command starts without the shell; if it cannot start, the shell runs it
    // (and says why, or runs a script without `#!` as it would).
    let direct = crate::direct::command(&spec.cmd).and_then(|(program, words)| {
        let mut cmd = Command::new(program);
        cmd.arg0(&words[0]).args(&words[1..]).stdout(out.try_clone().ok()?).stderr(err.try_clone().ok()?);
        job_env(&mut cmd);
        cmd.spawn().ok()
    });
    let child = match direct {
        Some(child) => child,
        None => {
            let mut cmd = Command::new(shell());
            cmd.arg0("sh").arg("-c").arg(&spec.cmd).stdout(out).stderr(err);
            job_env(&mut cmd);
            cmd.spawn().map_err(|e| format!("cannot start sh: {e}"))?
        }
    };
    let pid = child.id() as i32;
    // The child is reaped below with wait4 (for its resource usage), not through `child`.
    drop(child);
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).expect("a child's pid is positive"),
        rustix::process::PidfdFlags::empty(),
    )
    .map_err(|e| format!("pidfd_open: {e}"))?;
    let mut peak_tree = 0u64;
    let mut over_memory = false;
    loop {
        if TERM_ASKED.load(Ordering::SeqCst) {
            stop_for_engine(Duration::from_millis(spec.grace_ms), &spec.stdout);
        }
        // SIGTERM interrupts the poll, unless it came just before it: the timeout bounds
        // how late the worker then notices.
        let wait = if spec.mem_limit.is_some() { MEMORY_POLL } else { Duration::from_millis(100) };
        let ts = rustix::time::Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: wait.subsec_nanos() as i64 };
        let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
        let ready = matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0);
        if let (Some(limit), false) = (spec.mem_limit, over_memory) {
            let sum: u64 = descendants().iter().filter_map(|&p| rss(p)).sum();
            peak_tree = peak_tree.max(sum);
            if sum > limit {
                over_memory = true;
                kill_tree();
            }
        }
        if ready {
            break;
        }
    }
    let mut status = 0;
    // SAFETY: rusage is plain data; `pid` is our unreaped child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let runtime = started.elapsed().as_secs_f64();
    if TERM_ASKED.load(Ordering::SeqCst) {
        // The shell died of the engine's SIGTERM: the rest of the tree gets its grace
        // period too, rather than the SIGKILL that ends a job's stragglers.
        stop_for_engine(Duration::from_millis(spec.grace_ms), &spec.stdout);
    }
    kill_tree();
    // A tree killed for memory may have been reaped by `kill_tree` already, its status
    // lost to `wait4`: the kill is what ended it.
    let (exitval, signal) = if over_memory {
        (-1, libc::SIGKILL)
    } else if libc::WIFSIGNALED(status) {
        // GNU parallel logs a job that died of a signal it did not send as exit value 0.
        (0, libc::WTERMSIG(status))
    } else {
        (libc::WEXITSTATUS(status), 0)
    };
    let reason = if over_memory {
        Reason::Memory
    } else if signal != 0 {
        Reason::Signal
    } else {
        Reason::Exit
    };
    let peak_rss = (usage.ru_maxrss.max(0) as u64 * 1024).max(peak_tree);
    // The tree is gone: nothing writes to the files any more.
    let len = |path: &str| std::fs::metadata(path).ok().map(|m| m.len());
    let (out_len, err_len) = (len(&spec.stdout), len(&spec.stderr));
    Ok(JobResult { exitval, signal, start: start_wall, runtime, peak_rss, reason, out_len, err_len })
}

/// `sh`, found on `PATH` once per worker rather than by trying each directory of `PATH`
/// at every job.
fn shell() -> &'static PathBuf {
    static SH: OnceLock<PathBuf> = OnceLock::new();
    SH.get_or_init(|| crate::direct::find("sh").unwrap_or_else(|| PathBuf::from("sh")))
}

/// The engine sent SIGTERM to this worker's group: the job passed its time limit or the
/// run is stopping. Processes that left the group (`setsid`) get it too; then the worker
/// waits for the whole tree to exit, and exits. If the tree outlives the grace period,
/// the engine's SIGKILL to the group ends the job and this worker together — but not
/// processes outside the group, so the worker SIGKILLs the whole tree itself just before
/// the grace period ends (a tenth of it, at most 50 ms, before), and says so by creating
/// the file [`killed_marker`] of the job's stdout, for the job log's Signal column.
fn stop_for_engine(grace: Duration, stdout: &str) -> ! {
    let kill_at = Instant::now() + grace - (grace / 10).min(Duration::from_millis(50));
    // SAFETY: getpgrp has no failure mode.
    let group = unsafe { libc::getpgrp() };
    for p in descendants() {
        // SAFETY: plain system calls on pids of our own tree.
        unsafe {
            if libc::getpgid(p) != group {
                libc::kill(p, libc::SIGTERM);
            }
        }
    }
    loop {
        reap_all();
        if descendants().is_empty() {
            std::process::exit(143);
        }
        if Instant::now() >= kill_at {
            let _ = File::create(killed_marker(stdout));
            kill_tree();
            std::process::exit(143);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The file whose existence says that the worker SIGKILLed a job whose stdout is `stdout`
/// (the engine never had to: the worker exited before the grace period ended).
pub fn killed_marker(stdout: &str) -> String {
    format!("{stdout}.killed")
}

/// SIGKILLs every process of the tree below this worker and reaps them, for at most a
/// second (a process stuck in the kernel may take longer to die; the engine's group kill
/// remains behind this).
fn kill_tree() {
    if !has_children() {
        // The usual end of a job, in one system call instead of a walk of /proc.
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let d = descendants();
        if d.is_empty() || Instant::now() > deadline {
            return;
        }
        for p in d {
            // SAFETY: `p` is in our tree: our child (unreaped, so the pid is not reused)
            // or a child of one.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        reap_all();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether this worker has a child, live or not yet reaped. Without one it has no
/// descendant at all: it is a subreaper, so a process whose parent died is re-parented to
/// it (or to a live descendant of it) when that parent dies.
fn has_children() -> bool {
    // SAFETY: siginfo_t is plain data; WNOWAIT leaves any child as it is.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
    !(r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
}

/// Reaps every child that has exited.
fn reap_all() {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on any child of ours.
    while unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } > 0 {}
}

/// Every live process below this worker (children, theirs, ...), from
/// `/proc/PID/task/TID/children`.
fn descendants() -> Vec<i32> {
    let mut found = Vec::new();
    let mut todo = vec![std::process::id() as i32];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            let Ok(list) = std::fs::read_to_string(t.path().join("children")) else { continue };
            for c in list.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                if found.len() < 100_000 {
                    found.push(c);
                    todo.push(c);
                }
            }
        }
    }
    found
}

/// Resident memory of one process in bytes.
fn rss(pid: i32) -> Option<u64> {
    hangfree::memory::rss_bytes(pid)
}
