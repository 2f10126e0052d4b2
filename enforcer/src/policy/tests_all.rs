//! `parse_all`: every error of a file, by position, each once, with the key it is about.

use super::*;

fn all(text: &str) -> Vec<String> {
    match parse_all(text, "p.yaml") {
        Ok(p) => panic!("expected errors, parsed {p:?}"),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn keys(text: &str) -> Vec<Option<String>> {
    let errors = parse_all(text, "p.yaml").unwrap_err();
    errors
        .into_iter()
        .map(|e| match e {
            PolicyError::Invalid { key, .. } => key,
            PolicyError::Io { .. } => None,
        })
        .collect()
}

const SEVERAL: &str = "\
mode: enforcee
default: deny
colour: blue
libraries:
  - family: openssl
    action: allow
  - family: gnutls
    action: blok
  - path: \"/opt/[vendor/**\"
    action: deny
  - family: openssl
    action: deny
  - family: nosuch
    action: deny
    extra: 1
default: allow
";

#[test]
fn every_error_once_in_order_with_position() {
    assert_eq!(
        all(SEVERAL),
        [
            "p.yaml:1:7: mode: unknown value 'enforcee' (expected enforce or audit)",
            "p.yaml:3:1: unknown key 'colour' (expected one of: mode, default, unattributed_tls, unknown_files, quic, tls_versions, groups, cipher_suites, ja4, libraries, catalog)",
            "p.yaml:8:13: libraries[1].action: unknown value 'blok' (expected allow, deny or audit)",
            "p.yaml:9:11: libraries[2].path: invalid glob '/opt/[vendor/**': unclosed character class; missing ']'",
            "p.yaml:11:5: libraries[3]: duplicate rule for family=openssl (first rule at line 5)",
            "p.yaml:13:13: libraries[4].family: unknown value 'nosuch' (expected aws-lc, boringssl, libressl, openssl, gnutls, nss, wolfssl, mbedtls, rustls, go or java)",
            "p.yaml:15:5: libraries[4]: unknown key 'extra' (expected one of: family, version, path, sha256, server_names, executables, cgroups, users, tls_versions, groups, cipher_suites, ja4, action)",
            "p.yaml:16:10: duplicate key 'default'",
        ]
    );
    let keys = keys(SEVERAL);
    assert_eq!(keys[0].as_deref(), Some("mode"));
    assert_eq!(keys[1].as_deref(), Some("colour"));
    assert_eq!(keys[2].as_deref(), Some("libraries[1].action"));
    assert_eq!(keys[6].as_deref(), Some("libraries[4].extra"));
    assert_eq!(keys[7].as_deref(), Some("default"));
}

#[test]
fn parse_still_gives_the_first_error_found() {
    assert_eq!(
        parse(SEVERAL, "p.yaml").unwrap_err().to_string(),
        "p.yaml:1:7: mode: unknown value 'enforcee' (expected enforce or audit)"
    );
}

#[test]
fn a_required_key_in_error_does_not_hide_the_rest() {
    // `default` and `action` are required: the recovery puts stand-ins in, and reports nothing
    // about them; a rule taken out does not shift the indices of the next ones.
    let text = "default: blah\nlibraries:\n  - family: openssl\n  - path: \"/opt/[x\"\n    action: deny\n  - family: gnutls\n    action: allow\n    action: deny\nunattributed_tls: [1]\n";
    assert_eq!(
        all(text),
        [
            "p.yaml:1:10: default: unknown value 'blah' (expected allow, deny or audit)",
            "p.yaml:3:5: libraries[0]: missing key 'action'",
            "p.yaml:4:11: libraries[1].path: invalid glob '/opt/[x': unclosed character class; missing ']'",
            "p.yaml:8:13: libraries[2]: duplicate key 'action'",
            "p.yaml:9:19: unattributed_tls: expected allow, deny or audit, found a list",
        ]
    );
}

#[test]
fn a_mistyped_key_is_one_error() {
    // Not also "a rule needs at least one of family, path, sha256".
    assert_eq!(
        all("default: deny\nlibraries:\n  - fmaily: openssl\n    action: allow\n"),
        [
            "p.yaml:3:5: libraries[0]: unknown key 'fmaily' (expected one of: family, version, path, sha256, server_names, executables, cgroups, users, tls_versions, groups, cipher_suites, ja4, action)"
        ]
    );
}

#[test]
fn syntax_errors_and_valid_files() {
    assert_eq!(all("default: deny\nlibraries: [\n").len(), 1);
    assert!(parse_all("default: deny\n", "p.yaml").is_ok());
    let text = include_str!("../../../policies/default.yaml");
    assert!(parse_all(text, "p.yaml").is_ok());
}

#[test]
fn many_errors_are_capped_and_fast() {
    let mut text = String::from("default: deny\n");
    for i in 0..2000 {
        text.push_str(&format!("k{i}: 1\n"));
    }
    let started = std::time::Instant::now();
    let errors = all(&text);
    assert_eq!(errors.len(), recover::MAX_ERRORS);
    assert!(
        errors[0].starts_with("p.yaml:2:1: unknown key 'k0'"),
        "{}",
        errors[0]
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
