//! The fork server: a worker program started once by exec, kept idle, that forks a
//! ready-made worker whenever the pool asks. Starting a Python worker by exec costs an
//! interpreter start and its imports (~25 ms); forking the idle template costs about a
//! millisecond, so a crashed worker is replaced almost at once.
//!
//! Both ends of the server's small protocol live here: `ForkServer` is the pool's side,
//! `serve` the server's (reached through [`crate::worker::WorkerChannel::from_stdin`]).
//!
//! The server forks with `CLONE_PARENT`, so each worker is a child of the *pool's*
//! process, exactly as an exec'd one is: the pool waits on its pidfd, reads its exit
//! status, sweeps its group and reaps it with the same code, and the worker's parent-death
//! signal follows the pool's supervisor thread (the server's own parent). The server never
//! runs a task and holds no worker's channel, so a worker's death, a task's misbehaviour or
//! a stuck worker cannot reach it.
//!
//! The server is single-threaded and forks only between requests, so no lock can be held
//! across the fork; a host with a language runtime (Python) passes [`ForkHooks`] to keep
//! the runtime's own state right.

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use rustix::process::{PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::process::{self, Pid, Spawned, WorkerCommand};

/// Environment variable set (to `1`) when the pool starts its worker command as a fork
/// server instead of as a worker. The server removes it from its own environment first,
/// so the workers it forks, and whatever they start, do not see it.
pub const ENV_FORK_SERVER: &str = "HANGFREE_FORK_SERVER";

/// The one request: fork a worker. It carries two descriptors (`SCM_RIGHTS`): the
/// worker's end of its channel and the write end of its stderr pipe.
const REQUEST: [u8; 8] = *b"HFFORK\x01\x00";

/// Hooks a language runtime runs around each fork, as its own `fork()` wrapper would
/// (Python: `PyOS_BeforeFork`, `PyOS_AfterFork_Parent`, `PyOS_AfterFork_Child`).
pub trait ForkHooks {
    /// Just before the fork, in the server.
    fn before(&mut self) {}
    /// Just after the fork, in the server.
    fn after_in_parent(&mut self) {}
    /// Just after the fork, in the new worker.
    fn after_in_child(&mut self) {}
}

/// Hooks that do nothing, for workers written in Rust.
#[derive(Debug, Default)]
pub struct NoHooks;
impl ForkHooks for NoHooks {}

// ----- the pool's side ----------------------------------------------------------------

/// The pool's handle on its fork server: the server's pid and pidfd, and the control
/// socket requests go out on.
#[derive(Debug)]
pub(crate) struct ForkServer {
    child: process::Child,
    control: UnixStream,
    /// Whether the server has answered once (it is up, its imports are done).
    answered: bool,
    /// The first request, sent without waiting for its answer (see
    /// [`ForkServer::request_first`]).
    first: Option<FirstFork>,
    /// What it was started from, when it was started to be kept (see [`take_or_start`]).
    key: Option<Key>,
}

/// The first fork asked of a server that has not answered yet: our ends of the worker's
/// channel and stderr, the answer read so far, and when waiting for it ends.
#[derive(Debug)]
struct FirstFork {
    channel: UnixStream,
    stderr: OwnedFd,
    reply: [u8; 8],
    got: usize,
    deadline: Instant,
}

/// How long the first request may wait: the server is starting (an interpreter and its
/// imports, on a machine that may be loaded).
const FIRST_REPLY: Duration = Duration::from_secs(10);
/// How long a later request may wait: a fork takes about a millisecond.
const LATER_REPLY: Duration = Duration::from_secs(2);

impl ForkServer {
    /// Starts the worker command as a fork server: by exec, in its own process group, with
    /// the control socket on its standard input and the pool's stderr as its own. Returns
    /// at once; the first request ([`ForkServer::request_first`], or
    /// [`ForkServer::fork`]) is answered once the server is up.
    pub(crate) fn start(cmd: &WorkerCommand, max_frame: u64) -> io::Result<ForkServer> {
        let (child, control, _) = process::launch(cmd, max_frame, Some((ENV_FORK_SERVER, "1")))?;
        Ok(ForkServer { child, control, answered: false, first: None, key: None })
    }

    /// The server's pid.
    pub(crate) fn pid(&self) -> Pid {
        self.child.pid()
    }

    /// Whether the server has answered a request (it is up, its imports are done): only
    /// then does [`ForkServer::fork`] wait briefly.
    pub(crate) fn has_answered(&self) -> bool {
        self.answered
    }

    /// The control socket, readable when the server answers the first request (for the
    /// pool's epoll loop).
    pub(crate) fn control(&self) -> &UnixStream {
        &self.control
    }

    /// When waiting for the answer to [`ForkServer::request_first`] ends, while it is
    /// awaited.
    pub(crate) fn first_deadline(&self) -> Option<Instant> {
        self.first.as_ref().map(|f| f.deadline)
    }

    /// Asks the server for one worker and waits (bounded) for its pid. The worker comes
    /// back as an exec'd one would: our end of its channel, its stderr, a pidfd, and it
    /// leads its own process group. An error means the server cannot be used any more:
    /// stop it and start workers by exec.
    ///
    /// The first request may wait up to 10 s for the server to start;
    /// [`ForkServer::request_first`] asks without waiting.
    pub(crate) fn fork(&mut self) -> io::Result<Spawned> {
        let (channel, stderr) = self.send_request()?;
        let limit = if self.answered { LATER_REPLY } else { FIRST_REPLY };
        let pid = self.read_reply(limit)?;
        self.complete(pid, channel, stderr)
    }

    /// Sends the first request without waiting for the answer, which takes as long as
    /// the server's start (an interpreter and its imports). The pool reads it with
    /// [`ForkServer::read_first`] when the control socket is readable, and gives up at
    /// [`ForkServer::first_deadline`].
    pub(crate) fn request_first(&mut self, now: Instant) -> io::Result<()> {
        debug_assert!(!self.answered && self.first.is_none());
        let (channel, stderr) = self.send_request()?;
        self.first = Some(FirstFork { channel, stderr, reply: [0; 8], got: 0, deadline: now + FIRST_REPLY });
        Ok(())
    }

    /// Reads the answer to [`ForkServer::request_first`] without blocking: `None` while it
    /// is not whole, else the worker as [`ForkServer::fork`] returns it (an error means the
    /// server cannot be used any more). Past the deadline, the error says so.
    pub(crate) fn read_first(&mut self, now: Instant) -> Option<io::Result<Spawned>> {
        let f = self.first.as_mut()?;
        loop {
            if f.got == f.reply.len() {
                break;
            }
            match rustix::net::recv(&self.control, &mut f.reply[f.got..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    self.first = None;
                    return Some(Err(self.closed()));
                }
                Ok((n, _)) => f.got += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) if now < f.deadline => return None,
                Err(rustix::io::Errno::AGAIN) => {
                    self.first = None;
                    return Some(Err(self.late(FIRST_REPLY)));
                }
                Err(e) => {
                    self.first = None;
                    return Some(Err(e.into()));
                }
            }
        }
        let f = self.first.take().expect("checked above");
        Some(self.parse_reply(f.reply).and_then(|pid| self.complete(pid, f.channel, f.stderr)))
    }

    /// Sends one request, with the worker's ends of its channel and stderr; returns ours.
    fn send_request(&mut self) -> io::Result<(UnixStream, OwnedFd)> {
        let (ours, theirs) = UnixStream::pair()?;
        let (err_read, err_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        send_request(&self.control, &theirs, &err_write)?;
        Ok((ours, err_read))
    }

    /// Takes the worker `pid` the server forked for a request, given our ends of its
    /// channel and stderr.
    fn complete(&mut self, pid: Pid, ours: UnixStream, err_read: OwnedFd) -> io::Result<Spawned> {
        self.answered = true;
        let p = pid.to_rustix();
        // The worker does the same first thing; doing it here too means the group exists
        // before this returns, whichever of us runs first, so a group signal cannot miss.
        let _ = rustix::process::setpgid(Some(p), Some(p));
        let pidfd = rustix::process::pidfd_open(p, PidfdFlags::empty())
            .map_err(|e| io::Error::other(format!("pidfd_open({pid}) of a forked worker failed: {e}")))?;
        // A worker that is not our child could not be waited for: the kernel lacked
        // CLONE_PARENT's effect, or the pid is not what the server forked.
        if let Err(rustix::io::Errno::CHILD) = rustix::process::waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        ) {
            let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
            return Err(io::Error::other(format!("the fork server's worker {pid} is not a child of the pool")));
        }
        ours.set_nonblocking(true)?;
        process::set_nonblocking(&err_read)?;
        Ok(Spawned { child: process::Child::new(pid, pidfd), channel: ours, stderr: err_read })
    }

    fn read_reply(&mut self, limit: Duration) -> io::Result<Pid> {
        let mut reply = [0u8; 8];
        let mut got = 0;
        let deadline = std::time::Instant::now() + limit;
        while got < reply.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(self.late(limit));
            }
            let ts = rustix::time::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 };
            let mut fds = [rustix::event::PollFd::new(&self.control, rustix::event::PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            match (&self.control).read(&mut reply[got..]) {
                Ok(0) => return Err(self.closed()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.parse_reply(reply)
    }

    fn late(&self, limit: Duration) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the fork server {} did not answer within {:.1} s", self.pid(), limit.as_secs_f64()),
        )
    }

    fn closed(&self) -> io::Error {
        io::Error::new(io::ErrorKind::UnexpectedEof, format!("the fork server {} closed its channel", self.pid()))
    }

    /// The pid in a reply, or the error it reports.
    fn parse_reply(&self, reply: [u8; 8]) -> io::Result<Pid> {
        let answer = i64::from_le_bytes(reply);
        if let Some(pid) = i32::try_from(answer).ok().and_then(Pid::from_raw) {
            Ok(pid)
        } else if answer == -i64::from(libc::EDEADLK) {
            Err(io::Error::other(format!(
                "the fork server {} runs threads besides its own (its program's imports started them), \
                 so it cannot fork safely",
                self.pid()
            )))
        } else if (-4095..0).contains(&answer) {
            let errno = io::Error::from_raw_os_error((-answer) as i32);
            Err(io::Error::new(errno.kind(), format!("the fork server {} could not fork: {errno}", self.pid())))
        } else {
            Err(io::Error::other(format!("the fork server {} answered {answer}, not a pid", self.pid())))
        }
    }

    /// Stops the server: SIGKILL to its group (it holds nothing worth a grace period, and
    /// its workers lead groups of their own), then reaps it, waiting at most `limit`.
    /// Returns false if it could not be reaped in time (it is then abandoned).
    ///
    /// A first request still unanswered is dropped; if the server forked the worker and
    /// answered just before it died, that worker (our child) is killed and reaped too.
    pub(crate) fn stop(mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let reaped = self.child.kill_and_reap(limit);
        if self.first.is_some() {
            if let Some(Ok(s)) = self.read_first(Instant::now()) {
                s.child.kill_and_reap(deadline.saturating_duration_since(Instant::now()));
            }
        }
        reaped
    }
}

fn send_request(control: &UnixStream, channel: &UnixStream, stderr: &OwnedFd) -> io::Result<()> {
    let fds = [channel.as_fd(), stderr.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for two descriptors in a control message"));
    }
    let n = loop {
        match rustix::net::sendmsg(control, &[IoSlice::new(&REQUEST)], &mut cmsg, SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r?,
        }
    };
    if n != REQUEST.len() {
        return Err(io::Error::other(format!("short write to the fork server ({n} of {} bytes)", REQUEST.len())));
    }
    Ok(())
}

// ----- keeping a server between pools --------------------------------------------------

/// What a kept server can serve: the same command, frame limit and environment as the
/// pool asking (a server's workers see the environment of the server's start).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    cmd: WorkerCommand,
    max_frame: u64,
    env: Vec<(OsString, OsString)>,
}

impl Key {
    fn now(cmd: &WorkerCommand, max_frame: u64) -> Key {
        Key { cmd: cmd.clone(), max_frame, env: std::env::vars_os().collect() }
    }
}

/// At most this many idle servers are kept; the one kept longest goes first.
const MAX_KEPT: usize = 4;

struct Kept {
    server: ForkServer,
    until: Instant,
}

enum Job {
    Start(Key, mpsc::SyncSender<io::Result<ForkServer>>),
    /// A server was kept: its expiry may be the next one.
    Wake,
}

/// The process's keeper thread, which starts every server meant to be kept and stops
/// those left idle too long. It starts them because a server and the workers it forks
/// (`CLONE_PARENT`) are children of the *thread* that started the server, and their
/// parent-death signal fires when that thread ends: a pool's supervisor thread ends with
/// the pool, the keeper only with the process.
struct Keeper {
    /// The process it belongs to: after a fork, the child has no keeper thread, and the
    /// kept servers are its parent's children, not its own.
    owner: u32,
    jobs: mpsc::Sender<Job>,
    kept: Arc<Mutex<Vec<Kept>>>,
    /// Set by [`release_kept`] (the interpreter is exiting, or a test wants none left):
    /// pools that end after it stop their server; the next pool that starts clears it.
    releasing: bool,
}

static KEEPER: Mutex<Option<Keeper>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn keeper(slot: &mut Option<Keeper>) -> io::Result<&mut Keeper> {
    let pid = std::process::id();
    if slot.as_ref().is_some_and(|k| k.owner != pid) {
        // Forked from a process that kept servers: they are not ours to use or stop, and
        // their descriptors are only copies.
        // Nothing of it is touched, not even its lock, which another thread of the parent
        // may have held at the fork: its descriptors are left open.
        std::mem::forget(slot.take());
    }
    if slot.is_none() {
        let (jobs, rx) = mpsc::channel();
        let kept: Arc<Mutex<Vec<Kept>>> = Arc::default();
        let list = kept.clone();
        std::thread::Builder::new().name("hangfree-keeper".into()).spawn(move || keep_loop(rx, list))?;
        *slot = Some(Keeper { owner: pid, jobs, kept, releasing: false });
    }
    Ok(slot.as_mut().expect("just set"))
}

fn keep_loop(jobs: mpsc::Receiver<Job>, kept: Arc<Mutex<Vec<Kept>>>) {
    loop {
        let next = lock(&kept).iter().map(|k| k.until).min();
        let job = match next {
            Some(t) => jobs.recv_timeout(t.saturating_duration_since(Instant::now())),
            None => jobs.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match job {
            Ok(Job::Start(key, reply)) => {
                let started = ForkServer::start(&key.cmd, key.max_frame).map(|mut s| {
                    s.key = Some(key);
                    s
                });
                let _ = reply.send(started);
            }
            Ok(Job::Wake) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let expired: Vec<Kept> = {
            let mut list = lock(&kept);
            let (gone, stay) = std::mem::take(&mut *list).into_iter().partition(|k| k.until <= now);
            *list = stay;
            gone
        };
        for k in expired {
            k.server.stop(KEPT_STOP_WAIT);
        }
    }
}

/// How long stopping a kept server may wait for it to be reaped.
const KEPT_STOP_WAIT: Duration = Duration::from_secs(1);

/// A fork server for `cmd`: one an earlier pool of this process kept (see [`keep`]) if
/// one was started from the same command, frame limit and environment and is still up;
/// else a new one, started by the keeper thread so that it can outlive the pool. The
/// second value says whether it was kept.
pub(crate) fn take_or_start(cmd: &WorkerCommand, max_frame: u64) -> io::Result<(ForkServer, bool)> {
    let key = Key::now(cmd, max_frame);
    let (reply, answer) = mpsc::sync_channel(1);
    {
        let mut slot = lock(&KEEPER);
        let k = keeper(&mut slot)?;
        k.releasing = false;
        let mut list = lock(&k.kept);
        while let Some(i) = list.iter().position(|e| e.server.key.as_ref() == Some(&key)) {
            let e = list.remove(i);
            if e.server.child.exit_status().is_none() {
                return Ok((e.server, true));
            }
            e.server.stop(KEPT_STOP_WAIT);
        }
        drop(list);
        k.jobs.send(Job::Start(key, reply)).map_err(|_| io::Error::other("the fork server keeper thread is gone"))?;
    }
    let server = answer.recv().map_err(|_| io::Error::other("the fork server keeper thread is gone"))??;
    Ok((server, false))
}

/// Keeps an idle server for the next pool of this process for `idle` at most, or stops
/// it (a server not started by [`take_or_start`], or one kept while [`release_kept`] is
/// in force). Returns false if it was stopped and could not be reaped within `wait`.
pub(crate) fn keep(server: ForkServer, idle: Duration, wait: Duration) -> bool {
    let mut slot = lock(&KEEPER);
    let server = match slot.as_mut() {
        Some(k) if k.owner == std::process::id() && !k.releasing && server.key.is_some() && !idle.is_zero() => {
            let mut list = lock(&k.kept);
            list.push(Kept { server, until: Instant::now() + idle });
            let old = if list.len() > MAX_KEPT { Some(list.remove(0)) } else { None };
            drop(list);
            let _ = k.jobs.send(Job::Wake);
            match old {
                Some(o) => o.server,
                None => return true,
            }
        }
        _ => server,
    };
    drop(slot);
    server.stop(wait)
}

/// Stops every fork server kept for later pools of this process, and keeps none from
/// pools that end from now until the next pool starts. Returns how many were stopped.
/// The Python front calls it at interpreter exit; a kept server also dies with the
/// process (its parent-death signal).
pub fn release_kept() -> usize {
    let kept = {
        let mut slot = lock(&KEEPER);
        match slot.as_mut() {
            Some(k) if k.owner == std::process::id() => {
                k.releasing = true;
                std::mem::take(&mut *lock(&k.kept))
            }
            _ => Vec::new(),
        }
    };
    let n = kept.len();
    for k in kept {
        k.server.stop(KEPT_STOP_WAIT);
    }
    n
}

// ----- the server's side --------------------------------------------------------------

/// The fork server's process name (`comm`), as `ps` and `/proc/PID/stat` show it.
pub const SERVER_NAME: &std::ffi::CStr = c"hf-fork-server";

/// Whether this process was started as a fork server.
pub fn requested() -> bool {
    std::env::var_os(ENV_FORK_SERVER).is_some_and(|v| v == "1")
}

/// Serves fork requests on `control` until the pool closes it, then exits the process.
/// Returns only in a newly forked worker, with that worker's channel; the worker then
/// leads its own process group, has its stderr on fd 2 and `/dev/null` on fd 0, and no
/// descriptor of the server's.
///
/// The server must be single-threaded: the fork copies only the calling thread. A request
/// that finds other threads running is refused (the pool then starts workers by exec).
pub(crate) fn serve(control: OwnedFd, hooks: &mut dyn ForkHooks) -> io::Result<OwnedFd> {
    let clone = CloneSetup::read()?;
    // Named apart from its workers in `ps` and /proc (the workers take the name back).
    let own_name = rustix::thread::name().ok();
    let _ = rustix::thread::set_name(SERVER_NAME);
    loop {
        let mut buf = [0u8; REQUEST.len()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let got = match rustix::net::recvmsg(
            &control,
            &mut [IoSliceMut::new(&mut buf)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => r.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for msg in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        if got == 0 {
            // The pool is done with us (or gone).
            std::process::exit(0);
        }
        if got != REQUEST.len() || buf != REQUEST || fds.len() != 2 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed request on the fork server's channel"));
        }
        let stderr = fds.pop().expect("two descriptors");
        let channel = fds.pop().expect("two descriptors");
        // A fork copies only the calling thread. A server with more threads (a worker
        // program's imports may start some: OpenBLAS does, when a Python server imports the
        // caller's script and it imports numpy) would give each worker a runtime whose
        // threads are missing, and C libraries' fork handlers do not run for a raw clone.
        // Refuse: the pool then starts its workers by exec.
        if thread_count() > 1 {
            drop((channel, stderr));
            reply(&control, -i64::from(libc::EDEADLK))?;
            continue;
        }
        hooks.before();
        // SAFETY: this process is single-threaded (the caller's promise) and between
        // requests, so the child gets consistent memory; `CloneSetup` makes the C
        // library's view of the new process right, as its own fork() would.
        let forked = unsafe { clone.clone_parent() };
        match forked {
            Ok(0) => {
                // In the new worker: its own group first, before anything can signal it.
                let _ = rustix::process::setpgid(None, None);
                hooks.after_in_child();
                if let Some(name) = &own_name {
                    let _ = rustix::thread::set_name(name);
                }
                drop(control);
                rustix::stdio::dup2_stderr(&stderr)?;
                drop(stderr);
                return Ok(channel);
            }
            Ok(pid) => {
                hooks.after_in_parent();
                drop((channel, stderr));
                reply(&control, i64::from(pid))?;
            }
            Err(e) => {
                hooks.after_in_parent();
                drop((channel, stderr));
                reply(&control, -i64::from(e.raw_os_error().unwrap_or(libc::EINVAL)))?;
            }
        }
    }
}

/// How many threads this process has (1 if /proc cannot tell).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1)
}

fn reply(control: &OwnedFd, answer: i64) -> io::Result<()> {
    let bytes = answer.to_le_bytes();
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::write(control, &bytes[done..]) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What a raw `clone` needs to leave the C library consistent in the child, read once in
/// the server. glibc's `fork()` passes the address of the thread's cached tid
/// (`CLONE_CHILD_SETTID`) and re-registers the robust-futex list; a raw clone must do the
/// same or the child's `raise()`/`abort()` would signal the server. The kernel tells us
/// both addresses: `PR_GET_TID_ADDRESS` gives the clear-child-tid pointer the C library
/// registered at start (its cached tid), `get_robust_list` the robust list.
struct CloneSetup {
    tid_address: *mut libc::c_int,
    robust_head: *mut libc::c_void,
    robust_len: libc::size_t,
}

/// `struct clone_args` of `clone3(2)`, first version (64 bytes).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

impl CloneSetup {
    fn read() -> io::Result<CloneSetup> {
        let mut tid_address: *mut libc::c_int = std::ptr::null_mut();
        // SAFETY: PR_GET_TID_ADDRESS writes one pointer to the address given.
        if unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut tid_address as *mut *mut libc::c_int) } != 0 {
            return Err(io::Error::other(format!("prctl(PR_GET_TID_ADDRESS) failed: {}", io::Error::last_os_error())));
        }
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        // SAFETY: the kernel holds this address as our clear-child-tid pointer: the C
        // library put it there and the word it points to lives as long as the thread.
        if tid_address.is_null() || unsafe { tid_address.read_volatile() } != tid {
            return Err(io::Error::other("the C library's cached thread id was not found; cannot fork safely"));
        }
        let mut robust_head: *mut libc::c_void = std::ptr::null_mut();
        let mut robust_len: libc::size_t = 0;
        // SAFETY: get_robust_list(0, ...) writes the calling thread's head and length.
        let r = unsafe {
            libc::syscall(libc::SYS_get_robust_list, 0, &mut robust_head as *mut _, &mut robust_len as *mut _)
        };
        if r != 0 {
            robust_head = std::ptr::null_mut();
        }
        Ok(CloneSetup { tid_address, robust_head, robust_len })
    }

    /// `clone3(CLONE_PARENT | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID)`: a fork whose
    /// child is our parent's child. Returns 0 in the child and its pid in the parent.
    ///
    /// SAFETY: the caller must be single-threaded.
    unsafe fn clone_parent(&self) -> io::Result<i32> {
        let mut args = CloneArgs {
            flags: (libc::CLONE_PARENT | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64,
            pidfd: 0,
            child_tid: self.tid_address as u64,
            parent_tid: 0,
            // With CLONE_PARENT the kernel takes the exit signal from our own (SIGCHLD, set
            // by the pool's spawn) and requires 0 here.
            exit_signal: 0,
            stack: 0,
            stack_size: 0,
            tls: 0,
        };
        // SAFETY: a fork-like clone (no shared memory, no new stack) with a valid
        // argument block of the size given.
        let mut r = unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut CloneArgs, size_of::<CloneArgs>()) };
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            // Some sandboxes (container seccomp profiles) refuse clone3 outright.
            // SAFETY: the same fork-like clone through the older call.
            r = unsafe { self.legacy_clone(args.flags) };
        }
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 && !self.robust_head.is_null() {
            // SAFETY: the head is the one this thread registered; the memory was copied.
            unsafe { libc::syscall(libc::SYS_set_robust_list, self.robust_head, self.robust_len) };
        }
        Ok(r as i32)
    }

    /// `clone(2)` with the same flags; its argument order differs between architectures.
    ///
    /// SAFETY: as [`CloneSetup::clone_parent`].
    unsafe fn legacy_clone(&self, flags: u64) -> libc::c_long {
        let flags = flags as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
        let ctid = self.tid_address;
        let none = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: no new stack, no shared memory; the child-tid address is valid.
        #[cfg(target_arch = "x86_64")]
        let r = unsafe { libc::syscall(libc::SYS_clone, flags, none, none, ctid, none) };
        // SAFETY: as above (these take the tls argument before the child-tid one).
        #[cfg(any(target_arch = "aarch64", target_arch = "riscv64", target_arch = "arm"))]
        let r = unsafe { libc::syscall(libc::SYS_clone, flags, none, none, none, ctid) };
        #[cfg(not(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64",
            target_arch = "arm"
        )))]
        let r = {
            let _ = (flags, ctid, none);
            // SAFETY: sets errno only.
            unsafe { *libc::__errno_location() = libc::ENOSYS };
            -1
        };
        r
    }
}
