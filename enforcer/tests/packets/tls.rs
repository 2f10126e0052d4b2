//! TLS ClientHellos for `client_hello.rs`, laid out byte by byte as RFC 8446 / RFC 6066 say:
//! record header, handshake header, version, random, session id, cipher suites, compression
//! methods, extensions (`server_name` where asked).

/// An extension: (type, data).
pub type Extension = (u16, Vec<u8>);

/// The `server_name` extension (type 0) holding one `host_name` entry.
pub fn server_name_ext(name: &[u8]) -> Extension {
    let mut entry = vec![0u8]; // host_name
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name);
    let mut data = (entry.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&entry);
    (0, data)
}

/// `count` filler extensions (unassigned types from 0x1000, 4 data bytes each).
pub fn filler_exts(count: usize) -> Vec<Extension> {
    (0..count)
        .map(|i| (0x1000 + i as u16, vec![i as u8; 4]))
        .collect()
}

/// A ClientHello record with these extensions (none at all when `exts` is `None`).
pub fn client_hello(exts: Option<&[Extension]>) -> Vec<u8> {
    let mut body = vec![0x03, 0x03]; // legacy_version TLS 1.2
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(32);
    body.extend_from_slice(&[0x17; 32]); // session id
    body.extend_from_slice(&6u16.to_be_bytes());
    body.extend_from_slice(&[0x13, 0x01, 0x13, 0x02, 0x13, 0x03]); // cipher suites
    body.extend_from_slice(&[1, 0]); // compression: null
    if let Some(exts) = exts {
        let mut list = Vec::new();
        for (kind, data) in exts {
            list.extend_from_slice(&kind.to_be_bytes());
            list.extend_from_slice(&(data.len() as u16).to_be_bytes());
            list.extend_from_slice(data);
        }
        body.extend_from_slice(&(list.len() as u16).to_be_bytes());
        body.extend_from_slice(&list);
    }
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// Offset of the first extension's type in a `client_hello` record.
pub const FIRST_EXTENSION: usize = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 6 + 2 + 2;

/// `supported_versions` as a ServerHello carries it: the selected version.
pub fn selected_version_ext(version: u16) -> Extension {
    (0x002b, version.to_be_bytes().to_vec())
}

/// A ServerHello's `key_share`: the group, then a key of `key_len` bytes (X25519MLKEM768's is
/// 1,120); a HelloRetryRequest's is the group alone (`key_len` `None`).
pub fn key_share_ext(group: u16, key_len: Option<usize>) -> Extension {
    let mut data = group.to_be_bytes().to_vec();
    if let Some(len) = key_len {
        data.extend_from_slice(&(len as u16).to_be_bytes());
        data.extend(std::iter::repeat_n(0x5a, len));
    }
    (0x0033, data)
}

/// A ServerHello record: `legacy` version, `random`, a 32-byte session id, `suite`, null
/// compression, and these extensions (no extension block at all when `exts` is `None`).
pub fn server_hello(
    legacy: u16,
    random: [u8; 32],
    suite: u16,
    exts: Option<&[Extension]>,
) -> Vec<u8> {
    let mut body = legacy.to_be_bytes().to_vec();
    body.extend_from_slice(&random);
    body.push(32);
    body.extend_from_slice(&[0x17; 32]);
    body.extend_from_slice(&suite.to_be_bytes());
    body.push(0);
    if let Some(exts) = exts {
        let mut list = Vec::new();
        for (kind, data) in exts {
            list.extend_from_slice(&kind.to_be_bytes());
            list.extend_from_slice(&(data.len() as u16).to_be_bytes());
            list.extend_from_slice(data);
        }
        body.extend_from_slice(&(list.len() as u16).to_be_bytes());
        body.extend_from_slice(&list);
    }
    let mut hs = vec![0x02];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x03];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}
