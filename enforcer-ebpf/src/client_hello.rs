//! TLS ClientHellos on egress: the server name (SNI) of every connection, TLS on flows no probed
//! library claimed (`unattributed_tls`), and rules scoped by server name, judged before the
//! ClientHello leaves the host.
//!
//! Cost on the path that is not a ClientHello: one byte load (TCP data offset) and one 6-byte
//! load at the start of the payload, only for segments that carry data. Only a payload that
//! starts with a handshake record (`16 03 ..`) holding a ClientHello (handshake type 1) is
//! parsed further. With `server_names` rules in the policy, data segments also cost one `FLOWS`
//! lookup, so a flow judged at its ClientHello cannot slip past with something else.
//!
//! The bytes come from the wire: every length is checked against the record, the handshake
//! message and the segment; every loop has a constant bound; what cannot be read is reported as
//! such (`event::sni::UNREADABLE`), never guessed.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
};
use enforcer_common::{
    event::{self, HelloEvent},
    flow::{FlowKey, FlowState, verdict},
    policy::{MAX_NAME, NAME_END, ServerNameKey, action},
    stat::Stat,
};

use crate::{
    flow,
    packet::Packet,
    policy::{self, apply},
    stats,
};

/// The event being built, the trie key and the hello found: more than the 512-byte stack.
#[repr(C)]
pub struct Scratch {
    pub event: HelloEvent,
    pub key: Key<ServerNameKey>,
    /// The hello being judged (`hello.rs`).
    pub hello: crate::flow_head::Hello,
}

#[map(name = "HELLO_SCRATCH")]
pub static HELLO_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const EXT_SERVER_NAME: usize = 0;
const SNI_HOST_NAME: u8 = 0;
/// Extensions walked before giving up (`UNREADABLE`). Browsers send about 20; the loop body is a
/// helper call and a few compares, so the verifier walks 64 iterations in a few thousand
/// instructions on every kernel we support (bounded loops: 5.3+).
const MAX_EXTENSIONS: usize = 64;
/// Offsets past this (from the frame start) are not read: a ClientHello is a few KiB at most,
/// a server's flight (`server_hello.rs`) one segment-offload packet. The hello readers'
/// bound (`offer.rs`, `server_hello.rs`) too.
pub const MAX_OFFSET: usize = 1 << 16;
/// Longest name copied into the event (`HelloEvent::name` holds 256 bytes).
const MAX_EVENT_NAME: usize = 255;

/// What the classifier does with the segment.
pub enum Outcome {
    Pass,
    Drop,
    /// Passes, and is a ServerHello that starts at the segment's payload: the classifier hands
    /// it to the posture reader (`posture.rs`).
    ServerHello,
    /// Passes, and is a ClientHello judged now: the classifier hands it to the ClientHello
    /// reader (`offer.rs`).
    ClientHello,
    /// Passes; a segment that is no hello, of a flow whose bucket counts a ClientHello being
    /// read (`offer::pending`): the classifier hands it to the reader.
    ClientHelloContinues,
}

#[inline(always)]
pub fn load<T: Copy, P: Packet>(packet: &P, offset: usize) -> Option<T> {
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

#[inline(always)]
fn be16(b: [u8; 2]) -> usize {
    u16::from_be_bytes(b) as usize
}

#[inline(always)]
pub fn outcome_of(v: u8) -> Outcome {
    // A block that went to the overflow table is a block too (`flow::block`).
    if v == verdict::BLOCKED || v == verdict::BLOCKLIST_FULL {
        stats::count(Stat::ClientHelloDrops);
        Outcome::Drop
    } else if v == verdict::PENDING_WHO {
        // Held for the verdict on its sender (`who.rs`): TCP sends it again.
        Outcome::Drop
    } else {
        Outcome::Pass
    }
}

/// Records the verdict of a flow that was pending its server name.
#[inline(always)]
pub fn settle(flow: &FlowKey, mut state: FlowState, v: u8) -> Outcome {
    state.verdict = v;
    flow::record(flow, &state);
    outcome_of(v)
}

/// A scoped library's action: the rule for the name (longest matching pattern), else the
/// library's action for names no pattern matches; without a readable name, the strictest action
/// any of its rules could give (`SCOPED_LIBS`), so a scoped deny cannot be dodged by hiding it.
#[inline(always)]
pub fn decide_scoped(
    flow: &FlowKey,
    state: &FlowState,
    key: Option<&mut Key<ServerNameKey>>,
) -> u8 {
    apply(flow, scoped_action(state, key))
}

/// [`decide_scoped`]'s action, not applied yet. A flow that waited for its hello only because a
/// rule scoped to who is talking may decide it (`who.rs`), not because of a server name, has its
/// library's action when no pattern matches or no name is there.
#[inline(always)]
pub fn scoped_action(state: &FlowState, key: Option<&mut Key<ServerNameKey>>) -> Option<u8> {
    match key {
        Some(key) => {
            key.data.lib_id_be = state.lib_id.to_be();
            policy::name_rule(&*key).or_else(|| policy::library_action(state.lib_id))
        }
        None => policy::scoped_action(state.lib_id)
            .or_else(|| {
                crate::who::applies(state.lib_id)
                    .then(|| policy::library_action(state.lib_id))
                    .flatten()
            })
            .or(Some(action::DENY)),
    }
}

/// Fills `key.data.name` with the lowercased, reversed `name[..len]` (its last `MAX_NAME`
/// bytes), followed by `NAME_END` when it fits, and sets the prefix length.
#[inline(always)]
pub fn reverse_into(name: &[u8; 256], key: &mut Key<ServerNameKey>, len: usize) {
    let out = &mut key.data.name;
    for i in 0..MAX_NAME {
        if i >= len {
            break;
        }
        // `& 0xff` keeps the index provably inside the 256-byte buffer (for rustc's bounds
        // check and the verifier alike); `len` is at most 255, so it changes nothing.
        out[i] = name[(len - 1 - i) & 0xff].to_ascii_lowercase();
    }
    let used = if len < MAX_NAME {
        out[len] = NAME_END;
        len + 1
    } else {
        MAX_NAME
    };
    key.prefix_len = (32 + 8 * used) as u32;
}

/// Walks the ClientHello at `payload` to its `server_name` extension. Returns the `sni::*`
/// status and the bytes of the name copied into `name` (the last 255 of a longer one).
#[inline(always)]
pub fn read_server_name<P: Packet>(
    packet: &P,
    payload: usize,
    len: usize,
    name: &mut [u8; 256],
) -> (u8, usize) {
    match walk(packet, payload, len, name) {
        Some(found) => found,
        None => (event::sni::UNREADABLE, 0),
    }
}

/// `None`: a read failed (the ClientHello goes on past this segment) or a length is inconsistent.
#[inline(always)]
fn walk<P: Packet>(
    packet: &P,
    payload: usize,
    len: usize,
    name: &mut [u8; 256],
) -> Option<(u8, usize)> {
    // Record header (5) and handshake header (4): type 1, then a 24-bit length.
    let record_len = be16(load(packet, payload + 3)?);
    let hs: [u8; 4] = load(packet, payload + 5)?;
    let hs_len = ((hs[1] as usize) << 16) | ((hs[2] as usize) << 8) | hs[3] as usize;
    let body = payload + 9;
    if hs_len + 4 > record_len {
        return None; // a ClientHello split over several records: not followed
    }
    let end = body + hs_len;
    // client_version (2) and random (32), then the session id (at most 32 bytes).
    let mut at = body + 34;
    let session_len = load::<u8, P>(packet, at)? as usize;
    if session_len > 32 {
        return None;
    }
    at += 1 + session_len;
    at += 2 + be16(load(packet, at)?); // cipher suites
    at += 1 + load::<u8, P>(packet, at)? as usize; // compression methods
    if at == end {
        return Some((event::sni::ABSENT, 0)); // no extensions at all
    }
    let ext_end = at + 2 + be16(load(packet, at)?);
    if ext_end != end {
        return None;
    }
    at += 2;
    for _ in 0..MAX_EXTENSIONS {
        if at == ext_end {
            return Some((event::sni::ABSENT, 0));
        }
        if at + 4 > ext_end {
            return None;
        }
        let ext: [u8; 4] = load(packet, at)?;
        let ext_len = be16([ext[2], ext[3]]);
        let data = at + 4;
        at = data + ext_len;
        if at > ext_end {
            return None;
        }
        if be16([ext[0], ext[1]]) != EXT_SERVER_NAME {
            continue;
        }
        // server_name_list length (2), then the first entry: type (1), length (2), name.
        let entry: [u8; 5] = load(packet, data)?;
        let name_len = be16([entry[3], entry[4]]);
        if entry[2] != SNI_HOST_NAME || name_len == 0 || 5 + name_len > ext_len {
            return None;
        }
        let copy = name_len.min(MAX_EVENT_NAME);
        let from = data + 5 + name_len - copy;
        if from + copy > len || from > MAX_OFFSET {
            return None; // the name is past the end of this segment
        }
        // `copy` is 1..=255, but LLVM drops checks it knows to hold and the verifier, tracking
        // another register, then sees a size that may be 0. A volatile read hides the value
        // from LLVM, so the bound checks stay on the very register passed to the helper.
        let size = copy as u32;
        // SAFETY: reads a local.
        let size = unsafe { core::ptr::read_volatile(&size) };
        if size == 0 || size > 256 {
            return None;
        }
        // The 6.1 verifier does not narrow a register from that compound check (it rejected
        // the helper call with "R3 min value is outside of the allowed memory range", size 0):
        // a mask gives it 1..=256 by arithmetic. A no-op for the sizes that pass the check.
        let size = (size.wrapping_sub(1) & 0xff) + 1;
        if !packet.load_bytes(from as u32, name.as_mut_ptr(), size) {
            return None;
        }
        return Some((event::sni::PRESENT, copy));
    }
    None // more extensions than we walk
}
