//! JA4, the TLS client fingerprint of FoxIO's JA4 specification (BSD 3-Clause; the JA4+
//! methods under FoxIO's other licence, JA4S, JA4X, JA4H and the rest, are not implemented):
//! made from the ClientHello fields the kernel reads (`enforcer_common::offer`), here because
//! the kernel cannot hash.
//!
//! `t13d1516h2_8daaf6152771_e5627efa2ab1`: protocol (`t`: TLS over TCP), version (the highest
//! `supported_versions` value, else the hello's own field), `d` / `i` (a server name is sent or
//! not), the number of cipher suites and of extensions (two digits, at most 99), the first and
//! last character of the first ALPN value (`00`: none); then the first 12 hex digits of the
//! SHA-256 of the cipher suites (4-digit lowercase hex, sorted, comma-separated); then those of
//! the extensions (sorted, without `server_name` and ALPN) joined by `_` to the signature
//! schemes in the order sent. GREASE values (RFC 8701) are ignored everywhere.

use sha2::{Digest, Sha256};

/// What JA4 is made of, as the ClientHello sent it (GREASE values included).
#[derive(Clone, Copy, Debug, Default)]
pub struct Hello<'a> {
    pub legacy_version: u16,
    /// `supported_versions` (empty: not sent).
    pub versions: &'a [u16],
    pub suites: &'a [u16],
    /// Extension types, in the order sent.
    pub extensions: &'a [u16],
    /// `signature_algorithms`, in the order sent.
    pub signature_schemes: &'a [u16],
    /// A `server_name` extension was sent.
    pub server_name: bool,
    /// The first and last byte of the first ALPN value, if one was sent.
    pub alpn: Option<(u8, u8)>,
}

/// GREASE (RFC 8701): `0x?a?a` with both bytes equal.
pub const fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_ALPN: u16 = 0x0010;

/// The JA4 fingerprint of `hello`.
pub fn ja4(hello: &Hello) -> String {
    let (a, suites, extensions) = parts(hello);
    format!("{a}_{}_{}", hash12(&suites), hash12(&extensions))
}

/// JA4_r, the raw form: the same first part, then the lists the hashes are made of.
pub fn ja4_r(hello: &Hello) -> String {
    let (a, suites, extensions) = parts(hello);
    format!("{a}_{suites}_{extensions}")
}

fn parts(hello: &Hello) -> (String, String, String) {
    let kept =
        |list: &[u16]| -> Vec<u16> { list.iter().copied().filter(|v| !is_grease(*v)).collect() };
    let versions = kept(hello.versions);
    let version = versions
        .iter()
        .copied()
        .max()
        .unwrap_or(hello.legacy_version);
    let mut suites = kept(hello.suites);
    let mut extensions = kept(hello.extensions);
    let a = format!(
        "t{}{}{:02}{:02}{}",
        version_code(version),
        if hello.server_name { 'd' } else { 'i' },
        suites.len().min(99),
        extensions.len().min(99),
        alpn_code(hello.alpn),
    );
    suites.sort_unstable();
    extensions.retain(|e| *e != EXT_SERVER_NAME && *e != EXT_ALPN);
    extensions.sort_unstable();
    let mut c = hex_list(&extensions);
    let schemes = kept(hello.signature_schemes);
    if !schemes.is_empty() {
        c.push('_');
        c.push_str(&hex_list(&schemes));
    }
    (a, hex_list(&suites), c)
}

fn version_code(v: u16) -> &'static str {
    match v {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    }
}

/// The first and last character of the first ALPN value; where either is not an ASCII letter
/// or digit, the first and last hex digit of the value instead.
fn alpn_code(alpn: Option<(u8, u8)>) -> String {
    let Some((first, last)) = alpn else {
        return "00".into();
    };
    if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
        return format!("{}{}", first as char, last as char);
    }
    let hex = |n: u8| char::from_digit(n as u32, 16).unwrap_or('0');
    format!("{}{}", hex(first >> 4), hex(last & 0x0f))
}

fn hex_list(values: &[u16]) -> String {
    values
        .iter()
        .map(|v| format!("{v:04x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The first 12 hex digits of the SHA-256 of `s`; `000000000000` for nothing.
fn hash12(s: &str) -> String {
    if s.is_empty() {
        return "0".repeat(12);
    }
    let digest = Sha256::digest(s.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of FoxIO's JA4 specification (technical_details/JA4.md): its JA4_r lists,
    /// GREASE added where a browser puts it, and the extension order permuted (JA4 sorts).
    #[test]
    fn the_specifications_example() {
        let suites = [
            0x1a1a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013,
            0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
        ];
        let extensions = [
            0x2a2a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023,
            0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015, 0x3a3a,
        ];
        let schemes = [
            0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
        ];
        let hello = Hello {
            legacy_version: 0x0303,
            versions: &[0x5a5a, 0x0304, 0x0303],
            suites: &suites,
            extensions: &extensions,
            signature_schemes: &schemes,
            server_name: true,
            alpn: Some((b'h', b'2')),
        };
        assert_eq!(ja4(&hello), "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(
            ja4_r(&hello),
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,\
             cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,\
             0804,0401,0503,0805,0501,0806,0601"
        );
    }

    #[test]
    fn without_server_name_alpn_or_extensions() {
        let hello = Hello {
            legacy_version: 0x0303,
            suites: &[0x002f],
            ..Default::default()
        };
        let s = ja4(&hello);
        assert!(s.starts_with("t12i010000_"), "{s}");
        assert!(s.ends_with("_000000000000"), "{s}");
        let nothing = Hello::default();
        assert_eq!(ja4(&nothing), "t00i000000_000000000000_000000000000");
    }

    #[test]
    fn alpn_outside_letters_and_digits_is_shown_as_hex() {
        assert_eq!(alpn_code(Some((b'h', b'1'))), "h1");
        assert_eq!(alpn_code(Some((0xab, 0xab))), "ab");
        assert_eq!(alpn_code(Some((0xab, 0xcd))), "ad");
        assert_eq!(alpn_code(Some((0x30, 0xab))), "3b");
        assert_eq!(alpn_code(Some((b'h', b'/'))), "6f");
        assert_eq!(alpn_code(None), "00");
    }

    #[test]
    fn counts_stop_at_99_and_versions_map_as_the_spec_says() {
        let many: Vec<u16> = (0x0100..0x0100 + 150).collect();
        let hello = Hello {
            legacy_version: 0x0301,
            suites: &many,
            extensions: &many,
            ..Default::default()
        };
        assert!(ja4(&hello).starts_with("t10i9999"));
        assert_eq!(version_code(0xfefd), "d2");
        assert_eq!(version_code(0x7f1c), "00");
        assert!(is_grease(0xfafa) && !is_grease(0x0a1a) && !is_grease(0x1301));
    }
}
