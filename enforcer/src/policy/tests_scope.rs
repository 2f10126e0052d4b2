//! `unattributed_tls` and `server_names`: parsing, errors, and the kernel tables they become.

use super::*;
use crate::libraries::Library;

/// A library of `family` at `/nowhere/lib.so`, nothing else known (no such file: `path` rules
/// do not match it).
fn library(family: &str) -> Library {
    Library::bare(family, "/nowhere/lib.so")
}

/// A library of `family` that is a real file of this host, at [`real_dir`]`/lib.so`: `path`
/// rules see its path.
fn real_library(family: &str) -> Library {
    use std::os::unix::fs::MetadataExt;
    let path = real_dir().join("lib.so");
    std::fs::write(&path, b"not an ELF file").unwrap();
    let md = std::fs::metadata(&path).unwrap();
    Library {
        dev: md.dev(),
        ino: md.ino(),
        ..Library::bare(family, path.to_str().unwrap())
    }
}

fn real_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("enforcer-scope-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

/// `quic`: absent, the value of `default`; a bad value names line and key.
#[test]
fn quic_defaults_to_default_and_names_its_errors() {
    assert_eq!(
        parse("default: deny\n", "p.yaml").unwrap().quic,
        Action::Deny
    );
    assert_eq!(
        parse("default: allow\n", "p.yaml").unwrap().quic,
        Action::Allow
    );
    let p = parse("default: deny\nquic: audit\n", "p.yaml").unwrap();
    assert_eq!(p.quic, Action::Audit);
    let e = parse("default: deny\nquic: drop\n", "p.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "p.yaml:2:7: quic: unknown value 'drop' (expected allow, deny or audit)"
    );
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
    let text = format!(
        "default: allow\nlibraries:\n  - path: \"{}/**\"\n    server_names: [\"*.example\"]\n    action: deny\n  - family: gnutls\n    server_names: [\"*.internal.example\"]\n    action: allow\n",
        real_dir().display()
    );
    let text = text.as_str();
    let library = real_library;
    let s = parse(text, "policy.yaml")
        .unwrap()
        .name_scope(&library("gnutls"))
        .unwrap();
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

/// `path` rules match the host's names of the file only: not a name it has in another mount
/// namespace (a bind mount made after `unshare -Urm`), not a `/proc/<pid>/root/...` link into a
/// process's view, not a host path that is another file.
#[test]
fn path_rules_match_host_names_of_the_file_only() {
    let p = parse(
        "default: deny\nlibraries:\n  - path: \"/usr/lib/**\"\n    action: allow\n",
        "p.yaml",
    )
    .unwrap();
    let mut staged = real_library("gnutls");
    // Mapped by a process as /usr/lib/...: a bind mount in its namespace put this file there.
    let host_file = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30";
    staged.mapped_as = vec![host_file.into()];
    staged.path = format!("/proc/1/root{host_file}").into();
    assert_eq!(p.decide(&staged).action, Action::Deny, "{staged:?}");
    // The real file under /usr/lib matches by its host name.
    use std::os::unix::fs::MetadataExt;
    let host = std::fs::canonicalize(host_file).unwrap();
    let md = std::fs::metadata(&host).unwrap();
    let real = Library {
        dev: md.dev(),
        ino: md.ino(),
        ..Library::bare("gnutls", host.to_str().unwrap())
    };
    assert_eq!(p.decide(&real).action, Action::Allow);
}
