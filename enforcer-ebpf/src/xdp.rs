//! Ingress in XDP (`--ingress xdp`, and `auto` on a NIC with native XDP): drop packets of
//! blocklisted flows before the stack sees them (the judge: `ingress.rs`).

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_load_bytes, macros::xdp, programs::XdpContext,
};
use enforcer_common::stat::Stat;

use crate::{ingress, offer, packet, posture, stats};

/// Loaded frags-aware (`xdp.frags`, `BPF_F_XDP_HAS_FRAGS`, Linux 5.18+): drivers refuse an MTU
/// above a page to a program that is not (jumbo frames, veth with a large MTU), and a
/// multi-buffer frame is parsed like any other: the headers are in the first buffer, or read
/// with `bpf_xdp_load_bytes`, which reads fragments too (`packet.rs`). It does not keep a veth
/// peer's TSO: veth turns GSO off on the peer of any native XDP program, frags-aware or not,
/// and copies every cloned skb into an XDP buffer (measured on 6.18, docs/benchmarks.md), which
/// is why `--ingress auto` puts the tc ingress classifier on a veth instead.
#[xdp(frags)]
pub fn enforcer_ingress(ctx: XdpContext) -> u32 {
    verdict(&ctx, posture::Caller::Xdp)
}

/// The same program without `BPF_F_XDP_HAS_FRAGS`, for kernels before 5.18 that refuse the flag
/// (the agent says that the peer of a veth then loses GSO).
#[xdp]
pub fn enforcer_ingress_nofrags(ctx: XdpContext) -> u32 {
    verdict(&ctx, posture::Caller::XdpNoFrags)
}

#[inline(always)]
fn verdict(ctx: &XdpContext, caller: posture::Caller) -> u32 {
    match ingress::judge(ctx) {
        ingress::Judged::Drop => {
            stats::count(Stat::XdpDrops);
            xdp_action::XDP_DROP
        }
        ingress::Judged::Pass => xdp_action::XDP_PASS,
        ingress::Judged::ServerHello(args) => {
            posture::read(ctx, caller, args);
            xdp_action::XDP_PASS
        }
        ingress::Judged::ClientHello => {
            offer::hand_off(ctx, caller, offer::mode::START_RECV);
            xdp_action::XDP_PASS
        }
        ingress::Judged::OfferContinues => {
            offer::hand_off(ctx, caller, offer::mode::CONTINUE_RECV);
            xdp_action::XDP_PASS
        }
    }
}

impl packet::Frame for XdpContext {}

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
