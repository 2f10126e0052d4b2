//! The ServerHello reader: the negotiated version, cipher suite and key-exchange group of a
//! connection (`enforcer_common::posture::Posture`), from a ServerHello that starts at a
//! segment's payload. Run only in the posture programs (`posture.rs`), for segments whose first
//! six bytes are a ServerHello's record and handshake headers.
//!
//! The bytes come from the wire: every length is checked against the handshake message, every
//! loop has a constant bound, and a field that cannot be read (past the segment, or behind an
//! inconsistent length) is left unread (`Posture::read`), never guessed.
//!
//! A TLS 1.2 connection's group is in the ServerKeyExchange, after the Certificate: it is read
//! when it is in the same packet as the ServerHello (`key_exchange_group`). A server's flight
//! leaves as one TSO/GSO packet and arrives at tc ingress as one after GRO (or intact from a
//! veth peer), so it usually is; an XDP frame is one MTU and holds it only with a small
//! certificate. Elsewhere the group stays unread (a `groups` rule refuses the connection).

use enforcer_common::{
    hello::HELLO_RETRY_RANDOM,
    posture::{Posture, field},
};

use crate::{
    client_hello::{MAX_OFFSET, load as at},
    packet::Packet,
};

const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
const EXT_KEY_SHARE: u16 = 0x0033;
/// Extensions walked. A ServerHello has few (TLS 1.3: two or three; TLS 1.2: about five).
const MAX_EXTENSIONS: usize = 16;
/// The version every TLS 1.3 ServerHello states in its own field (the real one is in
/// `supported_versions`).
const TLS12: u16 = 0x0303;

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Reads the ServerHello at `payload`. `None`: not a ServerHello after all (its headers are
/// inconsistent). A HelloRetryRequest comes back with `retried` set.
///
/// A TLS 1.3 cipher suite (`0x1301..=0x1305`) says TLS 1.3 when `supported_versions` was not
/// reached (a ServerHello longer than its segment: a post-quantum key share on a path with a
/// small MTU): RFC 8446 suites are defined for TLS 1.3 only, and a client refuses one in an
/// older version's ServerHello.
#[inline(always)]
pub fn read<P: Packet>(packet: &P, payload: usize) -> Option<Posture> {
    let mut posture = fields(packet, payload)?;
    if posture.has(field::VERSION)
        && posture.version == TLS12
        && !posture.has(field::GROUP)
        && posture.retried == 0
        && let Some(group) = key_exchange_group(packet, payload)
    {
        posture.group = group;
        posture.read |= field::GROUP;
    }
    if !posture.has(field::VERSION)
        && posture.has(field::SUITE)
        && TLS13_SUITES.contains(&posture.suite)
    {
        posture.version = TLS13;
        posture.read |= field::VERSION;
    }
    Some(posture)
}

const TLS13: u16 = 0x0304;
const TLS13_SUITES: core::ops::RangeInclusive<u16> = 0x1301..=0x1305;

#[inline(always)]
fn fields<P: Packet>(packet: &P, payload: usize) -> Option<Posture> {
    let mut posture = Posture::default();
    let header: [u8; 9] = at(packet, payload)?;
    let record_len = be16([header[3], header[4]]) as usize;
    let hs_len = ((header[6] as usize) << 16) | ((header[7] as usize) << 8) | header[8] as usize;
    if header[0] != 0x16
        || header[1] != 3
        || header[5] != 2
        || hs_len < 38
        || hs_len + 4 > record_len
    {
        return None;
    }
    let body = payload + 9;
    let end = body + hs_len;
    let legacy = be16(at(packet, body)?);
    let random: [u8; 32] = at(packet, body + 2)?;
    if random == HELLO_RETRY_RANDOM {
        posture.retried = 1;
    }
    let session_len = at::<u8, P>(packet, body + 34)? as usize;
    if session_len > 32 {
        return None;
    }
    let mut pos = body + 35 + session_len;
    // Cipher suite (2), compression method (1).
    let Some(suite) = at::<[u8; 3], P>(packet, pos) else {
        return Some(posture);
    };
    posture.suite = be16([suite[0], suite[1]]);
    posture.read |= field::SUITE;
    pos += 3;
    if legacy < TLS12 {
        // Below TLS 1.2 the field is the version: TLS 1.3 states 1.2 there.
        posture.version = legacy;
        posture.read |= field::VERSION;
    }
    if pos == end {
        // No extensions: TLS 1.2 or older, as the field says.
        posture.version = legacy;
        posture.read |= field::VERSION;
        return Some(posture);
    }
    let Some(total) = at::<[u8; 2], P>(packet, pos) else {
        return Some(posture);
    };
    let ext_end = pos + 2 + be16(total) as usize;
    if ext_end != end {
        return Some(posture);
    }
    pos += 2;
    let mut supported = None;
    for _ in 0..MAX_EXTENSIONS {
        if pos == ext_end {
            // Every extension read: without `supported_versions` the field is the version.
            posture.version = supported.unwrap_or(legacy);
            posture.read |= field::VERSION;
            return Some(posture);
        }
        if pos + 4 > ext_end {
            break;
        }
        let Some(ext) = at::<[u8; 4], P>(packet, pos) else {
            break;
        };
        let kind = be16([ext[0], ext[1]]);
        let len = be16([ext[2], ext[3]]) as usize;
        if pos + 4 + len > ext_end {
            break;
        }
        if len >= 2 && (kind == EXT_SUPPORTED_VERSIONS || kind == EXT_KEY_SHARE) {
            let Some(value) = at::<[u8; 2], P>(packet, pos + 4) else {
                break;
            };
            let value = be16(value);
            if kind == EXT_SUPPORTED_VERSIONS {
                supported = Some(value);
            } else {
                // ServerHello: the entry's group, then its key; HelloRetryRequest: the group
                // asked for.
                posture.group = value;
                posture.read |= field::GROUP;
            }
        }
        pos += 4 + len;
    }
    // Stopped early: `supported_versions` alone can still say TLS 1.3.
    if let Some(version) = supported {
        posture.version = version;
        posture.read |= field::VERSION;
    }
    Some(posture)
}

/// Handshake message types after a TLS 1.2 ServerHello.
const SERVER_KEY_EXCHANGE: u8 = 12;
const SERVER_HELLO_DONE: u8 = 14;
/// `ECCurveType` of an ECDHE ServerKeyExchange that names its group (RFC 8422).
const NAMED_CURVE: u8 = 3;
/// Records and messages walked after the ServerHello: its own record's rest, the Certificate
/// (possibly over several records), CertificateStatus, the ServerKeyExchange.
const MAX_STEPS: usize = 12;

/// The named group of the ServerKeyExchange that follows the ServerHello at `payload` in the
/// same packet, walking the handshake messages across the records that carry them. `None`: not
/// in this packet, a header split between records, a record that is not a handshake, an
/// exchange without a named group (finite-field DHE, RSA key transport), or any inconsistency.
#[inline(always)]
fn key_exchange_group<P: Packet>(packet: &P, payload: usize) -> Option<u16> {
    let record: [u8; 9] = at(packet, payload)?;
    let hs_len = ((record[6] as usize) << 16) | ((record[7] as usize) << 8) | record[8] as usize;
    // The end of the record being walked, and the next message's header.
    let mut record_end = payload + 5 + be16([record[3], record[4]]) as usize;
    let mut msg = payload + 9 + hs_len;
    for _ in 0..MAX_STEPS {
        if msg > MAX_OFFSET || record_end > MAX_OFFSET {
            return None;
        }
        if msg >= record_end {
            // The message went on past its record (a Certificate over several records), or
            // the record ended: the next record's header comes first.
            let next: [u8; 5] = at(packet, record_end)?;
            if next[0] != 0x16 || next[1] != 3 {
                return None;
            }
            msg += 5;
            record_end += 5 + be16([next[3], next[4]]) as usize;
            continue;
        }
        if msg + 4 > record_end {
            return None; // a message header split between two records: not followed
        }
        let header: [u8; 4] = at(packet, msg)?;
        let len = ((header[1] as usize) << 16) | ((header[2] as usize) << 8) | header[3] as usize;
        match header[0] {
            SERVER_KEY_EXCHANGE => {
                // curve_type (1), named group (2), inside the message and its record.
                if len < 3 || msg + 7 > record_end {
                    return None;
                }
                let params: [u8; 3] = at(packet, msg + 4)?;
                return (params[0] == NAMED_CURVE).then(|| be16([params[1], params[2]]));
            }
            SERVER_HELLO_DONE => return None,
            _ => msg += 4 + len,
        }
    }
    None
}
