//! Simple commands start without `sh -c`, with the same words, environment and result;
//! whatever the shell must handle still goes to it.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{at, command, run, run_in, s, tempdir, wait_bounded};

#[test]
fn a_simple_command_gets_the_words_the_shell_would_give_it() {
    let hostile = ["a b", "$(echo pwned)", "it's", "c\"d", "*", "~", "", "x;y", "`date`", "-n"];
    // `/bin/echo ARG` starts directly; `'/bin/echo' ARG` has a quoted first word and goes
    // to the shell: the same program, so the same output.
    let mut direct = vec!["run", "-k", "/bin/echo", "[{}]", ":::"];
    direct.extend_from_slice(&hostile);
    let mut shell = vec!["run", "-k", "'/bin/echo' [{}]", ":::"];
    shell.extend_from_slice(&hostile);
    let (d, sh) = (run(&direct), run(&shell));
    assert_eq!(d.code, Some(0), "{}", d.stderr);
    assert_eq!(d.stdout, sh.stdout);
    assert!(d.stdout.contains("[$(echo pwned)]") && d.stdout.contains("[it's]"), "{}", d.stdout);
}

#[test]
fn a_directly_started_job_sees_its_sequence_number_and_slot() {
    let r = run(&["run", "-k", "-j1", "printenv", ":::", "PARALLEL_SEQ", "PARALLEL_JOBSLOT", "HANGFREE_PARENT_PID"]);
    assert_eq!(r.stdout, "1\n1\n", "{}", r.stderr);
    assert_eq!(r.code, Some(1), "the third job prints nothing and fails: the worker's own variables are not passed on");
}

#[test]
fn a_script_without_a_shebang_still_runs_under_the_shell() {
    let dir = tempdir();
    let script = at(dir.path(), "script");
    std::fs::write(&script, "echo got \"$1\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = run_in(dir.path(), &["run", "./script", ":::", "a b"], b"", Duration::from_secs(30));
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "got a b\n"), "{}", r.stderr);
}

#[test]
fn an_unknown_program_fails_as_under_the_shell() {
    let r = run(&["run", "no-such-program-for-hangfree", ":::", "a"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("not found"), "the shell's message: {}", r.stderr);
}

/// The pid, parent and command name of every process.
fn processes() -> Vec<(i32, i32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let (Some((head, rest)), Some(open)) = (stat.rsplit_once(") "), stat.find('(')) else { continue };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        v.push((pid, ppid, head[open + 1..].to_owned()));
    }
    v
}

#[test]
fn the_program_is_the_workers_own_child_and_its_signal_is_logged() {
    let dir = tempdir();
    let log = at(dir.path(), "log");
    let mut c = command(dir.path(), &["run", "-j1", "--joblog", &s(&log), "sleep", ":::", "30"]);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let main = child.id() as i32;
    // hangfree → its worker → sleep, with no shell between.
    let t0 = Instant::now();
    let sleep = loop {
        let ps = processes();
        let workers: Vec<i32> = ps.iter().filter(|p| p.1 == main).map(|p| p.0).collect();
        if let Some(p) = ps.iter().find(|p| workers.contains(&p.1) && p.2 == "sleep") {
            break p.0;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            // SAFETY: hangfree leads its own process group (see `command`).
            unsafe { libc::kill(-main, libc::SIGKILL) };
            panic!("no sleep started by a worker: {ps:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // SAFETY: `sleep` is the job's process, found above.
    unsafe { libc::kill(sleep, libc::SIGKILL) };
    let out = wait_bounded(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1), "a job killed by a signal failed");
    let text = std::fs::read_to_string(&log).unwrap();
    let f: Vec<&str> = text.lines().nth(1).expect("a log line").split('\t').collect();
    assert_eq!((f[6], f[7], f[8]), ("0", "9", "sleep 30"), "Exitval 0, Signal 9: {text}");
}
