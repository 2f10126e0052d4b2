//! Rules on version ranges, path globs and hashes; specificity; their errors.

use super::tests::fam;
use super::*;

const SHA_A: &str = "cab3f5b0a1febd4a80db5319f3bca4a9378c797dc6e5dc8bce36a575eaa77e78";

fn err(text: &str) -> String {
    parse(text, "policy.yaml").unwrap_err().to_string()
}

struct Lib {
    family: crate::family::Family,
    version: Option<&'static str>,
    paths: Vec<&'static Path>,
    sha: Option<&'static str>,
}

fn lib(family: &str, version: Option<&'static str>, path: &'static str) -> Lib {
    Lib {
        family: fam(family),
        version,
        paths: vec![Path::new(path)],
        sha: None,
    }
}

impl Lib {
    fn subject(&self) -> Subject<'_> {
        Subject {
            family: &self.family,
            version: self.version,
            paths: self.paths.clone(),
            sha256: self.sha,
        }
    }
}

fn decide(p: &Policy, l: &Lib) -> (Action, Option<usize>) {
    let d = p.decide_subject(&l.subject());
    (d.action, d.rule_line)
}

const LAYERED: &str = "\
mode: enforce
default: deny
libraries:
  - family: openssl
    action: audit
  - family: openssl
    version: \">=3.0.9, <4\"
    action: allow
  - family: openssl
    version: \"1.1.1\"
    action: deny
  - path: \"/opt/vendor/**\"
    action: deny
  - sha256: CAB3F5B0A1FEBD4A80DB5319F3BCA4A9378C797DC6E5DC8BCE36A575EAA77E78
    action: allow
  - family: gnutls
    path: \"/usr/lib/**\"
    action: allow
";

#[test]
fn most_specific_rule_wins() {
    let p = parse(LAYERED, "p").unwrap();
    let sys = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    assert_eq!(
        decide(&p, &lib("openssl", Some("3.0.22"), sys)),
        (Action::Allow, Some(6))
    );
    assert_eq!(
        decide(&p, &lib("openssl", Some("3.0.8"), sys)),
        (Action::Audit, Some(4))
    );
    assert_eq!(
        decide(&p, &lib("openssl", Some("1.1.1w"), sys)),
        (Action::Deny, Some(9))
    );
    assert_eq!(
        decide(&p, &lib("openssl", None, sys)),
        (Action::Audit, Some(4)),
        "unknown version"
    );
    // A path rule beats family + version.
    let vendored = lib("openssl", Some("3.0.22"), "/opt/vendor/x/libssl.so.3");
    assert_eq!(decide(&p, &vendored), (Action::Deny, Some(12)));
    // A hash beats the path rule (case-insensitive in the file).
    let mut pinned = lib("openssl", Some("3.0.22"), "/opt/vendor/x/libssl.so.3");
    pinned.sha = Some(SHA_A);
    assert_eq!(decide(&p, &pinned), (Action::Allow, Some(14)));
    // Family + path: both must match.
    assert_eq!(
        decide(
            &p,
            &lib("gnutls", Some("3.7.9"), "/usr/lib/libgnutls.so.30")
        ),
        (Action::Allow, Some(16))
    );
    assert_eq!(
        decide(&p, &lib("gnutls", Some("3.7.9"), "/srv/libgnutls.so.30")),
        (Action::Deny, None)
    );
    assert_eq!(
        decide(&p, &lib("nss", Some("3.87.1"), "/usr/lib/libssl3.so")),
        (Action::Deny, None)
    );
}

#[test]
fn path_globs_match_mapped_names_and_do_not_cross_slashes_with_one_star() {
    let p = parse(
        "default: allow\nlibraries:\n  - path: \"/srv/*.so\"\n    action: deny\n",
        "p",
    )
    .unwrap();
    assert_eq!(
        decide(&p, &lib("openssl", None, "/srv/libx.so")).0,
        Action::Deny
    );
    assert_eq!(
        decide(&p, &lib("openssl", None, "/srv/sub/libx.so")).0,
        Action::Allow
    );
    // A container's library: host path under /proc/PID/root, mapped name as the process sees it.
    let mut l = lib("openssl", None, "/proc/42/root/srv/libx.so");
    assert_eq!(decide(&p, &l).0, Action::Allow);
    l.paths.push(Path::new("/srv/libx.so"));
    assert_eq!(decide(&p, &l).0, Action::Deny);
}

#[test]
fn equal_specificity_first_in_file_wins_and_explain_says_so() {
    let p = parse(
        "default: allow\nlibraries:\n  - path: \"/opt/**\"\n    action: deny\n  - path: \"/opt/a/**\"\n    action: audit\n",
        "p",
    )
    .unwrap();
    let l = lib("openssl", None, "/opt/a/libssl.so");
    let m = rules::matching(&p.libraries, &l.subject());
    assert_eq!(m.iter().map(|m| m.line).collect::<Vec<_>>(), [3, 5]);
    assert_eq!(m[0].reasons, ["path /opt/a/libssl.so matches '/opt/**'"]);
    assert_eq!(decide(&p, &l), (Action::Deny, Some(3)));
}

#[test]
fn explain_reasons() {
    let p = parse(LAYERED, "p").unwrap();
    let l = lib("openssl", Some("3.0.22"), "/usr/lib/libssl.so.3");
    let m = rules::matching(&p.libraries, &l.subject());
    assert_eq!(m.iter().map(|m| m.line).collect::<Vec<_>>(), [6, 4]);
    assert_eq!(
        m[0].reasons,
        ["family is openssl", "version 3.0.22 is in '>=3.0.9, <4'"]
    );
    assert_eq!(
        p.libraries[1].describe(),
        "family=openssl version=\">=3.0.9, <4\""
    );
}

#[test]
fn rule_errors_name_line_and_key() {
    let head = "default: deny\nlibraries:\n";
    assert_eq!(
        err(&format!(
            "{head}  - family: openssl\n    version: \">>3\"\n    action: allow\n"
        )),
        "policy.yaml:4:14: libraries[0].version: '>>3': unknown operator (expected =, >, >=, < or <=)"
    );
    assert_eq!(
        err(&format!(
            "{head}  - family: openssl\n    version: \">=3.x\"\n    action: allow\n"
        )),
        "policy.yaml:4:14: libraries[0].version: '3.x' is not a version (expected numbers separated by dots, such as 3.0.15 or 1.1.1w)"
    );
    assert_eq!(
        err(&format!("{head}  - version: \">=3\"\n    action: allow\n")),
        "policy.yaml:3:14: libraries[0].version: a version range needs 'family' (versions are compared within one family)"
    );
    assert_eq!(
        err(&format!("{head}  - path: \"/opt/[x\"\n    action: deny\n")),
        "policy.yaml:3:11: libraries[0].path: invalid glob '/opt/[x': unclosed character class; missing ']'"
    );
    assert_eq!(
        err(&format!("{head}  - path: lib/*.so\n    action: deny\n")),
        "policy.yaml:3:11: libraries[0].path: invalid glob 'lib/*.so': a path glob must be absolute (start with '/' or '*')"
    );
    assert_eq!(
        err(&format!("{head}  - sha256: abc\n    action: deny\n")),
        "policy.yaml:3:13: libraries[0].sha256: expected 64 hexadecimal digits, found 'abc'"
    );
    assert_eq!(
        err(&format!("{head}  - action: deny\n")),
        "policy.yaml:3:5: libraries[0]: a rule needs at least one of family, path, sha256, executables, cgroups, users"
    );
    // Unquoted numbers keep their text: 3.10 is not 3.1.
    let p = parse(
        &format!("{head}  - family: openssl\n    version: 3.10\n    action: deny\n"),
        "p",
    )
    .unwrap();
    assert_eq!(p.libraries[0].version.as_ref().unwrap().to_string(), "3.10");
    assert_eq!(
        err(&format!(
            "{head}  - family: openssl\n    version: [3]\n    action: deny\n"
        )),
        "policy.yaml:4:14: libraries[0].version: expected a version range in quotes, such as \">=3.0.9, <4\", found a list"
    );
    assert_eq!(
        err(&format!(
            "{head}  - {{family: openssl, version: '3.0', action: deny}}\n  - {{family: openssl, version: '3.0', action: allow}}\n"
        )),
        "policy.yaml:4:5: libraries[1]: duplicate rule for family=openssl version=\"3.0\" (first rule at line 3)"
    );
}

#[test]
fn policy_catalog_adds_families_rules_can_name() {
    let text = "\
default: deny
libraries:
  - family: vendortls
    action: allow
catalog:
  families:
    - id: vendortls
      identify: [{all: [vt_init, vt_new]}]
      probes:
        - {symbol: vt_write, op: write}
      version: [{in: self, prefix: \"VendorTLS \"}]
";
    let p = parse(text, "p.yaml").unwrap();
    let def = p.catalog.family("vendortls").unwrap();
    assert_eq!(
        def.origin,
        crate::catalog::Origin::Policy {
            source: "p.yaml".into(),
            line: 7
        }
    );
    assert_eq!(
        decide(&p, &lib("vendortls", None, "/x.so")),
        (Action::Allow, Some(3))
    );
    assert!(check_report(&p).contains("catalog: adds or replaces vendortls (line 7)\n"));
    // Without the section, the family is unknown.
    assert!(err(&text[..text.find("catalog:").unwrap()]).contains("unknown value 'vendortls'"));
    assert_eq!(
        err(
            "default: deny\ncatalog:\n  families:\n    - id: x\n      identify: [{all: []}]\n      probes: [{symbol: f, op: read}]\n"
        ),
        "policy.yaml:5:24: catalog.families[0].identify[0].all: at least one symbol is required (a family is recognised by the symbols it defines)"
    );
    assert_eq!(
        err(
            "default: deny\ncatalog:\n  families:\n    - id: x\n      identify: [{all: [a]}]\n      probes: [{symbol: f, op: peek}]\n"
        ),
        "policy.yaml:6:32: catalog.families[0].probes[0].op: unknown value 'peek' (expected handshake, read, write, random or session)"
    );
}
