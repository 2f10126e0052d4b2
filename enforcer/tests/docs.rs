//! The documentation against the code. Every `enforcer` command line that README.md, docs/*.md
//! and deploy/README.md show parses with the agent's own clap parser (`enforcer::cli::Cli`), and
//! so do the arguments a shown `cargo xtask run` forwards to `enforcer attach`; every event
//! example in docs/events.md matches docs/events.schema.json; every `yaml` block is a policy the
//! policy parser accepts; every repository path they name exists; a shown `enforcer policy check`
//! output is what that command prints; a shown log line (`INFO enforcer::module: message k=v`)
//! comes from that module, with that message and those fields; docs/events.md's key tables list
//! the schema's keys. What counts as a command line, and
//! the sample values that replace placeholders such as FILE or IFACE: `enforcer_tests::docs`.
//! (The `cargo xtask` lines are parsed by xtask's own test, `xtask/src/docs.rs`.)

use clap::Parser;
use enforcer::cli::Cli;
use enforcer_tests::{
    docs::{blocks, command_lines, documents, repository_paths},
    schema::{events_schema, validate_event},
};

/// `Err` with clap's first line (what is wrong) if `enforcer ARGS` does not parse.
fn parse(args: &[String]) -> Result<(), String> {
    let argv = std::iter::once("enforcer").chain(args.iter().map(String::as_str));
    match Cli::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string().lines().next().unwrap_or_default().to_string()),
    }
}

#[test]
fn every_enforcer_command_line_in_the_docs_parses() {
    let mut failures = vec![];
    let mut checked = 0;
    let lines = command_lines("enforcer");
    for line in &lines {
        match &line.variants {
            Err(e) => failures.push(format!("{}: `{}`: {e}", line.at, line.text)),
            Ok(variants) => {
                for args in variants {
                    checked += 1;
                    println!("{}: enforcer {}", line.at, args.join(" "));
                    if let Err(e) = parse(args) {
                        failures.push(format!("{}: `enforcer {}`: {e}", line.at, args.join(" ")));
                    }
                }
            }
        }
    }
    // `cargo xtask run [--] ARGS` runs `enforcer attach ARGS`.
    for line in command_lines("cargo xtask") {
        for args in line.variants.iter().flatten() {
            let Some(forwarded) = args.strip_prefix(&["run".to_string()]) else {
                continue;
            };
            let forwarded = forwarded
                .strip_prefix(&["--".to_string()])
                .unwrap_or(forwarded);
            let attach: Vec<String> = std::iter::once("attach".to_string())
                .chain(forwarded.iter().cloned())
                .collect();
            checked += 1;
            println!("{}: enforcer {}", line.at, attach.join(" "));
            if let Err(e) = parse(&attach) {
                failures.push(format!(
                    "{}: `cargo xtask {}` forwards `enforcer {}`: {e}",
                    line.at,
                    args.join(" "),
                    attach.join(" ")
                ));
            }
        }
    }
    assert!(
        lines.len() >= 20,
        "only {} enforcer command lines found in the docs: is the extractor broken?",
        lines.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} documented command lines do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_event_example_in_events_md_matches_the_schema() {
    let schema = events_schema();
    let mut failures = vec![];
    let mut types = vec![];
    for block in blocks("docs/events.md").iter().filter(|b| b.lang == "json") {
        for (n, text) in block.lines.iter().filter(|(_, t)| !t.trim().is_empty()) {
            let record: serde_json::Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("docs/events.md:{n}: not one JSON object: {e}"));
                    continue;
                }
            };
            types.extend(record["type"].as_str().map(str::to_string));
            if let Err(e) = validate_event(&schema, &record) {
                failures.push(format!("docs/events.md:{n}: {e}"));
            }
        }
    }
    assert!(
        types.iter().any(|t| t == "connection"),
        "docs/events.md shows no connection event example: {types:?}"
    );
    assert!(
        failures.is_empty(),
        "event examples that do not match docs/events.schema.json:\n{}",
        failures.join("\n")
    );
}

/// A `yaml` block is a policy, or a part of one without `default:` (a `catalog:` section, say),
/// which is checked with `default: deny` added.
#[test]
fn every_policy_example_in_the_docs_is_valid() {
    let mut failures = vec![];
    let mut checked = 0;
    for doc in documents() {
        for block in blocks(&doc).iter().filter(|b| b.lang == "yaml") {
            let Some((first, _)) = block.lines.first() else {
                continue;
            };
            let mut text: String = block.lines.iter().map(|(_, l)| format!("{l}\n")).collect();
            if !text.lines().any(|l| l.starts_with("default:")) {
                text.insert_str(0, "default: deny\n");
            }
            checked += 1;
            // Error positions count from the block's first line (one more with `default:` added).
            let source = format!("{doc}, the yaml block at line {first}");
            if let Err(e) = enforcer::policy::parse(&text, &source) {
                failures.push(e.to_string());
            }
        }
    }
    assert!(checked >= 5, "only {checked} yaml blocks found in the docs");
    assert!(
        failures.is_empty(),
        "policy examples the parser rejects:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_repository_path_in_the_docs_exists() {
    let root = enforcer_tests::workspace();
    let paths = repository_paths();
    let missing: Vec<String> = paths
        .iter()
        .filter(|(_, path)| !root.join(path).exists())
        .map(|(at, path)| format!("{at}: {path}"))
        .collect();
    assert!(paths.len() >= 50, "only {} paths found", paths.len());
    assert!(
        missing.is_empty(),
        "paths named in the docs that do not exist (moved or renamed?):\n{}",
        missing.join("\n")
    );
}

/// "`enforcer policy check FILE` prints:" followed by a block: the block is today's output.
#[test]
fn shown_policy_check_output_is_current() {
    let root = enforcer_tests::workspace();
    let mut shown = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(root.join(&doc)).expect("readable");
        let blocks = blocks(&doc);
        for (n, line) in text.lines().enumerate() {
            let Some(file) = line
                .strip_prefix("`enforcer policy check ")
                .and_then(|rest| rest.strip_suffix("` prints:"))
            else {
                continue;
            };
            let block = blocks
                .iter()
                .find(|b| b.lines.first().is_some_and(|(first, _)| *first > n + 1))
                .unwrap_or_else(|| panic!("{doc}:{}: no block after it", n + 1));
            let want: String = block.lines.iter().map(|(_, l)| format!("{l}\n")).collect();
            let policy = enforcer::policy::load(&root.join(file)).expect("a valid policy");
            // The report names the file as given on the command line.
            let got = enforcer::policy::check_report(&policy)
                .replace(&root.join(file).display().to_string(), file);
            assert_eq!(got, want, "{doc}:{}: `enforcer policy check {file}`", n + 1);
            shown += 1;
        }
    }
    assert!(shown >= 1, "no `enforcer policy check FILE` prints: found");
}

/// A shown log line `LEVEL enforcer::a::b: message key=value ...`: `enforcer/src/a/b.rs` exists,
/// holds a string literal the message starts with (up to the literal's first `{`, where a
/// formatted value begins), names every field the line shows, and (when the literal is a direct
/// `info!`/`warn!`/`error!` call) logs no field the line leaves out. Catches a log target that
/// moved with its code, a reworded message, a renamed field and a field added later.
#[test]
fn shown_log_lines_come_from_the_code() {
    let root = enforcer_tests::workspace();
    let mut failures = vec![];
    let mut shown = 0;
    for doc in documents() {
        for block in blocks(&doc) {
            for (n, line) in &block.lines {
                let Some(rest) = ["INFO ", "WARN ", "ERROR "]
                    .iter()
                    .find_map(|level| line.strip_prefix(level))
                    .and_then(|r| r.strip_prefix("enforcer::"))
                else {
                    continue;
                };
                shown += 1;
                failures.extend(check_log_line(&root, rest).map(|e| format!("{doc}:{n}: {e}")));
            }
        }
    }
    assert!(shown >= 5, "only {shown} log lines found in the docs");
    assert!(
        failures.is_empty(),
        "log lines shown in the docs that the code does not write so:\n{}",
        failures.join("\n")
    );
}

/// What is wrong with one shown log line (`rest`: after `LEVEL enforcer::`).
fn check_log_line(root: &std::path::Path, rest: &str) -> Option<String> {
    let (target, text) = rest.split_once(": ")?;
    let file = root
        .join("enforcer/src")
        .join(format!("{}.rs", target.replace("::", "/")));
    let Ok(source) = std::fs::read_to_string(&file) else {
        return Some(format!("no module enforcer::{target} ({})", file.display()));
    };
    let words: Vec<&str> = text.split(' ').collect();
    let first_field = words
        .iter()
        .position(|w| w.split_once('=').is_some_and(|(k, _)| is_field(k)))
        .unwrap_or(words.len());
    let message = words[..first_field].join(" ");
    let shown: Vec<&str> = words[first_field..]
        .iter()
        .filter_map(|w| w.split_once('=').map(|(k, _)| k).filter(|k| is_field(k)))
        .collect();
    let Some(at) = source.split('"').skip(1).step_by(2).find_map(|lit| {
        let fixed = lit.split('{').next().unwrap_or_default();
        let matches = !fixed.is_empty()
            && match lit.contains('{') {
                true => message.starts_with(fixed),
                false => message == lit,
            };
        matches.then(|| source.find(&format!("\"{lit}\"")))?
    }) else {
        return Some(format!("enforcer::{target} logs no message {message:?}"));
    };
    let words_of_source = |key: &str| {
        source
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == key)
    };
    if let Some(key) = shown.iter().find(|k| !words_of_source(k)) {
        return Some(format!("enforcer::{target} has no field {key:?}"));
    }
    let missing: Vec<String> = macro_fields(&source[..at])
        .into_iter()
        .filter(|f| !shown.contains(&f.as_str()))
        .collect();
    (!missing.is_empty()).then(|| {
        format!("leaves out field(s) {missing:?} that enforcer::{target} logs with {message:?}")
    })
}

/// The field names of the tracing macro call whose message literal starts right after `before`:
/// `name = value`, `%name`, `?name` and bare `name` arguments. Empty when the literal is not a
/// direct argument of `info!`, `warn!`, `error!` or `debug!` (a local macro, say).
fn macro_fields(before: &str) -> Vec<String> {
    let Some((start, len)) = ["info!(", "warn!(", "error!(", "debug!("]
        .iter()
        .filter_map(|m| before.rfind(m).map(|i| (i, m.len())))
        .max()
    else {
        return vec![];
    };
    let args = &before[start + len..];
    if args.contains(';') {
        return vec![];
    }
    let mut parts = vec![String::new()];
    let mut depth = 0;
    for c in args.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().expect("one part").push(c);
    }
    parts
        .iter()
        .map(|p| p.trim().trim_start_matches(['%', '?']))
        .map(|p| match p.split_once('=') {
            Some((name, _)) if !p.contains("==") => name.trim(),
            _ => p,
        })
        .filter(|name| is_field(name))
        .map(str::to_string)
        .collect()
}

/// A tracing field name: lowercase letters, digits and `_`.
fn is_field(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Each record type of docs/events.schema.json has a `## \`type\`` section in docs/events.md
/// whose key table lists exactly the schema's top-level keys (`library.id` counts as `library`).
#[test]
fn events_md_tables_list_the_schema_keys() {
    let schema = events_schema();
    let text = std::fs::read_to_string(enforcer_tests::workspace().join("docs/events.md"))
        .expect("docs/events.md");
    let mut documented: Vec<(String, std::collections::BTreeSet<String>)> = vec![];
    let mut in_table = false;
    for line in text.lines() {
        if let Some(kind) = line.strip_prefix("## `").and_then(|r| r.strip_suffix('`')) {
            documented.push((kind.to_string(), Default::default()));
            in_table = false;
        } else if line.starts_with("| key |") {
            in_table = true;
        } else if in_table && line.starts_with("| ---") {
        } else if in_table && line.starts_with('|') {
            let cell = line.split('|').nth(1).unwrap_or_default();
            let keys = cell.split('`').skip(1).step_by(2);
            if let Some((_, set)) = documented.last_mut() {
                set.extend(keys.map(|k| k.split('.').next().unwrap_or(k).to_string()));
            }
        } else {
            in_table = false;
        }
    }
    let defs = schema["$defs"].as_object().expect("$defs");
    let mut failures = vec![];
    for (kind, def) in defs {
        let want: std::collections::BTreeSet<String> = def["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        match documented.iter().find(|(k, _)| k == kind) {
            None => failures.push(format!("no section for `{kind}`")),
            Some((_, got)) if *got != want => failures.push(format!(
                "`{kind}`: only in the doc {:?}, only in the schema {:?}",
                got.difference(&want).collect::<Vec<_>>(),
                want.difference(got).collect::<Vec<_>>()
            )),
            Some(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "docs/events.md and docs/events.schema.json differ:\n{}",
        failures.join("\n")
    );
}
