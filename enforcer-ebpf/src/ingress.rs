//! What arrives: the one judge of both ingress programs, XDP (`xdp.rs`) and the tc ingress
//! classifier (`tc.rs`), so the two forms `--ingress xdp|tc` drop exactly the same packets.

use crate::{flow, packet, quic};
use enforcer_common::flow::direction;

/// Whether an arriving frame is dropped. Fail-open: anything we cannot parse (neither TCP nor
/// UDP, truncated, fragments) passes; a 4-tuple the kernel hooks put in the blocklist is
/// dropped, and a QUIC Initial the policy denies (`quic.rs`).
#[inline(always)]
pub fn drops<P: packet::Packet + packet::Linear>(frame: &P) -> bool {
    let Some(segment) = packet::parse(frame) else {
        return false;
    };
    if segment.udp {
        return quic::drops(frame, &segment, direction::RECV);
    }
    flow::is_blocked(&segment.as_receiver())
}
