//! Ingress: drop packets of blocklisted flows before the stack sees them.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use enforcer_common::stat;

use crate::{packet, stats, verdict::BLOCKLIST};

/// Fail-open: anything we cannot parse (non-TCP, truncated, fragments) passes; only a 4-tuple
/// the kernel hooks put in the blocklist is dropped.
#[xdp]
pub fn enforcer_ingress(ctx: XdpContext) -> u32 {
    let Some(segment) = packet::parse(ctx.data(), ctx.data_end()) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: only existence is checked.
    if unsafe { BLOCKLIST.get(&segment.as_receiver()) }.is_some() {
        stats::bump(stat::XDP_DROPS);
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}
