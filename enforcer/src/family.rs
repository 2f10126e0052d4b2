//! TLS library families enforcer knows how to recognise and probe.

use std::fmt;

/// A TLS implementation, as named in policies and reports.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// OpenSSL 1.1 / 3.x `libssl`.
    Openssl,
    /// GnuTLS `libgnutls`.
    Gnutls,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Openssl, Family::Gnutls];

    pub fn name(self) -> &'static str {
        match self {
            Family::Openssl => "openssl",
            Family::Gnutls => "gnutls",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
