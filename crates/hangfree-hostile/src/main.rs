//! `hangfree-hostile`: a worker that speaks the hangfree protocol and misbehaves on
//! command, for the engine's tests and benchmarks.
//!
//! A task payload that does not start with `!` is echoed back as the value (the fast path
//! the benchmarks use). Commands, one per task:
//!
//! | payload                 | behaviour                                                    |
//! |-------------------------|--------------------------------------------------------------|
//! | `!sleep MS`             | sleeps, then answers `slept`                                 |
//! | `!exit N`               | exits with code N mid-task                                   |
//! | `!abort`                | calls abort() (SIGABRT)                                      |
//! | `!segv`                 | writes through a null pointer (SIGSEGV)                      |
//! | `!raise TEXT`           | answers with a `Raised` frame carrying TEXT                  |
//! | `!stderr TEXT`          | writes TEXT to stderr, then answers `ok`                     |
//! | `!ignore-term MS`       | ignores SIGTERM, then sleeps                                 |
//! | `!grandchild`           | starts a grandchild that ignores SIGTERM and holds the channel open, answers its pid |
//! | `!grandchild-exit N`    | starts such a grandchild, writes its pid to stderr, exits N  |
//! | `!garbage`              | writes bytes that are not a frame                            |
//! | `!wrong-id`             | answers with a task id it was not given                      |
//! | `!alloc MIB`            | allocates and touches MIB MiB, answers the count             |
//! | `!close-channel`        | closes its channel and keeps running                         |
//! | `!sigstop`              | stops itself with SIGSTOP                                    |
//! | `!pid`                  | answers its own pid                                          |
//! | `!stack-sleep MS`       | sleeps; answers each SIGUSR1 with a `Stack` frame            |
//! | `!grow MIB`             | allocates MIB more MiB every 10 ms, forever                  |
//! | `!die-once PATH`        | exits 1 if PATH does not exist (creating it), else answers `survived` |
//! | `!kill-self`            | sends itself SIGKILL                                         |
//! | `!daemon`               | starts a grandchild that calls setsid (leaving the group), answers its pid |
//! | `!tty-print TEXT`       | writes TEXT and a newline to stdout (the terminal), answers `printed` |
//! | `!tty-setattr`          | turns echo off and on again on `/dev/tty`, as `getpass` does, answers `set` |
//! | `!tty-read`             | reads a byte from `/dev/tty`, answers `read: ` and the error  |
//! | `!tty-child`            | runs a child that writes `child says hello` to stdout, answers its exit status |
//! | `!tty-stopped-child`    | starts a child that restores SIGTTOU's default and writes to stdout (stopped with `tostop`), answers its pid |
//!
//! With `HF_HOSTILE_THREAD` in its environment it starts a thread before it takes its
//! channel (a fork server must then refuse to fork). Started as a fork server with
//! `HF_HOSTILE_SERVE_DELAY_MS=MS`, it sleeps MS before it serves (a slow start, as an
//! interpreter importing a heavy script).
//!
//! `hangfree-hostile --tty-parent` runs a pool on the terminal it is given as stdin (see
//! [`tty_parent`]), for the job-control tests.
//!
//! The `Init` payload may be empty (ready at once), `fail TEXT` (sends `InitFailed`),
//! `exit N` (exits before ready), `hang` (never ready) or `sleep MS` (slow start).

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use hangfree::wire::Kind;
use hangfree::worker::WorkerChannel;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--pool-parent") {
        pool_parent();
    }
    if std::env::args().nth(1).as_deref() == Some("--tty-parent") {
        tty_parent();
    }
    if std::env::args().nth(1).as_deref() == Some("--tty-child") {
        if std::env::args().nth(2).as_deref() == Some("default") {
            // SAFETY: restoring a default disposition runs no code of ours.
            unsafe { libc::signal(libc::SIGTTOU, libc::SIG_DFL) };
        }
        let wrote = std::io::stdout().write_all(b"child says hello\n");
        std::process::exit(if wrote.is_ok() { 0 } else { 1 });
    }
    if std::env::args().nth(1).as_deref() == Some("--daemon") {
        // Leaves the worker's session and process group, as a daemon does.
        let _ = rustix::process::setsid();
        ignore_sigterm();
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if std::env::args().nth(1).as_deref() == Some("--grandchild") {
        ignore_sigterm();
        // Holds the inherited channel (its stdin) open until killed.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if std::env::var_os("HF_HOSTILE_THREAD").is_some() {
        // A thread started before the channel, as a language runtime's imports may start
        // one: a fork server then must not fork.
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        });
    }
    let serve_delay = std::env::var("HF_HOSTILE_SERVE_DELAY_MS").ok().and_then(|v| v.parse().ok());
    if let Some(ms) = serve_delay.filter(|_| hangfree::fork_server::requested()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let mut ch = match WorkerChannel::from_stdin() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hangfree-hostile: {e}");
            std::process::exit(70);
        }
    };
    loop {
        let frame = match ch.recv() {
            Ok(Some(f)) => f,
            Ok(None) => hangfree::worker::kill_own_group(),
            Err(e) => {
                eprintln!("hangfree-hostile: {e}");
                std::process::exit(71);
            }
        };
        match frame.kind {
            Kind::Init => init(&mut ch, &frame.payload),
            Kind::Shutdown => std::process::exit(0),
            Kind::Task => run(&mut ch, frame.task_id, &frame.payload),
            Kind::Chunk => chunk(&mut ch, frame.task_id, &frame.payload),
            other => {
                eprintln!("hangfree-hostile: unexpected {other:?}");
                std::process::exit(72);
            }
        }
    }
}

fn init(ch: &mut WorkerChannel, payload: &[u8]) {
    let cmd = String::from_utf8_lossy(payload);
    let (verb, arg) = cmd.split_once(' ').unwrap_or((&cmd, ""));
    match verb {
        "fail" => {
            eprintln!("initializer failing: {arg}");
            send(ch, Kind::InitFailed, 0, arg.as_bytes());
            std::process::exit(1);
        }
        "exit" => std::process::exit(arg.parse().unwrap_or(1)),
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        "sleep" => std::thread::sleep(Duration::from_millis(arg.parse().unwrap_or(0))),
        _ => {}
    }
    send(ch, Kind::Ready, 0, b"");
}

fn send(ch: &mut WorkerChannel, kind: Kind, id: u64, payload: &[u8]) {
    if ch.send(kind, id, payload).is_err() {
        std::process::exit(73);
    }
}

/// Runs a chunk whose items are the payload's lines, each a command of `item`; answers
/// each item's outcome as it ends (one Items frame per item).
fn chunk(ch: &mut WorkerChannel, id: u64, payload: &[u8]) {
    let (body, trailer) = payload.split_at(payload.len() - 8);
    let start = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let page = ch.page();
    for (i, line) in lines.iter().enumerate().skip(start as usize) {
        if !page.start_item(i as u32) {
            // Revoked: the pool gave the rest to other workers.
            hangfree::worker::kill_own_group();
        }
        let (raised, mut out) = item(line);
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&u32::from(raised).to_le_bytes());
        send(ch, Kind::Items, id, &out);
    }
}

/// One item of a chunk: `log PATH` appends the item's line to PATH and answers it;
/// `then` after it, a command run once logged (`exit N`, `sleep MS`, `ignore-term MS`,
/// `raise`). Says whether it raised, and its answer.
fn item(line: &[u8]) -> (bool, Vec<u8>) {
    let text = String::from_utf8_lossy(line).into_owned();
    let mut words = text.split(' ');
    let (Some("log"), Some(path), Some(name)) = (words.next(), words.next(), words.next()) else {
        return (true, format!("bad item {text:?}").into_bytes());
    };
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path).expect("log file");
    f.write_all(format!("{name}\n").as_bytes()).expect("log");
    let num = |w: Option<&str>| w.and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
    match words.next() {
        Some("exit") => std::process::exit(num(words.next()) as i32),
        Some("sleep") => std::thread::sleep(Duration::from_millis(num(words.next()))),
        Some("ignore-term") => {
            ignore_sigterm();
            std::thread::sleep(Duration::from_millis(num(words.next())));
        }
        Some("raise") => return (true, name.as_bytes().to_vec()),
        _ => {}
    }
    (false, name.as_bytes().to_vec())
}

fn run(ch: &mut WorkerChannel, id: u64, payload: &[u8]) {
    if payload.first() != Some(&b'!') {
        send(ch, Kind::Value, id, payload);
        return;
    }
    let cmd = String::from_utf8_lossy(&payload[1..]).into_owned();
    let (verb, arg) = cmd.split_once(' ').unwrap_or((&cmd, ""));
    let num = || arg.trim().parse::<u64>().unwrap_or(0);
    match verb {
        "sleep" => {
            std::thread::sleep(Duration::from_millis(num()));
            send(ch, Kind::Value, id, b"slept");
        }
        "exit" => std::process::exit(num() as i32),
        "abort" => std::process::abort(),
        "segv" => unsafe {
            // Deliberate: this worker exists to crash on command.
            std::ptr::null_mut::<u8>().write_volatile(1);
        },
        "raise" => send(ch, Kind::Raised, id, arg.as_bytes()),
        "stderr" => {
            let _ = std::io::stderr().write_all(arg.as_bytes());
            send(ch, Kind::Value, id, b"ok");
        }
        "ignore-term" => {
            ignore_sigterm();
            std::thread::sleep(Duration::from_millis(num()));
            send(ch, Kind::Value, id, b"slept");
        }
        "grandchild" => {
            let pid = grandchild(ch);
            send(ch, Kind::Value, id, pid.to_string().as_bytes());
        }
        "grandchild-exit" => {
            let pid = grandchild(ch);
            eprintln!("grandchild {pid}");
            std::process::exit(num() as i32);
        }
        "garbage" => {
            let _ = ch.send_raw(b"\xfe this is not a hangfree frame at all");
            std::thread::sleep(Duration::from_secs(3600));
        }
        "wrong-id" => send(ch, Kind::Value, id.wrapping_add(1_000_000), b"stray"),
        "arena-garbage" => {
            // An answer "in the arena" one byte long at the offset given: past the
            // area's end, or anywhere with a length the pool cannot accept.
            let mut frame = hangfree::wire::header(Kind::Value, id, 16).to_vec();
            frame[0] |= hangfree::wire::IN_ARENA;
            let offset = arg.trim().parse::<u64>().unwrap_or(u64::MAX);
            frame.extend_from_slice(&offset.to_le_bytes());
            frame.extend_from_slice(&1u64.to_le_bytes());
            let _ = ch.send_raw(&frame);
            std::thread::sleep(Duration::from_secs(3600));
        }
        "alloc" => {
            let mib = num() as usize;
            let mut v: Vec<u8> = Vec::with_capacity(mib << 20);
            // Touch every page so the memory is really resident.
            for _ in 0..(mib << 20) / 4096 {
                v.extend_from_slice(&[1u8; 4096]);
            }
            std::hint::black_box(&v);
            send(ch, Kind::Value, id, mib.to_string().as_bytes());
        }
        "close-channel" => {
            let (a, b) = std::mem::replace(ch, dummy_channel()).into_fds();
            drop((a, b));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "sigstop" => {
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
            send(ch, Kind::Value, id, b"continued");
        }
        "pid" => send(ch, Kind::Value, id, std::process::id().to_string().as_bytes()),
        "item" => {
            let (raised, out) = item(arg.as_bytes());
            send(ch, if raised { Kind::Raised } else { Kind::Value }, id, &out);
        }
        "stack-sleep" => {
            // SAFETY: the handler only stores to an atomic.
            unsafe {
                libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
            }
            let end = std::time::Instant::now() + Duration::from_millis(num());
            while std::time::Instant::now() < end {
                if STACK_ASKED.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    send(ch, Kind::Stack, id, b"hostile worker: sleeping in !stack-sleep");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            send(ch, Kind::Value, id, b"slept");
        }
        "grow" => {
            let mut keep: Vec<Vec<u8>> = Vec::new();
            loop {
                keep.push(vec![1u8; (num() as usize) << 20]);
                std::hint::black_box(&keep);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        "die-once" => {
            let path = std::path::Path::new(arg.trim());
            if path.exists() {
                send(ch, Kind::Value, id, b"survived");
            } else {
                let _ = std::fs::write(path, b"died");
                std::process::exit(1);
            }
        }
        "daemon" => {
            // Never waited for on purpose: the daemon outlives this worker (the test).
            #[allow(clippy::zombie_processes)]
            let child = Command::new(std::env::current_exe().expect("own path"))
                .arg("--daemon")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn daemon");
            send(ch, Kind::Value, id, child.id().to_string().as_bytes());
        }
        "tty-print" => match std::io::stdout().write_all(format!("{arg}\n").as_bytes()) {
            Ok(()) => send(ch, Kind::Value, id, b"printed"),
            Err(e) => send(ch, Kind::Raised, id, format!("write to stdout: {e}").as_bytes()),
        },
        "tty-setattr" => match toggle_echo() {
            Ok(()) => send(ch, Kind::Value, id, b"set"),
            Err(e) => send(ch, Kind::Raised, id, format!("tcsetattr on /dev/tty: {e}").as_bytes()),
        },
        "tty-read" => {
            let mut byte = [0u8; 1];
            let got = std::fs::File::open("/dev/tty").and_then(|mut t| std::io::Read::read(&mut t, &mut byte));
            send(ch, Kind::Value, id, format!("read: {got:?}").as_bytes());
        }
        "tty-child" => {
            let st = Command::new(std::env::current_exe().expect("own path")).arg("--tty-child").status();
            send(ch, Kind::Value, id, format!("exit {:?}", st.map(|s| s.code())).as_bytes());
        }
        "tty-stopped-child" => {
            // Never waited for on purpose: it stops, and the group kill must end it.
            #[allow(clippy::zombie_processes)]
            let child = Command::new(std::env::current_exe().expect("own path"))
                .args(["--tty-child", "default"])
                .spawn()
                .expect("spawn tty child");
            send(ch, Kind::Value, id, child.id().to_string().as_bytes());
        }
        "kill-self" => {
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
            std::thread::sleep(Duration::from_secs(3600));
        }
        _ => send(ch, Kind::Raised, id, format!("unknown command {verb:?}").as_bytes()),
    }
}

/// `--pool-parent`: runs a pool of this worker, starts a grandchild under one worker,
/// prints `WORKER_PID GRANDCHILD_PID`, then waits to be killed (tests of parent death).
fn pool_parent() -> ! {
    let me = std::env::current_exe().expect("own path");
    let forks = std::env::var_os("HF_TEST_FORK_SERVER").is_some_and(|v| v == "1");
    let pool =
        hangfree::Pool::builder(hangfree::WorkerCommand::new(me)).workers(1).fork_server(forks).build().expect("pool");
    let answer = |p: &str| match pool.submit(p.as_bytes().to_vec()).expect("submit").wait() {
        hangfree::Outcome::Value(v) => String::from_utf8_lossy(&v).into_owned(),
        o => panic!("{o:?}"),
    };
    let worker = answer("!pid");
    let grandchild = answer("!grandchild");
    println!("{worker} {grandchild}");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Turns echo off on `/dev/tty`, then restores the settings, as `getpass` does.
fn toggle_echo() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data filled by tcgetattr; fd is open for the whole block.
    unsafe {
        let mut old: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut quiet = old;
        quiet.c_lflag &= !libc::ECHO;
        if libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) != 0 || libc::tcsetattr(fd, libc::TCSAFLUSH, &old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `--tty-parent`: for the job-control tests. Started with a terminal (a pty's slave) as
/// its stdin, stdout and stderr, it makes that terminal the controlling terminal of a new
/// session (so this process is the foreground job and each worker a background one),
/// runs a two-worker pool (forked by a fork server with `HF_TEST_FORK_SERVER=1`) and
/// reports on stdout, each line starting with `hf: `:
///
/// - `foreground tostop=B`: the terminal is ours, with `tostop` set or not;
/// - `NAME -> OUTCOME` for the tasks `!tty-print`, `!tty-setattr`, `!tty-read` and
///   `!tty-child` (each limited to 5 s: a stopped worker times out);
/// - `stopped PID STATE` for the child of `!tty-stopped-child` once it is stopped (or
///   after 5 s), then terminates the pool, prints `joined RESULT` and exits.
fn tty_parent() -> ! {
    use std::os::fd::AsRawFd;
    let say = |line: String| {
        let mut out = std::io::stdout();
        let _ = out.write_all(format!("hf: {line}\n").as_bytes());
        let _ = out.flush();
    };
    let _ = rustix::process::setsid();
    let stdin = std::io::stdin();
    // SAFETY: a plain ioctl on our own stdin.
    let ctty = unsafe { libc::ioctl(stdin.as_raw_fd(), libc::TIOCSCTTY, 0) };
    // SAFETY: as above; termios is plain data.
    let (fg, tostop) = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(0, &mut t);
        (ctty == 0 && libc::tcgetpgrp(0) == libc::getpgrp(), t.c_lflag & libc::TOSTOP != 0)
    };
    say(format!("{} tostop={tostop}", if fg { "foreground" } else { "NOT-FOREGROUND" }));
    let me = std::env::current_exe().expect("own path");
    let forks = std::env::var_os("HF_TEST_FORK_SERVER").is_some_and(|v| v == "1");
    let pool = hangfree::Pool::builder(hangfree::WorkerCommand::new(me))
        .workers(2)
        .fork_server(forks)
        .task_timeout(Duration::from_secs(5))
        .grace(Duration::from_millis(300))
        .build()
        .expect("pool");
    let run = |payload: &str| match pool.submit(payload.as_bytes().to_vec()).expect("submit").wait() {
        hangfree::Outcome::Value(v) => String::from_utf8_lossy(&v).into_owned(),
        hangfree::Outcome::Raised(v) => format!("raised {}", String::from_utf8_lossy(&v)),
        hangfree::Outcome::Failed(e) => format!("failed {e}"),
    };
    for (name, payload) in [
        ("print", "!tty-print task says hello"),
        ("setattr", "!tty-setattr"),
        ("read", "!tty-read"),
        ("child", "!tty-child"),
    ] {
        say(format!("{name} -> {}", run(payload)));
    }
    let pid = run("!tty-stopped-child");
    let t0 = std::time::Instant::now();
    let state = loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').next().map(str::to_owned)))
            .unwrap_or_else(|| "?".into());
        if state == "T" || t0.elapsed() > Duration::from_secs(5) {
            break state;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    say(format!("stopped {pid} {state}"));
    pool.terminate();
    say(format!("joined {:?}", pool.join(Some(Duration::from_secs(10)))));
    std::process::exit(0);
}

/// A channel on /dev/null, to put in place of the real one when closing it.
fn dummy_channel() -> WorkerChannel {
    let f = std::fs::File::open("/dev/null").expect("/dev/null");
    WorkerChannel::from_fd(OwnedFd::from(f)).expect("dup /dev/null")
}

/// Starts a grandchild in this worker's process group that ignores SIGTERM and holds a
/// copy of the channel open; returns its pid.
fn grandchild(ch: &WorkerChannel) -> u32 {
    let chan_copy: OwnedFd = rustix::io::fcntl_dupfd_cloexec(ch.as_fd(), 3).expect("dup channel");
    // Never waited for on purpose: the pool's group sweep must take it (the test).
    #[allow(clippy::zombie_processes)]
    let child = Command::new(std::env::current_exe().expect("own path"))
        .arg("--grandchild")
        .stdin(Stdio::from(chan_copy))
        .spawn()
        .expect("spawn grandchild");
    child.id()
}

static STACK_ASKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    STACK_ASKED.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn ignore_sigterm() {
    // SAFETY: installing SIG_IGN has no handler code to be unsafe in.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}
