//! Terminal job control cannot stop a worker. Each worker leads its own process group, so
//! on the caller's terminal it is a background job: with `stty tostop` the kernel would
//! stop it with SIGTTOU for printing, and for `tcsetattr` (as `getpass` does) even without.
//! These tests run a pool inside a new session whose controlling terminal is a
//! pseudo-terminal with `tostop` set, and check that such tasks finish, that a read from
//! the terminal is an error rather than a stop, that the workers' own children are immune
//! too, and that the group kill still ends a child that made itself stoppable and was
//! stopped.

mod common;

use common::*;
use std::ffi::CStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Opens a pseudo-terminal: the master, and the slave (not as our controlling terminal)
/// with `tostop` set.
fn open_pty() -> (File, OwnedFd) {
    // SAFETY: plain libc calls on descriptors we own; ptsname_r writes into `name`.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = File::from_raw_fd(master);
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
        assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()), 0);
        let path = CStr::from_ptr(name.as_ptr());
        let slave = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(slave >= 0, "open {path:?}: {}", std::io::Error::last_os_error());
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave, &mut t), 0);
        t.c_lflag |= libc::TOSTOP;
        assert_eq!(libc::tcsetattr(slave, libc::TCSANOW, &t), 0);
        (master, OwnedFd::from_raw_fd(slave))
    }
}

/// Everything written to the terminal until every process holding its slave has closed
/// it (the master then reads EIO), or until `limit`.
fn read_all(mut master: File, limit: Duration) -> (String, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (String::from_utf8_lossy(&out).into_owned(), false);
        }
        let mut fds = [libc::pollfd { fd: master.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, left.as_millis().min(100) as i32) };
        if n <= 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn run_on_a_terminal(fork_server: bool) {
    let tag = new_tag(if fork_server { "tty-forked" } else { "tty-exec" });
    let (master, slave) = open_pty();
    let mut parent = Command::new(BIN)
        .arg("--tty-parent")
        .env("HF_TEST_TAG", &tag)
        .env("HF_TEST_FORK_SERVER", if fork_server { "1" } else { "0" })
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("start the tty parent");
    // Bounded: with workers stopped, each task times out after 5 s.
    let (text, ended) = read_all(master, Duration::from_secs(60));
    if !ended {
        // Its workers die with it (parent-death signal).
        let _ = parent.kill();
    }
    let _ = parent.wait();
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let has = |want: &str| lines.contains(&want);
    assert!(ended, "the pool on the terminal did not finish; its output:\n{text}");
    assert!(has("hf: foreground tostop=true"), "the pool's process must own the terminal, with tostop:\n{text}");
    // A task that prints: the write goes through (and reaches the terminal).
    assert!(has("task says hello"), "{text}");
    assert!(has("hf: print -> printed"), "{text}");
    // A task that changes the terminal's settings, as getpass does.
    assert!(has("hf: setattr -> set"), "{text}");
    // A read from the terminal is an error at once (EIO), never a stop.
    let read = lines.iter().find(|l| l.starts_with("hf: read -> ")).unwrap_or_else(|| panic!("{text}"));
    assert!(read.contains("code: 5,"), "a read from the terminal must fail with EIO: {read}\n{text}");
    // The workers' own children inherit the immunity across exec.
    assert!(has("child says hello"), "{text}");
    assert!(has("hf: child -> exit Ok(Some(0))"), "{text}");
    // A child that restores SIGTTOU's default is stopped by its write...
    let stopped = lines.iter().find(|l| l.starts_with("hf: stopped ")).unwrap_or_else(|| panic!("{text}"));
    let fields: Vec<&str> = stopped.split_whitespace().collect();
    assert_eq!(fields.get(3), Some(&"T"), "the child that restored SIGTTOU should be stopped: {stopped}");
    let pid: i32 = fields[2].parse().unwrap();
    // ... and the group kill still ends it.
    assert!(has("hf: joined Ok(())"), "{text}");
    wait_until(Duration::from_secs(10), "the stopped child to be killed with its worker's group", || is_dead(pid));
    wait_until(Duration::from_secs(10), "every process of the pool to be gone", || tagged(&tag).is_empty());
}

#[test]
fn terminal_job_control_cannot_stop_exec_workers() {
    watchdog(Duration::from_secs(90), || run_on_a_terminal(false));
}

#[test]
fn terminal_job_control_cannot_stop_forked_workers() {
    watchdog(Duration::from_secs(90), || run_on_a_terminal(true));
}
