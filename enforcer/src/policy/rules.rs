//! Policy rules: what a rule matches, how specific it is, and which rule decides a library.
//!
//! A rule matches a library when **every** key it has matches:
//!
//! | key | matches when |
//! | --- | --- |
//! | `family` | the library's family is this id |
//! | `version` | the library stated a version and it lies in the range (`">=3.0.9, <4"`) |
//! | `path` | the glob matches the library's path on this host, or a name a process maps it under |
//! | `sha256` | the SHA-256 of the library's contents is this one |
//! | `server_names` | (connections, not libraries) the server name the client sent matches one of the patterns (`server_names.rs`) |
//! | `executables`, `cgroups`, `users` | (processes, not libraries) the process that sent the hello matches (`who.rs`) |
//!
//! A rule with `server_names` is *scoped*: it decides only the connections whose ClientHello
//! names a matching server; the library's other connections go to the next rule. So is a rule
//! with `executables`, `cgroups` or `users` (*scoped to who is talking*): it decides only the
//! connections of the processes it names. Such a rule without library keys applies to every
//! library and to unattributed TLS.
//!
//! **Specificity.** Among the rules that match, the most specific wins. A rule's specificity is
//! the tuple (has `sha256`, has `path`, has `version`, has `family`, is scoped to who is
//! talking, has `server_names`), compared in that order: any rule with `sha256` beats any
//! without; then `path`; then `version`; then `family`; then the scopes (so a scoped rule
//! refines a rule with the same library keys, and never overrides a rule that names the library
//! more precisely). Two
//! matching rules of equal specificity: the first in the file wins (rules with identical keys and
//! values are rejected when the policy is parsed, so this only happens with overlapping globs or
//! ranges, and `enforcer policy explain` shows it).

use std::path::Path;

use super::Action;
pub use super::glob::{PathGlob, parse_sha256};
use super::server_names::ServerNamePattern;
use crate::family::Family;
use crate::version::{Version, VersionReq};

/// One entry of `libraries:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub family: Option<Family>,
    pub version: Option<VersionReq>,
    pub path: Option<PathGlob>,
    /// Lowercase hex.
    pub sha256: Option<String>,
    /// The server names the rule is scoped to; `None`: every connection of the library.
    pub server_names: Option<Vec<ServerNamePattern>>,
    /// The processes the rule is scoped to; `None`: every process.
    pub who: Option<super::who::Who>,
    /// Crypto-posture requirements of the library's connections (empty: none).
    pub posture: super::posture::Posture,
    pub action: Action,
    /// 1-based line of the rule in the policy file.
    pub line: usize,
}

/// What a policy decides on: the facts about one library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject<'a> {
    pub family: &'a Family,
    pub version: Option<&'a str>,
    /// The host path first, then the names processes map it under.
    pub paths: Vec<&'a Path>,
    pub sha256: Option<&'a str>,
}

/// (sha256, path, version, family, who, server_names): compared lexicographically.
pub type Specificity = (bool, bool, bool, bool, bool, bool);

impl Rule {
    pub fn specificity(&self) -> Specificity {
        (
            self.sha256.is_some(),
            self.path.is_some(),
            self.version.is_some(),
            self.family.is_some(),
            self.who.is_some(),
            self.server_names.is_some(),
        )
    }

    /// True if the rule decides only some of a library's connections (by server name, or by
    /// who is talking).
    pub fn is_scoped(&self) -> bool {
        self.server_names.is_some() || self.who.is_some()
    }

    /// True if the rule decides only connections to some server names.
    pub fn is_name_scoped(&self) -> bool {
        self.server_names.is_some()
    }

    /// True if the rule names a library (family, version, path or sha256); a rule without
    /// (scoped to who is talking) applies to every library and to unattributed TLS.
    pub fn names_library(&self) -> bool {
        self.family.is_some() || self.path.is_some() || self.sha256.is_some()
    }

    /// True if both rules have the same keys with the same values.
    pub fn same_matchers(&self, other: &Rule) -> bool {
        self.family == other.family
            && self.version.as_ref().map(ToString::to_string)
                == other.version.as_ref().map(ToString::to_string)
            && self.path == other.path
            && self.sha256 == other.sha256
            && self.server_names == other.server_names
            && self.who == other.who
    }

    /// Why the rule matches library `s` (one reason per key), or `None` if it does not.
    /// `server_names` and the keys of who is talking are not properties of a library and are
    /// not checked here.
    pub fn matches(&self, s: &Subject) -> Option<Vec<String>> {
        let mut why = Vec::new();
        if let Some(sha) = &self.sha256 {
            if s.sha256 != Some(sha.as_str()) {
                return None;
            }
            why.push(format!("sha256 is {}", short(sha)));
        }
        if let Some(glob) = &self.path {
            let hit = s.paths.iter().find(|p| glob.is_match(p))?;
            why.push(format!("path {} matches '{}'", hit.display(), glob.text));
        }
        if let Some(f) = &self.family {
            if f != s.family {
                return None;
            }
            why.push(format!("family is {f}"));
        }
        if let Some(req) = &self.version {
            let v = Version::parse_lenient(s.version?).ok()?;
            if !req.matches(&v) {
                return None;
            }
            why.push(format!("version {v} is in '{req}'"));
        }
        Some(why)
    }

    /// The rule's keys, for reports: `family=openssl version=">=3.0.9, <4"`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f) = &self.family {
            parts.push(format!("family={f}"));
        }
        if let Some(v) = &self.version {
            parts.push(format!("version=\"{v}\""));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path=\"{}\"", p.text));
        }
        if let Some(h) = &self.sha256 {
            parts.push(format!("sha256={}", short(h)));
        }
        if let Some(names) = &self.server_names {
            let names: Vec<&str> = names.iter().map(|n| n.text.as_str()).collect();
            parts.push(format!("server_names=[{}]", names.join(", ")));
        }
        if let Some(who) = &self.who {
            parts.push(who.describe());
        }
        parts.join(" ")
    }
}

/// The first 16 hex digits of a hash, for one-line reports.
fn short(hash: &str) -> String {
    match hash.get(..16) {
        Some(head) if hash.len() > 16 => format!("{head}..."),
        _ => hash.to_owned(),
    }
}

/// One rule that matched, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// Index into the policy's rules.
    pub index: usize,
    pub line: usize,
    pub action: Action,
    pub reasons: Vec<String>,
}

/// Every rule that matches library `s`, scoped ones included, most specific first (ties: file
/// order). The first unscoped one decides the library's connections that no scoped rule takes.
pub fn matching(rules: &[Rule], s: &Subject) -> Vec<Match> {
    let mut hits: Vec<(Specificity, Match)> = rules
        .iter()
        .enumerate()
        .filter_map(|(index, r)| {
            let reasons = r.matches(s)?;
            Some((
                r.specificity(),
                Match {
                    index,
                    line: r.line,
                    action: r.action,
                    reasons,
                },
            ))
        })
        .collect();
    // Stable: equal specificity keeps file order.
    hits.sort_by_key(|h| std::cmp::Reverse(h.0));
    hits.into_iter().map(|(_, m)| m).collect()
}
