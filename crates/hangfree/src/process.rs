//! One supervised child process: spawn by exec in its own process group, a pidfd for its
//! exit, signals to the whole group, and a bounded collect (status, sweep, reap).
//!
//! Nothing here blocks: exits are observed by polling the pidfd in the pool's epoll loop,
//! and every function returns at once. The escalation *policy* (when to send what) lives
//! in the pool's worker life cycle (`pool/lifecycle.rs`); this module only carries it out.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::outcome::ExitStatus;

/// Environment variable that tells a worker its parent's pid, so it can notice that it was
/// orphaned between its start and its `PR_SET_PDEATHSIG` call.
pub const ENV_PARENT_PID: &str = "HANGFREE_PARENT_PID";
/// Environment variable that tells a worker the largest frame it may accept.
pub const ENV_MAX_FRAME: &str = "HANGFREE_MAX_FRAME";

/// The program a pool runs as its workers. The channel arrives on the worker's standard
/// input; see `PROTOCOL.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCommand {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
}

impl WorkerCommand {
    /// A worker started as `program` with no arguments.
    pub fn new(program: impl AsRef<Path>) -> WorkerCommand {
        WorkerCommand { program: program.as_ref().to_owned(), args: Vec::new(), env: Vec::new(), cwd: None }
    }

    /// Appends an argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> WorkerCommand {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> WorkerCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the worker (the rest is inherited).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> WorkerCommand {
        self.env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sets the worker's working directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> WorkerCommand {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// The program path.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Applies the arguments, environment and working directory to `c`.
    pub(crate) fn configure(&self, c: &mut Command) {
        c.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
    }
}

/// The id of a child process of ours (a worker or the fork server), always positive.
///
/// There is no separate process-group id type: each of these children leads its own
/// group, so the only group the pool ever signals is the one whose id is the child's pid,
/// and only [`Child`] does that (a group id read back from a process is never signalled;
/// see [`Child::signal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Pid(i32);

impl Pid {
    /// The pid `raw`, if it can be a process's (positive).
    pub(crate) fn from_raw(raw: i32) -> Option<Pid> {
        (raw > 0).then_some(Pid(raw))
    }

    /// The number, as the public API (events, errors) carries it.
    pub(crate) fn get(self) -> i32 {
        self.0
    }

    /// The same pid for rustix's calls.
    pub(crate) fn to_rustix(self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.0).expect("positive by construction")
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A worker process just started: the child, our end of its channel and the read end of
/// its stderr, all non-blocking.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub child: Child,
    pub channel: UnixStream,
    pub stderr: OwnedFd,
}

/// A child process of ours that leads its own process group, as every worker and the fork
/// server do: its pid, which is also the id of that group, and a pidfd for its exit.
///
/// Everything done to the process goes through here, so a group signal can only reach
/// the group the child was started in (see [`Child::signal`]), and waiting, reading the
/// status and reaping all use the pidfd.
#[derive(Debug)]
pub(crate) struct Child {
    pid: Pid,
    pidfd: OwnedFd,
}

/// Starts one worker.
///
/// `std::process::Command` with only stdio redirection and `process_group(0)` takes the
/// posix_spawn path: the host (which has threads) is never forked into running code. The
/// channel is the child's stdin; the worker moves it off fd 0 before running any task.
pub(crate) fn spawn(cmd: &WorkerCommand, max_frame: u64) -> io::Result<Spawned> {
    let (child, channel, stderr) = launch(cmd, max_frame, None)?;
    let stderr = stderr.expect("a worker's stderr is piped");
    channel.set_nonblocking(true)?;
    set_nonblocking(&stderr)?;
    Ok(Spawned { child, channel, stderr })
}

/// Starts `cmd` by exec in a process group of its own, its channel on stdin: as a worker
/// (stderr piped to us, returned) or, with `fork_server_env` set, as a fork server with
/// that variable added and our stderr as its own. Returns the child and our end of the
/// channel, still blocking.
pub(crate) fn launch(
    cmd: &WorkerCommand,
    max_frame: u64,
    fork_server_env: Option<(&str, &str)>,
) -> io::Result<(Child, UnixStream, Option<OwnedFd>)> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut c = Command::new(&cmd.program);
    cmd.configure(&mut c);
    c.env(ENV_PARENT_PID, std::process::id().to_string())
        .env(ENV_MAX_FRAME, max_frame.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::inherit())
        .process_group(0);
    let what = match fork_server_env {
        Some((k, v)) => {
            c.env(k, v).stderr(Stdio::inherit());
            "the fork server "
        }
        None => {
            c.stderr(Stdio::piped());
            ""
        }
    };
    let mut child = c
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {what}`{}`: {e}", cmd.program.display())))?;
    let pid = Pid::from_raw(child.id() as i32).expect("a started child has a pid");
    let stderr: Option<OwnedFd> = child.stderr.take().map(Into::into);
    // `child` is dropped without waiting: the pidfd owns the exit from here on.
    drop(child);
    let pidfd = match rustix::process::pidfd_open(pid.to_rustix(), PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            // Only possible if the kernel already reaped it (SIGCHLD ignored by the host)
            // and the pid is gone; nothing of ours is left to supervise.
            let _ = rustix::process::kill_process_group(pid.to_rustix(), Signal::KILL);
            return Err(io::Error::other(format!("pidfd_open({pid}) of {what}failed: {e}")));
        }
    };
    Ok((Child { pid, pidfd }, ours, stderr))
}

pub(crate) fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

impl Child {
    /// A child that leads the process group whose id is its pid (it was started with
    /// `process_group(0)`, or made it so), with a pidfd for it.
    pub(crate) fn new(pid: Pid, pidfd: OwnedFd) -> Child {
        Child { pid, pidfd }
    }

    /// Its pid, which is also its process group's id.
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// The pidfd, readable when the child exits (for the pool's epoll loop).
    pub(crate) fn pidfd(&self) -> &OwnedFd {
        &self.pidfd
    }

    /// Sends `sig` to the child's own process group, so its descendants get it too, and to
    /// the child itself through its pidfd if it is no longer in that group.
    ///
    /// The group signalled is always the one whose id is the child's pid: the group it
    /// created and leads. While it is our unreaped child nobody else can hold that pid, so
    /// that group is the child's or empty. A group id read back from the process is never
    /// signalled: a task can move itself into another group of its session — the caller's
    /// included — and signalling that group would kill the caller. A child that left is
    /// reached by its pidfd alone; what it started before leaving stays in its group. A
    /// group already gone is not an error.
    pub(crate) fn signal(&self, sig: Signal) {
        self.signal_own_group(sig);
        let left = rustix::process::getpgid(Some(self.pid.to_rustix())).is_ok_and(|g| g != self.pid.to_rustix());
        // SIGKILL goes to the child itself every time: it may be leaving the group just
        // now, and a second SIGKILL costs nothing. Other signals only if it left, so a
        // worker that handles SIGTERM gets it once.
        if left || sig == Signal::KILL {
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, sig);
        }
    }

    /// Sends `sig` to the child process alone, not its group (a request only it
    /// understands, such as the stack dump).
    pub(crate) fn signal_alone(&self, sig: Signal) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, sig);
    }

    /// Sends `sig` to the process group whose id is the child's pid (see
    /// [`Child::signal`] for why only that one).
    fn signal_own_group(&self, sig: Signal) {
        match rustix::process::kill_process_group(self.pid.to_rustix(), sig) {
            Ok(()) | Err(Errno::SRCH) => {}
            // EPERM means a member changed credentials; nothing better can be done for it.
            Err(_) => {}
        }
    }

    /// Reads the exit status without reaping, if the child has exited.
    ///
    /// While the leader is an unreaped zombie its pid, and so its process group id,
    /// cannot be reused: that is what makes the group sweep after it safe.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        let opts = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
        match rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), opts) {
            Ok(Some(st)) => {
                if let Some(code) = st.exit_status() {
                    Some(ExitStatus::Code(code))
                } else if let Some(sig) = st.terminating_signal() {
                    Some(ExitStatus::Signal(sig))
                } else if st.exited() || st.killed() || st.dumped() {
                    Some(ExitStatus::Unknown)
                } else {
                    // A child that has not changed state yet: siginfo comes back zeroed.
                    None
                }
            }
            Ok(None) => None,
            // ECHILD: the kernel reaped it already (the host ignores SIGCHLD).
            Err(Errno::CHILD) => Some(ExitStatus::Unknown),
            Err(_) => None,
        }
    }

    /// Collects an exited child: sweeps its process group with SIGKILL (grandchildren
    /// that outlived it), then reaps it. Call only after [`Child::exit_status`] returned a
    /// status.
    pub(crate) fn sweep_and_reap(&self) {
        self.signal_own_group(Signal::KILL);
        let _ =
            rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED | WaitIdOptions::NOHANG);
    }

    /// SIGKILLs the child's process group, waits up to `limit` for the child to exit (on
    /// its pidfd), then sweeps and reaps it. Returns false if it had not exited by then:
    /// it is left unreaped, never waited for longer.
    pub(crate) fn kill_and_reap(&self, limit: Duration) -> bool {
        self.signal(Signal::KILL);
        let deadline = Instant::now() + limit;
        loop {
            if self.exit_status().is_some() {
                self.sweep_and_reap();
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ts = rustix::time::Timespec { tv_sec: 0, tv_nsec: left.as_nanos().min(10_000_000) as i64 };
            let mut fds = [rustix::event::PollFd::new(&self.pidfd, rustix::event::PollFlags::IN)];
            let _ = rustix::event::poll(&mut fds, Some(&ts));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_exit(s: &Spawned) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = s.child.exit_status() {
                return st;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "child did not exit");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn exit_code_and_signal_are_read_then_reaped() {
        let s = spawn(&WorkerCommand::new("/bin/sh").args(["-c", "exit 3"]), 1024).unwrap();
        assert_eq!(wait_exit(&s), ExitStatus::Code(3));
        // Still a zombie until swept and reaped: the status can be read twice.
        assert_eq!(s.child.exit_status(), Some(ExitStatus::Code(3)));
        s.child.sweep_and_reap();
        assert!(!std::path::Path::new(&format!("/proc/{}", s.child.pid())).exists());

        let s = spawn(&WorkerCommand::new("/bin/sleep").arg("30"), 1024).unwrap();
        assert_eq!(s.child.exit_status(), None);
        s.child.signal(Signal::KILL);
        assert_eq!(wait_exit(&s), ExitStatus::Signal(9));
        s.child.sweep_and_reap();
    }

    #[test]
    fn worker_leads_its_own_group() {
        let s = spawn(&WorkerCommand::new("/bin/sleep").arg("30"), 1024).unwrap();
        let pgid = rustix::process::getpgid(Some(s.child.pid().to_rustix())).unwrap();
        assert_eq!(pgid, s.child.pid().to_rustix());
        s.child.signal(Signal::KILL);
        wait_exit(&s);
        s.child.sweep_and_reap();
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let e = spawn(&WorkerCommand::new("/nonexistent/worker"), 1024).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/worker"), "{e}");
    }
}
