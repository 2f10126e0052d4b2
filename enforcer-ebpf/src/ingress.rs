//! What arrives: the one judge of both ingress programs, XDP (`xdp.rs`) and the tc ingress
//! classifier (`tc.rs`), so the two forms `--ingress xdp|tc` drop exactly the same packets.

use enforcer_common::flow::direction;

use crate::{flow, offer, packet, posture, quic};

/// What the ingress program does with a frame.
pub enum Judged {
    Pass,
    Drop,
    /// Passes unless the posture reader (`posture.rs`, reached by a tail call) drops it: a
    /// TCP segment whose payload starts like a ServerHello (this host is the client).
    ServerHello(posture::Args),
    /// Passes; its payload starts with a ClientHello (this host is the server): the ClientHello
    /// reader (`offer.rs`, tail call) reads it.
    ClientHello,
    /// Passes; a later segment of a flow whose bucket counts a ClientHello being reassembled.
    OfferContinues,
}

/// Fail-open: anything we cannot parse (neither TCP nor UDP, truncated, fragments) passes; a
/// 4-tuple the kernel hooks put in the blocklist is dropped, and a QUIC Initial the policy
/// denies (`quic.rs`). Cost beyond the blocklist on a TCP segment with data: the TCP data
/// offset and six payload bytes read (plain loads where the payload is linear), and one
/// `OFFER_BUCKETS` read (`offer::pending`).
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
        Some(head) if head[0] == 0x16 && head[5] == 1 => {
            match packet::read::<[u8; 11], P>(frame, payload) {
                Some(b) if offer::starts_client_hello(&b) => Judged::ClientHello,
                _ => Judged::Pass,
            }
        }
        _ if offer::pending(&flow) => Judged::OfferContinues,
        _ => Judged::Pass,
    }
}
