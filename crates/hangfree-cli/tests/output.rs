//! Output: grouped per job and never interleaved, in input order with `-k`, tagged,
//! line-buffered, and a job that floods it.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{command, run, run_in, tempdir, wait_bounded};

#[test]
fn output_of_ten_thousand_jobs_is_never_interleaved() {
    let dir = tempdir();
    // Each job writes its lines in several writes, with a pause between, so that jobs
    // writing straight to a shared stdout would interleave.
    let job = "for i in 1 2 3; do printf 'job %s part ' {}; printf '%s\\n' $i; done; printf 'err %s\\n' {} >&2";
    let input: String = (1..=10_000).map(|i| format!("{i}\n")).collect();
    let r = run_in(dir.path(), &["run", "-j", "4", job], input.as_bytes(), Duration::from_secs(300));
    assert_eq!(r.code, Some(0), "{}", &r.stderr[..r.stderr.len().min(2000)]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 30_000);
    for chunk in lines.chunks(3) {
        let n = chunk[0].split(' ').nth(1).unwrap();
        let want: Vec<String> = (1..=3).map(|i| format!("job {n} part {i}")).collect();
        assert_eq!(chunk, want.iter().map(String::as_str).collect::<Vec<_>>(), "a job's output was split");
    }
    let mut errs: Vec<&str> = r.stderr.lines().collect();
    errs.sort();
    errs.dedup();
    assert_eq!(errs.len(), 10_000);
}

#[test]
fn keep_order_prints_in_input_order() {
    let r = run(&["run", "-k", "-j", "4", "sleep {}; echo {}", ":::", "0.4", "0.1", "0.3", "0"]);
    assert_eq!(r.stdout, "0.4\n0.1\n0.3\n0\n", "{}", r.stderr);
    let r = run(&["run", "-j", "4", "sleep {}; echo {}", ":::", "0.6", "0"]);
    assert_eq!(r.stdout, "0\n0.6\n", "without -k, in order of completion");
}

#[test]
fn a_job_prints_only_its_own_output_when_files_are_reused() {
    // Ended jobs' output files are truncated and reused: a short output after a long one
    // must show nothing of the long one, on either stream.
    let sizes = ["5", "1", "4", "0", "3", "1", "2", "6", "1"];
    let mut args = vec!["run", "-k", "-j2", "seq {}; seq {} >&2", ":::"];
    args.extend_from_slice(&sizes);
    let r = run(&args);
    let mut want = String::new();
    for n in sizes {
        for i in 1..=n.parse::<u32>().unwrap() {
            want.push_str(&format!("{i}\n"));
        }
    }
    assert_eq!(r.stdout, want);
    assert_eq!(r.stderr, want);
    let mut args = vec!["run", "-k", "-j2", "seq", ":::"];
    args.extend_from_slice(&sizes);
    assert_eq!(run(&args).stdout, want, "started without a shell");
    // With --line-buffer the files are read while the next job starts: before its worker
    // has opened them.
    let r = run(&["run", "-k", "-j1", "--line-buffer", "seq {}; sleep 0.1", ":::", "300", "0", "300", "0"]);
    let seq300: String = (1..=300).map(|i| format!("{i}\n")).collect();
    assert_eq!(r.stdout, format!("{seq300}{seq300}"));
}

#[test]
fn tag_prefixes_every_line_with_the_arguments() {
    let r = run(&["run", "-k", "--tag", "echo one; echo two; echo err >&2", ":::", "a", "b c"]);
    assert_eq!(r.stdout, "a\tone\na\ttwo\nb c\tone\nb c\ttwo\n");
    assert_eq!(r.stderr, "a\terr a\nb c\terr b c\n", "the arguments are appended to the last command");
    let r = run(&["run", "-k", "--tag", "echo {1}{2}", ":::", "x", ":::", "1", "2"]);
    assert_eq!(r.stdout, "x 1\tx1\nx 2\tx2\n", "several sources: space-separated, as GNU parallel");
}

#[test]
fn line_buffer_prints_whole_lines_while_the_job_runs() {
    let dir = tempdir();
    let mut c =
        command(dir.path(), &["run", "--line-buffer", "--tag", "echo first {}; sleep 3; echo last {}", ":::", "a"]);
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let t0 = Instant::now();
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "a\tfirst a\n");
    assert!(t0.elapsed() < Duration::from_millis(2500), "the first line came only after {:?}", t0.elapsed());
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "a\tlast a\n");
    let rest = wait_bounded(child, Duration::from_secs(30));
    assert_eq!(rest.status.code(), Some(0));
    // Lines of jobs that run together are whole.
    let r = run(&[
        "run",
        "--line-buffer",
        "-j",
        "4",
        "for i in 1 2 3 4 5; do printf 'x%s' {}; sleep 0.01; printf 'y\\n'; done",
        ":::",
        "1",
        "2",
        "3",
        "4",
    ]);
    assert_eq!(r.stdout.lines().count(), 20);
    assert!(r.stdout.lines().all(|l| l.len() == 3 && l.starts_with('x') && l.ends_with('y')), "{}", r.stdout);
}

#[test]
fn a_job_flooding_stdout_does_not_stall_the_others() {
    let dir = tempdir();
    let job = "if [ {} = flood ]; then head -c 50000000 /dev/zero | tr '\\0' a; echo; else echo small {}; fi";
    let r = run_in(
        dir.path(),
        &["run", "-k", "-j", "2", job, ":::", "s1", "flood", "s2", "s3"],
        b"",
        Duration::from_secs(120),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout.len(), 50_000_001 + 3 * "small sN\n".len());
    assert!(r.stdout.starts_with("small s1\naaaa"));
    assert!(r.stdout.ends_with("a\nsmall s2\nsmall s3\n"));
}

#[test]
fn bar_and_eta_draw_on_a_terminal() {
    // util-linux's `script` gives the run a terminal.
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed, so no terminal can be made");
        return;
    }
    for (flag, says) in [("--bar", "4/4 jobs,"), ("--eta", "4/4 jobs done")] {
        let cmd = format!("{} run -j 2 {flag} 'sleep 0.2; echo job{{}}' ::: 1 2 3 4", env!("CARGO_BIN_EXE_hangfree"));
        let mut c = std::process::Command::new("script");
        c.args(["-qefc", &cmd, "/dev/null"]).stdin(std::process::Stdio::null());
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let out = wait_bounded(c.spawn().unwrap(), Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(says), "{flag}: {text}");
        for j in 1..=4 {
            assert!(text.contains(&format!("job{j}")), "{flag}: {text}");
        }
    }
}

#[test]
fn keep_order_with_line_buffer_streams_the_oldest_job() {
    let r = run(&["run", "-k", "--line-buffer", "-j", "3", "echo a{}; sleep {}; echo b{}", ":::", "0.6", "0.1", "0.3"]);
    assert_eq!(r.stdout, "a0.6\nb0.6\na0.1\nb0.1\na0.3\nb0.3\n", "{}", r.stderr);
}

#[test]
fn when_stdout_closes_the_jobs_still_queued_do_not_run() {
    let dir = common::tempdir();
    let d = dir.path();
    // Whoever reads the output stops after the first line; the jobs queued in the engine
    // by then (-j 2 keeps 36 there) are cancelled, not run: only the running ones, those
    // sent ahead and those that ended before the closed pipe was seen run.
    let mut c = common::command(d, &["run", "-j", "2", "touch ran.{}; echo {}", ":::"]);
    let seq: Vec<String> = (1..=400).map(|i| i.to_string()).collect();
    c.args(&seq);
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("start hangfree");
    let mut out = child.stdout.take().expect("stdout");
    let mut first = [0u8; 2];
    std::io::Read::read_exact(&mut out, &mut first).expect("a first line");
    drop(out);
    let r = common::wait_bounded(child, std::time::Duration::from_secs(60));
    let ran = std::fs::read_dir(d)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("ran."))
        .count();
    assert!(ran < 30, "{ran} of 400 jobs ran after stdout closed: {}", String::from_utf8_lossy(&r.stderr));
}
