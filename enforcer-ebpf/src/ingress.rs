//! What arrives: the one judge of both ingress programs, XDP (`xdp.rs`) and the tc ingress
//! classifier (`tc.rs`), so the two forms `--ingress xdp|tc` drop exactly the same packets.

use enforcer_common::flow::direction;

use crate::{flow, packet, posture, quic};

/// What the ingress program does with a frame.
pub enum Judged {
    Pass,
    Drop,
    /// Passes unless the posture reader (`posture.rs`, reached by a tail call) drops it: a
    /// TCP segment whose payload starts like a ServerHello (this host is the client).
    ServerHello(posture::Args),
}

/// Fail-open: anything we cannot parse (neither TCP nor UDP, truncated, fragments) passes; a
/// 4-tuple the kernel hooks put in the blocklist is dropped, and a QUIC Initial the policy
/// denies (`quic.rs`). Cost beyond the blocklist on a TCP segment with data: the TCP data
/// offset and six payload bytes read (plain loads where the payload is linear).
#[inline(always)]
pub fn judge<P: packet::Packet + packet::Linear>(frame: &P) -> Judged {
    let Some(segment) = packet::parse(frame) else {
        return Judged::Pass;
    };
    if segment.udp {
        return match quic::drops(frame, &segment, direction::RECV) {
            true => Judged::Drop,
            false => Judged::Pass,
        };
    }
    let flow = segment.as_receiver();
    if flow::is_blocked(&flow) {
        return Judged::Drop;
    }
    let Some(payload) = packet::payload_of(frame, &segment) else {
        return Judged::Pass;
    };
    match packet::read::<[u8; 6], P>(frame, payload) {
        Some(head) if posture::starts_server_hello(&head) => Judged::ServerHello(posture::Args {
            flow,
            payload: payload as u32,
            direction: direction::RECV,
            _pad: [0; 3],
        }),
        _ => Judged::Pass,
    }
}
