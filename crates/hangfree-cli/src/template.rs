//! The command template: GNU parallel's replacement strings, filled in with each job's
//! arguments, every argument quoted for `sh -c` so that it is data, never code.

use std::fmt::Write;

/// What a replacement string makes of an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    /// `{}`: the argument as it is.
    Whole,
    /// `{.}`: without its extension.
    NoExt,
    /// `{/}`: its base name.
    Base,
    /// `{//}`: its directory.
    Dir,
    /// `{/.}`: its base name without extension.
    BaseNoExt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// An argument (`None`: every argument, space-separated) with an edit.
    Arg(Option<usize>, Edit),
    /// `{#}`: the job's sequence number.
    Seq,
    /// `{%}`: the job's slot.
    Slot,
}

/// A parsed command line, ready to be filled in for each job.
#[derive(Clone, Debug)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `words` (joined with spaces, as GNU parallel does, so `'cmd {} | wc'` is
    /// one shell pipeline) for `sources` input sources. Without a replacement string the
    /// arguments are appended. Fails on an empty command or on `{N}` beyond the sources.
    pub fn parse(words: &[String], sources: usize) -> Result<Template, String> {
        let text = words.join(" ");
        if text.trim().is_empty() {
            return Err("no command to run: give one before ::: (for example: hangfree run echo ::: a b)".into());
        }
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text.as_str();
        while let Some(open) = rest.find('{') {
            lit.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}').and_then(|close| Some((close, placeholder(&after[..close])?))) {
                Some((close, p)) => {
                    if let Piece::Arg(Some(n), _) = p {
                        if n >= sources {
                            return Err(format!(
                                "the command uses {{{}}} but there {} only {sources} input source{}",
                                n + 1,
                                if sources == 1 { "is" } else { "are" },
                                if sources == 1 { "" } else { "s" }
                            ));
                        }
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(p);
                    rest = &after[close + 1..];
                }
                None => {
                    lit.push('{');
                    rest = after;
                }
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        if !pieces.iter().any(|p| !matches!(p, Piece::Text(_))) {
            pieces.push(Piece::Text(" ".into()));
            pieces.push(Piece::Arg(None, Edit::Whole));
        }
        Ok(Template { pieces })
    }

    /// The command for a job: `args` (one per input source) quoted into the template.
    pub fn fill(&self, args: &[String], seq: u64, slot: usize) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Seq => {
                    let _ = write!(out, "{seq}");
                }
                Piece::Slot => {
                    let _ = write!(out, "{slot}");
                }
                Piece::Arg(Some(n), e) => out.push_str(&quote(&edit(&args[*n], *e))),
                Piece::Arg(None, e) => {
                    let quoted: Vec<String> = args.iter().map(|a| quote(&edit(a, *e))).collect();
                    out.push_str(&quoted.join(" "));
                }
            }
        }
        out
    }

    /// Whether the command depends on the job slot, which is only known when the job
    /// starts (a dry run shows slot 1... as jobs would get them with one job at a time).
    pub fn uses_slot(&self) -> bool {
        self.pieces.contains(&Piece::Slot)
    }
}

/// The piece named by the text between `{` and `}`, if it is a replacement string.
fn placeholder(inner: &str) -> Option<Piece> {
    let digits = inner.len() - inner.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (num, suffix) = inner.split_at(digits);
    let source = if num.is_empty() {
        None
    } else {
        match num.parse::<usize>() {
            Ok(n) if n >= 1 => Some(n - 1),
            _ => return None,
        }
    };
    let edit = match suffix {
        "" => Edit::Whole,
        "." => Edit::NoExt,
        "/" => Edit::Base,
        "//" => Edit::Dir,
        "/." => Edit::BaseNoExt,
        "#" if source.is_none() => return Some(Piece::Seq),
        "%" if source.is_none() => return Some(Piece::Slot),
        _ => return None,
    };
    Some(Piece::Arg(source, edit))
}

fn edit(arg: &str, e: Edit) -> String {
    match e {
        Edit::Whole => arg.to_owned(),
        Edit::NoExt => no_ext(arg).to_owned(),
        Edit::Base => base(arg).to_owned(),
        Edit::Dir => dir(arg),
        Edit::BaseNoExt => no_ext(base(arg)).to_owned(),
    }
}

/// GNU parallel's `s:\.[^/.]*$::`: drops the last extension of the last component.
fn no_ext(s: &str) -> &str {
    match s.rfind('.') {
        Some(i) if !s[i..].contains('/') => &s[..i],
        _ => s,
    }
}

/// GNU parallel's `s:^.*/::`.
fn base(s: &str) -> &str {
    s.rfind('/').map_or(s, |i| &s[i + 1..])
}

/// Perl's `File::Basename::dirname`, which GNU parallel uses for `{//}`.
fn dir(s: &str) -> String {
    let t = s.trim_end_matches('/');
    if t.is_empty() {
        return if s.is_empty() { ".".into() } else { "/".into() };
    }
    match t.rfind('/') {
        None => ".".into(),
        Some(i) => {
            let d = t[..i].trim_end_matches('/');
            if d.is_empty() { "/".into() } else { d.into() }
        }
    }
}

/// Quotes one argument for a POSIX shell. Arguments cannot hold NUL bytes (they come
/// from argv, or records split at NUL or newline), the one thing quoting refuses.
pub fn quote(arg: &str) -> String {
    shlex::try_quote(arg).map(|q| q.into_owned()).unwrap_or_else(|_| "''".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(cmd: &str, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Template::parse(&[cmd.to_string()], args.len()).unwrap().fill(&args, 7, 2)
    }

    #[test]
    fn replacement_strings() {
        let a = ["dir/sub/file.tar.gz"];
        assert_eq!(fill("x {}", &a), "x dir/sub/file.tar.gz");
        assert_eq!(fill("x {.}", &a), "x dir/sub/file.tar");
        assert_eq!(fill("x {/}", &a), "x file.tar.gz");
        assert_eq!(fill("x {//}", &a), "x dir/sub");
        assert_eq!(fill("x {/.}", &a), "x file.tar");
        assert_eq!(fill("x {#} {%}", &a), "x 7 2");
        assert_eq!(fill("x {//}", &["file"]), "x .");
        assert_eq!(fill("x {//}", &["/file"]), "x /");
        assert_eq!(fill("x {.}", &["a.d/file"]), "x a.d/file");
        assert_eq!(fill("x {2} {1/.} {}", &["a/b.c", "z"]), "x z b a/b.c z");
    }

    #[test]
    fn without_replacement_string_the_arguments_are_appended() {
        assert_eq!(fill("echo", &["a", "b"]), "echo a b");
        assert_eq!(fill("echo ${HOME} {a,b} {0} {x}", &["q"]), "echo ${HOME} {a,b} {0} {x} q");
    }

    #[test]
    fn arguments_are_quoted() {
        assert_eq!(fill("echo {}", &["a b"]), "echo 'a b'");
        assert_eq!(fill("echo {}", &["$(touch x)"]), "echo '$(touch x)'");
        assert_eq!(fill("echo {}", &[""]), "echo ''");
        let q = fill("echo {}", &["it's"]);
        assert!(q == r#"echo "it's""# || q == r#"echo 'it'\''s'"#, "{q}");
    }

    #[test]
    fn bad_templates() {
        assert!(Template::parse(&["".into()], 1).is_err());
        assert!(Template::parse(&["echo {3}".into()], 2).unwrap_err().contains("{3}"));
    }
}
