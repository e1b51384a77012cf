//! The same command lines under GNU parallel and hangfree give the same output, exit
//! status and job log fields. Skipped, with a message, where GNU parallel is not
//! installed (Debian's package `parallel`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{at, run_in, s, tempdir, wait_bounded};

fn gnu_parallel() -> Option<String> {
    let out = Command::new("parallel").arg("--version").stdin(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.contains("GNU parallel").then_some(text)
}

#[test]
fn same_output_and_status_as_gnu_parallel() {
    if gnu_parallel().is_none() {
        eprintln!(
            "skipped: GNU parallel is not installed; to compare without installing it: \
             apt-get download parallel && dpkg-deb -x parallel_*.deb gnu && PATH=$PWD/gnu/usr/bin:$PATH cargo nextest run ..."
        );
        return;
    }
    let dir = tempdir();
    let d = dir.path();
    std::fs::write(at(d, "names"), "a b.txt\n$(echo pwned)\nd/e.f.g\n").unwrap();
    let cases: &[&[&str]] = &[
        &["-k", "echo", ":::", "a", "b c", "'q'"],
        &["-k", "echo {} {.} {/} {//} {/.} {#}", "::::", "names"],
        &["-k", "echo {2} {1}", ":::", "x", "y", ":::", "1", "2"],
        &["-k", "--tag", "echo {}; echo e{} >&2", ":::", "t1", "t2"],
        &["exit {}", ":::", "0", "1", "2"],
        &["-k", "-j1", "--halt", "now,fail=1", "echo {}; exit {}", ":::", "0", "4", "0"],
        &["-k", "-0", "printf '[%s]'", "::::", "names"],
        &["-k", "echo", ":::", "a", "b", "::::", "names"],
        &["-k", "--tag", "echo {1}{2}", ":::", "x", ":::", "1", "2"],
        &["-k", "echo {}", ":::", "$(echo pwned)", "a'b", "c\"d", "e  f", "x;y", "`date`", "*", "~", ""],
        &["-k", "--timeout", "0.5", "echo {}; sleep {}", ":::", "0", "3"],
        &["--retries", "3", "echo x{}; false", ":::", "1"],
        &["-k", "-j1", "--halt", "soon,fail=1", "echo {}; exit {}", ":::", "0", "5", "0"],
    ];
    for case in cases {
        let mut gnu = Command::new("parallel");
        gnu.arg("--will-cite")
            .args(*case)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let g = wait_bounded(gnu.spawn().unwrap(), Duration::from_secs(60));
        let mut args = vec!["run"];
        args.extend_from_slice(case);
        let h = run_in(d, &args, b"", Duration::from_secs(60));
        let gout = String::from_utf8_lossy(&g.stdout);
        let mut gl: Vec<&str> = gout.lines().collect();
        let mut hl: Vec<&str> = h.stdout.lines().collect();
        if !case.contains(&"-k") {
            gl.sort();
            hl.sort();
        }
        assert_eq!(hl, gl, "{case:?}: stdout differs");
        assert_eq!(h.code, g.status.code(), "{case:?}: exit status differs");
    }
    // The job log: same fields apart from times (a job killed by a signal, a time-out
    // whose job ignores SIGTERM).
    let (gl, hl) = (at(d, "g.log"), at(d, "h.log"));
    let job = [
        "-k",
        "-j1",
        "--timeout",
        "1",
        "case {} in sig) kill -9 $$;; slow) trap '' TERM; sleep 5;; 3) exit 3;; esac",
        ":::",
        "0",
        "3",
        "sig",
        "slow",
    ];
    let mut gnu = Command::new("parallel");
    gnu.args(["--will-cite", "--joblog", &s(&gl)]).args(job).current_dir(d).stdin(Stdio::null());
    let _ = wait_bounded(gnu.spawn().unwrap(), Duration::from_secs(60));
    let mut args = vec!["run", "--joblog"];
    let hls = s(&hl);
    args.push(&hls);
    args.extend_from_slice(&job);
    run_in(d, &args, b"", Duration::from_secs(60));
    let fields = |p| -> Vec<Vec<String>> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').enumerate().filter(|(i, _)| *i != 2 && *i != 3).map(|(_, f)| f.to_owned()).collect())
            .collect()
    };
    assert_eq!(fields(&hl), fields(&gl));
}
