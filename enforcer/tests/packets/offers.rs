//! ClientHellos for the ClientHello reader's tests (`client_offers.rs`): a browser-like
//! post-quantum hello (GREASE, a server name, ALPN, X25519MLKEM768's 1,216-byte key share) and
//! the pieces to build others, laid out as RFC 8446 says.

use super::tls::{Extension, server_name_ext};

pub const GREASE_A: u16 = 0x4a4a;
pub const SUITES: [u16; 16] = [
    GREASE_A, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013,
    0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
];
pub const GROUPS: [u16; 5] = [0x2a2a, 0x11ec, 0x001d, 0x0017, 0x0018];
pub const SCHEMES: [u16; 8] = [
    0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
];
pub const VERSIONS: [u16; 3] = [0x3a3a, 0x0304, 0x0303];

pub fn list16(values: &[u16], len_bytes: usize) -> Vec<u8> {
    let body: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    let mut out = match len_bytes {
        1 => vec![body.len() as u8],
        _ => (body.len() as u16).to_be_bytes().to_vec(),
    };
    out.extend(body);
    out
}

/// `key_share`: (group, key length) entries.
pub fn key_share(entries: &[(u16, usize)]) -> Extension {
    let mut body = Vec::new();
    for (group, len) in entries {
        body.extend_from_slice(&group.to_be_bytes());
        body.extend_from_slice(&(*len as u16).to_be_bytes());
        body.extend(std::iter::repeat_n(0x5a, *len));
    }
    let mut data = (body.len() as u16).to_be_bytes().to_vec();
    data.extend(body);
    (0x0033, data)
}

pub fn alpn(values: &[&[u8]]) -> Extension {
    let mut body = Vec::new();
    for v in values {
        body.push(v.len() as u8);
        body.extend_from_slice(v);
    }
    let mut data = (body.len() as u16).to_be_bytes().to_vec();
    data.extend(body);
    (0x0010, data)
}

/// Extension types of `pq_exts`, in order.
pub const EXT_TYPES: [u16; 16] = [
    0x0a0a, 0x0000, 0x0017, 0xff01, 0x000a, 0x000b, 0x0023, 0x0010, 0x0005, 0x000d, 0x0012, 0x0033,
    0x002d, 0x002b, 0x001b, 0x1a1a,
];

/// A browser-like post-quantum ClientHello's extensions: GREASE, a server name, ALPN h2 and
/// http/1.1, key shares GREASE + X25519MLKEM768 (1,216 bytes) + X25519.
pub fn pq_exts() -> Vec<Extension> {
    vec![
        (0x0a0a, vec![]),
        server_name_ext(b"example.com"),
        (0x0017, vec![]),
        (0xff01, vec![0]),
        (0x000a, list16(&GROUPS, 2)),
        (0x000b, vec![1, 0]),
        (0x0023, vec![]),
        alpn(&[b"h2", b"http/1.1"]),
        (0x0005, vec![1, 0, 0, 0, 0]),
        (0x000d, list16(&SCHEMES, 2)),
        (0x0012, vec![]),
        key_share(&[(0x2a2a, 1), (0x11ec, 1216), (0x001d, 32)]),
        (0x002d, vec![1, 1]),
        (0x002b, list16(&VERSIONS, 1)),
        (0x001b, vec![2, 0, 2]),
        (0x1a1a, vec![0]),
    ]
}

/// A ClientHello record with these suites and extensions.
pub fn hello(suites: &[u16], exts: &[Extension]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(32);
    body.extend_from_slice(&[0x17; 32]);
    body.extend(list16(suites, 2));
    body.extend_from_slice(&[1, 0]);
    let mut list = Vec::new();
    for (kind, data) in exts {
        list.extend_from_slice(&kind.to_be_bytes());
        list.extend_from_slice(&(data.len() as u16).to_be_bytes());
        list.extend_from_slice(data);
    }
    body.extend_from_slice(&(list.len() as u16).to_be_bytes());
    body.extend(list);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend(hs);
    record
}
