//! The worker side of the channel, for worker programs written in Rust (and, through the
//! Python extension, for the Python worker): one implementation of the protocol.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::process::Signal;

use crate::arena::{self, Area, Arena};
use crate::fork_server::{self, ForkHooks, NoHooks};
use crate::page::Page;
use crate::process::{ENV_MAX_FRAME, ENV_PARENT_PID};
use crate::wire::{self, DEFAULT_MAX_FRAME, Frame, Kind, ReadError};

/// The worker's end of its channel to the pool.
#[derive(Debug)]
pub struct WorkerChannel {
    reader: BufReader<File>,
    writer: File,
    max_frame: u64,
    /// Shared with the pool, which learns through it what this worker started.
    page: Arc<Page>,
    /// Shared with the pool, for large payloads (None if it could not be made).
    arena: Option<Arena>,
    /// Answers sent through the arena (compared with what the pool consumed).
    placed: u64,
    /// The region of the arena that holds the payload `recv_header` announced.
    pending: Option<std::ops::Range<usize>>,
}

impl WorkerChannel {
    /// Takes the channel the pool passed on standard input and prepares the process to be
    /// a worker:
    ///
    /// - moves the channel off fd 0 (to a close-on-exec descriptor) and puts `/dev/null`
    ///   on fd 0, so nothing a task reads or runs can touch the channel;
    /// - asks the kernel for a signal when its parent dies (`PR_SET_PDEATHSIG`), whose
    ///   handler SIGKILLs this worker's whole process group (its children included), then
    ///   checks the parent is still the pool's process, which closes the race where the
    ///   parent died before the request was made;
    /// - ignores the terminal's job-control signals SIGTTOU and SIGTTIN (see
    ///   [`ignore_job_control`]), so a worker, a background job on the caller's terminal,
    ///   is never stopped by it.
    ///
    /// If the pool started this program as its fork server (see `PROTOCOL.md`), this call
    /// serves the pool's fork requests instead and returns only in each forked worker,
    /// prepared the same way; the server itself exits when the pool closes its channel.
    /// The program must then still be single-threaded here.
    ///
    /// Returns an error if the parent is already gone; the worker should then exit.
    pub fn from_stdin() -> io::Result<WorkerChannel> {
        Self::from_stdin_with(&mut NoHooks)
    }

    /// [`WorkerChannel::from_stdin`], with hooks a language runtime runs around each fork
    /// when this process is the pool's fork server.
    pub fn from_stdin_with(hooks: &mut dyn ForkHooks) -> io::Result<WorkerChannel> {
        // First: until then a write to the terminal could stop this process. A fork
        // server's workers inherit it through the fork.
        ignore_job_control()?;
        let stdin = rustix::stdio::stdin();
        let chan: OwnedFd = rustix::io::fcntl_dupfd_cloexec(stdin, 3)?;
        let devnull = File::open("/dev/null")?;
        // SAFETY: fd 0 is ours to replace: the channel now lives on `chan`.
        rustix::stdio::dup2_stdin(devnull.as_fd())?;
        drop(devnull);
        set_parent_death_signal()?;
        if !fork_server::requested() {
            return Self::from_fd(chan);
        }
        // SAFETY: a fork server is single-threaded (see above), so nothing reads the
        // environment concurrently. Removed so that neither the workers nor what they
        // start take themselves for a fork server.
        unsafe { std::env::remove_var(fork_server::ENV_FORK_SERVER) };
        let channel = fork_server::serve(chan, hooks)?;
        // The fork cleared the parent-death signal; the new worker asks again.
        set_parent_death_signal()?;
        Self::from_fd(channel)
    }

    /// Wraps an already-prepared channel descriptor.
    pub fn from_fd(fd: OwnedFd) -> io::Result<WorkerChannel> {
        let max_frame = std::env::var(ENV_MAX_FRAME).ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MAX_FRAME);
        let reader = File::from(fd);
        let writer = reader.try_clone()?;
        let page = Arc::new(Page::create()?);
        // Without an arena (no memfd sealing, say) everything travels on the channel.
        let arena = Arena::create().ok();
        let reader = BufReader::with_capacity(64 * 1024, reader);
        Ok(WorkerChannel { reader, writer, max_frame, page, arena, placed: 0, pending: None })
    }

    /// The progress page this worker shares with its pool: a chunk's loop reports each
    /// item's start there ([`Page::start_item`]).
    pub fn page(&self) -> Arc<Page> {
        self.page.clone()
    }

    /// Receives the next frame; `Ok(None)` when the pool closed the channel. Polls
    /// briefly before sleeping: in a stream of short tasks the next one is usually on its
    /// way (see [`crate::spin`]).
    ///
    /// A task is claimed on the progress page as it is received: if the pool has revoked
    /// this worker meanwhile (it is stopping it and gave its tasks to others), this
    /// returns `Ok(None)` as if the channel had ended, and the worker must exit.
    pub fn recv(&mut self) -> Result<Option<Frame>, ReadError> {
        self.poll_briefly();
        let Some(mut f) = wire::read_frame(&mut self.reader, self.max_frame)? else { return Ok(None) };
        if f.arena {
            let range = self.arena_range(&f.payload)?;
            let arena = self.arena.as_ref().expect("checked by arena_range");
            f.payload = arena.read(Area::ToWorker, range);
            f.arena = false;
        }
        Ok(Some(f).filter(|f| self.claim(f.kind, f.task_id)))
    }

    /// Where the payload an arena descriptor names is in the area the pool writes.
    fn arena_range(&self, descriptor: &[u8]) -> Result<std::ops::Range<usize>, ReadError> {
        let bad = |why: String| ReadError::Protocol(wire::ProtocolError::Unexpected(why));
        if self.arena.is_none() {
            return Err(bad("an arena frame, but this worker has no arena".into()));
        }
        arena::parse_descriptor(descriptor, self.max_frame).map_err(|e| bad(e.to_string()))
    }

    fn claim(&self, kind: Kind, task_id: u64) -> bool {
        !matches!(kind, Kind::Task | Kind::Chunk) || self.page.claim(task_id)
    }

    fn poll_briefly(&mut self) {
        if self.reader.buffer().is_empty() {
            let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
            crate::spin::poll_for(crate::spin::WORKER, || {
                let mut fds = [rustix::event::PollFd::new(self.reader.get_ref(), rustix::event::PollFlags::IN)];
                rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0)
            });
        }
    }

    /// Receives the next frame's header: `(kind, task_id, payload length)`, or `Ok(None)`
    /// when the pool closed the channel. The caller then reads exactly that many bytes
    /// with [`WorkerChannel::recv_payload`], into memory of its own (a Python `bytes`,
    /// say), which saves a copy of large payloads.
    pub fn recv_header(&mut self) -> Result<Option<(Kind, u64, usize)>, ReadError> {
        self.poll_briefly();
        self.pending = None;
        let Some((kind, in_arena, len, id)) = wire::read_header_flagged(&mut self.reader, self.max_frame)? else {
            return Ok(None);
        };
        let len = if in_arena {
            let mut d = [0u8; arena::DESCRIPTOR_LEN];
            wire::fill(&mut self.reader, &mut d, 0, arena::DESCRIPTOR_LEN)?;
            let range = self.arena_range(&d)?;
            let len = range.len();
            self.pending = Some(range);
            len
        } else {
            len as usize
        };
        Ok(Some((kind, id, len)).filter(|&(kind, id, _)| self.claim(kind, id)))
    }

    /// Fills `buf` with the payload announced by [`WorkerChannel::recv_header`].
    pub fn recv_payload(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        if let Some(payload) = self.arena_payload() {
            buf.copy_from_slice(payload);
            return Ok(());
        }
        let need = buf.len();
        wire::fill(&mut self.reader, buf, 0, need)
    }

    /// The payload announced by [`WorkerChannel::recv_header`], borrowed from the arena,
    /// if it is there (instead of [`WorkerChannel::recv_payload`]); None if it is on the
    /// channel. The pool leaves it unchanged until this worker answers the task.
    pub fn arena_payload(&mut self) -> Option<&[u8]> {
        let range = self.pending.take()?;
        // SAFETY: the pool writes this region only after the task is answered (see
        // `crate::arena`), and the answer needs `&mut self`, which this borrow holds.
        self.arena.as_ref().map(|a| unsafe { a.slice(Area::ToWorker, range) })
    }

    /// Sends one frame.
    pub fn send(&mut self, kind: Kind, task_id: u64, payload: &[u8]) -> io::Result<()> {
        self.send_parts(kind, task_id, &[payload])
    }

    /// Sends one frame whose payload is the concatenation of `parts`, with vectored
    /// writes instead of joining them first.
    pub fn send_parts(&mut self, kind: Kind, task_id: u64, parts: &[&[u8]]) -> io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = total as u64;
        if len > wire::MAX_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "payload longer than a frame can carry"));
        }
        if self.send_through_arena(kind, task_id, parts, total)? {
            return Ok(());
        }
        let h = wire::header(kind, task_id, len);
        let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(parts.len() + 1);
        slices.push(io::IoSlice::new(&h));
        slices.extend(parts.iter().filter(|p| !p.is_empty()).map(|p| io::IoSlice::new(p)));
        let mut rest = &mut slices[..];
        if kind == Kind::Ready {
            // The page goes with the first bytes of the Ready frame.
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            let mut fds = vec![self.page.fd()];
            fds.extend(self.arena.as_ref().map(|a| a.fd()));
            control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
            let n = loop {
                match rustix::net::sendmsg(&self.writer, rest, &mut control, rustix::net::SendFlags::NOSIGNAL) {
                    Err(rustix::io::Errno::INTR) => {}
                    r => break r?,
                }
            };
            io::IoSlice::advance_slices(&mut rest, n);
        }
        while !rest.is_empty() {
            match self.writer.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends a large answer through the arena if it is free (the pool consumed every
    /// answer sent through it before); says whether it did.
    fn send_through_arena(&mut self, kind: Kind, task_id: u64, parts: &[&[u8]], total: usize) -> io::Result<bool> {
        let Some(arena) = self.arena.as_ref() else { return Ok(false) };
        let answer = matches!(kind, Kind::Value | Kind::Raised | Kind::Items);
        let fits = arena::wanted(total) && total as u64 <= self.max_frame;
        if !answer || !fits || !arena.accepted() || arena.consumed() != self.placed {
            return Ok(false);
        }
        arena.write(Area::ToPool, 0, parts);
        let mut frame = wire::header(kind, task_id, arena::DESCRIPTOR_LEN as u64).to_vec();
        frame[0] |= wire::IN_ARENA;
        frame.extend_from_slice(&arena::descriptor(0, total));
        self.writer.write_all(&frame)?;
        self.placed += 1;
        Ok(true)
    }

    /// Writes raw bytes on the channel, bypassing framing. Only for tests of the pool's
    /// handling of a worker that writes garbage.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// The two descriptors of the channel, to close it (a worker that wants to stop
    /// talking without exiting).
    pub fn into_fds(self) -> (File, File) {
        (self.reader.into_inner(), self.writer)
    }
}

impl AsFd for WorkerChannel {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.writer.as_fd()
    }
}

/// Makes this process, and what it starts, immune to the terminal's job control.
///
/// A worker leads its own process group, so on the caller's terminal it is a background
/// job, where a `multiprocessing` worker is in the caller's (foreground) group. The
/// kernel stops a background process with SIGTTOU when it writes to its terminal while
/// `stty tostop` is set, or changes the terminal's settings (`tcsetattr`, as `getpass`
/// does), and with SIGTTIN when it reads from it. Nothing would ever continue it: the
/// task would hang, or end as timed out "stuck in a native call".
///
/// - SIGTTOU is ignored: the kernel then lets the write or the `tcsetattr` go through, as
///   it does for a `multiprocessing` worker.
/// - SIGTTIN is ignored too: a read from the terminal then fails at once with `EIO`
///   (the task gets an error) instead of stopping the worker for good. The terminal's
///   input stays with the caller, the foreground job (making a worker the foreground job
///   would send the caller's Ctrl-C to it). A worker's standard input is `/dev/null`, so
///   this concerns only a task that opens `/dev/tty` and reads it, as `getpass` does: a
///   `multiprocessing` worker, in the caller's foreground group, would read the keyboard;
///   here the read is an error, never a hang.
///
/// Ignored signals stay ignored across `exec`, so the worker's own children (a shell, a
/// subprocess) are immune as well. A child that sets them back to the default and is then
/// stopped is still ended by the group kill: it stays in the worker's group, and SIGKILL
/// ends a stopped process. Nothing else about signals changes: SIGTERM and SIGKILL to the
/// group reach every member as before.
pub fn ignore_job_control() -> io::Result<()> {
    for sig in [libc::SIGTTOU, libc::SIGTTIN] {
        // SAFETY: SIG_IGN runs no code of ours; the signals are valid numbers.
        if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Ends this worker and every process in its group (its children) at once, with SIGKILL.
///
/// For a worker that finds its channel closed without a `Shutdown` frame: the pool is
/// gone or is stopping it. The parent-death signal may come only after the channel's end
/// of file (the kernel closes a dying process's descriptors first), and a worker that
/// simply exited then would leave its children behind.
pub fn kill_own_group() -> ! {
    sigkill_group_and_self();
    std::process::abort()
}

/// SIGKILL to the group this worker created (the one whose id is its pid), then to
/// itself, which may have left that group. Never to "its current group" (`kill(0, ..)`):
/// a task can move the worker into another group, the pool's own included, and that
/// group must not be killed. Only async-signal-safe calls: the parent-death handler uses
/// it too.
fn sigkill_group_and_self() {
    // SAFETY: plain system calls with no memory arguments.
    unsafe {
        let me = libc::getpid();
        libc::kill(-me, libc::SIGKILL);
        libc::kill(me, libc::SIGKILL);
    }
}

/// The signal the kernel sends a worker when the pool's process dies. A real-time signal
/// nothing else uses, because its handler must do more than SIGKILL would: kill the whole
/// process group, so the worker's own children die with it.
fn parent_death_signal() -> libc::c_int {
    libc::SIGRTMAX() - 3
}

extern "C" fn on_parent_death(_: libc::c_int) {
    sigkill_group_and_self();
}

/// Arranges for this process and its process group to be SIGKILLed when the parent dies,
/// then exits at once if the parent named in the environment is already gone (we were
/// re-parented before the request took effect).
fn set_parent_death_signal() -> io::Result<()> {
    let sig = parent_death_signal();
    // SAFETY: a plain handler installed with an empty mask; the handler is signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_parent_death as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        // The host may have blocked it; the worker must receive it.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    // SAFETY: `sig` is a valid real-time signal number from libc.
    let signal = unsafe { Signal::from_raw_unchecked(sig) };
    rustix::process::set_parent_process_death_signal(Some(signal))?;
    let expected: Option<i32> = std::env::var(ENV_PARENT_PID).ok().and_then(|v| v.parse().ok());
    let actual = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    if let Some(want) = expected {
        if actual != Some(want) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the pool's process {want} is gone (parent is now {actual:?})"),
            ));
        }
    }
    Ok(())
}
