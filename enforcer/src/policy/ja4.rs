//! JA4 patterns of the `ja4` key (docs/policy.md, "Crypto posture"): a JA4 fingerprint
//! (`t13d1516h2_8daaf6152771_e5627efa2ab1`), any of whose three sections may be `*`
//! (`t13d1516h2_*_*`: every client with that version, SNI, counts and ALPN). The kernel does not
//! hash: userspace matches each flow's JA4 (made from its `offered` event) against the policy's
//! patterns and writes which matched (`enforcer_common::posture::Ja4Verdict`); the rules hold
//! their lists as bits of those patterns.

use std::fmt;

/// One pattern: each section exact, or `None` for `*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ja4Pattern {
    text: String,
    sections: [Option<String>; 3],
}

impl Ja4Pattern {
    /// Parses a pattern; the error says what is wrong with which section.
    pub fn new(text: &str) -> Result<Ja4Pattern, String> {
        let parts: Vec<&str> = text.split('_').collect();
        let [a, b, c] = parts.as_slice() else {
            return Err(format!(
                "expected three sections joined by '_' (like {EXAMPLE}), found {}",
                parts.len()
            ));
        };
        let section_a = match *a {
            "*" => None,
            a => Some(check_a(a)?.to_owned()),
        };
        let hash = |name: &str, s: &str| -> Result<Option<String>, String> {
            match s {
                "*" => Ok(None),
                s if s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Ok(Some(s.to_ascii_lowercase()))
                }
                s => Err(format!(
                    "section {name} '{s}': expected 12 hex digits (a truncated SHA-256) or *"
                )),
            }
        };
        Ok(Ja4Pattern {
            text: text.to_owned(),
            sections: [section_a, hash("b", b)?, hash("c", c)?],
        })
    }

    /// Whether the fingerprint `ja4` (as made by `agent::events::ja4`) matches.
    pub fn matches(&self, ja4: &str) -> bool {
        let mut parts = ja4.split('_');
        let got = [parts.next(), parts.next(), parts.next()];
        parts.next().is_none()
            && self
                .sections
                .iter()
                .zip(got)
                .all(|(want, got)| match (want, got) {
                    (None, Some(_)) => true,
                    (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                    (_, None) => false,
                })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Ja4Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const EXAMPLE: &str = "t13d1516h2_8daaf6152771_e5627efa2ab1";

/// Section a: protocol (`t` TCP, `q` QUIC, `d` DTLS), version (`13`, `12`, `s3`, `00`, ...),
/// `d` (SNI) or `i` (none), two-digit counts of cipher suites and extensions, and the ALPN's
/// first and last characters (`00`: none).
fn check_a(a: &str) -> Result<&str, String> {
    let b = a.as_bytes();
    let why = if b.len() != 10 {
        Some(format!("{} characters, not 10", b.len()))
    } else if !matches!(b[0], b't' | b'q' | b'd') {
        Some("the protocol (first character) is t, q or d".to_owned())
    } else if !b[1..3].iter().all(u8::is_ascii_alphanumeric) {
        Some("the version (characters 2-3) is two letters or digits, like 13".to_owned())
    } else if !matches!(b[3], b'd' | b'i') {
        Some("the SNI mark (character 4) is d or i".to_owned())
    } else if !b[4..8].iter().all(u8::is_ascii_digit) {
        Some("the counts (characters 5-8) are two two-digit numbers".to_owned())
    } else if !b[8..].iter().all(u8::is_ascii_alphanumeric) {
        Some("the ALPN (characters 9-10) is two letters or digits, like h2 or 00".to_owned())
    } else {
        None
    };
    match why {
        None => Ok(a),
        Some(why) => Err(format!("section a '{a}': {why} (like {EXAMPLE})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURL: &str = "t13d3112h2_e8f1e7e78f70_6bebaf5329ac";

    #[test]
    fn exact_and_wildcard_sections_match() {
        assert!(Ja4Pattern::new(CURL).unwrap().matches(CURL));
        assert!(Ja4Pattern::new("t13d3112h2_*_*").unwrap().matches(CURL));
        assert!(Ja4Pattern::new("*_E8F1E7E78F70_*").unwrap().matches(CURL));
        assert!(!Ja4Pattern::new("t12d3112h2_*_*").unwrap().matches(CURL));
        assert!(!Ja4Pattern::new("*_*_000000000000").unwrap().matches(CURL));
        assert!(
            !Ja4Pattern::new("*_*_*")
                .unwrap()
                .matches("t13d3112h2_e8f1e7e78f70")
        );
        assert!(
            !Ja4Pattern::new("*_*_*")
                .unwrap()
                .matches(&format!("{CURL}_x"))
        );
    }

    #[test]
    fn malformed_patterns_say_which_section() {
        for (bad, says) in [
            ("t13d3112h2", "three sections"),
            ("x13d3112h2_*_*", "protocol"),
            ("t13x3112h2_*_*", "SNI mark"),
            ("t13d31a2h2_*_*", "counts"),
            ("t13d3112h_*_*", "9 characters"),
            ("*_e8f1e7e78f7_*", "section b"),
            ("*_*_6bebaf5329az", "section c"),
            ("t13d3112h2_*_*_*", "found 4"),
        ] {
            let e = Ja4Pattern::new(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
