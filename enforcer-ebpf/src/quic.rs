//! QUIC Initial datagrams on the filtered interfaces, judged by the policy's `quic` action
//! (`HelloPolicy::quic`): TLS inside QUIC travels in UDP, past every TCP hook and the ClientHello
//! judge, so the protocol itself is what the policy decides on. `deny` drops every Initial in
//! both directions in enforce mode (no QUIC handshake completes; HTTP/3 clients then fall back
//! to TLS over TCP, where the library is judged) and reports it as `would-block` in audit mode.
//!
//! Only Initials are looked at (`enforcer_common::quic`): a connection established before the
//! agent started sends short-header packets, which pass. Per UDP datagram with `quic: allow`:
//! one array lookup. Otherwise: two 2- and 5-byte loads; an event at most once a second per
//! 4-tuple and direction (`QUIC_SEEN`).

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap};
use enforcer_common::{
    event::QuicEvent,
    flow::{FlowKey, direction, verdict},
    policy::action,
    quic,
};

use crate::{events, packet, policy};

/// `QUIC_SEEN`'s key: the 4-tuple from this host's side and the direction.
#[repr(C)]
#[derive(Clone, Copy)]
struct SeenKey {
    flow: FlowKey,
    direction: u8,
    _pad: [u8; 7],
}

/// Last report of a (4-tuple, direction), in `bpf_ktime_get_ns`: clients retransmit Initials,
/// and a flood of them must not be a flood of events. Not pinned: per run.
#[map(name = "QUIC_SEEN")]
static QUIC_SEEN: LruHashMap<SeenKey, u64> = LruHashMap::with_max_entries(4096, 0);

const REPORT_EVERY_NS: u64 = 1_000_000_000;

/// True when the datagram `seg` (a UDP one) is to be dropped. `dir`: `direction::SEND` (tc
/// egress, this host sent it) or `RECV` (XDP ingress).
#[inline(always)]
pub fn drops<P: packet::Packet>(frame: &P, seg: &packet::Segment, dir: u8) -> bool {
    let wanted = policy::hello_policy().quic;
    if wanted == action::ALLOW {
        return false;
    }
    let l4 = seg.l4 as usize;
    let (Some(udp_len), Some(head)) = (
        packet::load::<[u8; 2], P>(frame, l4 + 4),
        packet::load::<[u8; quic::HEAD], P>(frame, l4 + 8),
    ) else {
        return false;
    };
    let payload = (u16::from_be_bytes(udp_len) as usize).saturating_sub(8);
    let Some(version) = quic::initial_version(head, payload) else {
        return false;
    };
    let verdict = match wanted {
        action::DENY if policy::enforcing() => verdict::BLOCKED,
        action::DENY => verdict::WOULD_BLOCK,
        _ => verdict::AUDITED,
    };
    let flow = match dir {
        direction::SEND => seg.as_sender(),
        _ => seg.as_receiver(),
    };
    report(&flow, dir, version, verdict);
    verdict == verdict::BLOCKED
}

#[inline(always)]
fn report(flow: &FlowKey, dir: u8, version: u32, verdict: u8) {
    let key = SeenKey {
        flow: *flow,
        direction: dir,
        _pad: [0; 7],
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: copied out at once.
    if let Some(&last) = unsafe { QUIC_SEEN.get(key) }
        && now.wrapping_sub(last) < REPORT_EVERY_NS
    {
        return;
    }
    let _ = QUIC_SEEN.insert(key, now, 0);
    events::quic(
        &QuicEvent {
            flow: *flow,
            version,
            verdict,
            direction: dir,
            ..Default::default()
        },
        now,
    );
}
