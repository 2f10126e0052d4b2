//! The ClientHello's fields (`enforcer_common::offer::OfferedEvent`), read from a hello
//! reassembled in an `OFFERS` entry (`offer.rs`): cipher suites, extension types in order,
//! `supported_versions`, `supported_groups`, `signature_algorithms` (in order), `key_share`
//! groups (each key skipped by its length, never read), the first ALPN value, whether a server
//! name is sent.
//!
//! The bytes come from the wire: every length is checked against the hello and against what
//! was collected (`OfferState::limit`), every loop has a constant bound, and a field that
//! cannot be read in full leaves its `field::*` bit unset (never guessed).
//!
//! Verifier: the reading is split into steps that pass their place to the next through the
//! map value (`OfferState::cursor`, `spots`), read back volatile, and write what they find to
//! the event (map memory, which the verifier does not track). Between steps no register holds
//! a value the walk made, so the many ways a step can end (a list cut short, a bad length at
//! any iteration) reach the next step in one verifier state and are walked once, not once each
//! (multiplied over the steps).

use core::ptr::read_volatile;

use enforcer_common::offer::{
    ALPN_KEPT, MAX_EXTENSIONS, MAX_KEY_SHARES, OFFER_BUFFER, OfferState, OfferedEvent, Spot, field,
    spot,
};

const CLIENT_HELLO: u8 = 1;
/// `OfferState::cursor` when there is nothing more to read.
const STOP: u32 = u32::MAX;
/// Where the session id's length is (after the record and handshake headers, version, random).
const SESSION_AT: usize = 43;
/// Extensions walked. Browsers send about 20; a longer list leaves `field::EXTENSIONS` unset.
const MAX_WALK: usize = 40;
const MASK: usize = OFFER_BUFFER - 1;

const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_SUPPORTED_GROUPS: u16 = 0x000a;
const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
const EXT_ALPN: u16 = 0x0010;
const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
const EXT_KEY_SHARE: u16 = 0x0033;

/// Reads the hello `state` holds into `event` (its flow, direction and header are the
/// caller's).
#[inline(always)]
pub fn read(state: &mut OfferState, event: &mut OfferedEvent) {
    header(state, event);
    step(state, |s| suites(s, event));
    step(state, |s| extension_list(s, event));
    step(state, |s| extensions(s, event));
    if lists(
        state,
        spot::VERSIONS,
        1,
        &mut event.versions,
        &mut event.version_count,
    ) {
        event.read |= field::VERSIONS;
    }
    if lists(
        state,
        spot::GROUPS,
        2,
        &mut event.groups,
        &mut event.group_count,
    ) {
        event.read |= field::GROUPS;
    }
    let (schemes, count) = (
        &mut event.signature_schemes,
        &mut event.signature_scheme_count,
    );
    if lists(state, spot::SIGNATURE_SCHEMES, 2, schemes, count) {
        event.read |= field::SIGNATURE_SCHEMES;
    }
    if key_shares(state, event) {
        event.read |= field::KEY_SHARES;
    }
    if alpn(state, event) {
        event.read |= field::ALPN;
    }
}

/// Runs one step from the cursor the last left; `None` from it: stop.
#[inline(always)]
fn step(state: &mut OfferState, f: impl FnOnce(&mut OfferState) -> Option<u32>) {
    if volatile(&state.cursor) == STOP {
        return;
    }
    state.cursor = f(state).unwrap_or(STOP);
}

#[inline(always)]
fn volatile<T: Copy>(v: &T) -> T {
    // SAFETY: a valid reference.
    unsafe { read_volatile(v) }
}

/// The byte at `i`. `i` is below the limit (checked by the callers), which is at most
/// OFFER_BUFFER; the mask, on a value LLVM cannot see through, is the bound the verifier sees.
#[inline(always)]
fn byte(state: &OfferState, i: usize) -> u8 {
    state.bytes[volatile(&i) & MASK]
}

#[inline(always)]
fn u8_at(state: &OfferState, i: usize, limit: usize) -> Option<u8> {
    (i < limit).then(|| byte(state, i))
}

#[inline(always)]
fn u16_at(state: &OfferState, i: usize, limit: usize) -> Option<u16> {
    if i + 2 > limit {
        return None;
    }
    Some(be16_at(state, i))
}

/// The big-endian u16 at `i`, which the caller checked is below the limit.
#[inline(always)]
fn be16_at(state: &OfferState, i: usize) -> u16 {
    ((byte(state, i) as u16) << 8) | byte(state, i + 1) as u16
}

/// The record and handshake headers: where the hello ends, how much of it was collected.
#[inline(always)]
fn header(state: &mut OfferState, event: &mut OfferedEvent) {
    event.read = 0;
    event.suite_count = 0;
    event.extension_count = 0;
    event.version_count = 0;
    event.group_count = 0;
    event.signature_scheme_count = 0;
    event.key_share_count = 0;
    event.sni = 0;
    event.alpn_len = 0;
    event.alpn_last = 0;
    event.alpn = [0; ALPN_KEPT];
    for s in state.spots.iter_mut() {
        *s = Spot::default();
    }
    let b = &state.bytes;
    let record_len = u16::from_be_bytes([b[3], b[4]]) as u32;
    let hs_len = ((b[6] as u32) << 16) | ((b[7] as u32) << 8) | b[8] as u32;
    event.legacy_version = u16::from_be_bytes([b[9], b[10]]);
    let have = state.have.min(OFFER_BUFFER as u32);
    event.hello_len = have;
    let end = 9 + hs_len;
    // A hello longer than its record continues in another record: not followed.
    state.end = end;
    state.limit = have.min(5 + record_len).min(end);
    state.cursor = match b[0] == 0x16 && b[5] == CLIENT_HELLO && have > SESSION_AT as u32 {
        true => SESSION_AT as u32,
        false => STOP,
    };
}

/// The session id, then the cipher suites; returns the offset of the compression methods.
#[inline(always)]
fn suites(state: &mut OfferState, event: &mut OfferedEvent) -> Option<u32> {
    let limit = volatile(&state.limit) as usize;
    let end = volatile(&state.end) as usize;
    let mut pos = volatile(&state.cursor) as usize;
    let session = u8_at(state, pos, limit)? as usize;
    if session > 32 {
        return None;
    }
    pos += 1 + session;
    let len = u16_at(state, pos, limit)? as usize;
    pos += 2;
    let list_end = pos + len;
    if list_end > end || !len.is_multiple_of(2) {
        return None;
    }
    event.suite_count = (len / 2) as u16;
    for i in 0..event.suites.len() {
        if pos >= list_end {
            break;
        }
        let Some(suite) = u16_at(state, pos, limit) else {
            break;
        };
        event.suites[i] = suite;
        pos += 2;
    }
    if pos == list_end {
        event.read |= field::SUITES;
    }
    Some(list_end as u32)
}

/// The compression methods and the extension list's length; returns the first extension's
/// offset. A hello without extensions sent none of the fields read from them: all are read.
#[inline(always)]
fn extension_list(state: &mut OfferState, event: &mut OfferedEvent) -> Option<u32> {
    let limit = volatile(&state.limit) as usize;
    let end = volatile(&state.end) as usize;
    let mut pos = volatile(&state.cursor) as usize;
    pos += 1 + u8_at(state, pos, limit)? as usize;
    if pos == end {
        event.read |= field::EXTENSIONS
            | field::VERSIONS
            | field::GROUPS
            | field::SIGNATURE_SCHEMES
            | field::KEY_SHARES
            | field::ALPN;
        return None;
    }
    let total = u16_at(state, pos, limit)? as usize;
    pos += 2;
    if pos + total != end {
        return None;
    }
    Some(pos as u32)
}

/// The extension headers, in order: their types, and where the ones read later lie.
#[inline(always)]
fn extensions(state: &mut OfferState, event: &mut OfferedEvent) -> Option<u32> {
    let limit = volatile(&state.limit) as usize;
    let end = volatile(&state.end) as usize;
    let mut pos = volatile(&state.cursor) as usize;
    let mut complete = false;
    for i in 0..MAX_WALK {
        if pos == end {
            complete = true;
            break;
        }
        if pos + 4 > end {
            break;
        }
        // One bound for both fields, not two: LLVM merges two such checks into shapes the
        // verifier walks with a pointer where the type should be, and refuses.
        if pos + 4 > limit {
            break;
        }
        let (kind, len) = (be16_at(state, pos), be16_at(state, pos + 2));
        let data = pos + 4;
        let len = len as usize;
        if data + len > end {
            break;
        }
        if i < MAX_EXTENSIONS {
            event.extensions[i] = kind;
        }
        event.extension_count = (i + 1) as u16;
        // `data` is below the limit (the header before it was read), so below 2^16.
        let here = Spot {
            at: data as u16,
            len: len as u16,
        };
        match kind {
            EXT_SERVER_NAME => event.sni = 1,
            EXT_SUPPORTED_VERSIONS => state.spots[spot::VERSIONS] = here,
            EXT_SUPPORTED_GROUPS => state.spots[spot::GROUPS] = here,
            EXT_SIGNATURE_ALGORITHMS => state.spots[spot::SIGNATURE_SCHEMES] = here,
            EXT_KEY_SHARE => state.spots[spot::KEY_SHARES] = here,
            EXT_ALPN => state.spots[spot::ALPN] = here,
            _ => {}
        }
        pos = data + len;
    }
    if !complete {
        return None;
    }
    if event.extension_count as usize <= MAX_EXTENSIONS {
        event.read |= field::EXTENSIONS;
    }
    // Every extension seen: one not sent is read (empty).
    let absent = [
        (spot::VERSIONS, field::VERSIONS),
        (spot::GROUPS, field::GROUPS),
        (spot::SIGNATURE_SCHEMES, field::SIGNATURE_SCHEMES),
        (spot::KEY_SHARES, field::KEY_SHARES),
        (spot::ALPN, field::ALPN),
    ];
    for (s, bit) in absent {
        if state.spots[s].at == 0 {
            event.read |= bit;
        }
    }
    None
}

/// A list of 16-bit values behind a length of `len_bytes` (1 or 2) in the extension at
/// `spots[which]`, into `out`; true if it was read to its end. Not sent: false (`extensions`
/// marked it read).
#[inline(always)]
fn lists<const N: usize>(
    state: &OfferState,
    which: usize,
    len_bytes: usize,
    out: &mut [u16; N],
    count: &mut u8,
) -> bool {
    let limit = volatile(&state.limit) as usize;
    let Spot { at, len } = volatile(&state.spots[which]);
    let (at, len) = (at as usize, len as usize);
    if at == 0 {
        return false;
    }
    let list_len = match len_bytes {
        1 => u8_at(state, at, limit).map(|l| l as usize),
        _ => u16_at(state, at, limit).map(|l| l as usize),
    };
    let Some(list_len) = list_len else {
        return false;
    };
    if list_len + len_bytes != len {
        return false;
    }
    let mut pos = at + len_bytes;
    let list_end = pos + list_len;
    for (i, slot) in out.iter_mut().enumerate() {
        if pos + 2 > list_end {
            break;
        }
        let Some(value) = u16_at(state, pos, limit) else {
            break;
        };
        *slot = value;
        *count = (i + 1) as u8;
        pos += 2;
    }
    pos == list_end
}

/// The groups of the `key_share` entries, each key skipped by its length.
#[inline(always)]
fn key_shares(state: &OfferState, event: &mut OfferedEvent) -> bool {
    let limit = volatile(&state.limit) as usize;
    let Spot { at, len } = volatile(&state.spots[spot::KEY_SHARES]);
    let (at, len) = (at as usize, len as usize);
    if at == 0 {
        return false;
    }
    let Some(shares_len) = u16_at(state, at, limit) else {
        return false;
    };
    if shares_len as usize + 2 != len {
        return false;
    }
    let mut pos = at + 2;
    let list_end = pos + shares_len as usize;
    for i in 0..MAX_KEY_SHARES {
        if pos + 4 > list_end {
            break;
        }
        if pos + 4 > limit {
            break;
        }
        let (group, key_len) = (be16_at(state, pos), be16_at(state, pos + 2));
        event.key_shares[i] = group;
        event.key_share_count = (i + 1) as u8;
        pos += 4 + key_len as usize;
    }
    pos == list_end
}

/// The first ALPN value: its length, first bytes and last byte.
#[inline(always)]
fn alpn(state: &OfferState, event: &mut OfferedEvent) -> bool {
    let limit = volatile(&state.limit) as usize;
    let Spot { at, len } = volatile(&state.spots[spot::ALPN]);
    let (at, len) = (at as usize, len as usize);
    if at == 0 {
        return false;
    }
    let Some(list_len) = u16_at(state, at, limit) else {
        return false;
    };
    let list_len = list_len as usize;
    if list_len + 2 != len {
        return false;
    }
    if list_len == 0 {
        return true; // no value: "00" like no ALPN
    }
    let Some(first) = u8_at(state, at + 2, limit) else {
        return false;
    };
    let first = first as usize;
    if first == 0 || first + 1 > list_len {
        return false;
    }
    let value = at + 3;
    for i in 0..ALPN_KEPT {
        if i < first {
            match u8_at(state, value + i, limit) {
                Some(b) => event.alpn[i] = b,
                None => return false,
            }
        }
    }
    let Some(last) = u8_at(state, value + first - 1, limit) else {
        return false;
    };
    event.alpn_len = first as u8;
    event.alpn_last = last;
    true
}
