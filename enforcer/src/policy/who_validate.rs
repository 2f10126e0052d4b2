//! The checks on a rule's `executables`, `cgroups` and `users` (`who.rs`): each error names the
//! line, column and key of the entry that is wrong.

use super::raw::RawRule;
use super::who::{self, MAX_ENTRIES_PER_KEY, Who};
use super::{PolicyError, error};
use crate::catalog::Seg;

/// The rule's scope to who is talking (`None`: it has none, or an error went to `fail`).
pub(super) fn validate(
    r: &RawRule,
    text: &str,
    source: &str,
    index: usize,
    fail: &mut dyn FnMut(PolicyError),
) -> Option<Who> {
    if r.executables.is_none() && r.cgroups.is_none() && r.users.is_none() {
        return None;
    }
    let here = format!("libraries[{index}]");
    let path = |k: &'static str, i: Option<usize>, sub: Option<&'static str>| {
        let mut p = vec![Seg::Key("libraries"), Seg::Index(index), Seg::Key(k)];
        p.extend(i.map(Seg::Index));
        p.extend(sub.map(Seg::Key));
        p
    };
    let mut bad = false;
    let mut report = |p: Vec<Seg>, message: String| {
        bad = true;
        fail(error::at_node(source, text, &p, message));
    };
    let first_key = ["executables", "cgroups", "users"]
        .into_iter()
        .find(|k| match *k {
            "executables" => r.executables.is_some(),
            "cgroups" => r.cgroups.is_some(),
            _ => r.users.is_some(),
        })
        .unwrap_or("executables");
    if r.server_names.is_some() {
        report(
            path("server_names", None, None),
            format!(
                "{here}.server_names: a rule scoped to who is talking ({first_key}) cannot also be scoped by server name; write two rules"
            ),
        );
    }
    for (key, present) in [
        ("tls_versions", r.tls_versions.is_some()),
        ("groups", r.groups.is_some()),
        ("cipher_suites", r.cipher_suites.is_some()),
        ("ja4", r.ja4.is_some()),
    ] {
        if present {
            report(
                path(key, None, None),
                format!(
                    "{here}.{key}: a rule scoped to who is talking ({first_key}) cannot require a crypto posture; put it on the library's own rule or at the top level"
                ),
            );
        }
    }
    let mut check_len = |key: &'static str, len: usize| {
        if len == 0 {
            report(
                path(key, None, None),
                format!(
                    "{here}.{key}: an empty list scopes the rule to nobody; remove the key to apply the rule to every process"
                ),
            );
        } else if len > MAX_ENTRIES_PER_KEY {
            report(
                path(key, None, None),
                format!(
                    "{here}.{key}: {len} entries, more than the limit of {MAX_ENTRIES_PER_KEY}"
                ),
            );
        }
    };
    check_len("executables", r.executables.as_ref().map_or(1, Vec::len));
    check_len("cgroups", r.cgroups.as_ref().map_or(1, Vec::len));
    check_len("users", r.users.as_ref().map_or(1, Vec::len));

    let mut out = Who::default();
    if let Some(list) = &r.executables {
        let mut parsed = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            match who::executable(raw) {
                Ok(e) => parsed.push(e),
                Err((sub, message)) => {
                    let key = match sub {
                        Some(s) => format!("{here}.executables[{i}].{s}"),
                        None => format!("{here}.executables[{i}]"),
                    };
                    report(
                        path("executables", Some(i), sub),
                        format!("{key}: {message}"),
                    );
                }
            }
        }
        out.executables = Some(parsed);
    }
    if let Some(list) = &r.cgroups {
        let mut parsed = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            match who::cgroup(text) {
                Ok(g) => parsed.push(g),
                Err(message) => report(
                    path("cgroups", Some(i), None),
                    format!("{here}.cgroups[{i}]: {message}"),
                ),
            }
        }
        out.cgroups = Some(parsed);
    }
    if let Some(list) = &r.users {
        let mut parsed = Vec::with_capacity(list.len());
        for (i, raw) in list.iter().enumerate() {
            match who::user(raw) {
                Ok(u) => parsed.push(u),
                Err(message) => report(
                    path("users", Some(i), None),
                    format!("{here}.users[{i}]: {message}"),
                ),
            }
        }
        out.users = Some(parsed);
    }
    (!bad).then_some(out)
}
