//! `enforcer policy check` on a file with several mistakes: each is reported once, in file
//! order, with line, column and key, and the exit status says the file is invalid; `--json`
//! gives the same errors as a JSON array.

use std::process::Output;

use enforcer_tests::{cmd, enforcer_bin};
use serde_json::Value;

/// Five mistakes: a bad enum value, an unknown key, a bad glob, a duplicate rule, a duplicate key.
const POLICY: &str = "\
mode: enforcing
default: deny
colour: blue
libraries:
  - family: openssl
    action: allow
  - path: \"/opt/[vendor/**\"
    action: deny
  - family: openssl
    action: deny
default: allow
";

/// (line, column, key, message without the position) of each error, in order.
const EXPECTED: [(u64, u64, &str, &str); 5] = [
    (
        1,
        7,
        "mode",
        "mode: unknown value 'enforcing' (expected enforce or audit)",
    ),
    (
        3,
        1,
        "colour",
        "unknown key 'colour' (expected one of: mode, default, unattributed_tls, unknown_files, quic, tls_versions, groups, cipher_suites, ja4, libraries, catalog)",
    ),
    (
        7,
        11,
        "libraries[1].path",
        "libraries[1].path: invalid glob '/opt/[vendor/**': unclosed character class; missing ']'",
    ),
    (
        9,
        5,
        "libraries[2]",
        "libraries[2]: duplicate rule for family=openssl (first rule at line 5)",
    ),
    (11, 10, "default", "duplicate key 'default'"),
];

fn check(file: &std::path::Path, json: bool) -> Output {
    let mut c = cmd(enforcer_bin().to_str().expect("utf-8"), ["policy", "check"]);
    if json {
        c.arg("--json");
    }
    c.arg(file).output().expect("run enforcer policy check")
}

fn policy_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, POLICY).expect("write the policy");
    (dir, file)
}

#[test]
fn every_error_once_in_order_with_its_position() {
    let (_dir, file) = policy_file();
    let out = check(&file, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an invalid file passed:\n{stderr}");
    let name = file.display().to_string();
    let expected: Vec<String> = EXPECTED
        .iter()
        .map(|(l, c, _, m)| format!("{name}:{l}:{c}: {m}"))
        .collect();
    let reported: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{name}:")))
        .collect();
    assert_eq!(reported, expected, "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("error: {name}: 5 errors")),
        "a summary line:\n{stderr}"
    );
}

#[test]
fn json_lists_the_same_errors() {
    let (_dir, file) = policy_file();
    let out = check(&file, true);
    assert!(!out.status.success(), "an invalid file passed");
    let errors: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    let errors = errors.as_array().expect("a JSON array");
    assert_eq!(errors.len(), EXPECTED.len(), "{errors:?}");
    for (got, (line, column, key, message)) in errors.iter().zip(EXPECTED) {
        assert_eq!(got["file"], file.display().to_string(), "{got}");
        assert_eq!(got["line"], line, "{got}");
        assert_eq!(got["column"], column, "{got}");
        assert_eq!(got["key"], key, "{got}");
        assert_eq!(got["message"], message, "{got}");
    }
}

#[test]
fn a_valid_file_passes_in_both_forms() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("ok.yaml");
    std::fs::write(&file, "mode: audit\ndefault: allow\n").expect("write the policy");
    let out = check(&file, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid policy"));
    let out = check(&file, true);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}
