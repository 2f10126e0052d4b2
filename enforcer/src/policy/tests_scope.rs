//! `unattributed_tls` and `server_names`: parsing, errors, and the kernel tables they become.

use super::*;
use crate::libraries::Library;

/// A library of `family` at `/nowhere/lib.so`, nothing else known.
fn library(family: &str) -> Library {
    Library::bare(family, "/nowhere/lib.so")
}

fn scope_of(text: &str, family: &str) -> Option<NameScope> {
    let p = parse(text, "policy.yaml").unwrap();
    p.name_scope(&library(family))
}

#[test]
fn unattributed_tls_defaults_to_default() {
    let p = parse("default: deny\n", "p.yaml").unwrap();
    assert_eq!(p.unattributed_tls, Action::Deny);
    let p = parse("default: allow\n", "p.yaml").unwrap();
    assert_eq!(p.unattributed_tls, Action::Allow);
    let p = parse("default: deny\nunattributed_tls: audit\n", "p.yaml").unwrap();
    assert_eq!(p.unattributed_tls, Action::Audit);
    assert_eq!(embedded_default().unattributed_tls, Action::Deny);
    assert_eq!(embedded_default().mode, Mode::Audit);
}

/// `unknown_files`: absent, the value of `unattributed_tls` (itself `default` when absent).
#[test]
fn unknown_files_defaults_to_unattributed_tls() {
    let p = parse("default: deny\n", "p.yaml").unwrap();
    assert_eq!(p.unknown_files, Action::Deny);
    let p = parse("default: deny\nunattributed_tls: audit\n", "p.yaml").unwrap();
    assert_eq!(p.unknown_files, Action::Audit);
    let p = parse("default: deny\nunknown_files: allow\n", "p.yaml").unwrap();
    assert_eq!(
        (p.unattributed_tls, p.unknown_files),
        (Action::Deny, Action::Allow)
    );
    assert_eq!(embedded_default().unknown_files, Action::Deny);
    let e = parse("default: deny\nunknown_files: maybe\n", "p.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.yaml:2") && e.contains("unknown_files"), "{e}");
}

#[test]
fn unattributed_tls_bad_value_names_line_and_key() {
    let e = parse("default: deny\nunattributed_tls: block\n", "p.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.yaml:2"), "{e}");
    assert!(e.contains("unattributed_tls"), "{e}");
    assert!(e.contains("allow"), "{e}");
}

#[test]
fn server_names_errors_name_line_and_key() {
    let text = "default: deny\nlibraries:\n  - family: gnutls\n    server_names: [\"ok.example\", \"bad..example\"]\n    action: allow\n";
    let e = parse(text, "p.yaml").unwrap_err().to_string();
    assert!(e.contains("p.yaml:4"), "{e}");
    assert!(e.contains("libraries[0].server_names[1]"), "{e}");
    assert!(e.contains("empty label"), "{e}");
    let text =
        "default: deny\nlibraries:\n  - family: gnutls\n    server_names: []\n    action: allow\n";
    let e = parse(text, "p.yaml").unwrap_err().to_string();
    assert!(e.contains("p.yaml:4") && e.contains("empty list"), "{e}");
    let text = "default: deny\nlibraries:\n  - family: gnutls\n    server_names: \"x.example\"\n    action: allow\n";
    let e = parse(text, "p.yaml").unwrap_err().to_string();
    assert!(e.contains("server_names"), "{e}");
}

#[test]
fn allow_only_to_internal_names() {
    let text = "default: deny\nlibraries:\n  - family: gnutls\n    server_names: [\"*.internal.example\"]\n    action: allow\n";
    let p = parse(text, "p.yaml").unwrap();
    let gnutls = library("gnutls");
    assert_eq!(p.decide(&gnutls).action, Action::Deny);
    assert_eq!(
        p.decide_connection(&gnutls, Some("db.internal.example")),
        Action::Allow
    );
    assert_eq!(
        p.decide_connection(&gnutls, Some("internal.example")),
        Action::Deny
    );
    assert_eq!(
        p.decide_connection(&gnutls, Some("evil.example")),
        Action::Deny
    );
    assert_eq!(p.decide_connection(&gnutls, None), Action::Deny);
    assert_eq!(scope_of(text, "openssl"), None);
    let s = scope_of(text, "gnutls").unwrap();
    assert_eq!((s.base, s.nameless), (Action::Deny, Action::Deny));
}

#[test]
fn scoped_deny_fails_closed_without_a_name() {
    let text = "default: allow\nlibraries:\n  - family: gnutls\n    server_names: [\"*.evil.example\"]\n    action: deny\n";
    let s = scope_of(text, "gnutls").unwrap();
    assert_eq!((s.base, s.nameless), (Action::Allow, Action::Deny));
}

#[test]
fn trie_entries_follow_rule_specificity_not_pattern_length() {
    // A sha256-less, path rule scoped to *.example outranks a family rule scoped to a longer
    // suffix: the longer pattern's entry must carry the path rule's action.
    let text = "default: allow\nlibraries:\n  - path: \"/nowhere/**\"\n    server_names: [\"*.example\"]\n    action: deny\n  - family: gnutls\n    server_names: [\"*.internal.example\"]\n    action: allow\n";
    let s = scope_of(text, "gnutls").unwrap();
    let entry = |p: &str| s.patterns.iter().find(|(q, _, _)| q.text == p).unwrap().1;
    assert_eq!(entry("*.example"), Action::Deny);
    assert_eq!(entry("*.internal.example"), Action::Deny);
    let p = parse(text, "p.yaml").unwrap();
    assert_eq!(
        p.decide_connection(&library("gnutls"), Some("a.internal.example")),
        Action::Deny
    );
    assert_eq!(
        p.decide_connection(&library("gnutls"), Some("a.other")),
        Action::Allow
    );
}

#[test]
fn check_report_and_duplicates() {
    let text = "default: deny\nlibraries:\n  - family: gnutls\n    server_names: [\"*.internal.example\"]\n    action: allow\n  - family: gnutls\n    action: audit\n";
    let p = parse(text, "p.yaml").unwrap();
    let report = check_report(&p);
    assert!(report.contains("unattributed_tls: deny"), "{report}");
    assert!(report.contains("line 3: family=gnutls server_names=[*.internal.example] -> allow only for *.internal.example"), "{report}");
    assert!(
        report.contains("gnutls: audit (rule at line 6)"),
        "{report}"
    );
    let dup = format!(
        "{text}  - family: gnutls\n    server_names: [\"*.internal.example\"]\n    action: deny\n"
    );
    let e = parse(&dup, "p.yaml").unwrap_err().to_string();
    assert!(e.contains("duplicate rule"), "{e}");
}
