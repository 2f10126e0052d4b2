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
