//! The crypto-posture keys of a policy, host-wide and per library rule: `tls_versions`,
//! `groups`, `cipher_suites`, `ja4` (docs/policy.md, "Crypto posture"). What a connection negotiated
//! must meet the host-wide keys and those of its library's deciding rule; the kernel judges it
//! at the ServerHello (`enforcer_common::posture`). Names are IANA's (`enforcer_common::iana`).

use enforcer_common::{
    iana,
    posture::{MAX_JA4_PATTERNS, MAX_LISTED, PostureRule, version_bit},
};
use serde::Deserialize;

use super::{Policy, PolicyError, error, ja4::Ja4Pattern};
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
    #[serde(default)]
    pub ja4: Option<RawJa4>,
}

/// `ja4: { allow: [...], deny: [...] }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJa4 {
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    #[serde(default)]
    pub deny: Option<Vec<String>>,
}

/// A rule's `ja4` lists: the connection's JA4 must match an `allow` pattern (when there are
/// any) and no `deny` pattern; a JA4 that could not be made meets neither (fail closed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ja4Lists {
    pub allow: Vec<Ja4Pattern>,
    pub deny: Vec<Ja4Pattern>,
    /// The lists as bits of the policy's patterns (`Policy::ja4_patterns`), set once the whole
    /// policy is read.
    pub allow_bits: u64,
    pub deny_bits: u64,
}

impl Ja4Lists {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `ja4` (`None`: not made) meets the lists.
    pub fn met_by(&self, ja4: Option<&str>) -> bool {
        match ja4 {
            None => self.is_empty(),
            Some(ja4) => {
                !self.deny.iter().any(|p| p.matches(ja4))
                    && (self.allow.is_empty() || self.allow.iter().any(|p| p.matches(ja4)))
            }
        }
    }
}

/// Validated requirements; empty lists require nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Posture {
    /// `version_bit`s of the versions allowed; 0: any.
    pub versions: u8,
    pub groups: Vec<u16>,
    pub cipher_suites: Vec<u16>,
    pub ja4: Ja4Lists,
}

impl Posture {
    pub fn is_empty(&self) -> bool {
        self.versions == 0
            && self.groups.is_empty()
            && self.cipher_suites.is_empty()
            && self.ja4.is_empty()
    }

    /// The kernel's form (`POSTURE_RULES` value).
    pub fn kernel_rule(&self) -> PostureRule {
        let mut rule = PostureRule {
            versions: self.versions,
            group_count: self.groups.len() as u8,
            suite_count: self.cipher_suites.len() as u8,
            ja4_allow: self.ja4.allow_bits,
            ja4_deny: self.ja4.deny_bits,
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
        let patterns = |list: &[Ja4Pattern]| -> String {
            let texts: Vec<&str> = list.iter().map(Ja4Pattern::as_str).collect();
            texts.join(", ")
        };
        if !self.ja4.allow.is_empty() {
            parts.push(format!("ja4 allow {}", patterns(&self.ja4.allow)));
        }
        if !self.ja4.deny.is_empty() {
            parts.push(format!("ja4 deny {}", patterns(&self.ja4.deny)));
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

    /// Whether a `ja4` list is anywhere in the policy (userspace then matches every flow's JA4
    /// against [`Policy::ja4_patterns`] and writes the verdict the kernel waits for).
    pub fn has_ja4_rules(&self) -> bool {
        !self.ja4_patterns.is_empty()
    }

    /// The generation of the policy's pattern numbering (`JA4_GENERATION`, the JA4 cache's
    /// keys): the same patterns in the same order give the same number, another list another
    /// (FNV-1a of the patterns); 0 when the policy has no `ja4` list (the cache is off).
    pub fn ja4_generation(&self) -> u64 {
        self.ja4_generation
    }

    /// The bits of the policy's patterns `ja4` matches (`Ja4Verdict::matched`).
    pub fn ja4_matched(&self, ja4: &str) -> u64 {
        self.ja4_patterns
            .iter()
            .enumerate()
            .filter(|(_, p)| p.matches(ja4))
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }
}

/// Numbers the distinct JA4 patterns of the policy (host-wide lists first, then each rule's)
/// into `policy.ja4_patterns` and sets each list's bits; more than [`MAX_JA4_PATTERNS`] is an
/// error at the `ja4` key that went past the limit.
pub(super) fn index_ja4(
    policy: &mut Policy,
    text: &str,
    source: &str,
    fail: &mut dyn FnMut(PolicyError),
) {
    let mut patterns: Vec<Ja4Pattern> = Vec::new();
    let mut over: Option<(Vec<Seg>, String)> = None;
    let mut bits_of = |list: &[Ja4Pattern], at: &[Seg], here: &str| -> u64 {
        let mut bits = 0u64;
        for p in list {
            let i = match patterns.iter().position(|q| q == p) {
                Some(i) => i,
                None if patterns.len() < MAX_JA4_PATTERNS => {
                    patterns.push(p.clone());
                    patterns.len() - 1
                }
                None => {
                    over.get_or_insert_with(|| (at.to_vec(), here.to_owned()));
                    continue;
                }
            };
            bits |= 1 << i;
        }
        bits
    };
    let host = [Seg::Key("ja4")];
    let lists = &mut policy.posture.ja4;
    lists.allow_bits = bits_of(&lists.allow, &host, "ja4");
    lists.deny_bits = bits_of(&lists.deny, &host, "ja4");
    for (index, rule) in policy.libraries.iter_mut().enumerate() {
        let at = [Seg::Key("libraries"), Seg::Index(index), Seg::Key("ja4")];
        let here = format!("libraries[{index}].ja4");
        let lists = &mut rule.posture.ja4;
        lists.allow_bits = bits_of(&lists.allow, &at, &here);
        lists.deny_bits = bits_of(&lists.deny, &at, &here);
    }
    if let Some((at, here)) = over {
        fail(error::at_node(
            source,
            text,
            &at,
            format!("{here}: more than {MAX_JA4_PATTERNS} distinct JA4 patterns in the policy"),
        ));
    }
    policy.ja4_generation = generation(&patterns);
    policy.ja4_patterns = patterns;
}

/// FNV-1a of the patterns in order (0 for none; never 0 otherwise).
fn generation(patterns: &[Ja4Pattern]) -> u64 {
    if patterns.is_empty() {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in patterns {
        for b in p.as_str().bytes().chain([0]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
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
    if let Some(raw_ja4) = &raw.ja4 {
        for (name, values, out) in [
            ("allow", &raw_ja4.allow, &mut posture.ja4.allow),
            ("deny", &raw_ja4.deny, &mut posture.ja4.deny),
        ] {
            let Some(values) = values else { continue };
            let mut path = key_path("ja4", None);
            path.push(Seg::Key(name));
            if values.is_empty() || values.len() > MAX_JA4_PATTERNS {
                let why = match values.is_empty() {
                    true => "an empty list; remove the key to allow any".to_owned(),
                    false => format!(
                        "{} values, more than the limit of {MAX_JA4_PATTERNS}",
                        values.len()
                    ),
                };
                fail(error::at_node(
                    source,
                    text,
                    &path,
                    format!("{here}ja4.{name}: {why}"),
                ));
                continue;
            }
            for (i, value) in values.iter().enumerate() {
                match Ja4Pattern::new(value.trim()) {
                    Ok(p) if !out.contains(&p) => out.push(p),
                    Ok(_) => {}
                    Err(why) => {
                        let mut at = path.clone();
                        at.push(Seg::Index(i));
                        fail(error::at_node(
                            source,
                            text,
                            &at,
                            format!("{here}ja4.{name}[{i}]: '{}': {why}", error::show(value)),
                        ));
                    }
                }
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
