//! IANA's names of the TLS values the posture reports and the policy lists (TLS Parameters
//! registry: "TLS Supported Groups", "TLS Cipher Suites"; versions from RFC 8446). Names are
//! written as IANA writes them and matched without regard to case; a value not listed here is
//! written `0xNNNN`.

/// (code, name) of the key-exchange groups.
pub const GROUPS: &[(u16, &str)] = &[
    (0x0017, "secp256r1"),
    (0x0018, "secp384r1"),
    (0x0019, "secp521r1"),
    (0x001d, "x25519"),
    (0x001e, "x448"),
    (0x001f, "brainpoolP256r1tls13"),
    (0x0020, "brainpoolP384r1tls13"),
    (0x0021, "brainpoolP512r1tls13"),
    (0x0100, "ffdhe2048"),
    (0x0101, "ffdhe3072"),
    (0x0102, "ffdhe4096"),
    (0x0103, "ffdhe6144"),
    (0x0104, "ffdhe8192"),
    (0x0200, "MLKEM512"),
    (0x0201, "MLKEM768"),
    (0x0202, "MLKEM1024"),
    (0x11eb, "SecP256r1MLKEM768"),
    (0x11ec, "X25519MLKEM768"),
    (0x11ed, "SecP384r1MLKEM1024"),
    (0x6399, "X25519Kyber768Draft00"),
];

/// Whether a group's key exchange includes a post-quantum KEM (ML-KEM, or the Kyber draft).
pub const fn is_post_quantum(group: u16) -> bool {
    matches!(group, 0x0200..=0x0202 | 0x11eb..=0x11ed | 0x6399)
}

/// (code, name) of the cipher suites: TLS 1.3's, and the TLS 1.2 ones OpenSSL, GnuTLS, NSS,
/// Go and rustls offer by default or on request.
pub const CIPHER_SUITES: &[(u16, &str)] = &[
    (0x1301, "TLS_AES_128_GCM_SHA256"),
    (0x1302, "TLS_AES_256_GCM_SHA384"),
    (0x1303, "TLS_CHACHA20_POLY1305_SHA256"),
    (0x1304, "TLS_AES_128_CCM_SHA256"),
    (0x1305, "TLS_AES_128_CCM_8_SHA256"),
    (0xc02b, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    (0xc02c, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
    (0xc02f, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    (0xc030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    (0xcca8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    (0xcca9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    (0xccaa, "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    (0x009e, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256"),
    (0x009f, "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384"),
    (0x009c, "TLS_RSA_WITH_AES_128_GCM_SHA256"),
    (0x009d, "TLS_RSA_WITH_AES_256_GCM_SHA384"),
    (0xc009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
    (0xc00a, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"),
    (0xc013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    (0xc014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"),
    (0xc023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"),
    (0xc024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384"),
    (0xc027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"),
    (0xc028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384"),
    (0xc0ac, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM"),
    (0xc0ad, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM"),
    (0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA"),
    (0x0039, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA"),
    (0x0067, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256"),
    (0x006b, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256"),
    (0x002f, "TLS_RSA_WITH_AES_128_CBC_SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA"),
    (0x003c, "TLS_RSA_WITH_AES_128_CBC_SHA256"),
    (0x003d, "TLS_RSA_WITH_AES_256_CBC_SHA256"),
    (0x000a, "TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
];

/// (code, name) of the protocol versions, as the policy and the events write them.
pub const VERSIONS: &[(u16, &str)] = &[
    (0x0300, "SSL3.0"),
    (0x0301, "1.0"),
    (0x0302, "1.1"),
    (0x0303, "1.2"),
    (0x0304, "1.3"),
];

/// The name of `code` in `table`.
pub fn name_of(table: &[(u16, &'static str)], code: u16) -> Option<&'static str> {
    table.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// `code` as the events, metrics and CBOM write it: its name in `table`, else `0xNNNN`.
pub fn named(table: &'static [(u16, &'static str)], code: u16) -> Named {
    Named { table, code }
}

/// See [`named`].
pub struct Named {
    table: &'static [(u16, &'static str)],
    code: u16,
}

impl core::fmt::Display for Named {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match name_of(self.table, self.code) {
            Some(name) => f.write_str(name),
            None => write!(f, "{:#06x}", self.code),
        }
    }
}

/// The code of `name` in `table` (any case), or of a `0xNNNN` literal.
pub fn code_of(table: &[(u16, &str)], name: &str) -> Option<u16> {
    if let Some(hex) = name.strip_prefix("0x").or_else(|| name.strip_prefix("0X")) {
        return (hex.len() == 4)
            .then(|| u16::from_str_radix(hex, 16).ok())
            .flatten();
    }
    table
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(c, _)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip_without_regard_to_case() {
        for table in [GROUPS, CIPHER_SUITES, VERSIONS] {
            for (code, name) in table {
                assert_eq!(code_of(table, name), Some(*code), "{name}");
                assert_eq!(name_of(table, *code), Some(*name));
                let mut seen = 0;
                for (other, _) in table.iter() {
                    seen += (other == code) as u32;
                }
                assert_eq!(seen, 1, "{code:#06x} listed once");
            }
        }
        assert_eq!(code_of(GROUPS, "x25519mlkem768"), Some(0x11ec));
        assert_eq!(code_of(GROUPS, "0x11EC"), Some(0x11ec));
        assert_eq!(code_of(GROUPS, "0x11e"), None);
        assert_eq!(code_of(GROUPS, "X25519MLKEM"), None);
        assert!(is_post_quantum(0x11ec) && !is_post_quantum(0x001d));
    }
}
