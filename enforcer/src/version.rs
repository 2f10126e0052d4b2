//! Library versions as TLS libraries state them, and version ranges as policies write them.
//!
//! Versions are parsed leniently, because TLS libraries do not follow semver: OpenSSL 1.x uses
//! letter releases (`1.1.1w`), NSS uses two or three numbers (`3.87`, `3.87.1`), GnuTLS three.
//! A [`Version`] is up to four numbers and an optional lowercase letter suffix; missing numbers
//! count as 0, and a letter release sorts after the plain one (`1.1.1 < 1.1.1a < 1.1.1w < 1.1.2`).
//!
//! A [`VersionReq`] is a comma-separated list of comparators that must all hold, as in
//! `">=3.0.9, <4"`. Operators: `=`, `>`, `>=`, `<`, `<=`. A comparator without an operator, or
//! with `=`, matches every version that starts with the given numbers: `3.0` is `>=3.0, <3.1`,
//! and `=1.1.1w` is exactly 1.1.1w.

use std::cmp::Ordering;
use std::fmt;

/// At most this many numbers in a version.
const MAX_PARTS: usize = 4;

/// A lenient version: `3`, `3.0.15`, `1.1.1w`, `3.87`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    /// 1 to 4 numbers, as written.
    parts: Vec<u64>,
    /// OpenSSL letter release (`w` of `1.1.1w`), 0 if none, else `b'a'..=b'z'`.
    letter: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error(
        "'{0}' is not a version (expected numbers separated by dots, such as 3.0.15 or 1.1.1w)"
    )]
    BadVersion(String),
    #[error("empty version range")]
    Empty,
    #[error("'{0}': unknown operator (expected =, >, >=, < or <=)")]
    BadOperator(String),
}

impl Version {
    /// Parses `3.0.15`, `1.1.1w`, `v3.7.9`; anything after the version proper (`-fips`,
    /// ` 25 Aug 2026`) must be separated by a non-alphanumeric character and is ignored.
    pub fn parse_lenient(s: &str) -> Result<Version, VersionError> {
        let bad = || VersionError::BadVersion(s.chars().take(40).collect());
        let t = s.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let end = t
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .unwrap_or(t.len());
        let core = &t[..end];
        let mut parts = Vec::new();
        let mut letter = 0;
        let pieces: Vec<&str> = core.split('.').collect();
        for (i, piece) in pieces.iter().enumerate() {
            let digits = piece.trim_end_matches(|c: char| c.is_ascii_lowercase());
            let suffix = &piece[digits.len()..];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match suffix.as_bytes() {
                [] => {}
                [l] if i == pieces.len() - 1 => letter = *l,
                _ => return Err(bad()),
            }
            parts.push(digits.parse::<u64>().map_err(|_| bad())?);
        }
        if parts.is_empty() || parts.len() > MAX_PARTS {
            return Err(bad());
        }
        Ok(Version { parts, letter })
    }

    fn part(&self, i: usize) -> u64 {
        self.parts.get(i).copied().unwrap_or(0)
    }

    /// True if `self` starts with every number (and letter) written in `prefix`.
    fn starts_with(&self, prefix: &Version) -> bool {
        let n = prefix.parts.len();
        (0..n).all(|i| self.part(i) == prefix.part(i))
            && (prefix.letter == 0 || (self.parts.len() == n && self.letter == prefix.letter))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (0..MAX_PARTS)
            .map(|i| self.part(i).cmp(&other.part(i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
            .then(self.letter.cmp(&other.letter))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nums: Vec<String> = self.parts.iter().map(u64::to_string).collect();
        f.write_str(&nums.join("."))?;
        if self.letter != 0 {
            write!(f, "{}", self.letter as char)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `=` or no operator: prefix match.
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

/// `">=3.0.9, <4"`: every comparator must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionReq {
    comparators: Vec<(Op, Version)>,
    text: String,
}

impl VersionReq {
    pub fn parse(s: &str) -> Result<VersionReq, VersionError> {
        let mut comparators = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(VersionError::Empty);
            }
            let (op, rest) = [
                (">=", Op::Ge),
                ("<=", Op::Le),
                (">", Op::Gt),
                ("<", Op::Lt),
                ("=", Op::Eq),
            ]
            .iter()
            .find_map(|(p, op)| item.strip_prefix(p).map(|r| (*op, r)))
            .unwrap_or((Op::Eq, item));
            let rest = rest.trim();
            if rest.starts_with(['=', '<', '>', '~', '^', '!']) || item.starts_with(['~', '^', '!'])
            {
                return Err(VersionError::BadOperator(item.chars().take(40).collect()));
            }
            // A comparator is a whole version: no trailing text.
            if rest.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '.')) {
                return Err(VersionError::BadVersion(rest.chars().take(40).collect()));
            }
            comparators.push((op, Version::parse_lenient(rest)?));
        }
        Ok(VersionReq {
            comparators,
            text: s.trim().to_owned(),
        })
    }

    pub fn matches(&self, v: &Version) -> bool {
        self.comparators.iter().all(|(op, c)| match op {
            Op::Eq => v.starts_with(c),
            Op::Gt => v > c && !v.starts_with(c),
            Op::Ge => v >= c,
            Op::Lt => v < c,
            Op::Le => v <= c || v.starts_with(c),
        })
    }
}

impl fmt::Display for VersionReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse_lenient(s).unwrap()
    }

    fn req(s: &str) -> VersionReq {
        VersionReq::parse(s).unwrap()
    }

    #[test]
    fn parses_tls_library_versions() {
        assert_eq!(v("3.0.15").to_string(), "3.0.15");
        assert_eq!(v("1.1.1w").to_string(), "1.1.1w");
        assert_eq!(v("3.87").to_string(), "3.87");
        assert_eq!(v("v3.7.9").to_string(), "3.7.9");
        assert_eq!(v("3.0.22 25 Aug 2026").to_string(), "3.0.22");
        assert_eq!(v("3.2.0-fips").to_string(), "3.2.0");
        for bad in [
            "",
            "x",
            "3..1",
            "1.2.3.4.5",
            "1.1.1ww",
            "1a.2",
            "-1",
            "3.0.x",
        ] {
            assert!(Version::parse_lenient(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn orders_letter_releases() {
        assert!(v("1.1.1") < v("1.1.1a"));
        assert!(v("1.1.1a") < v("1.1.1w"));
        assert!(v("1.1.1w") < v("1.1.2"));
        assert!(v("3.0.9") < v("3.0.15"));
        assert_eq!(v("3.0").cmp(&v("3.0.0")), Ordering::Equal);
        assert!(v("3.87") < v("3.87.1"));
    }

    #[test]
    fn ranges() {
        let r = req(">=3.0.9, <4");
        assert!(r.matches(&v("3.0.9")));
        assert!(r.matches(&v("3.0.15")));
        assert!(r.matches(&v("3.5.0")));
        assert!(!r.matches(&v("3.0.8")));
        assert!(!r.matches(&v("4.0.0")));
        assert!(!r.matches(&v("1.1.1w")));
        assert!(req("3.0").matches(&v("3.0.22")));
        assert!(!req("3.0").matches(&v("3.1.0")));
        assert!(req("=1.1.1w").matches(&v("1.1.1w")));
        assert!(!req("=1.1.1w").matches(&v("1.1.1")));
        assert!(req(">=1.1.1t, <1.1.2").matches(&v("1.1.1w")));
        assert!(!req(">=1.1.1t").matches(&v("1.1.1s")));
        assert!(
            req("<=3.0").matches(&v("3.0.22")),
            "<=3.0 covers the 3.0 series"
        );
        assert!(
            !req(">3.0").matches(&v("3.0.22")),
            ">3.0 starts after the 3.0 series"
        );
        assert!(req(">3.0").matches(&v("3.1")));
        assert_eq!(req(" >=3.0.9, <4 ").to_string(), ">=3.0.9, <4");
    }

    #[test]
    fn bad_ranges() {
        assert_eq!(VersionReq::parse(""), Err(VersionError::Empty));
        assert_eq!(VersionReq::parse(">=3,"), Err(VersionError::Empty));
        assert!(matches!(
            VersionReq::parse("~3.0"),
            Err(VersionError::BadOperator(_))
        ));
        assert!(matches!(
            VersionReq::parse(">>3"),
            Err(VersionError::BadOperator(_))
        ));
        assert!(matches!(
            VersionReq::parse(">=3.0 beta"),
            Err(VersionError::BadVersion(_))
        ));
    }
}
