//! The tc classifiers: egress (drop packets of blocklisted flows before they leave the host,
//! judge hellos) and ingress (`--ingress tc`, and `auto` on a veth or a device without native
//! XDP: the same judge as XDP, `ingress.rs`, on the skb).

use aya_ebpf::{bindings::TC_ACT_SHOT, macros::classifier, programs::TcContext};
use enforcer_common::stat::Stat;

use crate::{flow, hello, ingress, offer, packet, posture, quic, stats};
use enforcer_common::flow::direction;
use enforcer_common::tc_return::PASS as TC_PASS;

/// Fail-open like the XDP program (UDP: only a QUIC Initial the policy denies is dropped, as
/// there), with one deliberate exception to dropping: a bare RST of a blocked flow goes out, so the peer forgets a connection we aborted (it carries no data).
/// Segments the blocklist lets through go to the hello judge (`hello.rs`), which drops a hello
/// the policy denies (its random's library is denied, unattributed TLS, a name out of scope).
#[classifier]
// Inlined into aya's wrapper (the macro keeps this attribute on the function it wraps): left
// to itself LLVM made the body a BPF function of its own once it grew, and its calls to the
// memset/memcmp builtins then made a chain of three frames, which 6.1's verifier rounds to 32
// bytes each and refused ("combined stack size of 3 calls is 544").
#[inline(always)]
pub fn enforcer_egress(ctx: TcContext) -> i32 {
    let Some(segment) = packet::parse(&ctx) else {
        return TC_PASS;
    };
    if segment.udp {
        if quic::drops(&ctx, &segment, direction::SEND) {
            stats::count(Stat::TcDrops);
            return TC_ACT_SHOT;
        }
        return TC_PASS;
    }
    let flow = segment.as_sender();
    if segment.rst {
        return TC_PASS;
    }
    if flow::is_blocked(&flow) {
        stats::count(Stat::TcDrops);
        return TC_ACT_SHOT;
    }
    if hello::judge_egress(
        &ctx,
        segment.l4 as usize,
        &flow,
        ctx.len() as usize,
        posture::Caller::Tc,
    ) {
        stats::count(Stat::TcDrops);
        return TC_ACT_SHOT;
    }
    TC_PASS
}

/// Ingress on the skb, after GRO: one run per aggregated skb rather than per wire frame, and no
/// copy (a native XDP program on a veth copies every cloned skb into an XDP buffer).
#[classifier]
pub fn enforcer_ingress_tc(ctx: TcContext) -> i32 {
    match ingress::judge(&ctx) {
        ingress::Judged::Drop => {
            stats::count(Stat::TcIngressDrops);
            TC_ACT_SHOT
        }
        ingress::Judged::Pass => TC_PASS,
        ingress::Judged::ServerHello(args) => {
            posture::read(&ctx, posture::Caller::Tc, args);
            TC_PASS
        }
        ingress::Judged::ClientHello => {
            offer::hand_off(&ctx, posture::Caller::Tc, offer::mode::START_RECV);
            TC_PASS
        }
        ingress::Judged::OfferContinues => {
            offer::hand_off(&ctx, posture::Caller::Tc, offer::mode::CONTINUE_RECV);
            TC_PASS
        }
    }
}

impl packet::Frame for TcContext {}

impl packet::Linear for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    /// The end of the skb's linear head: paged data is helper-only.
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

impl packet::Packet for TcContext {
    #[inline(always)]
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        packet::skb_load_bytes(&self.skb, offset, dst, len)
    }
}
