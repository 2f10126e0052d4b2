//! Rules scoped to who is talking: parsing errors (line, column, key) and which rule decides.

use std::path::PathBuf;

use super::who::Speaker;
use super::{Action, parse};

const POLICY: &str = "\
mode: enforce
default: deny
unattributed_tls: deny
libraries:
  - family: openssl
    action: allow
  - executables: [/opt/appliance/bin/agent]
    action: allow
  - family: gnutls
    cgroups: [\"/system.slice/app.service\", \"/kubepods.slice/**\"]
    action: allow
  - users: [0]
    executables:
      - path: /usr/bin/tool
        sha256: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
    action: audit
";

fn err(text: &str) -> String {
    parse(text, "p.yaml")
        .expect_err("the policy must be refused")
        .to_string()
}

fn speaker(exe: &str, cgroup: &str, uid: u32) -> Speaker {
    Speaker {
        pid: Some(1),
        exe: Some(PathBuf::from(exe)),
        exe_sha256: None,
        cgroup: Some(cgroup.to_owned()),
        uid: Some(uid),
        runtime: None,
    }
}

#[test]
fn scoped_rules_parse_and_describe() {
    let p = parse(POLICY, "p.yaml").expect("valid");
    assert!(p.has_who_rules());
    assert!(p.who_needs_sha256());
    assert_eq!(
        p.libraries[1].describe(),
        "executables=[/opt/appliance/bin/agent]"
    );
    assert_eq!(
        p.libraries[2].describe(),
        "family=gnutls cgroups=[/system.slice/app.service, /kubepods.slice/**]"
    );
    let sha = p.libraries[3]
        .who
        .as_ref()
        .unwrap()
        .executables
        .as_ref()
        .unwrap()[0]
        .sha256
        .clone()
        .unwrap();
    assert_eq!(sha, "a".repeat(64), "lowercased");
    assert_eq!(
        p.libraries[3].describe(),
        "executables=[/usr/bin/tool@sha256:aaaaaaaaaaaa] users=[0]"
    );
}

#[test]
fn unattributed_tls_is_excepted_for_one_executable_path_only() {
    let p = parse(POLICY, "p.yaml").expect("valid");
    let d = p
        .decide_who(None, &speaker("/opt/appliance/bin/agent", "/", 0))
        .expect("the exception applies");
    assert_eq!((d.action, d.line), (Action::Allow, 7));
    assert_eq!(
        d.reasons,
        ["executable /opt/appliance/bin/agent matches '/opt/appliance/bin/agent'"]
    );
    // A copy elsewhere, or a process whose executable has no host name: no exception.
    assert!(p.decide_who(None, &speaker("/tmp/agent", "/", 0)).is_none());
    let nameless = Speaker {
        exe: None,
        ..speaker("/x", "/", 0)
    };
    assert!(p.decide_who(None, &nameless).is_none());
    // Library keys make a rule a library's: never unattributed TLS's.
    assert!(p.who_may_decide(None));
}

#[test]
fn sha256_pins_contents_and_every_key_must_match() {
    let p = parse(POLICY, "p.yaml").expect("valid");
    let mut s = speaker("/usr/bin/tool", "/", 0);
    assert!(p.decide_who(None, &s).is_none(), "contents unknown");
    s.exe_sha256 = Some("a".repeat(64));
    assert_eq!(
        p.decide_who(None, &s).map(|d| d.action),
        Some(Action::Audit)
    );
    s.uid = Some(1000);
    assert!(p.decide_who(None, &s).is_none(), "users must match too");
}

#[test]
fn a_less_specific_scoped_rule_never_overrides_a_library_rule() {
    let p = parse(POLICY, "p.yaml").expect("valid");
    let lib = |family: &str| crate::family::Family::new(family).expect("a family");
    let (openssl, gnutls, nss) = (lib("openssl"), lib("gnutls"), lib("nss"));
    let subject = |f| super::Subject {
        family: f,
        version: None,
        paths: vec![],
        sha256: None,
    };
    // openssl's own rule is more specific than the executable-only rule: it decides.
    let agent = speaker("/opt/appliance/bin/agent", "/", 0);
    assert!(p.decide_who(Some(&subject(&openssl)), &agent).is_none());
    assert!(!p.who_may_decide(Some(&subject(&openssl))));
    // A library no rule names gets the executable-only rule.
    assert_eq!(
        p.decide_who(Some(&subject(&nss)), &agent).map(|d| d.line),
        Some(7)
    );
    // gnutls's cgroup-scoped rule, inside and outside the glob.
    let inside = speaker("/usr/bin/x", "/kubepods.slice/pod1/c2", 0);
    assert_eq!(
        p.decide_who(Some(&subject(&gnutls)), &inside)
            .map(|d| d.reasons),
        Some(vec![
            "family is gnutls".to_owned(),
            "cgroup /kubepods.slice/pod1/c2 matches '/kubepods.slice/**'".to_owned()
        ])
    );
    let outside = speaker("/usr/bin/x", "/user.slice", 0);
    assert!(p.decide_who(Some(&subject(&gnutls)), &outside).is_none());
    // A scoped rule does not decide the library's other connections.
    assert_eq!(p.decide_subject(&subject(&gnutls)).action, Action::Deny);
}

#[test]
fn errors_name_line_column_and_key() {
    let cases = [
        (
            "default: deny\nlibraries:\n  - users: [no-such-user-here]\n    action: allow\n",
            "p.yaml:3:13: libraries[0].users[0]: unknown user 'no-such-user-here' (not in this host's user database; a numeric uid is taken as is)",
        ),
        (
            "default: deny\nlibraries:\n  - executables: [\"/opt/[a\"]\n    action: allow\n",
            "p.yaml:3:19: libraries[0].executables[0]: invalid glob '/opt/[a': unclosed character class; missing ']'",
        ),
        (
            "default: deny\nlibraries:\n  - executables:\n      - path: /opt/a\n        sha256: abc\n    action: allow\n",
            "p.yaml:5:17: libraries[0].executables[0].sha256: expected 64 hexadecimal digits, found 'abc'",
        ),
        (
            "default: deny\nlibraries:\n  - cgroups: [system.slice]\n    action: allow\n",
            "p.yaml:3:15: libraries[0].cgroups[0]: invalid cgroup glob 'system.slice': a cgroup path starts with '/' (the cgroup v2 root), e.g. /system.slice/nginx.service",
        ),
        (
            "default: deny\nlibraries:\n  - users: []\n    action: allow\n",
            "p.yaml:3:12: libraries[0].users: an empty list scopes the rule to nobody; remove the key to apply the rule to every process",
        ),
        (
            "default: deny\nlibraries:\n  - family: openssl\n    users: [0]\n    server_names: [a.example]\n    action: allow\n",
            "p.yaml:5:19: libraries[0].server_names: a rule scoped to who is talking (users) cannot also be scoped by server name; write two rules",
        ),
        (
            "default: deny\nlibraries:\n  - users: [0]\n    tls_versions: [\"1.3\"]\n    action: allow\n",
            "p.yaml:4:19: libraries[0].tls_versions: a rule scoped to who is talking (users) cannot require a crypto posture; put it on the library's own rule or at the top level",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(text), want, "{text}");
    }
}

#[test]
fn duplicate_scoped_rules_are_refused_but_different_scopes_are_not() {
    let twice = "default: deny\nlibraries:\n  - users: [0]\n    action: allow\n  - users: [0]\n    action: deny\n";
    assert!(
        err(twice).contains("duplicate rule for users=[0]"),
        "{}",
        err(twice)
    );
    let two = "default: deny\nlibraries:\n  - users: [0]\n    action: allow\n  - users: [1]\n    action: deny\n";
    assert!(parse(two, "p.yaml").is_ok());
}

fn jvm(version: Option<&str>) -> crate::libraries::Library {
    let mut lib = crate::libraries::Library::bare("java", "/usr/lib/jvm/j17/lib/server/libjvm.so");
    lib.identity.version = version.map(str::to_owned);
    lib
}

#[test]
fn a_java_rule_decides_the_tls_of_processes_that_map_a_jvm() {
    let text = "mode: enforce\ndefault: deny\nunattributed_tls: deny\nlibraries:\n  - family: openssl\n    action: allow\n  - family: java\n    version: \">=17, <18\"\n    action: allow\n  - family: java\n    version: \">=25\"\n    users: [0]\n    action: allow\n";
    let p = parse(text, "p.yaml").expect("valid");
    assert!(p.has_runtime_rules() && p.has_who_rules());
    // The kernel asks about unattributed TLS's senders; no library is a JVM's to probe.
    assert!(p.who_may_decide(None));
    let with = |version: Option<&str>, uid: u32| Speaker {
        runtime: Some(jvm(version)),
        ..speaker("/usr/lib/jvm/j17/bin/java", "/", uid)
    };
    let d = p
        .decide_who(None, &with(Some("17.0.15"), 1000))
        .expect("java 17");
    assert_eq!((d.line, d.action, d.runtime), (7, Action::Allow, true));
    assert!(
        d.reasons[0]
            .starts_with("the process maps java /usr/lib/jvm/j17/lib/server/libjvm.so (17.0.15)"),
        "{:?}",
        d.reasons
    );
    // Another version: the rule scoped to root decides only root's processes.
    assert!(p.decide_who(None, &with(Some("25.0.3"), 1000)).is_none());
    assert_eq!(
        p.decide_who(None, &with(Some("25.0.3"), 0)).map(|d| d.line),
        Some(10)
    );
    // No version known: a version range does not match it.
    assert!(p.decide_who(None, &with(None, 0)).is_none());
    // A process that maps no JVM is not java (its TLS stays unattributed).
    assert!(
        p.decide_who(None, &speaker("/usr/bin/curl", "/", 0))
            .is_none()
    );
    // Without a java rule, nothing is asked for unattributed TLS.
    let plain = parse(
        "default: deny\nlibraries:\n  - family: openssl\n    action: allow\n",
        "p.yaml",
    )
    .expect("valid");
    assert!(!plain.has_runtime_rules() && !plain.who_may_decide(None));
    assert!(plain.decide_who(None, &with(Some("17.0.15"), 0)).is_none());
}

#[test]
fn a_java_rule_takes_no_server_names_nor_posture_keys() {
    for (k, v) in [
        ("server_names", "[a.example]"),
        ("tls_versions", "[\"1.3\"]"),
        ("groups", "[X25519]"),
    ] {
        let text = format!(
            "default: deny\nlibraries:\n  - family: java\n    {k}: {v}\n    action: allow\n"
        );
        let err = parse(&text, "p.yaml").expect_err(k).to_string();
        assert!(
            err.contains(&format!(
                "libraries[0].{k}: not supported for family 'java'"
            )),
            "{err}"
        );
    }
    // A java deny under an open host: the JVM's TLS is refused, the rest is not.
    let p = parse(
        "default: allow\nunattributed_tls: allow\nlibraries:\n  - family: java\n    action: deny\n",
        "p.yaml",
    )
    .expect("valid");
    let java = Speaker {
        runtime: Some(jvm(Some("17.0.15"))),
        ..speaker("/usr/bin/java", "/", 0)
    };
    assert_eq!(
        p.decide_who(None, &java).map(|d| d.action),
        Some(Action::Deny)
    );
}

#[test]
fn a_listed_jvm_is_decided_by_java_rules_else_as_unattributed_tls() {
    let lib = jvm(Some("17.0.15"));
    // No rule names java: neither `default` nor a path rule decides it, `unattributed_tls` does.
    let p = parse("default: allow\nunattributed_tls: deny\nlibraries:\n  - path: \"/usr/**\"\n    action: allow\n", "p.yaml").expect("valid");
    let d = p.decide(&lib);
    assert_eq!((d.action, d.rule_line), (Action::Deny, None));
    let p = parse(
        "default: deny\nlibraries:\n  - family: java\n    action: audit\n",
        "p.yaml",
    )
    .expect("valid");
    let d = p.decide(&lib);
    assert_eq!((d.action, d.rule_line), (Action::Audit, Some(3)));
}
