//! Bad input gets a clear error, exit status 255, and nothing runs; flags GNU parallel
//! users pass out of habit are accepted.

mod common;

use std::time::Duration;

use common::{at, run_in, s, tempdir};

/// Runs `args` (whose command, if it runs, creates `ran`) and checks it was refused.
fn refused(args: &[&str], says: &str) {
    let dir = tempdir();
    let d = dir.path();
    let r = run_in(d, args, b"input\n", Duration::from_secs(30));
    assert_eq!(r.code, Some(255), "{args:?}: {}", r.stderr);
    assert!(r.stderr.contains(says), "{args:?}: the message should mention {says:?}: {}", r.stderr);
    assert!(!at(d, "ran").exists(), "{args:?}: a job ran");
}

#[test]
fn bad_input_is_refused_before_anything_runs() {
    refused(&["run", "--no-such-flag", "touch ran", ":::", "a"], "--no-such-flag");
    refused(&["run", "touch ran", "::::", "/no/such/file"], "/no/such/file");
    refused(&["run", "-a", "/no/such/file", "touch ran"], "/no/such/file");
    refused(&["run", "--term-seq", "INT,100,KILL", "touch ran", ":::", "a"], "INT");
    refused(&["run", "--term-seq", "TERM,100", "touch ran", ":::", "a"], "KILL");
    refused(&["run", "--timeout", "soon", "touch ran", ":::", "a"], "--timeout");
    refused(&["run", "--timeout", "0", "touch ran", ":::", "a"], "--timeout");
    refused(&["run", "--halt", "now,sometimes=1", "touch ran", ":::", "a"], "--halt");
    refused(&["run", "--mem-limit", "lots", "touch ran", ":::", "a"], "--mem-limit");
    refused(&["run", "-j", "many", "touch ran", ":::", "a"], "-j");
    refused(&["run", "--retries", "0", "touch ran", ":::", "a"], "--retries");
    refused(&["run", ":::", "a", "b"], "no command");
    refused(&["run", "touch ran {3}", ":::", "a", ":::", "b"], "{3}");
    refused(&["run", "--resume", "touch ran", ":::", "a"], "--joblog");
}

#[test]
fn an_unwritable_joblog_is_refused() {
    let dir = tempdir();
    let log = s(&at(dir.path(), "no/such/dir/log"));
    refused(&["run", "--joblog", &log, "touch ran", ":::", "a"], "job log");
}

#[test]
fn gnu_habits_are_accepted() {
    let dir = tempdir();
    let r = run_in(
        dir.path(),
        &["run", "--will-cite", "--bar", "--eta", "--group", "echo {}", ":::", "a"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "a\n"), "{}", r.stderr);
    assert_eq!(r.stderr, "", "no bar when stderr is not a terminal");
    let r = run_in(
        dir.path(),
        &["run", "--termseq", "TERM,100,KILL,25", "--lb", "echo {}", ":::", "b"],
        b"",
        Duration::from_secs(30),
    );
    assert_eq!((r.code, r.stdout.as_str()), (Some(0), "b\n"), "{}", r.stderr);
}
