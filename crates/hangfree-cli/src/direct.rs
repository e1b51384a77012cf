//! Jobs that need no shell. A job's command is given to `sh -c`; but when it is one
//! simple command — words of plain characters or quoted text, the form `hangfree run`'s
//! own quoting of arguments produces — naming a program found on `PATH`, the worker
//! starts that program itself, with the words the shell would have given it. That saves
//! a process per job (`sh` forks the program rather than exec it, as `dash` does) and
//! the shell's start-up.
//!
//! Everything else goes to `sh -c` as before: any character the shell would treat
//! specially (`$`, `` ` ``, `;`, `|`, `&`, `<`, `>`, `(`, `*`, `?`, `[`, `~`, `#`, `{`,
//! `!`, a newline, ...), an assignment (`A=1 cmd`), a first word that is a shell keyword
//! or a builtin of dash or bash (`echo`, `cd`, `true`, `printf`, `test`, ...: the
//! builtin and the program of the same name differ), a bash function exported under
//! that name, or a program that is not on `PATH`. If the program cannot be started
//! (not executable, a script without `#!`), the shell runs the command instead, so its
//! error or its own way of running the file is what the job gets.
//!
//! The one visible difference: a program killed by a signal is seen as killed by that
//! signal (the joblog's Signal column), where `dash` would have reported exit status
//! 128+N; `bash -c`, which execs a lone command itself, reports it as this does.

use std::path::{Path, PathBuf};

/// Keywords and builtins of dash and bash: a first word among these runs under `sh`.
const SHELL_WORDS: &str = "\
    ! { } [[ ]] case coproc do done elif else esac fi for function if in select then time until while \
    . : [ alias bg break cd chdir command continue echo eval exec exit export false fc fg getopts hash jobs kill \
    local printf pwd read readonly return set shift test times trap true type ulimit umask unalias unset wait \
    bind builtin caller compgen complete compopt declare dirs disown enable help history let logout mapfile popd \
    pushd readarray shopt source suspend typeset";

/// Characters that stand for themselves outside quotes, anywhere in a word.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ',' | ':' | '+' | '@' | '%' | '=')
}

/// The words `sh` would make of `cmd`, if `cmd` is one simple command of plain words:
/// unquoted [`plain`] characters, `'...'`, `"..."` without `$` or `` ` ``, and
/// backslash escapes, separated by spaces or tabs. `None` for anything else.
pub fn words(cmd: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = cmd.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | '\t')) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            match c {
                ' ' | '\t' => break,
                '\'' => {
                    chars.next();
                    loop {
                        match chars.next()? {
                            '\'' => break,
                            c => word.push(c),
                        }
                    }
                }
                '"' => {
                    chars.next();
                    loop {
                        match chars.next()? {
                            '"' => break,
                            '$' | '`' => return None,
                            '\\' => match chars.next()? {
                                c @ ('$' | '`' | '"' | '\\') => word.push(c),
                                '\n' => return None,
                                c => {
                                    word.push('\\');
                                    word.push(c);
                                }
                            },
                            c => word.push(c),
                        }
                    }
                }
                '\\' => {
                    chars.next();
                    match chars.next()? {
                        '\n' => return None,
                        c => word.push(c),
                    }
                }
                c if plain(c) => {
                    chars.next();
                    word.push(c);
                }
                _ => return None,
            }
        }
        words.push(word);
    }
    Some(words)
}

/// The program and argument words to start for `cmd` without a shell, or `None` if
/// `cmd` must go to `sh -c` (see the module's documentation).
pub fn command(cmd: &str) -> Option<(PathBuf, Vec<String>)> {
    let words = words(cmd)?;
    let name = words.first()?;
    // The first word as typed, unquoted: quoting or escaping it would change nothing for
    // a program, but keeps keyword detection simple (`'if'` is not a keyword).
    if !cmd.trim_start_matches([' ', '\t']).starts_with(name.as_str())
        || name.is_empty()
        || name.contains('=')
        || SHELL_WORDS.split_ascii_whitespace().any(|w| w == name)
        || exported_function(name)
    {
        return None;
    }
    let program = find(name)?;
    Some((program, words))
}

/// Whether bash exported a function called `name` (`export -f`): when `sh` is bash, the
/// function, not the program, is what the command runs.
fn exported_function(name: &str) -> bool {
    std::env::var_os(format!("BASH_FUNC_{name}%%")).is_some()
        || std::env::var_os(format!("BASH_FUNC_{name}()")).is_some()
}

/// Where the shell would find the program `name`: the path itself if it has a slash,
/// otherwise the first executable regular file of that name in `PATH`'s directories.
pub fn find(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir })
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

fn executable(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let is_file = std::fs::metadata(p).is_ok_and(|m| m.is_file());
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else { return false };
    // SAFETY: access(2) on a NUL-terminated path.
    is_file && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(cmd: &str) -> Option<Vec<&str>> {
        let v = words(cmd)?;
        Some(v.iter().map(|s| Box::leak(s.clone().into_boxed_str()) as &str).collect())
    }

    #[test]
    fn plain_words_split_as_sh_does() {
        assert_eq!(w("sleep 0.01"), Some(vec!["sleep", "0.01"]));
        assert_eq!(w("  gzip\t--best  a.log "), Some(vec!["gzip", "--best", "a.log"]));
        assert_eq!(w("cp 'a b.txt' /backup/'a b'.bak"), Some(vec!["cp", "a b.txt", "/backup/a b.bak"]));
        assert_eq!(w(r#"cp "it's.txt" x"#), Some(vec!["cp", "it's.txt", "x"]));
        assert_eq!(w(r#"x "a\"b\\c\d""#), Some(vec!["x", r#"a"b\c\d"#]));
        assert_eq!(w(r"x a\ b"), Some(vec!["x", "a b"]));
        assert_eq!(w("x '' '$(rm -rf ~)'"), Some(vec!["x", "", "$(rm -rf ~)"]));
        assert_eq!(w("x a=b k:v u@h 50%"), Some(vec!["x", "a=b", "k:v", "u@h", "50%"]));
        assert_eq!(w(""), Some(vec![]));
    }

    #[test]
    fn anything_the_shell_would_interpret_is_refused() {
        for cmd in [
            "a; b",
            "a | b",
            "a && b",
            "a & ",
            "a > f",
            "a < f",
            "(a)",
            "a $HOME",
            "a \"$HOME\"",
            "a `b`",
            "a \"`b`\"",
            "a *.log",
            "a ?",
            "a [ab]",
            "a ~",
            "a ~/x",
            "a #c",
            "{ a; }",
            "a {1,2}",
            "! a",
            "a\nb",
            "a 'open",
            "a \"open",
            "a \\",
            "a é",
            "a \\\nb",
        ] {
            assert_eq!(words(cmd), None, "{cmd:?}");
        }
    }

    #[test]
    fn builtins_keywords_assignments_and_unknown_programs_go_to_the_shell() {
        for cmd in [
            "echo a",
            "true",
            "cd /",
            "printf x",
            "test -f x",
            "[ -f x ]",
            "kill 1",
            "exit 3",
            "if",
            "A=1 sleep 1",
            "time sleep 1",
            "'sleep' 1",
            "\\sleep 1",
            "no-such-program-hangfree x",
            "",
        ] {
            assert_eq!(command(cmd), None, "{cmd:?}");
        }
    }

    #[test]
    fn programs_on_path_start_directly() {
        let (p, args) = command("sleep 0.01").expect("sleep is on PATH");
        assert!(p.is_absolute() && p.ends_with("sleep"), "{p:?}");
        assert_eq!(args, ["sleep", "0.01"]);
        let (p, _) = command("/bin/cat 'a b'").expect("an absolute path");
        assert_eq!(p, PathBuf::from("/bin/cat"));
        assert_eq!(command("/etc/passwd x"), None, "not executable");
    }
}
