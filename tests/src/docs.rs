//! The command lines and code blocks the documentation shows, for the tests that hold them to the
//! code: every `enforcer ...` line must parse with the agent's own clap parser
//! (`enforcer/tests/docs.rs`), every `cargo xtask ...` line with xtask's (`xtask/src/docs.rs`),
//! every event example must match the schema, every repository path they name must exist.
//!
//! Documents: `README.md`, `docs/*.md`, `deploy/README.md`. Where a command line counts:
//!
//! - fenced blocks marked `console`: the lines after a `$ ` or `# ` prompt;
//! - fenced blocks marked `sh`/`bash`/`shell` or not marked: every line that starts with the
//!   program, unless the block has `$ ` prompts (then only those lines; the rest is output).
//!   Output that starts with the program's name belongs in a `text` block. A line indented under
//!   a command line continues it (a wrapped synopsis);
//! - tables: every inline code span of a table row that starts with the program.
//!
//! Prose mentions (`enforcer detach`, a command's name) are not command lines. A leading `sudo` or
//! `sudo -E` is dropped, and a comment (` # ...`) or what follows a shell operator (`|`, `&&`,
//! `;`, `>`, `<`, `&`) is cut off.
//!
//! Synopses are expanded to the command lines they stand for: `[...]` marks an optional part,
//! which is kept (so every option a synopsis lists is checked); `a|b|c` (written `a\|b` in a
//! table) gives one command line per alternative; `...` (repeatable) is dropped; an UPPERCASE word
//! is a placeholder, replaced by the sample value [`PLACEHOLDERS`] gives it. A placeholder missing
//! from that table is an error naming it: add it there with a value the parser must accept.

use std::path::Path;

/// Sample values for the placeholders of the synopses: what a user would type there.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    ("FILE", "policies/openssl-only.yaml"),
    ("IFACE", "eth0"),
    ("DIR", "/sys/fs/bpf/enforcer"),
    ("PATH", "/tmp/example"),
    ("ADDR", "127.0.0.1:9464"),
    ("N", "1024"),
    ("LOCAL", "10.0.0.1:40000"),
    ("REMOTE", "10.0.0.2:443"),
    ("FAMILY", "openssl"),
    ("COMMAND", "curl"),
    ("ARGS", "https://10.0.0.2/"),
];

/// The documents whose examples are checked, relative to the workspace root.
pub fn documents() -> Vec<String> {
    let root = crate::workspace();
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    docs.insert(0, "README.md".to_string());
    docs.push("deploy/README.md".to_string());
    docs
}

/// One fenced code block: its info string (`sh`, `json`, ... or empty) and its lines with their
/// line numbers in the file.
pub struct Block {
    pub lang: String,
    pub lines: Vec<(usize, String)>,
}

/// The fenced code blocks of one document (`rel`: relative to the workspace root).
pub fn blocks(rel: &str) -> Vec<Block> {
    let mut out = vec![];
    let mut open: Option<Block> = None;
    for (n, line) in read(rel).lines().enumerate() {
        match (line.trim_start().strip_prefix("```"), open.take()) {
            (Some(_), Some(block)) => out.push(block),
            (Some(info), None) => {
                open = Some(Block {
                    lang: info.trim().to_string(),
                    lines: vec![],
                })
            }
            (None, Some(mut block)) => {
                block.lines.push((n + 1, line.to_string()));
                open = Some(block);
            }
            (None, None) => {}
        }
    }
    out
}

/// Top-level directories of the repository whose paths the documents name.
const TOP_DIRS: &[&str] = &[
    "enforcer",
    "enforcer-ebpf",
    "enforcer-common",
    "xtask",
    "tests",
    "fuzz",
    "bench",
    "deploy",
    "policies",
    "catalog",
    "vm",
    "docs",
];

/// Every repository path a document names (`enforcer/src/...`, `tests/tests/x.rs`, ...), as
/// (`file:line`, path). A path followed by `*`, `<` or `...` is a pattern, not a file, and left
/// out.
pub fn repository_paths() -> Vec<(String, String)> {
    let mut out = vec![];
    let in_path = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    for rel in documents() {
        for (n, line) in read(rel.as_str()).lines().enumerate() {
            let mut start = 0;
            while let Some(i) = line[start..].find('/').map(|i| start + i) {
                start = i + 1;
                // A byte index past the whole character: docs hold `µ`, `→`, `×`.
                let begin = line[..i]
                    .char_indices()
                    .rev()
                    .find(|&(_, c)| !in_path(c))
                    .map_or(0, |(b, c)| b + c.len_utf8());
                let first = &line[begin..i];
                if !TOP_DIRS.contains(&first) {
                    continue;
                }
                let len = line[begin..]
                    .find(|c: char| !in_path(c))
                    .unwrap_or(line.len() - begin);
                let raw = &line[begin..begin + len];
                let after = &line[begin + len..];
                start = begin + len;
                if raw.ends_with("...") || raw.ends_with('-') || after.starts_with(['*', '<']) {
                    continue;
                }
                let path = raw.trim_end_matches('.');
                if !path.ends_with('/') || path.len() > first.len() + 1 {
                    out.push((format!("{rel}:{}", n + 1), path.to_string()));
                }
            }
        }
    }
    out
}

/// A command line shown in a document.
pub struct CommandLine {
    /// `file:line`.
    pub at: String,
    /// As written (synopsis syntax included).
    pub text: String,
    /// The argument vectors it stands for, without the program; or why it cannot be expanded.
    pub variants: Result<Vec<Vec<String>>, String>,
}

/// Every command line of `program` (`"enforcer"`, `"cargo xtask"`) in the documents.
pub fn command_lines(program: &str) -> Vec<CommandLine> {
    let mut out = vec![];
    for rel in documents() {
        for (line, text) in shown_lines(&rel) {
            let Some(rest) = strip_program(&text, program) else {
                continue;
            };
            out.push(CommandLine {
                at: format!("{rel}:{line}"),
                variants: expand(rest),
                text,
            });
        }
    }
    out
}

/// Runs every argument vector of `lines` through `parse` (a clap `try_parse_from` of `program`
/// with them); returns each failure as `file:line: \`program args\`: clap's first line`, and how
/// many vectors were checked.
pub fn unparsed<E: std::fmt::Display>(
    program: &str,
    lines: &[CommandLine],
    parse: impl Fn(&[String]) -> Result<(), E>,
) -> (Vec<String>, usize) {
    let mut failures = vec![];
    let mut checked = 0;
    for line in lines {
        match &line.variants {
            Err(e) => failures.push(format!("{}: `{}`: {e}", line.at, line.text)),
            Ok(variants) => {
                for args in variants {
                    checked += 1;
                    if let Err(e) = parse(args) {
                        let why = e.to_string().lines().next().unwrap_or_default().to_string();
                        failures.push(format!(
                            "{}: `{program} {}`: {why}",
                            line.at,
                            args.join(" ")
                        ));
                    }
                }
            }
        }
    }
    (failures, checked)
}

fn read(rel: &str) -> String {
    let path = crate::workspace().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", Path::new(rel).display()))
}

/// Candidate command lines of one document (prompt, `sudo` and comments removed), by line.
fn shown_lines(rel: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = vec![];
    for block in blocks(rel) {
        let prompted =
            block.lang == "console" || block.lines.iter().any(|(_, l)| l.starts_with("$ "));
        let shell = matches!(block.lang.as_str(), "" | "sh" | "bash" | "shell");
        if !prompted && !shell {
            continue;
        }
        let mut last: Option<usize> = None;
        for (n, l) in &block.lines {
            let command = if prompted {
                l.strip_prefix("$ ").or_else(|| {
                    (block.lang == "console")
                        .then(|| l.strip_prefix("# "))
                        .flatten()
                })
            } else {
                Some(l.as_str())
            };
            match command {
                Some(c) if !c.trim().is_empty() && !c.starts_with(char::is_whitespace) => {
                    out.push((*n, c.to_string()));
                    last = Some(out.len() - 1);
                }
                // An indented line under a command line continues it.
                _ if !prompted && l.starts_with(char::is_whitespace) && !l.trim().is_empty() => {
                    if let Some(i) = last {
                        out[i].1.push(' ');
                        out[i].1.push_str(l.trim());
                    }
                }
                _ => last = None,
            }
        }
    }
    for (n, line) in read(rel).lines().enumerate() {
        if !line.trim_start().starts_with('|') {
            continue;
        }
        for span in line.split('`').skip(1).step_by(2) {
            out.push((n + 1, span.replace("\\|", "|")));
        }
    }
    out
}

/// The rest of `text` after `program` (and a leading `sudo [-E]`), if it runs `program`.
fn strip_program<'a>(text: &'a str, program: &str) -> Option<&'a str> {
    let mut t = text.trim_start();
    for sudo in ["sudo -E ", "sudo "] {
        if let Some(rest) = t.strip_prefix(sudo) {
            t = rest.trim_start();
            break;
        }
    }
    let rest = t.strip_prefix(program)?;
    (rest.is_empty() || rest.starts_with(' ')).then_some(rest)
}

/// Shell-like words of `text` (single and double quotes, backslash escapes), cut at a comment
/// or a shell operator.
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = vec![];
    let mut word: Option<String> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => w.extend(chars.next()),
                        Some(x) => w.push(x),
                        None => return Err(format!("unclosed {c} quote")),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c if c.is_whitespace() => out.extend(word.take()),
            '#' if word.is_none() => break,
            ';' | '>' | '<' | '&' if word.is_none() => break,
            '|' if word.is_none() && chars.peek().is_none_or(|n| n.is_whitespace()) => break,
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    Ok(out)
}

/// The argument vectors a (possibly synopsis) command line stands for.
fn expand(rest: &str) -> Result<Vec<Vec<String>>, String> {
    let mut variants: Vec<Vec<String>> = vec![vec![]];
    for word in words(rest)? {
        let bare = word.trim_start_matches('[').trim_end_matches("...");
        let bare = bare.trim_end_matches(']').trim_end_matches("...");
        if bare.is_empty() {
            continue;
        }
        let choices: Vec<String> = bare
            .split('|')
            .map(|w| placeholder(w).map(str::to_string))
            .collect::<Result<_, _>>()?;
        variants = choices
            .iter()
            .flat_map(|choice| {
                variants.iter().map(move |v| {
                    let mut v = v.clone();
                    v.push(choice.clone());
                    v
                })
            })
            .collect();
    }
    Ok(variants)
}

/// A placeholder's sample value; any other word as it is.
fn placeholder(word: &str) -> Result<&str, String> {
    let is_placeholder = word.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !is_placeholder {
        return Ok(word);
    }
    PLACEHOLDERS
        .iter()
        .find(|(name, _)| *name == word)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            format!("placeholder {word} has no sample value in enforcer_tests::docs::PLACEHOLDERS")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(rest: &str) -> Vec<Vec<String>> {
        expand(rest).unwrap()
    }

    #[test]
    fn synopses_expand_to_command_lines() {
        assert_eq!(
            one(" attach [--iface IFACE]... [--events text|json] # comment"),
            [
                ["attach", "--iface", "eth0", "--events", "text"],
                ["attach", "--iface", "eth0", "--events", "json"]
            ]
        );
        assert_eq!(
            one(" discover --lib PATH -- sh -c 'gnutls-cli -p 1 < req.txt' | tail"),
            [[
                "discover",
                "--lib",
                "/tmp/example",
                "--",
                "sh",
                "-c",
                "gnutls-cli -p 1 < req.txt"
            ]]
        );
        assert_eq!(
            one(" -- COMMAND [ARGS...]")[0],
            ["--", "curl", "https://10.0.0.2/"]
        );
        assert!(expand(" block HOST").unwrap_err().contains("HOST"));
        assert_eq!(one(" -N -4 x && y"), [["-N", "-4", "x"]]);
    }

    #[test]
    fn the_program_is_found_after_sudo() {
        assert_eq!(
            strip_program("sudo -E cargo xtask bench", "cargo xtask"),
            Some(" bench")
        );
        assert_eq!(strip_program("enforcer::events: x", "enforcer"), None);
        assert_eq!(strip_program("enforcer", "enforcer"), Some(""));
    }
}
