//! Where jobs come from and what command each runs: input sources, replacement strings,
//! quoting, `--dry-run`.

mod common;

use std::time::Duration;

use common::{at, run, run_in, s, tempdir};

#[test]
fn arguments_after_three_colons_each_run_once() {
    let r = run(&["run", "echo", ":::", "a", "b", "c"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.sorted_lines(), ["a", "b", "c"]);
}

#[test]
fn several_sources_give_every_combination_last_fastest() {
    let r = run(&["run", "-k", "-j", "3", "echo {1}-{2}-{3}", ":::", "a", "b", ":::", "1", "2", ":::", "x"]);
    assert_eq!(r.stdout, "a-1-x\na-2-x\nb-1-x\nb-2-x\n", "{}", r.stderr);
    let r = run(&["run", "-k", "echo", ":::", "a", "b", ":::", "1"]);
    assert_eq!(r.stdout, "a 1\nb 1\n", "without a replacement string every argument is appended");
}

#[test]
fn files_standard_input_and_nul_separated_records() {
    let dir = tempdir();
    std::fs::write(at(dir.path(), "f1"), "one\ntwo\n").unwrap();
    std::fs::write(at(dir.path(), "f2"), "X\nY").unwrap();
    let d = dir.path();
    let r = run_in(d, &["run", "-k", "echo", "::::", "f1", "f2"], b"", Duration::from_secs(30));
    assert_eq!(r.stdout, "one X\none Y\ntwo X\ntwo Y\n", "{}", r.stderr);
    let r = run_in(d, &["run", "-k", "-a", "f1", "echo {1}+{2}", ":::", "z"], b"", Duration::from_secs(30));
    assert_eq!(r.stdout, "one+z\ntwo+z\n", "{}", r.stderr);
    let r = run_in(d, &["run", "-k", "echo"], b"l1\nl 2\n\nl4\n", Duration::from_secs(30));
    assert_eq!(r.stdout, "l1\nl 2\n\nl4\n", "stdin lines, an empty one included: {}", r.stderr);
    let r = run_in(d, &["run", "-k", "-0", "printf '[%s]\\n'"], b"a\nb\0c d\0", Duration::from_secs(30));
    assert_eq!(r.stdout, "[a\nb]\n[c d]\n", "{}", r.stderr);
    let r = run_in(d, &["run", "-k", "echo", "::::", "-"], b"from stdin\n", Duration::from_secs(30));
    assert_eq!(r.stdout, "from stdin\n");
}

#[test]
fn replacement_strings_edit_each_argument() {
    let r = run(&["run", "-j", "1", "echo {} / {.} / {/} / {//} / {/.} / {#} / {%}", ":::", "d/e/f.tar.gz", "plain"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        r.sorted_lines(),
        ["d/e/f.tar.gz / d/e/f.tar / f.tar.gz / d/e / f.tar / 1 / 1", "plain / plain / plain / . / plain / 2 / 1"]
    );
    let r = run(&["run", "-k", "echo {2/} {1.}", ":::", "a.txt", ":::", "x/y"]);
    assert_eq!(r.stdout, "y a\n");
}

#[test]
fn the_job_sees_its_sequence_number_and_slot() {
    let r = run(&["run", "-k", "-j", "2", "echo $PARALLEL_SEQ {#}", ":::", "a", "b", "c"]);
    assert_eq!(r.stdout, "1 1\n2 2\n3 3\n", "{}", r.stderr);
    let r = run(&["run", "-j", "2", "echo {%}", ":::", "a", "b", "c", "d"]);
    assert!(r.stdout.lines().all(|l| l == "1" || l == "2"), "slots are 1..=j: {}", r.stdout);
}

#[test]
fn hostile_file_names_are_data_never_code() {
    let dir = tempdir();
    let d = dir.path();
    let names = [
        "with space",
        "$(touch PWNED1)",
        "`touch PWNED2`",
        "semi;touch PWNED3",
        "quote'd \"double\"",
        "new\nline",
        "-n",
        "star*",
        "back\\slash",
        "{}",
        "ünïcødé",
        "&& touch PWNED4 ||",
    ];
    for n in names {
        std::fs::write(d.join(n), format!("content of {n}")).unwrap();
    }
    let mut input = Vec::new();
    for n in names {
        input.extend_from_slice(n.as_bytes());
        input.push(0);
    }
    let r = run_in(d, &["run", "-0", "-k", "cat -- {}; echo"], &input, Duration::from_secs(30));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let want: String = names.iter().map(|n| format!("content of {n}\n")).collect();
    assert_eq!(r.stdout, want);
    let r = run_in(
        d,
        &["run", "-k", "printf '<%s>\\n'", ":::"].iter().copied().chain(names).collect::<Vec<_>>(),
        b"",
        Duration::from_secs(30),
    );
    let want: String = names.iter().map(|n| format!("<{n}>\n")).collect();
    assert_eq!(r.stdout, want, "appended arguments are quoted too");
    for i in 1..=4 {
        assert!(!d.join(format!("PWNED{i}")).exists(), "a file name ran as code");
    }
}

#[test]
fn dry_run_prints_the_commands_and_runs_nothing() {
    let dir = tempdir();
    let d = dir.path();
    let r = run_in(d, &["run", "--dry-run", "-k", "touch ran-{}", ":::", "a", "b c"], b"", Duration::from_secs(30));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "touch ran-a\ntouch ran-'b c'\n");
    assert!(std::fs::read_dir(d).unwrap().next().is_none(), "a dry run ran something");
    let _ = s(d);
}
