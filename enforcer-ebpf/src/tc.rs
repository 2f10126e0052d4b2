//! Egress: drop packets of blocklisted flows before they leave the host.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use enforcer_common::stat;

use crate::{packet, stats, verdict::BLOCKLIST};

/// Bytes of headers we want in the linear part of the skb (Ethernet + VLANs + IPv6 + ext + TCP).
const HEADER_BYTES: u32 = 256;

/// Fail-open like the XDP program, with one deliberate exception to dropping: a bare RST of a
/// blocked flow goes out, so the peer forgets a connection we aborted (it carries no data).
#[classifier]
pub fn enforcer_egress(ctx: TcContext) -> i32 {
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < HEADER_BYTES && ctx.len() > linear {
        // Headers may sit in paged data; pulling is best effort (failure → parse sees less).
        let _ = ctx.pull_data(ctx.len().min(HEADER_BYTES));
    }
    let Some(segment) = packet::parse(ctx.data(), ctx.data_end()) else {
        return TC_ACT_OK;
    };
    // SAFETY: only existence is checked.
    if !segment.rst && unsafe { BLOCKLIST.get(&segment.as_sender()) }.is_some() {
        stats::bump(stat::TC_DROPS);
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}
