//! What connections must negotiate: `tls_versions` and `groups`, host-wide (top level) and per
//! rule (the rule that decides a library's action). The kernel judges them at the ServerHello
//! (`enforcer-ebpf/src/server_hello.rs`, `POSTURE_RULES`); names are IANA's
//! (`enforcer_common::iana`), an unknown one is an error at its line and column.

use enforcer_common::{
    iana,
    posture::{MAX_RULE_GROUPS, PostureRule, version_bit},
};

use super::{Policy, PolicyError, error};
use crate::catalog::Seg;
use crate::libraries::Library;

/// Requirements of one scope (host or rule); empty lists require nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Allowed versions (wire codes), in table order.
    pub versions: Vec<u16>,
    /// Allowed key-exchange groups (IANA codes), as listed.
    pub groups: Vec<u16>,
}

/// The versions `tls_versions` may name (`1.0` to `1.3`, or `TLS 1.3`).
const VERSION_HELP: &str = "1.0, 1.1, 1.2 or 1.3, optionally after '>=' (\">=1.3\")";

impl Requirements {
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.groups.is_empty()
    }

    /// The `POSTURE_RULES` value.
    pub fn kernel_rule(&self) -> PostureRule {
        let mut rule = PostureRule {
            versions: self.versions.iter().fold(0, |m, v| m | version_bit(*v)),
            groups_len: self.groups.len().min(MAX_RULE_GROUPS) as u8,
            ..PostureRule::default()
        };
        for (slot, g) in rule.groups.iter_mut().zip(&self.groups) {
            *slot = *g;
        }
        rule
    }

    /// Parses the two keys at `at` (the path of their mapping); `here` prefixes messages.
    pub(super) fn parse(
        versions: Option<&[String]>,
        groups: Option<&[String]>,
        at: &[Seg],
        here: &str,
        invalid: &dyn Fn(&[Seg], String) -> PolicyError,
    ) -> Result<Requirements, PolicyError> {
        let path = |key: &'static str, i: Option<usize>| {
            let mut p = at.to_vec();
            p.push(Seg::Key(key));
            p.extend(i.map(Seg::Index));
            p
        };
        let mut out = Requirements::default();
        if let Some(list) = versions {
            if list.is_empty() {
                return Err(invalid(
                    &path("tls_versions", None),
                    format!(
                        "{here}tls_versions: an empty list allows no connection; remove the key to allow every version"
                    ),
                ));
            }
            for (i, item) in list.iter().enumerate() {
                let parsed = version_item(item).ok_or_else(|| {
                    invalid(
                        &path("tls_versions", Some(i)),
                        format!(
                            "{here}tls_versions[{i}]: unknown TLS version '{}' (expected {VERSION_HELP})",
                            error::show(item)
                        ),
                    )
                })?;
                for v in parsed {
                    if !out.versions.contains(&v) {
                        out.versions.push(v);
                    }
                }
            }
            out.versions.sort_unstable();
        }
        if let Some(list) = groups {
            if list.is_empty() || list.len() > MAX_RULE_GROUPS {
                return Err(invalid(
                    &path("groups", None),
                    format!(
                        "{here}groups: {} groups; list 1 to {MAX_RULE_GROUPS}, or remove the key to allow every group",
                        list.len()
                    ),
                ));
            }
            for (i, name) in list.iter().enumerate() {
                let code = iana::group_code(name).ok_or_else(|| {
                    let known: Vec<&str> = iana::GROUPS.iter().map(|(_, n)| *n).collect();
                    invalid(
                        &path("groups", Some(i)),
                        format!(
                            "{here}groups[{i}]: unknown group '{}' (expected an IANA name: {})",
                            error::show(name),
                            known.join(", ")
                        ),
                    )
                })?;
                if !out.groups.contains(&code) {
                    out.groups.push(code);
                }
            }
        }
        Ok(out)
    }
}

/// `"1.3"`, `"TLS 1.3"`: that version; `">=1.2"`: it and every later one.
fn version_item(item: &str) -> Option<Vec<u16>> {
    let (at_least, name) = match item.trim().strip_prefix(">=") {
        Some(rest) => (true, rest.trim()),
        None => (false, item.trim()),
    };
    let code = iana::version_code(name).filter(|c| *c >= 0x0301)?;
    Some(match at_least {
        true => iana::VERSIONS
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| *c >= code)
            .collect(),
        false => vec![code],
    })
}

impl Policy {
    /// The `POSTURE_RULES` entry of `lib`: the requirements of the rule that decides its action,
    /// `None` when that rule has none (or `default` decides).
    pub fn posture_rule(&self, lib: &Library) -> Option<PostureRule> {
        let line = self.decide(lib).rule_line?;
        let index = self.libraries.iter().position(|r| r.line == line)?;
        let req = self.rule_postures.get(index)?;
        (!req.is_empty()).then(|| req.kernel_rule())
    }

    /// The host-wide `POSTURE_RULES` entry (`HOST_RULE`), `None` without requirements.
    pub fn host_posture_rule(&self) -> Option<PostureRule> {
        (!self.posture.is_empty()).then(|| self.posture.kernel_rule())
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const BASE: &str = "default: allow\n";

    #[test]
    fn versions_and_groups_parse_to_the_kernel_rule() {
        let p = parse(
            &format!("{BASE}tls_versions: [\">=1.2\"]\ngroups: [X25519MLKEM768, x25519]\n"),
            "p.yaml",
        )
        .unwrap();
        assert_eq!(p.posture.versions, vec![0x0303, 0x0304]);
        assert_eq!(p.posture.groups, vec![0x11ec, 0x001d]);
        let rule = p.host_posture_rule().unwrap();
        assert_eq!(rule.versions, 0b11000);
        assert_eq!(rule.groups_len, 2);
        assert_eq!(&rule.groups[..2], &[0x11ec, 0x001d]);
        let p = parse(
            &format!(
                "{BASE}libraries:\n  - family: openssl\n    action: allow\n    tls_versions: [\"1.3\", \"TLS 1.2\"]\n"
            ),
            "p.yaml",
        )
        .unwrap();
        assert_eq!(p.rule_postures[0].versions, vec![0x0303, 0x0304]);
        assert!(p.host_posture_rule().is_none());
    }

    #[test]
    fn unknown_names_are_errors_at_their_line_and_key() {
        let err = |text: &str| {
            parse(&format!("{BASE}{text}"), "p.yaml")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("groups: [x25519, X25519Kyber768]\n"),
            format!(
                "p.yaml:2:18: groups[1]: unknown group 'X25519Kyber768' (expected an IANA name: {})",
                enforcer_common::iana::GROUPS
                    .iter()
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
        let e = err(
            "libraries:\n  - family: openssl\n    action: allow\n    tls_versions: [\">=1.4\"]\n",
        );
        assert!(
            e.starts_with("p.yaml:5:20: libraries[0].tls_versions[0]: unknown TLS version '>=1.4'"),
            "{e}"
        );
        assert!(err("tls_versions: []\n").contains("tls_versions: an empty list"));
        assert!(err("groups: [a, b, c, d, e, f, g, h, i]\n").contains("groups: 9 groups"));
    }
}
