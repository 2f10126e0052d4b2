//! `server_names` on a rule: the TLS server names (SNI) a rule is scoped to, and how they become
//! keys of the kernel's `SERVER_NAME_RULES` LPM trie.
//!
//! A pattern is a DNS name (`api.internal.example`: that name only) or `*.` followed by one
//! (`*.internal.example`: any name ending in `.internal.example`, at any depth, but not
//! `internal.example` itself). Names compare case-insensitively. In the kernel a suffix match is
//! a prefix match of the reversed name: `*.internal.example` is stored as `elpmaxe.lanretni.`
//! and `api.internal.example` as `elpmaxe.lanretni.ipa` followed by a 0 byte, so the longest
//! matching prefix is the most precise pattern.

use enforcer_common::policy::{self as kernel, ServerNameKey};

/// Longest pattern accepted: its kernel form (reversed, plus the end byte of an exact name) must
/// fit the trie key's `kernel::MAX_NAME` bytes.
pub const MAX_PATTERN: usize = kernel::MAX_NAME - 1;

/// One entry of `server_names`, validated and lowercased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerNamePattern {
    /// As written, lowercased.
    pub text: String,
}

impl ServerNamePattern {
    pub fn new(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        if lower.len() > MAX_PATTERN {
            return Err(format!(
                "{} bytes, more than the limit of {MAX_PATTERN}",
                lower.len()
            ));
        }
        if name.is_empty() {
            return Err("empty name".into());
        }
        if name.contains('*') {
            return Err("'*' is only allowed as the whole first label ('*.example.com')".into());
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err("empty label (leading, trailing or doubled '.')".into());
            }
            if label.len() > 63 {
                return Err(format!("label '{label}' is longer than 63 bytes"));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(format!(
                    "character {c:?} is not allowed (letters, digits, '-', '_' and '.')"
                ));
            }
        }
        Ok(ServerNamePattern { text: lower })
    }

    /// True for `*.suffix` patterns.
    pub fn is_wildcard(&self) -> bool {
        self.text.starts_with("*.")
    }

    /// The bytes the kernel compares: reversed name, then `NAME_END` for an exact name.
    pub fn kernel_bytes(&self) -> Vec<u8> {
        match self.text.strip_prefix('*') {
            // "*.internal.example" → "elpmaxe.lanretni."
            Some(dot_suffix) => dot_suffix.bytes().rev().collect(),
            None => {
                let mut bytes: Vec<u8> = self.text.bytes().rev().collect();
                bytes.push(kernel::NAME_END);
                bytes
            }
        }
    }

    /// Does `name` (as a client sent it) fall under this pattern?
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self.text.strip_prefix('*') {
            Some(dot_suffix) => name.ends_with(dot_suffix) && name.len() > dot_suffix.len(),
            None => name == self.text,
        }
    }

    /// True if every name `other` matches is matched by `self` too (`*.example` covers
    /// `*.a.example` and `b.example`).
    pub fn covers(&self, other: &ServerNamePattern) -> bool {
        other.kernel_bytes().starts_with(&self.kernel_bytes())
    }

    /// The `SERVER_NAME_RULES` key of this pattern for library `lib_id`: (prefix bits, data).
    pub fn kernel_key(&self, lib_id: u32) -> (u32, ServerNameKey) {
        let bytes = self.kernel_bytes();
        let mut name = [0u8; kernel::MAX_NAME];
        // new() caps the text so the kernel form fits.
        let used = bytes.len().min(kernel::MAX_NAME);
        name[..used].copy_from_slice(&bytes[..used]);
        let key = ServerNameKey {
            lib_id_be: lib_id.to_be(),
            name,
        };
        (32 + 8 * used as u32, key)
    }
}

impl std::fmt::Display for ServerNamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ServerNamePattern {
        ServerNamePattern::new(s).unwrap()
    }

    #[test]
    fn wildcard_matches_subdomains_at_any_depth_not_the_apex() {
        let w = p("*.Internal.Example");
        assert_eq!(w.text, "*.internal.example");
        assert!(w.matches("db.internal.example"));
        assert!(w.matches("a.b.INTERNAL.example"));
        assert!(!w.matches("internal.example"));
        assert!(!w.matches("evilinternal.example"));
        assert_eq!(w.kernel_bytes(), b"elpmaxe.lanretni.");
    }

    #[test]
    fn exact_name_matches_itself_only() {
        let e = p("api.example");
        assert!(e.matches("API.example"));
        assert!(!e.matches("x.api.example"));
        assert_eq!(e.kernel_bytes(), b"elpmaxe.ipa\0");
    }

    #[test]
    fn covering() {
        assert!(p("*.example").covers(&p("*.a.example")));
        assert!(p("*.example").covers(&p("b.example")));
        assert!(!p("*.a.example").covers(&p("*.example")));
        assert!(!p("b.example").covers(&p("*.b.example")));
        assert!(!p("*.example").covers(&p("example")));
    }

    #[test]
    fn invalid_patterns_say_why() {
        for (bad, why) in [
            ("", "empty name"),
            ("*.", "empty name"),
            ("a..b", "empty label"),
            ("*.a*.b", "'*' is only allowed"),
            ("a.*.b", "'*' is only allowed"),
            ("a b.c", "not allowed"),
            (".a", "empty label"),
        ] {
            let err = ServerNamePattern::new(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let long = format!("{}.example", "a".repeat(60)).repeat(5);
        assert!(ServerNamePattern::new(&long).unwrap_err().contains("limit"));
    }

    #[test]
    fn kernel_key_prefix_counts_the_id_and_the_pattern_bytes() {
        let (bits, key) = p("*.ex").kernel_key(7);
        assert_eq!(bits, 32 + 8 * 3);
        assert_eq!(key.lib_id_be, 7u32.to_be());
        assert_eq!(&key.name[..3], b"xe.");
    }
}
