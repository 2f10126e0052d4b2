//! TLS library families: the ids of the catalog (`openssl`, `gnutls`, `nss`, ...).
//!
//! A family is data, not code: the set of families is whatever the catalog in force defines (the
//! embedded `catalog/default.yaml`, extended by a policy's `catalog:` section). A [`Family`] is a
//! cheap-to-clone id that was checked against [`Family::is_valid_id`].

use std::fmt;
use std::sync::Arc;

/// A TLS implementation, as named in the catalog, policies and reports.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Family(Arc<str>);

/// Longest family id accepted.
pub const MAX_ID_LEN: usize = 32;

impl Family {
    /// A family id: 1 to 32 characters, lowercase ASCII letters, digits, `-` and `_`, starting
    /// with a letter. Returns `None` for anything else.
    pub fn new(id: &str) -> Option<Family> {
        Self::is_valid_id(id).then(|| Family(Arc::from(id)))
    }

    pub fn is_valid_id(id: &str) -> bool {
        id.len() <= MAX_ID_LEN
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Family({})", self.0)
    }
}

impl serde::Serialize for Family {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl PartialEq<str> for Family {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Family {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["openssl", "aws-lc", "nss", "my_fork2"] {
            assert_eq!(Family::new(ok).unwrap().name(), ok);
        }
        for bad in ["", "OpenSSL", "2ssl", "open ssl", "ssl\n", &"a".repeat(33)] {
            assert!(Family::new(bad).is_none(), "{bad:?}");
        }
        assert_eq!(Family::new("nss").unwrap(), "nss");
    }
}
