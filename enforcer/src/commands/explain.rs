//! `enforcer policy explain FILE`: for each TLS library on this host, the rule of FILE it hits
//! (by line) and why, and the other rules that match it but lose on specificity or order.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::libraries::Library;
use crate::policy::Policy;

/// The explanation for people.
pub fn text(libs: &[Library], policy: &Policy) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} rule{}, default {}, mode {}; {} TLS librar{} on this host",
        policy.source,
        policy.libraries.len(),
        if policy.libraries.len() == 1 { "" } else { "s" },
        policy.default,
        policy.mode,
        libs.len(),
        if libs.len() == 1 { "y" } else { "ies" },
    );
    for lib in libs {
        let version = lib.identity.version.as_deref().unwrap_or("version unknown");
        let _ = writeln!(out, "\n{} ({} {version})", lib.path.display(), lib.family);
        let matches = policy.explain(lib);
        let deciding = matches
            .iter()
            .find(|m| !policy.libraries[m.index].is_scoped());
        // Rules scoped to who is talking are listed with the processes they decide.
        let matches: Vec<_> = matches
            .iter()
            .filter(|m| policy.libraries[m.index].who.is_none())
            .cloned()
            .collect();
        let rule = deciding.map(|m| &policy.libraries[m.index]);
        match (deciding, rule) {
            (Some(first), Some(rule)) => {
                let _ = writeln!(
                    out,
                    "  -> {}: rule at line {} ({}): {}",
                    first.action,
                    first.line,
                    rule.describe(),
                    first.reasons.join("; ")
                );
            }
            _ => {
                let _ = writeln!(out, "  -> {}: default (no rule matches)", policy.default);
            }
        }
        let posture = posture_text(policy, lib);
        if !posture.is_empty() {
            let _ = writeln!(out, "     its connections must negotiate: {posture}");
        }
        if let Some(scope) = policy.name_scope(lib) {
            for (pattern, action, line) in &scope.patterns {
                let by = line.map_or("default".to_owned(), |l| format!("line {l}"));
                let _ = writeln!(out, "     server name {pattern} -> {action} ({by})");
            }
            let _ = writeln!(
                out,
                "     other server names -> {}; no readable server name -> {}",
                scope.base, scope.nameless
            );
        }
        for m in matches
            .iter()
            .filter(|m| Some(m.index) != deciding.map(|d| d.index))
        {
            let other = &policy.libraries[m.index];
            let lost = if other.is_scoped() {
                "only for its server names (see above)"
            } else if rule.is_some_and(|r| other.specificity() == r.specificity()) {
                "as specific, later in the file"
            } else {
                "less specific"
            };
            let _ = writeln!(
                out,
                "     also matches line {} ({}) -> {}: {lost}",
                m.line,
                other.describe(),
                m.action
            );
        }
    }
    if policy.has_who_rules() {
        let procs = super::explain_processes::processes(libs, policy);
        super::explain_processes::text(&mut out, &procs, policy);
    }
    out
}

/// The crypto-posture requirements `lib`'s connections must meet: the top-level ones and its
/// deciding rule's (empty: none).
fn posture_text(policy: &Policy, lib: &Library) -> String {
    let mut parts = Vec::new();
    if !policy.posture.is_empty() {
        parts.push(format!("{} (top level)", policy.posture.describe()));
    }
    if let Some(own) = policy.posture_of(lib) {
        parts.push(format!("{} (its rule)", own.describe()));
    }
    parts.join(", and ")
}

/// The same as JSON: one object per library with the deciding rule and every match.
pub fn json(libs: &[Library], policy: &Policy) -> Value {
    let items: Vec<Value> = libs
        .iter()
        .map(|lib| {
            let matches = policy.explain(lib);
            let d = policy.decide(lib);
            json!({
                "path": lib.path.display().to_string(),
                "family": lib.family,
                "version": lib.identity.version,
                "sha256": lib.identity.sha256,
                "action": d.action.name(),
                "rule_line": d.rule_line,
                "must_negotiate": {
                    "top_level": (!policy.posture.is_empty()).then(|| policy.posture.describe()),
                    "rule": policy.posture_of(lib).map(|p| p.describe()),
                },
                "server_names": policy.name_scope(lib).map(|s| json!({
                    "patterns": s.patterns.iter().map(|(p, a, line)| json!({
                        "pattern": p.text, "action": a.name(), "rule_line": line,
                    })).collect::<Vec<_>>(),
                    "other_names": s.base.name(),
                    "no_name": s.nameless.name(),
                })),
                "matches": matches.iter().map(|m| json!({
                    "line": m.line,
                    "rule": policy.libraries[m.index].describe(),
                    "action": m.action.name(),
                    "reasons": m.reasons,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let processes = policy.has_who_rules().then(|| {
        super::explain_processes::json(&super::explain_processes::processes(libs, policy))
    });
    json!({ "policy": policy.source, "libraries": items, "processes": processes })
}
