//! `enforcer policy check FILE`: what a valid policy says, in words.

use std::fmt::Write as _;

use super::{Mode, Policy};
use crate::catalog::Origin;

/// The summary printed by `enforcer policy check FILE`.
pub fn check_report(p: &Policy) -> String {
    let mut out = String::new();
    let mode_note = match p.mode {
        Mode::Enforce => "connections of denied libraries are blocked",
        Mode::Audit => "nothing is blocked; denied connections are reported as would-block",
    };
    let _ = writeln!(out, "{}: valid policy", p.source);
    let _ = writeln!(out, "mode: {} ({mode_note})", p.mode);
    let _ = writeln!(
        out,
        "default: {} (for TLS libraries no rule matches)",
        p.default
    );
    let unattributed_note = match (p.unattributed_tls, p.mode) {
        (super::Action::Deny, Mode::Enforce) => "the ClientHello is dropped and the socket aborted",
        (super::Action::Deny, Mode::Audit) => "reported as would-block",
        (super::Action::Audit, _) => "reported",
        (super::Action::Allow, _) => "reported at info level",
    };
    let _ = writeln!(
        out,
        "unattributed_tls: {} (a TLS ClientHello no probed library claimed: {unattributed_note})",
        p.unattributed_tls
    );
    let unknown_note = match p.unknown_files {
        super::Action::Allow => "reported at info level",
        _ => "reported as a warning",
    };
    let _ = writeln!(
        out,
        "unknown_files: {} (a mapped file that cannot be analysed: {unknown_note}; its TLS is unattributed)",
        p.unknown_files
    );
    let quic_note = match (p.quic, p.mode) {
        (super::Action::Deny, Mode::Enforce) => "dropped, both directions",
        (super::Action::Deny, Mode::Audit) => "reported as would-block",
        (super::Action::Audit, _) => "reported",
        (super::Action::Allow, _) => "passed, not reported",
    };
    let _ = writeln!(
        out,
        "quic: {} (a QUIC Initial datagram, whose TLS no library is known for: {quic_note})",
        p.quic
    );
    if !p.posture.is_empty() {
        let judged = match p.mode {
            Mode::Enforce => "dropped at its ServerHello",
            Mode::Audit => "reported as would-block",
        };
        let _ = writeln!(
            out,
            "crypto posture: {} (every connection; one that negotiates otherwise is {judged})",
            p.posture.describe()
        );
    }
    let added: Vec<String> = p
        .catalog
        .families()
        .iter()
        .filter_map(|f| match &f.origin {
            Origin::Policy { line, .. } => Some(format!("{} (line {line})", f.family)),
            Origin::Builtin => None,
        })
        .collect();
    if !added.is_empty() {
        let _ = writeln!(out, "catalog: adds or replaces {}", added.join(", "));
    }
    let order = match p.has_who_rules() {
        true => {
            "sha256, then path, then version, then family, then executables/cgroups/users, then server_names"
        }
        false => "sha256, then path, then version, then family, then server_names",
    };
    let _ = writeln!(
        out,
        "rules: {} (the most specific matching rule decides: {order})",
        p.libraries.len()
    );
    for rule in &p.libraries {
        let requires = match rule.posture.is_empty() {
            true => String::new(),
            false => format!(", requires {}", rule.posture.describe()),
        };
        let _ = writeln!(
            out,
            "  line {}: {} -> {}{requires}",
            rule.line,
            rule.describe(),
            rule.action
        );
    }
    let _ = writeln!(
        out,
        "by family (where no sha256, path or version rule matches):"
    );
    for def in p.catalog.families() {
        let family_only = p.libraries.iter().find(|r| {
            r.family.as_ref() == Some(&def.family)
                && r.version.is_none()
                && r.path.is_none()
                && r.sha256.is_none()
                && r.server_names.is_none()
                && r.who.is_none()
        });
        let (action, why) = match family_only {
            Some(r) => (r.action, format!("rule at line {}", r.line)),
            // A runtime's TLS (Java's) is unattributed TLS unless a rule names its family.
            None if def.is_runtime() => (p.unattributed_tls, "unattributed_tls".to_owned()),
            None => (p.default, "default".to_owned()),
        };
        let _ = writeln!(out, "  {}: {action} ({why})", def.family);
    }
    let scoped: Vec<&super::Rule> = p.libraries.iter().filter(|r| r.is_name_scoped()).collect();
    if !scoped.is_empty() {
        let _ = writeln!(
            out,
            "server names: judged at each ClientHello; names no pattern matches get the library's other rules; a ClientHello without a readable name gets the strictest action the library's rules could give"
        );
        for r in scoped {
            let names: Vec<&str> = r
                .server_names
                .iter()
                .flatten()
                .map(|n| n.text.as_str())
                .collect();
            let _ = writeln!(
                out,
                "  line {}: {} -> {} only for {}",
                r.line,
                r.describe(),
                r.action,
                names.join(", ")
            );
        }
    }
    who_report(&mut out, p);
    out
}

/// The rules scoped to who is talking, and what they decide.
fn who_report(out: &mut String, p: &Policy) {
    let scoped: Vec<&super::Rule> = p.libraries.iter().filter(|r| r.who.is_some()).collect();
    if scoped.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "who is talking: judged at each hello by the process that sent it (its executable's inode, cgroup v2 id and uid, as the kernel recorded them); a sender not judged yet holds its hello (at most 2 s, then it is judged without these rules)"
    );
    for r in scoped {
        let what = match r.names_library() {
            true => "for that library's connections".to_owned(),
            false => {
                "for unattributed TLS and the libraries no more specific rule names".to_owned()
            }
        };
        let _ = writeln!(
            out,
            "  line {}: {} -> {} {what}",
            r.line,
            r.describe(),
            r.action
        );
    }
}

/// `enforcer policy check --json` on a file with errors: one object per error, in the order
/// [`super::parse_all`] gives them (by position).
pub fn errors_json(errors: &[super::PolicyError]) -> serde_json::Value {
    use super::PolicyError;
    let items = errors.iter().map(|e| match e {
        PolicyError::Invalid {
            file,
            line,
            column,
            key,
            message,
        } => serde_json::json!({
            "file": file, "line": line, "column": column, "key": key, "message": message,
        }),
        PolicyError::Io { path, .. } => serde_json::json!({
            "file": path.display().to_string(), "line": null, "column": null, "key": null,
            "message": e.to_string(),
        }),
    });
    serde_json::Value::Array(items.collect())
}
