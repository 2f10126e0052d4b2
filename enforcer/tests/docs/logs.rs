//! Log lines the documents show (`INFO enforcer::module: message key=value`) against the code
//! that writes them.

use enforcer_tests::docs::{blocks, documents};

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

/// Fields whose value is an `Option`: the log format leaves them out when there is none (a
/// library decided by the policy's default has no `rule_line`, an agent without `--metrics` no
/// `metrics`), so a real line may lack them.
const OPTIONAL_FIELDS: [&str; 2] = ["rule_line", "metrics"];

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
        .filter(|f| !shown.contains(&f.as_str()) && !OPTIONAL_FIELDS.contains(&f.as_str()))
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
