//! Policy errors: turning serde_yaml's messages into `FILE:LINE:COL: KEY: what is wrong`, and
//! locating nodes (rules, duplicate keys) that serde does not report positions for.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_path_to_error::Segment;

use super::{Action, MAX_POLICY_BYTES, Mode};
use crate::catalog::{Catalog, Seg};

/// Keys of the top-level mapping and of a rule, as error messages list them.
pub(super) const TOP_KEYS: [&str; 11] = [
    "mode",
    "default",
    "unattributed_tls",
    "unknown_files",
    "quic",
    "tls_versions",
    "groups",
    "cipher_suites",
    "ja4",
    "libraries",
    "catalog",
];
pub(super) const RULE_KEYS: [&str; 13] = [
    "family",
    "version",
    "path",
    "sha256",
    "server_names",
    "executables",
    "cgroups",
    "users",
    "tls_versions",
    "groups",
    "cipher_suites",
    "ja4",
    "action",
];

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// The file was read but is not a valid policy. Displays as `FILE:LINE:COL: MESSAGE`, or
    /// `FILE: MESSAGE` when no position applies (empty or oversized file, several documents).
    #[error("{}", format_invalid(file, *line, *column, message))]
    Invalid {
        file: String,
        line: Option<usize>,
        column: Option<usize>,
        /// The node the error is about (`libraries[1].action`), when there is one.
        key: Option<String>,
        message: String,
    },
}

fn format_invalid(file: &str, line: Option<usize>, column: Option<usize>, msg: &str) -> String {
    // Messages quote the policy (a version, a glob, a catalog name): escape control characters
    // so that a hostile policy cannot make its error span lines or forge log lines.
    let msg = show_max(msg, usize::MAX);
    match (line, column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}: {msg}"),
        (Some(l), None) => format!("{file}:{l}: {msg}"),
        _ => format!("{file}: {msg}"),
    }
}

/// Errors by position (those without one first), each once.
pub(super) fn sorted(mut errors: Vec<PolicyError>) -> Vec<PolicyError> {
    let position = |e: &PolicyError| match e {
        PolicyError::Invalid { line, column, .. } => (line.unwrap_or(0), column.unwrap_or(0)),
        PolicyError::Io { .. } => (0, 0),
    };
    errors.sort_by_key(position); // stable: errors at one position keep their order
    let mut seen = std::collections::HashSet::new();
    errors.retain(|e| seen.insert(e.to_string()));
    errors
}

pub(super) fn too_large(file: &str, size: u64) -> PolicyError {
    PolicyError::Invalid {
        file: file.to_owned(),
        line: None,
        column: None,
        key: None,
        message: format!(
            "policy is {size} bytes, more than the limit of {MAX_POLICY_BYTES} bytes (1 MiB)"
        ),
    }
}

/// One step of a path into the document.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Step {
    /// The `nth` (0-based) occurrence of a key in a mapping.
    Key(String, usize),
    Index(usize),
}

pub(super) fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k, _) if out.is_empty() => out.push_str(&show(k)),
            Step::Key(k, _) => {
                out.push('.');
                out.push_str(&show(k));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A user-supplied string fit for a one-line message: control characters escaped, at most 60
/// characters.
pub(super) fn show(s: &str) -> String {
    show_max(s, 60)
}

fn show_max(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) fn alternatives(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// What belongs at `path`, for messages.
fn expected_for_path(path: &[Step]) -> Option<String> {
    fn key(s: &Step) -> Option<&str> {
        match s {
            Step::Key(k, _) => Some(k),
            Step::Index(_) => None,
        }
    }
    let names = |v: &[&str]| alternatives(v);
    Some(match path {
        [] => top_level_expected(),
        [m] if key(m) == Some("mode") => names(&Mode::ALL.map(Mode::name)),
        [d] if key(d) == Some("default") => names(&Action::ALL.map(Action::name)),
        [u] if matches!(key(u), Some("unattributed_tls" | "unknown_files" | "quic")) => {
            names(&Action::ALL.map(Action::name))
        }
        [l] if key(l) == Some("libraries") => {
            format!(
                "a list of rules (mappings with keys {})",
                RULE_KEYS.join(", ")
            )
        }
        [l, Step::Index(_)] if key(l) == Some("libraries") => {
            format!("a mapping with keys {}", RULE_KEYS.join(", "))
        }
        [l, Step::Index(_), f] if key(l) == Some("libraries") && key(f) == Some("family") => {
            let catalog = Catalog::embedded();
            let ids: Vec<&str> = catalog.families().iter().map(|f| f.family.name()).collect();
            format!("a family ({})", names(&ids))
        }
        [l, Step::Index(_), v] if key(l) == Some("libraries") && key(v) == Some("version") => {
            "a version range in quotes, such as \">=3.0.9, <4\"".to_owned()
        }
        [l, Step::Index(_), p] if key(l) == Some("libraries") && key(p) == Some("path") => {
            "a path glob, such as \"/usr/lib/**\"".to_owned()
        }
        [l, Step::Index(_), h] if key(l) == Some("libraries") && key(h) == Some("sha256") => {
            "64 hexadecimal digits".to_owned()
        }
        [l, Step::Index(_), n, ..] if key(l) == Some("libraries") && key(n) == Some("server_names") => {
            "a list of server names in quotes, such as [\"*.internal.example\", \"api.example.com\"]"
                .to_owned()
        }
        [l, Step::Index(_), e, ..] if key(l) == Some("libraries") && key(e) == Some("executables") => {
            "a list of executable path globs, each a string or a mapping with keys path, sha256, such as [\"/opt/app/bin/agent\"]".to_owned()
        }
        [l, Step::Index(_), c, ..] if key(l) == Some("libraries") && key(c) == Some("cgroups") => {
            "a list of cgroup v2 path globs, such as [\"/system.slice/nginx.service\", \"/kubepods.slice/**\"]".to_owned()
        }
        [l, Step::Index(_), u, ..] if key(l) == Some("libraries") && key(u) == Some("users") => {
            "a list of user names or numeric uids, such as [\"www-data\", 1000]".to_owned()
        }
        [l, Step::Index(_), a] if key(l) == Some("libraries") && key(a) == Some("action") => {
            names(&Action::ALL.map(Action::name))
        }
        [c] if key(c) == Some("catalog") => "a mapping with key families".to_owned(),
        _ => return None,
    })
}

/// What the top level of a policy must be.
pub(super) fn top_level_expected() -> String {
    format!("a mapping with keys {}", TOP_KEYS.join(", "))
}

/// Items quoted in backticks, as serde lists expected fields and variants.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

fn found(unexpected: &str) -> String {
    match unexpected {
        "sequence" => "a list".to_owned(),
        "map" => "a mapping".to_owned(),
        "unit value" => "an empty value".to_owned(),
        s => match s
            .strip_prefix("string \"")
            .and_then(|r| r.strip_suffix('"'))
        {
            Some(inner) => format!("the string '{}'", show(inner)),
            None => show(s),
        },
    }
}

/// Converts a serde_yaml error into a [`PolicyError::Invalid`] naming file, line, column, key.
pub(super) fn from_yaml(
    err: serde_path_to_error::Error<serde_yaml::Error>,
    file: &str,
    text: &str,
) -> PolicyError {
    let path = steps(err.path());
    let inner = err.into_inner();
    let at = inner.location().map(|l| (l.line(), l.column()));
    convert(&path, &path, &inner, at, file, text)
}

/// serde_path_to_error's path as [`Step`]s.
pub(super) fn steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push(Step::Index(*index)),
            Segment::Map { key } => out.push(Step::Key(key.clone(), 0)),
            Segment::Enum { variant } => out.push(Step::Key(variant.clone(), 0)),
            Segment::Unknown => break,
        }
    }
    out
}

/// [`from_yaml`] for an error serde_yaml raised at `raw_path` of the document it read, which is
/// `path` of `text` (they differ when the document read is `text` with nodes taken out, see
/// `recover`); `at` is the error's position in `text`, if known.
pub(super) fn convert(
    raw_path: &[Step],
    path: &[Step],
    inner: &serde_yaml::Error,
    at: Option<(usize, usize)>,
    file: &str,
    text: &str,
) -> PolicyError {
    let mut line = at.map(|a| a.0);
    let mut column = at.map(|a| a.1);
    let full = inner.to_string();
    let raw_loc = inner.location().map(|l| (l.line(), l.column()));

    // serde_yaml writes "PATH: MESSAGE at line L column C", or for syntax errors
    // "PROBLEM at line L column C, while CONTEXT at line ...": drop what the prefix repeats.
    let full = match raw_loc {
        Some((l, c)) => {
            let at = format!(" at line {l} column {c}");
            match full.strip_suffix(&at) {
                Some(core) => core.to_owned(),
                None => full.replacen(&at, "", 1),
            }
        }
        _ => full,
    };
    let mut core = full.as_str();
    let raw_parent = &raw_path[..raw_path.len().saturating_sub(1)];
    let parent = &path[..path.len().saturating_sub(1)];
    for prefix in [render(raw_path), render(raw_parent)] {
        if !prefix.is_empty()
            && let Some(rest) = core.strip_prefix(&format!("{prefix}: "))
        {
            core = rest;
            break;
        }
    }
    let at = |p: &[Step], msg: String| {
        if p.is_empty() {
            msg
        } else {
            format!("{}: {msg}", render(p))
        }
    };

    let message = if let Some(rest) = core.strip_prefix("unknown field `") {
        // The path ends with the unknown key itself.
        let (raw_key, tail) = rest.rsplit_once("`, expected ").unwrap_or((rest, ""));
        let key = match path.last() {
            Some(Step::Key(k, _)) => show(k),
            _ => show(raw_key),
        };
        let known = backticked(tail);
        let expected = if known.is_empty() {
            "no keys are allowed here".to_owned()
        } else {
            format!("expected one of: {}", known.join(", "))
        };
        at(parent, format!("unknown key '{key}' ({expected})"))
    } else if let Some(rest) = core.strip_prefix("missing field `") {
        at(
            path,
            format!("missing key '{}'", show(rest.trim_end_matches('`'))),
        )
    } else if let Some(rest) = core.strip_prefix("duplicate field `") {
        let key = rest.trim_end_matches('`').to_owned();
        let mut second = path.to_vec();
        second.push(Step::Key(key.clone(), 1));
        if let Some((l, c)) = locate(text, &second) {
            (line, column) = (Some(l), Some(c));
        }
        at(path, format!("duplicate key '{}'", show(&key)))
    } else if let Some(rest) = core.strip_prefix("unknown variant `") {
        let (value, tail) = rest.rsplit_once("`, expected ").unwrap_or((rest, ""));
        let expected = expected_for_path(path).unwrap_or_else(|| alternatives(&backticked(tail)));
        if value.is_empty() {
            at(path, format!("expected {expected}, found an empty value"))
        } else {
            at(
                path,
                format!("unknown value '{}' (expected {expected})", show(value)),
            )
        }
    } else if let Some(rest) = core.strip_prefix("invalid type: ") {
        let (unexpected, serde_expected) = rest.rsplit_once(", expected ").unwrap_or((rest, ""));
        let expected = expected_for_path(path).unwrap_or_else(|| show(serde_expected));
        if path.is_empty() {
            format!("top level must be {expected}, found {}", found(unexpected))
        } else {
            at(
                path,
                format!("expected {expected}, found {}", found(unexpected)),
            )
        }
    } else if core.starts_with("invalid value: ") || core.starts_with("invalid length ") {
        at(path, show(&core.replace('`', "'")))
    } else if core.starts_with("deserializing from YAML containing more than one document") {
        "a policy file must hold exactly one YAML document".to_owned()
    } else {
        // libyaml's own errors (syntax): their path is meaningless, their text is the message.
        format!("invalid YAML: {}", show_max(core, 200))
    };
    PolicyError::Invalid {
        file: file.to_owned(),
        line,
        column,
        key: (!path.is_empty()).then(|| render(path)),
        message,
    }
}

/// An error at the node `path` (found by re-reading `text`), or without position if it cannot be
/// found.
pub(super) fn at_node(file: &str, text: &str, path: &[Seg], message: String) -> PolicyError {
    let at = locate_segs(text, path);
    PolicyError::Invalid {
        file: file.to_owned(),
        line: at.map(|a| a.0),
        column: at.map(|a| a.1),
        key: (!path.is_empty()).then(|| render(&seg_steps(path))),
        message,
    }
}

fn seg_steps(path: &[Seg]) -> Vec<Step> {
    path.iter()
        .map(|s| match s {
            Seg::Key(k) => Step::Key((*k).to_owned(), 0),
            Seg::Index(i) => Step::Index(*i),
        })
        .collect()
}

/// Line and column (1-based) of the node at `path`.
pub(super) fn locate_segs(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    locate(text, &seg_steps(path))
}

/// Line and column (1-based) of the `index`-th rule of `libraries:`, for a text that parsed.
/// Returns (0, 0) if it cannot be found, which cannot happen for a document that deserialized.
pub(super) fn locate_rule(text: &str, index: usize) -> (usize, usize) {
    locate(
        text,
        &[Step::Key("libraries".to_owned(), 0), Step::Index(index)],
    )
    .unwrap_or((0, 0))
}

/// serde reports no positions for nodes that parse fine, but serde_yaml stamps every error with
/// the position of the node being read when it was raised: re-read the document, fail on
/// purpose at `path`, and take the error's position.
pub(super) fn locate(text: &str, path: &[Step]) -> Option<(usize, usize)> {
    let de = serde_yaml::Deserializer::from_str(text);
    match (Probe { path, key: false }).deserialize(de) {
        Ok(()) => None,
        Err(e) => e.location().map(|l| (l.line(), l.column())),
    }
}

/// [`locate`] for the key that ends `path`, not its value (where an unknown key is reported).
pub(super) fn locate_key(text: &str, path: &[Step]) -> Option<(usize, usize)> {
    let de = serde_yaml::Deserializer::from_str(text);
    match (Probe { path, key: true }).deserialize(de) {
        Ok(()) => None,
        Err(e) => e.location().map(|l| (l.line(), l.column())),
    }
}

struct Probe<'p> {
    path: &'p [Step],
    /// Fail at the last key of `path` rather than at its value.
    key: bool,
}

/// Reads a key; fails on purpose if it is the one being located.
struct KeyAt<'w> {
    want: &'w str,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for KeyAt<'_> {
    type Value = serde_yaml::Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

// The error is raised inside serde_yaml's read of the key, so that it carries the key's
// position (an error raised after the read carries the mapping's).
impl<'de> Visitor<'de> for KeyAt<'_> {
    type Value = serde_yaml::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        match self.fail && v == self.want {
            true => Err(E::custom("located")),
            false => Ok(serde_yaml::Value::String(v.to_owned())),
        }
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(serde_yaml::Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(serde_yaml::Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(serde_yaml::Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_yaml::Value::Number(v.into()))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_yaml::Value::Null)
    }
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the node being located")
    }

    // Scalars: reached only at the end of the path, where the default impls fail as wanted.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(want, nth), rest)) = self.path.split_first() else {
            return Err(de::Error::custom("located"));
        };
        let mut seen = 0;
        loop {
            let fail = self.key && rest.is_empty() && seen == *nth;
            let Some(key) = map.next_key_seed(KeyAt { want, fail })? else {
                break;
            };
            if key.as_str() == Some(want.as_str()) {
                if seen == *nth {
                    let key = self.key;
                    return map.next_value_seed(Probe { path: rest, key });
                }
                seen += 1;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Step::Index(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom("located"));
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Probe {
            path: rest,
            key: self.key,
        })
        .map(|_| ())
    }
}
