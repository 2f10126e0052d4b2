use super::*;

/// A library of `family` (no version, path or hash known) as rules see it.
pub(super) fn fam(family: &str) -> crate::family::Family {
    crate::family::Family::new(family).unwrap()
}

fn decide_family(p: &Policy, family: &str) -> Decision {
    let f = fam(family);
    p.decide_subject(&Subject {
        family: &f,
        version: None,
        paths: vec![Path::new("/nowhere/lib.so")],
        sha256: None,
    })
}

fn err(text: &str) -> String {
    match parse(text, "policy.yaml") {
        Ok(p) => panic!("expected an error, parsed {p:?}"),
        Err(e) => e.to_string(),
    }
}

const FULL: &str = "\
# comment
mode: enforce
default: deny
libraries:
  - family: openssl
    action: allow
  - family: gnutls
    action: audit
";

#[test]
fn parses_full_policy_with_rule_lines() {
    let p = parse(FULL, "policy.yaml").unwrap();
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.default, Action::Deny);
    assert_eq!(p.source, "policy.yaml");
    let rules: Vec<_> = p
        .libraries
        .iter()
        .map(|r| (r.describe(), r.action, r.line))
        .collect();
    assert_eq!(
        rules,
        [
            ("family=openssl".to_owned(), Action::Allow, 5),
            ("family=gnutls".to_owned(), Action::Audit, 7)
        ]
    );
}

#[test]
fn optional_keys_take_their_defaults() {
    let p = parse("default: allow\n", "p").unwrap();
    assert_eq!(
        (p.mode, p.default, p.libraries.len()),
        (Mode::Audit, Action::Allow, 0)
    );
}

#[test]
fn flow_style_rules_get_lines() {
    let text = "default: deny\nlibraries: [\n  {family: gnutls, action: deny},\n\n  {family: openssl, action: allow}]\n";
    let p = parse(text, "p").unwrap();
    assert_eq!(
        p.libraries.iter().map(|r| r.line).collect::<Vec<_>>(),
        [3, 5]
    );
}

#[test]
fn decide_uses_rule_then_default() {
    let p = parse(
        "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n",
        "p",
    )
    .unwrap();
    assert_eq!(
        decide_family(&p, "openssl"),
        Decision {
            action: Action::Allow,
            rule_line: Some(4)
        }
    );
    assert_eq!(
        decide_family(&p, "gnutls"),
        Decision {
            action: Action::Deny,
            rule_line: None
        }
    );
    let p = parse("default: audit\n", "p").unwrap();
    assert_eq!(
        decide_family(&p, "openssl"),
        Decision {
            action: Action::Audit,
            rule_line: None
        }
    );
}

#[test]
fn dry_run_forces_audit() {
    let p = parse("mode: enforce\ndefault: deny\n", "p").unwrap();
    assert_eq!(p.effective_mode(false), Mode::Enforce);
    assert_eq!(p.effective_mode(true), Mode::Audit);
}

#[test]
fn every_value_name_parses_to_itself() {
    for m in Mode::ALL {
        assert_eq!(
            parse(&format!("mode: {m}\ndefault: deny\n"), "p")
                .unwrap()
                .mode,
            m
        );
    }
    for a in Action::ALL {
        assert_eq!(parse(&format!("default: {a}\n"), "p").unwrap().default, a);
    }
    for def in Catalog::embedded().families() {
        let f = &def.family;
        let p = parse(
            &format!("default: deny\nlibraries:\n- family: {f}\n  action: allow\n"),
            "p",
        );
        assert_eq!(p.unwrap().libraries[0].family.as_ref(), Some(f));
    }
}

#[test]
fn embedded_default_parses() {
    let p = embedded_default();
    assert_eq!((p.mode, p.default), (Mode::Audit, Action::Deny));
    assert_eq!(decide_family(&p, "openssl").action, Action::Allow);
    assert_eq!(
        decide_family(&p, "gnutls"),
        Decision {
            action: Action::Deny,
            rule_line: None
        }
    );
}

#[test]
fn every_shipped_policy_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} policies in {}", dir.display());
}

#[test]
fn unknown_keys() {
    assert_eq!(
        err("mode: enforce\ndefault: deny\nlibraries:\n  - fmaily: openssl\n    action: allow\n"),
        "policy.yaml:4:5: libraries[0]: unknown key 'fmaily' (expected one of: family, version, path, sha256, server_names, executables, cgroups, users, tls_versions, groups, cipher_suites, ja4, action)"
    );
    assert_eq!(
        err("default: deny\nmdoe: audit\n"),
        "policy.yaml:2:1: unknown key 'mdoe' (expected one of: mode, default, unattributed_tls, unknown_files, quic, tls_versions, groups, cipher_suites, ja4, libraries, catalog)"
    );
}

#[test]
fn unknown_values() {
    assert_eq!(
        err("default: deny\nmode:    enforcing\n"),
        "policy.yaml:2:10: mode: unknown value 'enforcing' (expected enforce or audit)"
    );
    assert_eq!(
        err("default: block\n"),
        "policy.yaml:1:10: default: unknown value 'block' (expected allow, deny or audit)"
    );
    assert_eq!(
        err("default: deny\nlibraries:\n  - family: nsss\n    action: allow\n"),
        "policy.yaml:3:13: libraries[0].family: unknown value 'nsss' (expected aws-lc, boringssl, libressl, openssl, gnutls, nss, wolfssl, mbedtls, rustls, go or java)"
    );
    assert_eq!(
        err("default: deny\nlibraries:\n  - family: gnutls\n    action: permit\n"),
        "policy.yaml:4:13: libraries[0].action: unknown value 'permit' (expected allow, deny or audit)"
    );
}

#[test]
fn missing_keys() {
    assert_eq!(
        err("default: deny\nlibraries:\n  - family: openssl\n"),
        "policy.yaml:3:5: libraries[0]: missing key 'action'"
    );
    assert_eq!(
        err("# header\nmode: enforce\n"),
        "policy.yaml:2:1: missing key 'default'"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        err("default: deny\nlibraries:\n  family: openssl\n"),
        "policy.yaml:3:3: libraries: expected a list of rules (mappings with keys family, version, path, sha256, server_names, executables, cgroups, users, tls_versions, groups, cipher_suites, ja4, action), found a mapping"
    );
    assert_eq!(
        err("default: deny\nlibraries:\n  - openssl\n"),
        "policy.yaml:3:5: libraries[0]: expected a mapping with keys family, version, path, sha256, server_names, executables, cgroups, users, tls_versions, groups, cipher_suites, ja4, action, found the string 'openssl'"
    );
    assert_eq!(
        err("default: [deny]\n"),
        "policy.yaml:1:10: default: expected allow, deny or audit, found a list"
    );
    assert_eq!(
        err("mode:\ndefault: deny\n"),
        "policy.yaml:1:6: mode: expected enforce or audit, found an empty value"
    );
}

#[test]
fn empty_and_non_mapping_top_level() {
    let empty = "policy.yaml: empty policy: expected a mapping with keys mode, default, unattributed_tls, unknown_files, quic, tls_versions, groups, cipher_suites, ja4, libraries, catalog";
    assert_eq!(err(""), empty);
    assert_eq!(err("\n  \n# only a comment\n---\n"), empty);
    assert_eq!(
        err("# list\n- family: openssl\n"),
        "policy.yaml:2:1: top level must be a mapping with keys mode, default, unattributed_tls, unknown_files, quic, tls_versions, groups, cipher_suites, ja4, libraries, catalog, found a list"
    );
    assert_eq!(
        err("enforce\n"),
        "policy.yaml:1:1: top level must be a mapping with keys mode, default, unattributed_tls, unknown_files, quic, tls_versions, groups, cipher_suites, ja4, libraries, catalog, found the string 'enforce'"
    );
}

#[test]
fn duplicate_rules_name_both_lines() {
    assert_eq!(
        err(
            "default: deny\nlibraries:\n  - family: openssl\n    action: allow\n  - family: gnutls\n    action: deny\n  - family: openssl\n    action: deny\n"
        ),
        "policy.yaml:7:5: libraries[2]: duplicate rule for family=openssl (first rule at line 3)"
    );
}

#[test]
fn duplicate_keys_point_at_the_second() {
    assert_eq!(
        err("mode: audit\ndefault: deny\nmode: enforce\n"),
        "policy.yaml:3:7: duplicate key 'mode'"
    );
    assert_eq!(
        err(
            "default: deny\nlibraries:\n  - family: openssl\n    action: allow\n    action: deny\n"
        ),
        "policy.yaml:5:13: libraries[0]: duplicate key 'action'"
    );
}

#[test]
fn yaml_syntax_and_documents() {
    assert_eq!(
        err("default: deny\nlibraries:\n  - family: 'openssl\n"),
        "policy.yaml:4:1: invalid YAML: found unexpected end of stream, while scanning a quoted scalar at line 3 column 13"
    );
    assert_eq!(
        err("default: deny\n---\ndefault: allow\n"),
        "policy.yaml: a policy file must hold exactly one YAML document"
    );
}

#[test]
fn size_is_capped() {
    let big = format!("default: deny\n#{}\n", "x".repeat(MAX_POLICY_BYTES));
    assert_eq!(
        err(&big),
        format!(
            "policy.yaml: policy is {} bytes, more than the limit of 1048576 bytes (1 MiB)",
            big.len()
        )
    );
}

#[test]
fn load_names_the_path() {
    let dir = std::env::temp_dir().join(format!("enforcer-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.yaml");
    assert_eq!(
        load(&missing).unwrap_err().to_string(),
        format!(
            "cannot read {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, b"default: d\xffny\n").unwrap();
    assert_eq!(
        load(&bad).unwrap_err().to_string(),
        format!("{}: not valid UTF-8 (byte 10)", bad.display())
    );
    std::fs::write(&bad, "default: deny\nmode: on\n").unwrap();
    assert_eq!(
        load(&bad).unwrap_err().to_string(),
        format!(
            "{}:2:7: mode: unknown value 'on' (expected enforce or audit)",
            bad.display()
        )
    );
    let big = dir.join("big.yaml");
    std::fs::write(&big, vec![b'#'; MAX_POLICY_BYTES + 1]).unwrap();
    assert!(
        load(&big)
            .unwrap_err()
            .to_string()
            .ends_with("more than the limit of 1048576 bytes (1 MiB)")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hostile_input_errors_without_panicking() {
    let long_key = format!("default: deny\n{}: 1\n", "k".repeat(500));
    assert_eq!(
        err(&long_key),
        format!(
            "policy.yaml:2:1: unknown key '{}...' (expected one of: mode, default, unattributed_tls, unknown_files, quic, tls_versions, groups, cipher_suites, ja4, libraries, catalog)",
            "k".repeat(60)
        )
    );
    assert_eq!(
        err("default: deny\n\"a\\nb\": 1\n"),
        "policy.yaml:2:1: unknown key 'a\\nb' (expected one of: mode, default, unattributed_tls, unknown_files, quic, tls_versions, groups, cipher_suites, ja4, libraries, catalog)"
    );
    let deep = format!(
        "default: deny\nlibraries: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(parse(&deep, "p").is_err());
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ndefault: deny\n";
    assert!(parse(bomb, "p").is_err());
    for junk in [
        "\0",
        "{",
        "]",
        ":",
        "- - -",
        "? ? ?",
        "!!binary AAAA",
        "default: !allow x",
        "*x",
        "&a",
    ] {
        assert!(parse(junk, "p").is_err(), "{junk:?}");
    }
}

#[test]
fn check_report_lists_mode_default_rules() {
    let p = parse(FULL, "policy.yaml").unwrap();
    assert_eq!(
        check_report(&p),
        "\
policy.yaml: valid policy
mode: enforce (connections of denied libraries are blocked)
default: deny (for TLS libraries no rule matches)
unattributed_tls: deny (a TLS ClientHello no probed library claimed: the ClientHello is dropped and the socket aborted)
unknown_files: deny (a mapped file that cannot be analysed: reported as a warning; its TLS is unattributed)
quic: deny (a QUIC Initial datagram, whose TLS no library is known for: dropped, both directions)
rules: 2 (the most specific matching rule decides: sha256, then path, then version, then family, then server_names)
  line 5: family=openssl -> allow
  line 7: family=gnutls -> audit
by family (where no sha256, path or version rule matches):
  aws-lc: deny (default)
  boringssl: deny (default)
  libressl: deny (default)
  openssl: allow (rule at line 5)
  gnutls: audit (rule at line 7)
  nss: deny (default)
  wolfssl: deny (default)
  mbedtls: deny (default)
  rustls: deny (default)
  go: deny (default)
  java: deny (unattributed_tls)
"
    );
    let p = parse("default: allow\n", "p").unwrap();
    assert!(check_report(&p).contains(
        "mode: audit (nothing is blocked; denied connections are reported as would-block)\n"
    ));
    assert!(check_report(&p).contains("rules: 0 ("));
    assert!(
        check_report(&p).ends_with("  go: allow (default)\n  java: allow (unattributed_tls)\n")
    );
}

#[test]
fn rule_count_is_capped_before_rules_are_located() {
    let mut text = String::from("default: deny\nlibraries:\n");
    while text.len() < MAX_POLICY_BYTES - 40 {
        text.push_str("  - family: openssl\n    action: allow\n");
    }
    let n = (text.lines().count() - 2) / 2;
    let started = std::time::Instant::now();
    assert_eq!(
        err(&text),
        format!("policy.yaml:3:3: libraries: {n} rules, more than the limit of 256")
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // Just under the cap, all distinct: accepted, and fast enough.
    let mut text = String::from("default: deny\nlibraries:\n");
    for i in 0..MAX_RULES {
        text.push_str(&format!("  - path: /opt/v{i}/**\n    action: deny\n"));
    }
    let started = std::time::Instant::now();
    assert_eq!(parse(&text, "p").unwrap().libraries.len(), MAX_RULES);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn docs_show_the_real_check_report() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/policy.md")).unwrap();
    let intro = "`enforcer policy check policies/audit-gnutls.yaml` prints:\n\n```\n";
    let start = doc.find(intro).expect("check example in docs/policy.md") + intro.len();
    let shown = &doc[start..start + doc[start..].find("```").unwrap()];
    let text = std::fs::read_to_string(root.join("policies/audit-gnutls.yaml")).unwrap();
    assert_eq!(
        shown,
        check_report(&parse(&text, "policies/audit-gnutls.yaml").unwrap())
    );
}

/// Found by the policy_parse fuzz target (docs/fuzzing.md): a version range is quoted into its
/// error message, and YAML can put line breaks into it.
#[test]
fn error_messages_stay_on_one_line() {
    let text = "default: deny\nlibraries:\n  - family: openssl\n    version: \">=6.0.r\\nfake: line\\r\"\n    action: allow\n";
    let msg = err(text);
    assert!(!msg.contains(['\n', '\r']), "{msg:?}");
    assert!(
        msg.contains("libraries[0].version: '6.0.r\\nfake: line'"),
        "{msg}"
    );
}
