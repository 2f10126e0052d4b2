//! The crypto-posture keys of a policy, host-wide and per library rule: `tls_versions`,
//! `groups`, `cipher_suites` (docs/policy.md, "Crypto posture"). What a connection negotiated
//! must meet the host-wide keys and those of its library's deciding rule; the kernel judges it
//! at the ServerHello (`enforcer_common::posture`). Names are IANA's (`enforcer_common::iana`).

use enforcer_common::{
    iana,
    posture::{MAX_LISTED, PostureRule, version_bit},
};
use serde::Deserialize;

use super::{Policy, PolicyError, error};
use crate::catalog::Seg;
use crate::libraries::Library;

/// The keys as serde reads them (flattened into the top level and into each rule).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPosture {
    #[serde(default)]
    pub tls_versions: Option<Vec<String>>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub cipher_suites: Option<Vec<String>>,
}

/// Validated requirements; empty lists require nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Posture {
    /// `version_bit`s of the versions allowed; 0: any.
    pub versions: u8,
    pub groups: Vec<u16>,
    pub cipher_suites: Vec<u16>,
}

impl Posture {
    pub fn is_empty(&self) -> bool {
        self.versions == 0 && self.groups.is_empty() && self.cipher_suites.is_empty()
    }

    /// The kernel's form (`POSTURE_RULES` value).
    pub fn kernel_rule(&self) -> PostureRule {
        let mut rule = PostureRule {
            versions: self.versions,
            group_count: self.groups.len() as u8,
            suite_count: self.cipher_suites.len() as u8,
            ..Default::default()
        };
        rule.groups[..self.groups.len()].copy_from_slice(&self.groups);
        rule.suites[..self.cipher_suites.len()].copy_from_slice(&self.cipher_suites);
        rule
    }

    /// `tls_versions 1.3; groups X25519MLKEM768, x25519` (what `policy check` prints).
    pub fn describe(&self) -> String {
        let names = |codes: &[u16], table: &'static [(u16, &'static str)]| -> Vec<String> {
            codes
                .iter()
                .map(|c| iana::named(table, *c).to_string())
                .collect()
        };
        let mut parts = Vec::new();
        if self.versions != 0 {
            parts.push(format!("tls_versions {}", self.version_names().join(", ")));
        }
        if !self.groups.is_empty() {
            parts.push(format!(
                "groups {}",
                names(&self.groups, iana::GROUPS).join(", ")
            ));
        }
        if !self.cipher_suites.is_empty() {
            let suites = names(&self.cipher_suites, iana::CIPHER_SUITES);
            parts.push(format!("cipher_suites {}", suites.join(", ")));
        }
        parts.join("; ")
    }

    /// The versions allowed, by name (`["1.2", "1.3"]`), for `policy explain` and status.
    pub fn version_names(&self) -> Vec<&'static str> {
        iana::VERSIONS
            .iter()
            .filter(|(code, _)| version_bit(*code).is_some_and(|b| self.versions & b != 0))
            .map(|(_, name)| *name)
            .collect()
    }
}

impl Policy {
    /// Whether any key of the policy is a posture requirement (the kernel then judges every
    /// ServerHello; otherwise it only reads and reports them).
    pub fn has_posture_rules(&self) -> bool {
        !self.posture.is_empty() || self.libraries.iter().any(|r| !r.posture.is_empty())
    }

    /// The posture requirements of the rule that decides `lib` (`None`: `default` decides it,
    /// or its rule has none).
    pub fn posture_of(&self, lib: &Library) -> Option<&Posture> {
        let posture = &self.deciding_rule(lib)?.posture;
        (!posture.is_empty()).then_some(posture)
    }
}

/// Validates the keys at `at` (`[]` for the top level, `[libraries, N]` for a rule); `here`
/// prefixes the messages (`""` or `"libraries[N]."`). Each error goes to `fail`.
pub(super) fn validate<'a>(
    raw: &'a RawPosture,
    text: &str,
    source: &str,
    at: &[Seg],
    here: &str,
    fail: &mut dyn FnMut(PolicyError),
) -> Posture {
    let mut posture = Posture::default();
    let key_path = |key: &'static str, index: Option<usize>| {
        let mut path = at.to_vec();
        path.push(Seg::Key(key));
        if let Some(i) = index {
            path.push(Seg::Index(i));
        }
        path
    };
    let list = |key: &'static str,
                values: &'a Option<Vec<String>>,
                fail: &mut dyn FnMut(PolicyError)|
     -> Option<&'a [String]> {
        let values = values.as_deref()?;
        if values.is_empty() {
            fail(error::at_node(
                source,
                text,
                &key_path(key, None),
                format!("{here}{key}: an empty list allows nothing; remove the key to allow any"),
            ));
            return None;
        }
        if values.len() > MAX_LISTED {
            fail(error::at_node(
                source,
                text,
                &key_path(key, None),
                format!(
                    "{here}{key}: {} values, more than the limit of {MAX_LISTED}",
                    values.len()
                ),
            ));
            return None;
        }
        Some(values)
    };
    if let Some(values) = list("tls_versions", &raw.tls_versions, fail) {
        for (i, value) in values.iter().enumerate() {
            match version_set(value) {
                Ok(bits) => posture.versions |= bits,
                Err(why) => fail(error::at_node(
                    source,
                    text,
                    &key_path("tls_versions", Some(i)),
                    format!("{here}tls_versions[{i}]: '{}': {why}", error::show(value)),
                )),
            }
        }
    }
    for (key, raw_values, table, what, out) in [
        (
            "groups",
            &raw.groups,
            iana::GROUPS,
            "group",
            &mut posture.groups,
        ),
        (
            "cipher_suites",
            &raw.cipher_suites,
            iana::CIPHER_SUITES,
            "cipher suite",
            &mut posture.cipher_suites,
        ),
    ] {
        let Some(values) = list(key, raw_values, fail) else {
            continue;
        };
        for (i, value) in values.iter().enumerate() {
            match iana::code_of(table, value) {
                Some(code) if !out.contains(&code) => out.push(code),
                Some(_) => {}
                None => fail(error::at_node(
                    source,
                    text,
                    &key_path(key, Some(i)),
                    format!(
                        "{here}{key}[{i}]: unknown {what} '{}' (IANA names such as {}, or 0xNNNN)",
                        error::show(value),
                        examples(table)
                    ),
                )),
            }
        }
    }
    posture
}

fn examples(table: &[(u16, &str)]) -> String {
    let names: Vec<&str> = table.iter().rev().take(3).map(|(_, n)| *n).collect();
    names.join(", ")
}

/// The version bits one `tls_versions` item allows: `1.2`, or a comparison `>=1.2`, `>1.2`,
/// `<=1.2`, `<1.3`.
fn version_set(item: &str) -> Result<u8, String> {
    let item = item.trim();
    let (op, version) = ["<=", ">=", "<", ">", "="]
        .iter()
        .find_map(|op| item.strip_prefix(op).map(|rest| (*op, rest.trim())))
        .unwrap_or(("=", item));
    let Some(code) = iana::VERSIONS
        .iter()
        .find(|(_, name)| *name == version)
        .map(|(code, _)| *code)
        .filter(|code| version_bit(*code).is_some())
    else {
        return Err(
            "expected a TLS version 1.0, 1.1, 1.2 or 1.3, optionally after >=, >, <= or <".into(),
        );
    };
    let bits = (0x0301..=0x0304u16)
        .filter(|v| match op {
            "<=" => *v <= code,
            ">=" => *v >= code,
            "<" => *v < code,
            ">" => *v > code,
            _ => *v == code,
        })
        .filter_map(version_bit)
        .fold(0, |acc, b| acc | b);
    match bits {
        0 => Err("allows no version".into()),
        bits => Ok(bits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_items_are_sets_of_versions() {
        assert_eq!(version_set(">=1.3"), Ok(0b1000));
        assert_eq!(version_set(">= 1.2"), Ok(0b1100));
        assert_eq!(version_set("1.2"), Ok(0b0100));
        assert_eq!(version_set("<1.2"), Ok(0b0011));
        assert!(version_set(">1.3").is_err());
        assert!(version_set("1.4").is_err());
        assert!(version_set("SSL3.0").is_err());
        assert!(version_set("").is_err());
    }
}
