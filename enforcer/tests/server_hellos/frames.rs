//! ServerHello records for `server_hellos.rs`, laid out as RFC 8446 says: record header,
//! handshake header, legacy version, random, session id echo, cipher suite, compression method,
//! extensions (`supported_versions`, `key_share` in its ServerHello and HelloRetryRequest forms).

use super::{AES_128_GCM_SHA256, ECDHE_RSA_AES_128_GCM_SHA256, TLS13};

pub fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut e = kind.to_be_bytes().to_vec();
    e.extend_from_slice(&(data.len() as u16).to_be_bytes());
    e.extend_from_slice(data);
    e
}

pub fn supported_version(v: u16) -> Vec<u8> {
    ext(43, &v.to_be_bytes())
}

/// A ServerHello's key_share: one entry, `group` and a key exchange of `key_len` bytes.
pub fn key_share(group: u16, key_len: usize) -> Vec<u8> {
    let mut data = group.to_be_bytes().to_vec();
    data.extend_from_slice(&(key_len as u16).to_be_bytes());
    data.extend(std::iter::repeat_n(0x5e, key_len));
    ext(51, &data)
}

/// A HelloRetryRequest's key_share: the selected group only.
pub fn retry_key_share(group: u16) -> Vec<u8> {
    ext(51, &group.to_be_bytes())
}

/// A ServerHello record: legacy version 1.2, `random`, a 32-byte session id echo, `suite`, the
/// null compression, then the extensions as given (no list at all when `None`).
pub fn server_hello(random: &[u8; 32], suite: u16, exts: Option<&[Vec<u8>]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(random);
    body.push(32);
    body.extend_from_slice(&[0x17; 32]);
    body.extend_from_slice(&suite.to_be_bytes());
    body.push(0);
    if let Some(exts) = exts {
        let list: Vec<u8> = exts.concat();
        body.extend_from_slice(&(list.len() as u16).to_be_bytes());
        body.extend_from_slice(&list);
    }
    let mut hs = vec![2];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 3];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

/// Where the extension list's length lies in a `server_hello` record.
pub const EXT_LIST_AT: usize = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 1;

pub fn tls13(group: u16, key_len: usize) -> Vec<u8> {
    let exts = [supported_version(TLS13), key_share(group, key_len)];
    server_hello(&[0x33; 32], AES_128_GCM_SHA256, Some(&exts))
}

/// As OpenSSL 3.0 answers a TLS 1.2 client: renegotiation_info, ec_point_formats,
/// extended_master_secret, session_ticket.
pub fn tls12() -> Vec<u8> {
    let exts = [
        ext(0xff01, &[0]),
        ext(11, &[3, 0, 1, 2]),
        ext(23, &[]),
        ext(35, &[]),
    ];
    server_hello(&[0x12; 32], ECDHE_RSA_AES_128_GCM_SHA256, Some(&exts))
}
