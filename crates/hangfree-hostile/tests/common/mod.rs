//! The harness shared by the real-process test binaries: a watchdog, pool builders
//! tagged so each test finds its own workers in /proc, and /proc helpers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hangfree::{Outcome, Pool, PoolBuilder, TaskError, TaskHandle, WorkerCommand};

pub const BIN: &str = env!("CARGO_BIN_EXE_hangfree-hostile");
/// Generous bound on any single wait that should finish "soon".
pub const LONG: Duration = Duration::from_secs(20);

// ----- harness ------------------------------------------------------------------------

/// Runs `body` on its own thread and fails if it takes longer than `limit`: a hang is a
/// failure, never a stuck test run.
pub fn watchdog(limit: Duration, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel::<()>();
    let h = thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            body();
            let _ = tx.send(());
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(()) => h.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test body still running after {limit:?}: HANG"),
    }
}

pub fn wd(body: impl FnOnce() + Send + 'static) {
    watchdog(Duration::from_secs(60), body)
}

pub static TAGS: AtomicU64 = AtomicU64::new(0);

pub fn new_tag(name: &str) -> String {
    format!("{}-{}-{}", name, std::process::id(), TAGS.fetch_add(1, Ordering::Relaxed))
}

/// A pool of hostile workers tagged `tag`. With `HF_TEST_FORK_SERVER=1` in the test's
/// environment its workers are forked by a fork server (the test command runs the
/// contract tests both ways).
pub fn builder(tag: &str) -> PoolBuilder {
    Pool::builder(WorkerCommand::new(BIN).env("HF_TEST_TAG", tag))
        .forward_stderr(false)
        .fork_server(std::env::var_os("HF_TEST_FORK_SERVER").is_some_and(|v| v == "1"))
}

/// Starts `hangfree-hostile --pool-parent` tagged `tag`: a process running a one-worker
/// pool (forked by a fork server when `fork_server` is true or `HF_TEST_FORK_SERVER=1` is
/// in this test's environment), and reads the pids it prints: its worker, then that
/// worker's grandchild.
#[track_caller]
pub fn pool_parent(tag: &str, fork_server: bool) -> (std::process::Child, Vec<i32>) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--pool-parent").env("HF_TEST_TAG", tag).stdout(std::process::Stdio::piped());
    if fork_server {
        cmd.env("HF_TEST_FORK_SERVER", "1");
    }
    let mut parent = cmd.spawn().expect("start the pool parent");
    let mut line = String::new();
    std::io::BufReader::new(parent.stdout.take().expect("piped")).read_line(&mut line).expect("its pids");
    let pids: Vec<i32> = line.split_whitespace().map(|p| p.parse().expect("a pid")).collect();
    assert_eq!(pids.len(), 2, "{line:?}");
    (parent, pids)
}

#[track_caller]
pub fn wait(h: &TaskHandle) -> Outcome {
    h.wait_timeout(LONG).unwrap_or_else(|| panic!("task {} has no outcome after {LONG:?}", h.id()))
}

#[track_caller]
pub fn value(h: &TaskHandle) -> Vec<u8> {
    match wait(h) {
        Outcome::Value(v) => v,
        o => panic!("task {} expected a value, got {o:?}", h.id()),
    }
}

#[track_caller]
pub fn failed(o: Outcome) -> TaskError {
    match o {
        Outcome::Failed(e) => e,
        o => panic!("expected a failure, got {o:?}"),
    }
}

pub fn s(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

#[track_caller]
pub fn submit(pool: &Pool, payload: &str) -> TaskHandle {
    pool.submit(payload.as_bytes().to_vec()).expect("submit")
}

#[track_caller]
pub fn pid_of(pool: &Pool) -> i32 {
    let h = submit(pool, "!pid");
    s(&value(&h)).parse().unwrap()
}

#[track_caller]
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[track_caller]
pub fn shutdown(pool: &Pool) {
    pool.terminate();
    pool.join(Some(Duration::from_secs(10))).expect("join after terminate");
}

// ----- /proc --------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
}

pub fn stat(pid: i32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ppid pgrp ...`; comm may hold spaces and parentheses.
    let comm = text[text.find('(')? + 1..text.rfind(')')?].to_owned();
    let rest = &text[text.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    Some(Proc { pid, comm, state, ppid, pgid })
}

pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Live (non-zombie) processes whose environment carries `tag`: a pool's workers and
/// everything they started.
pub fn tagged(tag: &str) -> Vec<Proc> {
    let needle = format!("HF_TEST_TAG={tag}\0");
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .filter_map(stat)
        .filter(|p| p.state != 'Z')
        .collect()
}

/// The pool's worker processes: tagged processes that lead their own group (not the fork
/// server, which does too).
pub fn workers_of(tag: &str) -> Vec<i32> {
    tagged(tag)
        .into_iter()
        .filter(|p| p.pgid == p.pid && p.ppid == std::process::id() as i32 && !is_fork_server(p))
        .map(|p| p.pid)
        .collect()
}

/// Whether a process is a pool's fork server (it names itself so).
pub fn is_fork_server(p: &Proc) -> bool {
    hangfree::fork_server::SERVER_NAME.to_str().is_ok_and(|n| p.comm == n)
}

/// Whether a process is gone: no /proc entry, or a zombie that is not our child (a
/// reparented grandchild waiting for init to reap it is dead, just not yet buried).
pub fn is_dead(pid: i32) -> bool {
    match stat(pid) {
        None => true,
        Some(p) => p.state == 'Z' && p.ppid != std::process::id() as i32,
    }
}

/// Processes left in any of `groups` that count as alive (any non-zombie, or a zombie
/// that is our own unreaped child).
pub fn left_in_groups(groups: &BTreeSet<i32>) -> Vec<Proc> {
    all_pids().into_iter().filter_map(stat).filter(|p| groups.contains(&p.pgid) && !is_dead(p.pid)).collect()
}

pub fn ignores_sigterm(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (15 - 1)) != 0)
}
