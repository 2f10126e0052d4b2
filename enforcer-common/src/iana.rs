//! Names of what a TLS connection negotiates (`posture::Posture`), as IANA's TLS registries
//! spell them: cipher suites ("TLS Cipher Suites"), groups ("TLS Supported Groups"), and the
//! protocol versions ("TLS 1.3"). Events name what they can (an unlisted code is shown as hex);
//! the policy takes names only, and an unknown one is an error.

/// Protocol versions, as on the wire.
pub const VERSIONS: [(u16, &str); 5] = [
    (0x0300, "SSL 3.0"),
    (0x0301, "TLS 1.0"),
    (0x0302, "TLS 1.1"),
    (0x0303, "TLS 1.2"),
    (0x0304, "TLS 1.3"),
];

/// The cipher suites of TLS 1.3 and the ones TLS 1.2 stacks of Debian negotiate.
pub const CIPHER_SUITES: [(u16, &str); 29] = [
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
    (0x002f, "TLS_RSA_WITH_AES_128_CBC_SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA"),
    (0x003c, "TLS_RSA_WITH_AES_128_CBC_SHA256"),
    (0x003d, "TLS_RSA_WITH_AES_256_CBC_SHA256"),
    (0x000a, "TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
];

/// Key-exchange groups: elliptic curves, finite-field groups, ML-KEM and the hybrids.
pub const GROUPS: [(u16, &str); 22] = [
    (0x0017, "secp256r1"),
    (0x0018, "secp384r1"),
    (0x0019, "secp521r1"),
    (0x001a, "brainpoolP256r1"),
    (0x001b, "brainpoolP384r1"),
    (0x001c, "brainpoolP512r1"),
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
];

fn name_of(table: &[(u16, &'static str)], code: u16) -> Option<&'static str> {
    table.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// Names compare without case: IANA writes `x25519` and `X25519MLKEM768`, OpenSSL `X25519`.
fn code_of(table: &[(u16, &'static str)], name: &str) -> Option<u16> {
    table
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(c, _)| *c)
}

pub fn version_name(code: u16) -> Option<&'static str> {
    name_of(&VERSIONS, code)
}

pub fn suite_name(code: u16) -> Option<&'static str> {
    name_of(&CIPHER_SUITES, code)
}

pub fn group_name(code: u16) -> Option<&'static str> {
    name_of(&GROUPS, code)
}

pub fn suite_code(name: &str) -> Option<u16> {
    code_of(&CIPHER_SUITES, name)
}

pub fn group_code(name: &str) -> Option<u16> {
    code_of(&GROUPS, name)
}

/// `"1.3"` or `"TLS 1.3"` → 0x0304.
pub fn version_code(name: &str) -> Option<u16> {
    VERSIONS
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name) || n.strip_prefix("TLS ") == Some(name))
        .map(|(c, _)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_go_both_ways() {
        for table in [&VERSIONS[..], &CIPHER_SUITES[..], &GROUPS[..]] {
            for (i, (code, name)) in table.iter().enumerate() {
                assert_eq!(code_of(table, name), Some(*code), "{name}");
                assert!(
                    table[i + 1..].iter().all(|(c, n)| c != code && n != name),
                    "{name} listed twice"
                );
            }
        }
        assert_eq!(group_code("X25519MLKEM768"), Some(0x11ec));
        assert_eq!(group_code("X25519"), Some(0x001d));
        assert_eq!(group_name(0x11ec), Some("X25519MLKEM768"));
        assert_eq!(suite_name(0x1301), Some("TLS_AES_128_GCM_SHA256"));
        assert_eq!(version_code("1.3"), Some(0x0304));
        assert_eq!(version_code("TLS 1.2"), Some(0x0303));
        assert_eq!(version_code("1.4"), None);
        assert_eq!(group_code("X25519Kyber768Draft00"), None);
    }
}
