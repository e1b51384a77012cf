//! Runs the real `hangfree` binary, every run bounded by a watchdog: a run that passes
//! its limit is SIGKILLed (its workers die with it) and the test fails saying so.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a run printed and how it ended.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// Stdout's lines, sorted (for runs whose order is not defined).
    pub fn sorted_lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self.stdout.lines().map(str::to_owned).collect();
        v.sort();
        v
    }
}

/// The `hangfree` command, with its own process group (so the watchdog's kill cannot
/// reach the test runner) and `dir` as working directory and `TMPDIR` (so the output
/// directory of a run the test kills goes with the test's directory).
pub fn command(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hangfree"));
    c.args(args).current_dir(dir).env("TMPDIR", dir).process_group(0);
    c
}

/// Runs `hangfree ARGS` in `dir` with `stdin` as input, for at most `limit`.
pub fn run_in(dir: &Path, args: &[&str], stdin: &[u8], limit: Duration) -> Run {
    let mut c = command(dir, args);
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = c.spawn().expect("start hangfree");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = wait_bounded(child, limit);
    let _ = feeder.join();
    let code = out.status.code();
    Run {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: t0.elapsed(),
    }
}

/// Runs `hangfree ARGS` in a fresh directory with no input, for at most 30 s.
pub fn run(args: &[&str]) -> Run {
    let dir = tempdir();
    run_in(dir.path(), args, b"", Duration::from_secs(30))
}

/// Waits for `child`'s output, SIGKILLing its group and failing the test after `limit`.
pub fn wait_bounded(child: Child, limit: Duration) -> std::process::Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            // SAFETY: the child leads its own process group (see `command`).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("wait for hangfree");
    let finished_in_time = tx.send(()).is_ok();
    assert!(finished_in_time, "hangfree ran past its {limit:?} watchdog and was killed");
    out
}

/// A temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("hangfree-cli-test-").tempdir().expect("temp dir")
}

/// Whether process `pid` still exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits up to `limit` for `pid` to be gone.
pub fn gone_within(pid: i32, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    !alive(pid)
}

/// Reads pids written one per line to `path`.
pub fn pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// `path` as a `&str` argument.
pub fn s(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_owned()
}

/// A path in `dir`.
pub fn at(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
