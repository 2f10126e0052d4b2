//! The crypto-posture keys: `tls_versions`, `groups`, `cipher_suites`, host-wide and per rule,
//! and their errors (line, column, key).

use super::*;

fn errors(text: &str) -> Vec<String> {
    parse_all(text, "p.yaml")
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn host_wide_and_rule_keys_become_kernel_rules() {
    let p = parse(
        "default: allow\n\
         tls_versions: [\">=1.2\"]\n\
         groups: [x25519mlkem768, SecP256r1MLKEM768, \"0x11ed\"]\n\
         libraries:\n  \
           - family: openssl\n    \
             action: allow\n    \
             tls_versions: [\"1.3\"]\n    \
             cipher_suites: [TLS_AES_256_GCM_SHA384]\n",
        "p.yaml",
    )
    .unwrap();
    assert_eq!(p.posture.versions, 0b1100);
    assert_eq!(p.posture.groups, vec![0x11ec, 0x11eb, 0x11ed]);
    assert!(p.has_posture_rules());
    let rule = &p.libraries[0].posture;
    assert_eq!(rule.version_names(), vec!["1.3"]);
    let kernel = rule.kernel_rule();
    assert_eq!(
        (kernel.versions, kernel.suite_count, kernel.suites[0]),
        (0b1000, 1, 0x1302)
    );
    assert_eq!(kernel.group_count, 0);
    let plain = parse("default: allow\n", "p.yaml").unwrap();
    assert!(!plain.has_posture_rules() && plain.posture.is_empty());
}

#[test]
fn unknown_names_empty_and_long_lists_are_errors_with_position_and_key() {
    let long: Vec<String> = (0..17)
        .map(|i| format!("\"0x{:04x}\"", 0x1000 + i))
        .collect();
    let text = format!(
        "default: deny\n\
         groups: [x25519, X25519MLKEM]\n\
         cipher_suites: []\n\
         libraries:\n  \
           - family: openssl\n    \
             action: allow\n    \
             tls_versions: [\">=1.4\"]\n    \
             groups: [{}]\n",
        long.join(", ")
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0].starts_with("p.yaml:2:18: groups[1]: unknown group 'X25519MLKEM'"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].starts_with("p.yaml:3:16: cipher_suites: an empty list allows nothing"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].starts_with(
            "p.yaml:7:20: libraries[0].tls_versions[0]: '>=1.4': expected a TLS version"
        ),
        "{}",
        errors[2]
    );
    assert!(
        errors[3]
            .starts_with("p.yaml:8:13: libraries[0].groups: 17 values, more than the limit of 16"),
        "{}",
        errors[3]
    );
}

#[test]
fn the_deciding_rule_carries_the_library_posture() {
    let p = parse(
        "default: deny\n\
         libraries:\n  \
           - family: openssl\n    \
             action: allow\n    \
             groups: [X25519MLKEM768]\n  \
           - family: openssl\n    \
             path: \"/opt/**\"\n    \
             action: allow\n",
        "p.yaml",
    )
    .unwrap();
    assert_eq!(p.libraries[0].posture.groups, vec![0x11ec]);
    assert!(
        p.libraries[1].posture.is_empty(),
        "the more specific rule has none"
    );
}

const CURL: &str = "t13d3112h2_e8f1e7e78f70_6bebaf5329ac";
const GNUTLS: &str = "t13d1711h2_5b57614c22b0_3cbfd9057e0d";

#[test]
fn ja4_lists_become_bits_of_the_policys_patterns() {
    let p = parse(
        &format!(
            "default: allow\n\
             ja4:\n  \
               deny: [\"{CURL}\", \"t12*_*_*\"]\n\
             libraries:\n  \
               - family: gnutls\n    \
                 action: allow\n    \
                 ja4:\n      \
                   allow: [\"{GNUTLS}\", \"{CURL}\"]\n"
        )
        .replace("t12*_*_*", "t12d1711h2_*_*"),
        "p.yaml",
    )
    .unwrap();
    assert!(p.has_ja4_rules() && p.has_posture_rules());
    let patterns: Vec<&str> = p.ja4_patterns.iter().map(|p| p.as_str()).collect();
    assert_eq!(
        patterns,
        vec![CURL, "t12d1711h2_*_*", GNUTLS],
        "distinct, in order"
    );
    let host = p.posture.kernel_rule();
    assert_eq!((host.ja4_allow, host.ja4_deny), (0, 0b011));
    let rule = p.libraries[0].posture.kernel_rule();
    assert_eq!((rule.ja4_allow, rule.ja4_deny), (0b101, 0));
    // As the kernel judges: curl's JA4 breaks the host-wide deny list, GnuTLS's meets both.
    assert_eq!(p.ja4_matched(CURL), 0b001);
    assert_ne!(p.ja4_generation(), 0, "a generation for the numbering");
    assert_eq!(
        parse("default: allow\n", "p.yaml")
            .unwrap()
            .ja4_generation(),
        0
    );
    assert!(!host.ja4_met(p.ja4_matched(CURL)));
    assert!(host.ja4_met(p.ja4_matched(GNUTLS)) && rule.ja4_met(p.ja4_matched(GNUTLS)));
    assert!(!rule.ja4_met(p.ja4_matched("t13d0000h2_000000000000_000000000000")));
    assert!(p.posture.ja4.met_by(Some(GNUTLS)) && !p.posture.ja4.met_by(None));
    assert_eq!(
        p.libraries[0].posture.describe(),
        format!("ja4 allow {GNUTLS}, {CURL}")
    );
}

#[test]
fn bad_ja4_patterns_and_lists_are_errors_with_position_and_key() {
    let found = errors(
        "default: deny\n\
         ja4:\n  \
           allow: [\"t13d3112h2_e8f1e7e78f70\"]\n  \
           deny: []\n\
         libraries:\n  \
           - family: openssl\n    \
             action: allow\n    \
             ja4: { alow: [\"*_*_*\"] }\n",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].starts_with("p.yaml:3:11: ja4.allow[0]:"),
        "{}",
        found[0]
    );
    assert!(found[0].contains("three sections"), "{}", found[0]);
    assert!(
        found[1].starts_with("p.yaml:4:9: ja4.deny: an empty list"),
        "{}",
        found[1]
    );
    assert!(found[2].contains("alow"), "{}", found[2]);
    let many: Vec<String> = (0..65).map(|i| format!("\"t13d{i:04}h2_*_*\"")).collect();
    let over = errors(&format!(
        "default: deny\nja4:\n  deny: [{}]\n",
        many.join(", ")
    ));
    assert_eq!(over.len(), 1, "{over:#?}");
    assert!(over[0].contains("more than the limit of 64"), "{}", over[0]);
    let split: Vec<String> = (0..40).map(|i| format!("\"t13d{i:04}h2_*_*\"")).collect();
    let (a, b) = (split.join(", "), split.join(", ").replace("h2_", "h1_"));
    let total = errors(&format!(
        "default: deny\nja4:\n  deny: [{a}]\nlibraries:\n  - family: openssl\n    action: allow\n    ja4:\n      allow: [{b}]\n"
    ));
    assert_eq!(total.len(), 1, "{total:#?}");
    assert!(
        total[0].starts_with("p.yaml:8:7: libraries[0].ja4: more than 64"),
        "{}",
        total[0]
    );
}
