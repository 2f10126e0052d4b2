//! ServerHellos: what each connection negotiated (`enforcer_common::posture`), read where the
//! ServerHello passes: ingress (XDP) when this host is the client, egress (tc, `hello.rs`) when
//! it is the server. The result is kept per flow in `POSTURES`.
//!
//! Cost on ingress: a flow is parsed only once its ClientHello left (`hello.rs` marks it
//! `AWAITING`), and only a segment whose payload starts like a ServerHello record
//! (`16 03 .. .. .. 02`) is looked up. Every other segment, an established flow's included,
//! costs two bounds checks and two plain loads through packet pointers (the TCP data offset, six
//! payload bytes) and a compare: no helper call, no map lookup.
//!
//! The bytes come from the wire: every length is checked against the record and the handshake
//! message, every loop has a constant bound, every read of the ServerHello goes through the load
//! helpers (a read past the segment fails: that is the truncation check). What cannot be read is reported as
//! `status::UNREADABLE`, never guessed.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap},
};
use enforcer_common::{
    flow::FlowKey,
    hello::{HELLO_RETRY_RANDOM, RANDOM_AT},
    posture::{
        EXT_KEY_SHARE, EXT_SUPPORTED_VERSIONS, HOST_RULE, MAX_RULE_GROUPS, Posture, PostureRule,
        broken, flags, status, version_bit,
    },
};

use crate::packet::{Linear, Packet, Segment};

/// Flows whose ClientHello left, or whose ServerHello was read. LRU: a closed flow is removed
/// (`flow::forget`); one whose close was missed makes room for newer ones.
#[map(name = "POSTURES")]
static POSTURES: LruHashMap<FlowKey, Posture> = LruHashMap::with_max_entries(65536, 0);

/// What the policy requires of negotiated parameters: `HOST_RULE`, and per library id.
#[map(name = "POSTURE_RULES")]
static POSTURE_RULES: HashMap<u32, PostureRule> = HashMap::with_max_entries(4096, 0);

const TLS_HANDSHAKE: u8 = 0x16;
const SERVER_HELLO: u8 = 2;
/// Extensions walked before giving up (`UNREADABLE`). A ServerHello echoes only extensions the
/// client offered and the server supports: OpenSSL and GnuTLS send at most 8. Sixteen rounds of
/// one load and a few compares stay far below the verifier's budget.
const MAX_EXTENSIONS: usize = 16;
/// Offsets past this (from the frame start) are not read; it also gives the verifier a bound on
/// every offset handed to the load helper.
const MAX_OFFSET: usize = 1 << 16;

#[inline(always)]
fn load<T: Copy, P: Packet>(packet: &P, offset: usize) -> Option<T> {
    if offset > MAX_OFFSET {
        return None;
    }
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    if !packet.load_bytes(
        offset as u32,
        value.as_mut_ptr() as *mut u8,
        size_of::<T>() as u32,
    ) {
        return None;
    }
    // SAFETY: the helper filled all size_of::<T>() bytes; T is plain data.
    Some(unsafe { value.assume_init() })
}

/// The gate's offsets (TCP header: at most 512 bytes in, its data offset at most 60 more).
const MAX_GATE_OFFSET: usize = 1024;

/// `N` bytes at `offset` in the linear part of the frame, read through packet pointers: no
/// helper call, for the gate every ingress segment passes. The cap on `offset` is checked on the
/// register added to `data`, and `data_end` compared with that very pointer plus `N`, the shape
/// the verifier bounds (as in `packet/direct.rs`).
#[inline(always)]
fn linear<const N: usize, P: Linear>(packet: &P, offset: usize) -> Option<[u8; N]> {
    if offset > MAX_GATE_OFFSET {
        return None;
    }
    let start = packet.data() + offset;
    if start + N > packet.data_end() {
        return None;
    }
    // SAFETY: the N bytes from `start` are inside the linear part of the frame (checked above).
    Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> usize {
    u16::from_be_bytes(b) as usize
}

/// The ClientHello of `flow` left this host: its ServerHello is read on ingress.
#[inline(always)]
pub fn awaiting(flow: &FlowKey) {
    // LRU: cannot fail for lack of room.
    let _ = POSTURES.insert(flow, Posture::awaiting(), 0);
}

/// This host's ServerHello of `flow` leaves (`hello.rs`): `payload` is where it starts when
/// `starts_here`; `retried` when a HelloRetryRequest came before it. Returns what was recorded.
#[inline(always)]
pub fn egress<P: Packet>(
    packet: &P,
    flow: &FlowKey,
    payload: usize,
    starts_here: bool,
    retried: bool,
) -> Posture {
    let mut posture = Posture {
        status: status::UNREADABLE,
        ..Posture::default()
    };
    if starts_here {
        read(packet, payload, &mut posture);
    }
    posture.flags |= flags::EGRESS;
    if retried {
        posture.flags |= flags::RETRIED;
    }
    let _ = POSTURES.insert(flow, posture, 0);
    posture
}

/// An ingress segment of `flow` (this host is the receiver) that the blocklist let through.
/// Returns what its ServerHello negotiated, when it carried the one the flow awaited.
#[inline(always)]
pub fn ingress<P: Packet + Linear>(packet: &P, seg: &Segment, flow: &FlowKey) -> Option<Posture> {
    let l4 = seg.l4 as usize;
    let [data_offset] = linear::<1, P>(packet, l4 + 12)?;
    let payload = l4 + ((data_offset >> 4) as usize) * 4;
    // Record type and version, record length, handshake type. A segment with fewer than six
    // payload bytes (or none: an ACK) fails this bounds check and costs nothing more. So does
    // one whose payload starts past the first buffer of a multi-buffer frame (headers of a few
    // hundred bytes, then a fragment): its ServerHello is not read (`unreadable` is never
    // reported for it; the flow stays `awaiting`).
    let start = linear::<6, P>(packet, payload)?;
    if start[0] != TLS_HANDSHAKE || start[1] != 3 || start[5] != SERVER_HELLO {
        return None;
    }
    // None: no ClientHello of ours on this flow, not a handshake we follow.
    let known = POSTURES.get_ptr_mut(flow)?;
    // SAFETY: map value pointer, valid for this program run.
    let known = unsafe { &mut *known };
    let retried = match known.status {
        status::AWAITING => false,
        // The real ServerHello after a HelloRetryRequest.
        status::RETRY => true,
        _ => return None, // read already: a retransmission, or ciphertext that looks like one
    };
    let mut posture = Posture {
        status: status::UNREADABLE,
        ..Posture::default()
    };
    read(packet, payload, &mut posture);
    if retried {
        posture.flags |= flags::RETRIED;
    }
    *known = posture;
    Some(posture)
}

/// Reads the ServerHello record at `payload` into `out` (whose status is `UNREADABLE` and
/// fields 0 on entry): on success, the status is `NEGOTIATED` or `RETRY`.
#[inline(always)]
pub fn read<P: Packet>(packet: &P, payload: usize, out: &mut Posture) {
    if let Some((version, group, retry)) = walk(packet, payload, out) {
        out.version = version;
        out.group = group;
        out.status = if retry {
            status::RETRY
        } else {
            status::NEGOTIATED
        };
    }
}

/// Version, group and whether it is a HelloRetryRequest; `None` when something could not be
/// read or is inconsistent (`out.suite` may be set by then: the suite is read before the
/// extensions, and kept, since it is what the server chose whatever follows).
#[inline(always)]
fn walk<P: Packet>(packet: &P, payload: usize, out: &mut Posture) -> Option<(u16, u16, bool)> {
    // Record header (5) and handshake header (4): type 2, then a 24-bit length.
    let record: [u8; 9] = load(packet, payload)?;
    let record_len = be16([record[3], record[4]]);
    let hs_len = ((record[6] as usize) << 16) | ((record[7] as usize) << 8) | record[8] as usize;
    if record[0] != TLS_HANDSHAKE || record[5] != SERVER_HELLO || hs_len + 4 > record_len {
        return None; // a ServerHello split over several records: not followed
    }
    let body = payload + 9;
    let end = body + hs_len;
    let legacy: [u8; 2] = load(packet, body)?;
    if legacy[0] != 3 {
        return None;
    }
    let random: [u8; 32] = load(packet, payload + RANDOM_AT)?;
    let retry = random == HELLO_RETRY_RANDOM;
    // The session id echo (at most 32 bytes), the cipher suite (2), the compression method (1).
    let mut at = body + 34;
    let session_len = load::<u8, P>(packet, at)? as usize;
    if session_len > 32 {
        return None;
    }
    at += 1 + session_len;
    let chosen: [u8; 3] = load(packet, at)?;
    at += 3;
    if at > end {
        return None;
    }
    out.suite = u16::from_be_bytes([chosen[0], chosen[1]]);
    let mut version = u16::from_be_bytes(legacy);
    if at == end {
        return Some((version, 0, retry)); // no extensions: TLS 1.2 or older
    }
    let ext_end = at + 2 + be16(load(packet, at)?);
    if ext_end != end {
        return None;
    }
    at += 2;
    let mut group = 0u16;
    let mut listed_version = false;
    // Done: the list was read to its end, or TLS 1.3's two extensions were read (what follows
    // them cannot change the answer, and need not be in this segment).
    let mut done = at == ext_end;
    for _ in 0..MAX_EXTENSIONS {
        if done {
            break;
        }
        if at + 4 > ext_end {
            return None;
        }
        let ext: [u8; 4] = load(packet, at)?;
        let kind = u16::from_be_bytes([ext[0], ext[1]]);
        let ext_len = be16([ext[2], ext[3]]);
        let data = at + 4;
        at = data + ext_len;
        if at > ext_end {
            return None;
        }
        if kind == EXT_SUPPORTED_VERSIONS {
            // ServerHello form: the one selected version.
            if ext_len != 2 || listed_version {
                return None;
            }
            version = u16::from_be_bytes(load(packet, data)?);
            listed_version = true;
        } else if kind == EXT_KEY_SHARE {
            // A HelloRetryRequest names the selected group only; a ServerHello's entry is the
            // group, then its key exchange (length-prefixed, filling the extension).
            let named: [u8; 2] = load(packet, data)?;
            let fits = if retry {
                ext_len == 2
            } else {
                ext_len >= 4 && 4 + be16(load(packet, data + 2)?) == ext_len
            };
            if !fits || group != 0 {
                return None;
            }
            group = u16::from_be_bytes(named);
            if group == 0 {
                return None;
            }
        }
        done = at == ext_end || (listed_version && group != 0);
    }
    if !done {
        return None; // more extensions than we walk
    }
    Some((version, group, retry))
}

/// Forgets `flow` (its connection closed).
#[inline(always)]
pub fn forget(flow: &FlowKey) {
    let _ = POSTURES.remove(flow);
}

/// Which requirement `posture` breaks (`broken::*`): the host-wide one first, then that of the
/// rule deciding library `lib_id`. A HelloRetryRequest is not judged (the real ServerHello is).
#[inline(always)]
pub fn judge(posture: &Posture, lib_id: u32) -> u8 {
    if posture.status == status::RETRY {
        return broken::NONE;
    }
    // SAFETY: copied out at once.
    if let Some(rule) = unsafe { POSTURE_RULES.get(HOST_RULE) }.copied() {
        match breaks(&rule, posture) {
            Broke::Version => return broken::HOST_VERSION,
            Broke::Group => return broken::HOST_GROUP,
            Broke::Nothing => {}
        }
    }
    // SAFETY: copied out at once.
    match unsafe { POSTURE_RULES.get(lib_id) }.copied() {
        Some(rule) if lib_id != HOST_RULE => match breaks(&rule, posture) {
            Broke::Version => broken::RULE_VERSION,
            Broke::Group => broken::RULE_GROUP,
            Broke::Nothing => broken::NONE,
        },
        _ => broken::NONE,
    }
}

enum Broke {
    Nothing,
    Version,
    Group,
}

/// Fail-closed: a required field that was not read breaks the rule.
#[inline(always)]
fn breaks(rule: &PostureRule, p: &Posture) -> Broke {
    let read = p.status == status::NEGOTIATED;
    if rule.versions != 0 && (!read || version_bit(p.version) & rule.versions == 0) {
        return Broke::Version;
    }
    if rule.groups_len == 0 {
        return Broke::Nothing;
    }
    if !read || p.group == 0 {
        return Broke::Group;
    }
    for i in 0..MAX_RULE_GROUPS {
        if i < rule.groups_len as usize && rule.groups[i] == p.group {
            return Broke::Nothing;
        }
    }
    Broke::Group
}
