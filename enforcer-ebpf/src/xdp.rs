//! Ingress: drop packets of blocklisted flows before the stack sees them.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_load_bytes, macros::xdp, programs::XdpContext,
};
use enforcer_common::stat::Stat;

use crate::{flow, packet, quic, stats};
use enforcer_common::flow::direction;

/// Fail-open: anything we cannot parse (neither TCP nor UDP, truncated, fragments) passes; a
/// 4-tuple the kernel hooks put in the blocklist is dropped, and a QUIC Initial the policy
/// denies (`quic.rs`).
///
/// Loaded frags-aware (`xdp.frags`, `BPF_F_XDP_HAS_FRAGS`, Linux 5.18+): drivers refuse an MTU
/// above a page to a program that is not (jumbo frames, veth with a large MTU), and a
/// multi-buffer frame is parsed like any other: the headers are in the first buffer, or read
/// with `bpf_xdp_load_bytes`, which reads fragments too (`packet.rs`). It does not keep a veth
/// peer's TSO: veth turns GSO off on the peer of any native XDP program, frags-aware or not
/// (measured on 6.18, docs/benchmarks.md).
#[xdp(frags)]
pub fn enforcer_ingress(ctx: XdpContext) -> u32 {
    ingress(&ctx)
}

/// The same program without `BPF_F_XDP_HAS_FRAGS`, for kernels before 5.18 that refuse the flag
/// (the agent says that the peer of a veth then loses GSO).
#[xdp]
pub fn enforcer_ingress_nofrags(ctx: XdpContext) -> u32 {
    ingress(&ctx)
}

#[inline(always)]
fn ingress(ctx: &XdpContext) -> u32 {
    let Some(segment) = packet::parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    if segment.udp {
        if quic::drops(ctx, &segment, direction::RECV) {
            stats::count(Stat::XdpDrops);
            return xdp_action::XDP_DROP;
        }
        return xdp_action::XDP_PASS;
    }
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
