//! Ingress: drop packets of blocklisted flows before the stack sees them.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_load_bytes, macros::xdp, programs::XdpContext,
};
use enforcer_common::stat::Stat;

use crate::{flow, packet, stats};

/// Fail-open: anything we cannot parse (non-TCP, truncated, fragments) passes; only a 4-tuple
/// the kernel hooks put in the blocklist is dropped.
#[xdp]
pub fn enforcer_ingress(ctx: XdpContext) -> u32 {
    let Some(segment) = packet::parse(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    if flow::is_blocked(&segment.as_receiver()) {
        stats::count(Stat::XdpDrops);
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

impl packet::Linear for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    /// The end of the first buffer: a multi-buffer frame's fragments are helper-only.
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl packet::Packet for XdpContext {
    #[inline(always)]
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: ctx is the program's xdp_md; dst points at `len` writable stack bytes.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, dst.cast(), len) == 0 }
    }
}
