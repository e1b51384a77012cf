//! The supervisor: one thread per pool, the I/O shell around the pool's [`Core`]. An epoll
//! loop over every worker's pidfd, channel and stderr, a waker for commands from callers,
//! and the core's next deadline; it turns what it reads into the core's events and
//! carries out the effects the core queues in answer: writing frames, signalling and
//! reaping workers, starting them (by exec or from the fork server, into their cgroups),
//! reading their memory use.
//!
//! Every task the pool accepts leaves it through exactly one `Sink::complete` call — on
//! success, failure, terminate, or even a panic in this thread.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::event::epoll;
use rustix::process::Signal;

use super::config::Config;
use super::core::{Core, Effect, Event, fail_one};
use super::epoll_wait;
use super::events::{EventKind, PoolEvent};
use super::ids::WorkerId;
use super::shared::{Command, Gate, Shared, lock};
use super::stats::bump;
use crate::arena::Arena;
use crate::cgroup::WorkerCgroup;
use crate::fork_server::{self, ForkServer};
use crate::memory;
use crate::outcome::{ExitStatus, Outcome, TaskError, TaskRef};
use crate::page::Page;
use crate::process::{self, Child, Pid, Spawned};
use crate::wire::Decoder;

/// Copies worker output to this process's stderr without ever blocking: the supervisor
/// must not hang because the host's stderr is a full pipe nobody reads. Each write is at
/// most one pipe buffer page, made only when poll says the descriptor can take it; what
/// does not fit is dropped (the worker's stderr tail keeps it for error reports).
fn forward_to_stderr(bytes: &[u8]) {
    use rustix::event::{PollFd, PollFlags, poll};
    let err = rustix::stdio::stderr();
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    for chunk in bytes.chunks(4096) {
        let mut fds = [PollFd::new(&err, PollFlags::OUT)];
        match poll(&mut fds, Some(&zero)) {
            Ok(1) if fds[0].revents().contains(PollFlags::OUT) => {}
            _ => return,
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            match rustix::io::write(err, rest) {
                Ok(0) => return,
                Ok(n) => rest = &rest[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// Reads from a starting worker's channel, which passes its progress page (see
/// [`crate::page`]) with its Ready frame; a descriptor that is not a page is closed.
fn read_with_page(
    chan: &UnixStream,
    dec: &mut Decoder,
    page: &mut Option<Page>,
    arena: &mut Option<Arena>,
    buf: &mut [u8],
) -> io::Result<usize> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(buf)];
    let r = recvmsg(chan, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT)?;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            // The page, then (from workers that have one) the arena; one that does not
            // pass the checks is left out, and the worker's arena frames are then refused.
            for (i, fd) in fds.enumerate() {
                match i {
                    0 if page.is_none() => *page = Page::from_worker(fd).ok(),
                    1 if arena.is_none() => *arena = Arena::from_worker(fd).ok(),
                    _ => {}
                }
            }
        }
    }
    dec.feed(&buf[..r.bytes]);
    Ok(r.bytes)
}

const WAKER: u64 = u64::MAX;
/// The fork server's control socket, while its answer to the first request is awaited.
const FORK_REPLY: u64 = u64::MAX - 1;
const FD_PID: u64 = 0;
const FD_CHAN: u64 = 1;
const FD_ERR: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChannelEnd {
    /// Nothing more to read now (or the channel was already dropped).
    Drained,
    /// End of file, or a read error: the worker will not say more.
    Closed,
}

/// A worker's process and descriptors: what the shell needs to talk to it, signal it and
/// reap it. What it was sent and where it is in its life is the core's.
struct Conn {
    id: WorkerId,
    child: Child,
    chan: Option<UnixStream>,
    stderr: Option<OwnedFd>,
    dec: Decoder,
    out: Vec<u8>,
    out_pos: usize,
    want_out: bool,
    /// The kernel's OOM-kill count when it started (evidence for an OOM kill).
    oom_mark: Option<u64>,
    /// Its own cgroup, in cgroup mode: killed whole with it, setsid daemons included.
    cgroup: Option<WorkerCgroup>,
}

pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    core: Core,
    epoll: OwnedFd,
    conns: Vec<Option<Conn>>,
    scratch: Vec<u8>,
    /// The fork server, once started; `None` again for good after it failed.
    forks: Option<ForkServer>,
    forks_failed: bool,
}

impl Supervisor {
    pub fn new(shared: Arc<Shared>, cfg: Config) -> io::Result<Supervisor> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        if let Some(fd) = lock(&shared.waker).as_ref() {
            epoll::add(&epoll, fd, epoll::EventData::new_u64(WAKER), epoll::EventFlags::IN)?;
        }
        Ok(Supervisor {
            core: Core::new(shared.clone(), cfg),
            shared,
            epoll,
            conns: Vec::new(),
            scratch: vec![0; 64 * 1024],
            forks: None,
            forks_failed: false,
        })
    }

    fn cfg(&self) -> &Config {
        self.core.config()
    }

    /// Starts the first worker (or the fork server that forks it), so a command that
    /// cannot run is reported by `build`.
    pub fn start_first(&mut self) -> io::Result<()> {
        // With a fork server, `build` waits only for its exec (a command that cannot run
        // is still reported): its first fork waits for the server's interpreter and
        // imports, tens of milliseconds the caller need not spend in `Pool()`. The loop
        // asks for the first worker and goes on serving commands until the server
        // answers (see `on_first_fork`), then forks the others.
        let cfg = self.core.config();
        if cfg.fork_server && cfg.cgroup_parent.is_none() {
            self.start_fork_server();
            if self.forks.is_some() {
                return Ok(());
            }
        }
        self.spawn_worker(Instant::now())
    }

    /// The first start failed when `build` did not wait for it: a start-up failure like a
    /// later worker's, retried by the loop until `max_startup_failures`.
    pub fn first_start_failed(&mut self, e: io::Error) {
        self.handle(Event::SpawnFailed(e.to_string()), Instant::now());
    }

    /// Runs the loop until the pool is closed or terminated and every worker is gone.
    /// Whatever happens — even a panic in here — every accepted task gets its outcome,
    /// and `join` is woken: a panic fails the pool ([`Supervisor::fail`]) and goes no
    /// further than this thread (the panic hook has printed it).
    pub fn run(mut self) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.run_loop())) {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let why: Arc<str> = format!("its supervisor thread panicked ({what}); this is a bug in hangfree").into();
            let _ = catch_unwind(AssertUnwindSafe(|| self.fail(why)));
        }
        let _ = catch_unwind(AssertUnwindSafe(|| self.finish()));
        self.announce_finished();
    }

    /// After a panic in the loop, whose state may be half-updated: takes no more tasks,
    /// ends every task it holds (and every submission still in the inbox) as
    /// [`TaskError::PoolFailed`], and kills and reaps every worker, waiting at most
    /// `kill_wait` in all. Runs no code of the caller's but the sinks, each of which may
    /// panic alone.
    fn fail(&mut self, why: Arc<str>) {
        let cmds = {
            let mut inbox = lock(&self.shared.inbox);
            inbox.gate = Gate::Failed(why.clone());
            std::mem::take(&mut inbox.cmds)
        };
        self.core.fail_all(&why);
        for cmd in cmds {
            if let Command::Submit { sink, first_id, tasks, .. } = cmd {
                for (i, t) in tasks.into_iter().enumerate() {
                    fail_one(&self.shared, &sink, i, TaskRef { id: first_id.nth(i).get(), label: t.label }, &why);
                }
            }
        }
        for c in self.conns.iter().flatten() {
            c.child.signal(Signal::KILL);
            if let Some(cg) = &c.cgroup {
                cg.kill();
            }
        }
        let deadline = Instant::now() + self.cfg().timing.kill_wait;
        for c in std::mem::take(&mut self.conns).into_iter().flatten() {
            if !c.child.kill_and_reap(deadline.saturating_duration_since(Instant::now())) {
                bump(&self.shared.stats.workers_abandoned);
            }
        }
    }

    fn run_loop(&mut self) {
        let mut events = Vec::with_capacity(64);
        let mut now;
        let mut active = false;
        loop {
            // Commands drained now may have arrived long after the epoll wake-up, and a
            // task's clock must not start before it is sent: read the clock again.
            now = Instant::now();
            self.drain_inbox(now);
            self.core.tidy(now);
            self.apply(now);
            self.ensure_workers(now);
            self.core.dispatch(now);
            self.apply(now);
            if self.core.is_finished() {
                return;
            }
            let deadline = self.core.next_deadline().into_iter().chain(self.first_fork_deadline()).min();
            let timeout = deadline.map(|at| at.saturating_duration_since(now));
            events.clear();
            // Right after activity the next event (an answer, a submission) usually comes
            // within microseconds: poll for it briefly instead of paying a sleep and a
            // cross-CPU wake-up. An idle pool never spins.
            if active {
                crate::spin::poll_for(crate::spin::WAIT, || {
                    let _ = epoll_wait::wait(&self.epoll, &mut events, Some(Duration::ZERO));
                    !events.is_empty()
                });
            }
            if events.is_empty() {
                if let Err(e) = epoll_wait::wait(&self.epoll, &mut events, timeout) {
                    panic!("epoll_wait failed: {e}");
                }
            }
            active = !events.is_empty();
            now = Instant::now();
            for ev in events.iter() {
                let (flags, data) = ({ ev.flags }, { ev.data }.u64());
                if data == WAKER {
                    // Consume the eventfd *before* clearing `woken`. The other order loses
                    // wake-ups: a caller that sets `woken` and writes between the clear
                    // and the read has its write eaten, leaving `woken` set with the
                    // eventfd empty, so every later `wake()` skips its write and the
                    // supervisor never sees the next submission or `terminate`. In this
                    // order a write is only skipped while `woken` is still set, i.e. before
                    // the clear, and the commands it announces are drained below anyway.
                    let mut b = [0u8; 8];
                    if let Some(fd) = lock(&self.shared.waker).as_ref() {
                        let _ = rustix::io::read(fd, &mut b);
                    }
                    self.shared.woken.store(false, Ordering::Release);
                    continue;
                }
                if data == FORK_REPLY {
                    self.on_first_fork(now);
                    continue;
                }
                let (id, kind) = WorkerId::from_token(data);
                if self.conn(id).is_none() {
                    continue;
                }
                match kind {
                    FD_PID => self.on_exit(id, now),
                    FD_CHAN => {
                        if flags.contains(epoll::EventFlags::OUT) {
                            self.flush(id, now);
                        }
                        if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR) {
                            self.on_readable(id, now);
                        }
                    }
                    _ => self.read_stderr(id),
                }
            }
            if self.first_fork_deadline().is_some_and(|at| at <= now) {
                self.on_first_fork(now);
            }
            self.core.fire_timers(now);
            self.apply(now);
        }
    }

    fn finish(&mut self) {
        // Before `finished` is announced: after `join` no process of the pool is left.
        self.stop_fork_server();
        let leftover = {
            let mut inbox = lock(&self.shared.inbox);
            if !matches!(inbox.gate, Gate::Broken(_) | Gate::Failed(_)) {
                inbox.gate = Gate::Terminated;
            }
            std::mem::take(&mut inbox.cmds)
        };
        // Submissions cannot arrive after the gate closed, but be exact about any that did.
        for cmd in leftover {
            if let Command::Submit { sink, first_id, tasks, .. } = cmd {
                for (i, t) in tasks.into_iter().enumerate() {
                    let task = TaskRef { id: first_id.nth(i).get(), label: t.label };
                    bump(&self.shared.stats.terminated);
                    sink.complete(i, Outcome::Failed(TaskError::Terminated(task)));
                }
            }
        }
    }

    /// Says the pool has finished (wakes `join`) and closes the waker.
    fn announce_finished(&self) {
        *lock(&self.shared.finished) = true;
        self.shared.finished_cv.notify_all();
        lock(&self.shared.waker).take();
    }

    fn drain_inbox(&mut self, now: Instant) {
        let cmds = std::mem::take(&mut lock(&self.shared.inbox).cmds);
        for cmd in cmds {
            self.handle(Event::Command(cmd), now);
        }
    }

    /// Gives the core an event and carries out what it asks at once, so each event's
    /// effects land before the next event is read (as the kernel ordered them).
    fn handle(&mut self, ev: Event, now: Instant) {
        self.core.handle(ev, now);
        self.apply(now);
    }

    /// Carries out the core's effects, oldest first. Some lead to further events (a write
    /// that finds the channel broken, an exit check); their effects join the same queue.
    fn apply(&mut self, now: Instant) {
        while let Some(effect) = self.core.next_effect() {
            match effect {
                Effect::Send(id, bytes) => {
                    let Some(c) = self.conn_mut(id) else { continue };
                    if c.chan.is_none() {
                        continue;
                    }
                    let spent = if c.out.is_empty() {
                        c.out_pos = 0;
                        std::mem::replace(&mut c.out, bytes)
                    } else {
                        c.out.extend_from_slice(&bytes);
                        bytes
                    };
                    self.core.recycle(spent);
                    let Some(c) = self.conn_mut(id) else { continue };
                    // A worker already waiting for EPOLLOUT is flushed when the socket
                    // has room.
                    if !c.want_out {
                        self.flush(id, now);
                    }
                }
                Effect::SignalGroup(id, sig) => {
                    if let Some(c) = self.conn(id) {
                        c.child.signal(sig);
                    }
                }
                Effect::Kill(id) => {
                    if let Some(c) = self.conn(id) {
                        c.child.signal(Signal::KILL);
                        if let Some(cg) = &c.cgroup {
                            cg.kill();
                        }
                    }
                }
                Effect::SignalWorker(id, sig) => {
                    if let Some(c) = self.conn(id) {
                        c.child.signal_alone(sig);
                    }
                }
                Effect::CloseChannel(id) => self.close_channel(id),
                Effect::Forget(id) => self.remove_conn(id),
                Effect::CheckExit(id) => {
                    if self.conn(id).is_some_and(|c| c.child.exit_status().is_some()) {
                        self.on_exit(id, now);
                    } else {
                        self.core.handle(Event::StillAlive(id), now);
                    }
                }
                Effect::PollMemory(workers) => {
                    let readings = workers.into_iter().map(|(id, pid)| (id, memory::rss_bytes(pid.get()))).collect();
                    self.core.handle(Event::Memory(readings), now);
                }
            }
        }
    }

    fn conn(&self, id: WorkerId) -> Option<&Conn> {
        self.conns.get(id.slot()).and_then(|c| c.as_ref()).filter(|c| c.id == id)
    }

    fn conn_mut(&mut self, id: WorkerId) -> Option<&mut Conn> {
        self.conns.get_mut(id.slot()).and_then(|c| c.as_mut()).filter(|c| c.id == id)
    }

    fn emit(&self, kind: EventKind, pid: Option<Pid>, message: impl FnOnce() -> String) {
        if let Some(hook) = &self.cfg().on_event {
            hook(&PoolEvent { kind, pid: pid.map(Pid::get), task_id: None, message: message() });
        }
    }

    // ----- starting workers -----------------------------------------------------------

    fn ensure_workers(&mut self, now: Instant) {
        // While the fork server's first answer is awaited, the other workers wait for it
        // too: they are forked (in a millisecond each) once it is up.
        while self.core.wants_worker() && self.first_fork_deadline().is_none() {
            if let Err(e) = self.spawn_worker(now) {
                self.handle(Event::SpawnFailed(e.to_string()), now);
                break;
            }
        }
    }

    /// A new worker process: forked by the fork server when there is one that works, else
    /// started by exec. `None`: the fork server was asked for its first worker, which
    /// comes when it is up (see [`Supervisor::on_first_fork`]).
    fn start_process(&mut self, now: Instant) -> io::Result<Option<Spawned>> {
        let cfg = self.core.config();
        if cfg.fork_server && cfg.cgroup_parent.is_none() && !self.forks_failed {
            if self.forks.is_none() {
                self.start_fork_server();
            }
            if let Some(f) = self.forks.as_mut() {
                if f.has_answered() {
                    match f.fork() {
                        Ok(s) => return Ok(Some(s)),
                        Err(e) => self.fork_server_failed(e),
                    }
                } else {
                    let asked = f.request_first(now).and_then(|()| {
                        let token = epoll::EventData::new_u64(FORK_REPLY);
                        Ok(epoll::add(&self.epoll, f.control(), token, epoll::EventFlags::IN)?)
                    });
                    match asked {
                        Ok(()) => return Ok(None),
                        Err(e) => self.fork_server_failed(e),
                    }
                }
            }
        }
        process::spawn(&self.cfg().cmd, self.cfg().max_frame).map(Some)
    }

    /// While the fork server's first answer is awaited: when waiting for it ends.
    fn first_fork_deadline(&self) -> Option<Instant> {
        self.forks.as_ref().and_then(|f| f.first_deadline())
    }

    /// The fork server's control socket is readable, or its first answer is overdue:
    /// takes the first worker, or fails the server and starts that worker by exec.
    fn on_first_fork(&mut self, now: Instant) {
        let Some(f) = self.forks.as_mut() else { return };
        let Some(got) = f.read_first(now) else { return };
        let _ = epoll::delete(&self.epoll, f.control());
        let spawned = got.or_else(|e| {
            self.fork_server_failed(e);
            process::spawn(&self.cfg().cmd, self.cfg().max_frame)
        });
        if let Err(e) = spawned.and_then(|s| self.adopt(s, now)) {
            self.handle(Event::SpawnFailed(e.to_string()), now);
        }
    }

    /// Starts the fork server, or takes one an earlier pool kept (see
    /// [`crate::PoolBuilder::keep_fork_server`]); on failure, workers start by exec.
    fn start_fork_server(&mut self) {
        let cfg = self.cfg();
        let got = if cfg.keep_fork_server.is_zero() {
            ForkServer::start(&cfg.cmd, cfg.max_frame).map(|f| (f, false))
        } else {
            fork_server::take_or_start(&cfg.cmd, cfg.max_frame)
        };
        match got {
            Ok((f, kept)) => {
                let pid = f.pid();
                self.emit(EventKind::ForkServerStarted, Some(pid), || {
                    if kept {
                        format!("took the fork server {pid}, kept from an earlier pool")
                    } else {
                        format!("started the fork server {pid}")
                    }
                });
                self.forks = Some(f);
            }
            Err(e) => self.fork_server_failed(e),
        }
    }

    fn fork_server_failed(&mut self, e: io::Error) {
        self.forks_failed = true;
        let pid = self.forks.as_ref().map(|f| f.pid());
        self.stop_fork_server();
        self.emit(EventKind::ForkServerFailed, pid, || {
            format!("the fork server failed ({e}); starting workers by exec from now on")
        });
    }

    /// Stops the fork server, or keeps it for a later pool when the pool asked for that,
    /// it did not fail and it has answered (one that is still starting is not kept).
    fn stop_fork_server(&mut self) {
        if let Some(f) = self.forks.take() {
            let _ = epoll::delete(&self.epoll, f.control());
            let pid = f.pid();
            let wait = self.cfg().timing.kill_wait;
            let failed = matches!(lock(&self.shared.inbox).gate, Gate::Failed(_));
            let keep = !failed && !self.forks_failed && f.has_answered();
            let idle = if keep { self.cfg().keep_fork_server } else { Duration::ZERO };
            if !fork_server::keep(f, idle, wait) {
                bump(&self.shared.stats.workers_abandoned);
                self.emit(EventKind::Abandoned, Some(pid), || {
                    format!(
                        "the fork server {pid} could not be reaped {:.3} s after SIGKILL; abandoned",
                        wait.as_secs_f64()
                    )
                });
            }
        }
    }

    /// Starts a worker, or asks the fork server for it (the core then counts it as
    /// requested until it comes).
    fn spawn_worker(&mut self, now: Instant) -> io::Result<()> {
        match self.start_process(now)? {
            Some(s) => self.adopt(s, now),
            None => {
                self.core.worker_requested();
                Ok(())
            }
        }
    }

    /// Takes a worker process just started: into its cgroup, into the epoll set, and to
    /// the core.
    fn adopt(&mut self, s: Spawned, now: Instant) -> io::Result<()> {
        // Into its own cgroup before it is sent anything: no task has run yet, so nothing
        // it starts can be outside.
        let cgroup = match &self.cfg().cgroup_parent {
            None => None,
            Some(parent) => match WorkerCgroup::create(parent, s.child.pid().get()) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    s.child.signal(Signal::KILL);
                    let pid = s.child.pid();
                    return Err(io::Error::new(e.kind(), format!("cannot put worker {pid} in a cgroup: {e}")));
                }
            },
        };
        let id = self.core.next_worker_id();
        let ep = &self.epoll;
        let regs = [(s.child.pidfd().as_fd(), FD_PID), (s.channel.as_fd(), FD_CHAN), (s.stderr.as_fd(), FD_ERR)]
            .into_iter()
            .try_for_each(|(fd, kind)| {
                epoll::add(ep, fd, epoll::EventData::new_u64(id.token(kind)), epoll::EventFlags::IN)
            });
        if let Err(e) = regs {
            // Bounded: SIGKILL lands within milliseconds; a stuck one is left as a zombie.
            s.child.kill_and_reap(Duration::from_secs(1));
            return Err(e.into());
        }
        let pid = s.child.pid();
        if self.conns.len() <= id.slot() {
            self.conns.resize_with(id.slot() + 1, || None);
        }
        self.conns[id.slot()] = Some(Conn {
            id,
            child: s.child,
            chan: Some(s.channel),
            stderr: Some(s.stderr),
            dec: Decoder::new(self.cfg().max_frame),
            out: Vec::new(),
            out_pos: 0,
            want_out: false,
            oom_mark: memory::oom_kills(),
            cgroup,
        });
        let started = self.core.worker_started(pid, now);
        debug_assert_eq!(started, id);
        self.apply(now);
        Ok(())
    }

    // ----- channels -------------------------------------------------------------------

    fn close_channel(&mut self, id: WorkerId) {
        if let Some(c) = self.conns.get_mut(id.slot()).and_then(|c| c.as_mut()).filter(|c| c.id == id) {
            if let Some(ch) = c.chan.take() {
                let _ = epoll::delete(&self.epoll, &ch);
            }
            c.out.clear();
            c.out_pos = 0;
        }
    }

    fn remove_conn(&mut self, id: WorkerId) {
        if self.conn(id).is_none() {
            return;
        }
        if let Some(c) = self.conns[id.slot()].take() {
            let _ = epoll::delete(&self.epoll, c.child.pidfd());
            if let Some(ch) = &c.chan {
                let _ = epoll::delete(&self.epoll, ch);
            }
            if let Some(e) = &c.stderr {
                let _ = epoll::delete(&self.epoll, e);
            }
        }
    }

    /// Writes as much of the worker's output buffer as the socket takes, never blocking;
    /// the rest waits for EPOLLOUT.
    fn flush(&mut self, id: WorkerId, now: Instant) {
        let epoll = &self.epoll;
        let Some(c) = self.conns.get_mut(id.slot()).and_then(|c| c.as_mut()).filter(|c| c.id == id) else { return };
        let Some(chan) = c.chan.as_mut() else { return };
        let mut failed = false;
        while c.out_pos < c.out.len() {
            match chan.write(&c.out[c.out_pos..]) {
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.on_channel_closed(id, now);
            return;
        }
        let done = c.out_pos == c.out.len();
        if done {
            c.out.clear();
            c.out_pos = 0;
        }
        if done == c.want_out {
            c.want_out = !done;
            let flags = if done { epoll::EventFlags::IN } else { epoll::EventFlags::IN | epoll::EventFlags::OUT };
            let _ = epoll::modify(epoll, &*chan, epoll::EventData::new_u64(id.token(FD_CHAN)), flags);
        }
    }

    fn on_readable(&mut self, id: WorkerId, now: Instant) {
        // Bounded reads per wake-up keep one chatty worker from starving the others.
        if self.read_channel(id, now, 16) == ChannelEnd::Closed {
            self.on_channel_closed(id, now);
        }
    }

    /// Reads up to `reads` times from a worker's channel and hands every whole frame to
    /// the core. Says whether the channel ended (end of file or an error) or is merely
    /// drained.
    fn read_channel(&mut self, id: WorkerId, now: Instant, reads: usize) -> ChannelEnd {
        for _ in 0..reads {
            let awaits_page = self.core.awaits_page(id);
            let scratch = &mut self.scratch;
            let Some(c) = self.conns.get_mut(id.slot()).and_then(|c| c.as_mut()).filter(|c| c.id == id) else {
                return ChannelEnd::Drained;
            };
            let Some(chan) = c.chan.as_mut() else { return ChannelEnd::Drained };
            let want = c.dec.wanted().clamp(64 * 1024, 4 << 20);
            let (mut page, mut arena) = (None, None);
            let got = if awaits_page {
                read_with_page(chan, &mut c.dec, &mut page, &mut arena, scratch)
            } else {
                c.dec.read_from_fd(&*chan, want)
            };
            if let Some(arena) = arena {
                self.handle(Event::Arena(id, arena), now);
            }
            if let Some(page) = page {
                self.handle(Event::Page(id, page), now);
            }
            match got {
                Ok(0) => {
                    self.drain_frames(id, now);
                    return ChannelEnd::Closed;
                }
                Ok(n) => {
                    if !self.drain_frames(id, now) {
                        return ChannelEnd::Drained;
                    }
                    // A short read emptied the socket: level-triggered epoll reports the
                    // next bytes, so skip the read that would only say EAGAIN.
                    if n < want {
                        return ChannelEnd::Drained;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ChannelEnd::Drained,
                Err(_) => return ChannelEnd::Closed,
            }
        }
        ChannelEnd::Drained
    }

    /// Hands every whole frame buffered to the core; false if the channel is no longer
    /// usable.
    fn drain_frames(&mut self, id: WorkerId, now: Instant) -> bool {
        loop {
            let Some(c) = self.conn_mut(id) else { return false };
            if c.chan.is_none() {
                return false;
            }
            match c.dec.next_frame() {
                Ok(None) => return true,
                Ok(Some(f)) => self.handle(Event::Frame(id, f), now),
                Err(e) => {
                    self.handle(Event::BadFrame(id, e), now);
                    return false;
                }
            }
        }
    }

    fn on_channel_closed(&mut self, id: WorkerId, now: Instant) {
        // A failed write (EPIPE once the worker died) says nothing about what the worker
        // wrote before: its answers are still readable. Take them before the channel is
        // dropped, or finished tasks would lose their values and the death be pinned on
        // the wrong task.
        self.drain_channel(id, now);
        self.close_channel(id);
        // Most often the process is exiting: if it has, its exit is handled now.
        let exited = self.core.is_serving(id) && self.conn(id).is_some_and(|c| c.child.exit_status().is_some());
        if exited {
            self.on_exit(id, now);
        } else {
            self.handle(Event::ChannelClosed(id), now);
        }
    }

    fn read_stderr(&mut self, id: WorkerId) {
        let forward = self.cfg().forward_stderr;
        let Some(c) = self.conns.get_mut(id.slot()).and_then(|c| c.as_mut()).filter(|c| c.id == id) else { return };
        let Some(fd) = c.stderr.as_ref() else { return };
        let mut eof = false;
        for _ in 0..16 {
            match rustix::io::read(fd, &mut self.scratch[..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let bytes = &self.scratch[..n];
                    if forward {
                        forward_to_stderr(bytes);
                    }
                    self.core.stderr(id, bytes);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => break,
            }
        }
        if eof {
            if let Some(fd) = c.stderr.take() {
                let _ = epoll::delete(&self.epoll, &fd);
            }
        }
    }

    fn on_exit(&mut self, id: WorkerId, now: Instant) {
        let Some(c) = self.conn(id) else { return };
        let Some(status) = c.child.exit_status() else { return };
        // Answers the worker sent before it died may still sit unread in its channel: the
        // pidfd and the channel can be reported in one epoll batch, pidfd first. Handle
        // them before pinning the death, or a task that already finished would be blamed
        // (and lose its value) instead of the task the worker was really running.
        self.drain_channel(id, now);
        // Read what it wrote last before the pipe is closed: a crash message lives there.
        self.read_stderr(id);
        let Some(c) = self.conn(id) else { return };
        if let Some(cg) = &c.cgroup {
            // Descendants that left the group (setsid) are still in the cgroup.
            cg.kill();
        }
        c.child.sweep_and_reap();
        let killed_from_outside = status == ExitStatus::Signal(9);
        let oom = killed_from_outside && c.oom_mark.is_some_and(|m| memory::oom_kills().is_some_and(|n| n > m));
        self.handle(Event::Exited { worker: id, status, oom }, now);
        self.remove_conn(id);
    }

    /// Reads and hands over every frame still readable on a worker's channel, for a
    /// worker that exited or whose channel broke. It never reports the end of the channel
    /// (the caller is handling that), and it is bounded: a grandchild holding the channel
    /// could keep writing.
    fn drain_channel(&mut self, id: WorkerId, now: Instant) {
        self.read_channel(id, now, 64);
    }
}
