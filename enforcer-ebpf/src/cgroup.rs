//! The host-wide layer (`--host-layer cgroup`): cgroup_skb programs on the root cgroup v2. They
//! run for every socket of every process, whatever interface or network namespace its packets
//! take (loopback, WireGuard, container veths, interfaces not given to `attach`). Both drop the
//! packets of blocklisted flows; egress also judges every local socket's hellos with the judge
//! tc runs (`hello.rs`), its ClientHello and ServerHello readers reached through tables of their
//! own (`Caller::Cgroup`: a tail call reaches only programs of the caller's type). So a hello
//! no probed library made is unattributed TLS on loopback too, and a denied flow's packets stop
//! in the kernel wherever they go, also before the agent has aborted its socket. No other
//! program can let them through: the kernel runs every program of a cgroup's
//! `BPF_F_ALLOW_MULTI` chain and drops a packet any of them drops.
//!
//! On an interface given to `attach` the same segment then reaches tc egress, whose judge finds
//! the flow's hello judged already (`flow::hello_seen`) and the head collected (`flow_head.rs`
//! reads no byte twice), and passes it as a retransmission: one verdict, one event. tc still
//! judges what no local socket sent (forwarded packets: containers, VMs, routed traffic), and
//! keeps judging on its own when the host layer is gone.
//!
//! cgroup_skb egress runs in the sending process's context with bottom halves on: a softirq
//! can run it again on the same CPU in the middle of a run. The judge's scratch is per CPU, so
//! only one run at a time judges (`host_guard.rs`); one that finds its CPU busy drops what could
//! be part of a hello nobody judged yet, and lets the rest go (`nested`).
//!
//! `skb->data` is the network header in cgroup_skb (the kernel pushes back to it), so packets
//! are parsed from their IP header: direct packet access, the load helpers past the linear part.

use aya_ebpf::{
    macros::{cgroup_skb, map},
    maps::{PerCpuArray, ProgramArray},
    programs::SkBuffContext,
};
use enforcer_common::{flow::FlowKey, stat::Stat};

use crate::{
    flow, flow_head, hello,
    host_guard::{self, DROP, PASS},
    packet::{self, Segment},
    posture::Caller,
    stats,
};

const TLS_HANDSHAKE: u8 = 0x16;
const TCP_FLAG_SYN: u8 = 0x02;

/// The judge (`enforcer_cg_judge`), reached by a tail call from `enforcer_cg_egress`: a program
/// of its own so the verifier walks the hello judge from one state, not once for each way the
/// caller parsed the headers, the guard and the blocklist (inlined into one program it went past
/// the verifier's 1M instructions, though tc's egress program, the same judge after its own
/// parsing, stays under them). Empty (not loaded): the caller passes the segment.
#[map(name = "JUDGE_CG")]
static JUDGE_CG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What the egress program hands its judge: the flow and where its TCP header is. The judge
/// does not parse the headers again: starting from these map values, the verifier walks it in
/// one state whichever way the headers were laid out.
#[derive(Clone, Copy)]
struct JudgeArgs {
    flow: FlowKey,
    l4: u32,
}

/// Written while the CPU is marked busy (`host_guard`), so no other run overwrites it.
#[map(name = "JUDGE_ARGS")]
static JUDGE_ARGS: PerCpuArray<JudgeArgs> = PerCpuArray::with_max_entries(1, 0);

// Names distinct in their first 15 bytes, all the kernel keeps of a program's name (bpftool and
// the bench tell them apart by it).
#[cgroup_skb(egress)]
// Inlined into aya's wrapper, as tc's egress program is (`tc.rs`), here as in the judge: left a
// BPF function of its own, the body's return value came back to the wrapper unbounded in the
// verifier's view, and the kernel wants a cgroup_skb program's provably in 0..=3.
#[inline(always)]
pub fn enforcer_cg_egress(ctx: SkBuffContext) -> i32 {
    let Some(segment) = packet::parse_l3(&ctx) else {
        return PASS;
    };
    // A bare RST lets the peer forget a connection we aborted, as on tc egress. QUIC is judged
    // on the named interfaces only (`quic.rs`).
    if segment.udp || segment.rst {
        return PASS;
    }
    let flow = segment.as_sender();
    if flow::is_blocked(&flow) {
        stats::count(Stat::CgroupDrops);
        return DROP;
    }
    // Sequence number (4), acknowledgment (4), data offset (1), flags (1).
    let l4 = segment.l4 as usize;
    let Some(tcp) = packet::read::<[u8; 10], _>(&ctx, l4 + 4) else {
        return PASS;
    };
    let syn = tcp[9] & TCP_FLAG_SYN != 0;
    let payload = l4 + ((tcp[8] >> 4) as usize) * 4;
    let data = payload < ctx.len() as usize;
    // Nothing for the judge: an ACK or a FIN without data, half the segments of a transfer.
    if !syn && !data {
        return PASS;
    }
    if !host_guard::enter() {
        let seq = u32::from_be_bytes([tcp[0], tcp[1], tcp[2], tcp[3]]);
        return nested(&ctx, &flow, syn.then_some(seq), data.then_some(payload));
    }
    if let Some(args) = JUDGE_ARGS.get_ptr_mut(0) {
        // SAFETY: per-CPU map value, valid for this run; the judge runs next on this CPU.
        unsafe {
            (*args).flow = flow;
            (*args).l4 = segment.l4 as u32;
        }
        // SAFETY: control goes to the judge and does not come back on success.
        unsafe { JUDGE_CG.tail_call(&ctx, 0) };
    }
    host_guard::leave();
    PASS
}

/// The hello judge of `enforcer_cg_egress`'s segments, with the CPU marked busy: the readers it
/// hands a hello to leave the mark, else it does.
#[cgroup_skb(egress)]
#[inline(always)]
pub fn enforcer_cg_judge(ctx: SkBuffContext) -> i32 {
    let drop = match JUDGE_ARGS.get_ptr(0) {
        Some(args) => {
            // SAFETY: per-CPU map value, valid for this run; the CPU is marked busy, so no
            // other run writes it meanwhile.
            let (flow, l4) = unsafe { ((*args).flow, (*args).l4 as usize) };
            // As `parse` caps it; a bound the verifier sees.
            l4 <= packet::MAX_L4_OFFSET
                && hello::judge_egress(&ctx, l4, &flow, ctx.len() as usize, Caller::Cgroup)
        }
        None => false,
    };
    // Here only when no reader took over (none was called, or its table is empty).
    host_guard::leave();
    if drop {
        stats::count(Stat::CgroupDrops);
        return DROP;
    }
    PASS
}

#[cgroup_skb(ingress)]
pub fn enforcer_cg_ingress(ctx: SkBuffContext) -> i32 {
    let Some(segment) = packet::parse_l3(&ctx) else {
        return PASS;
    };
    if segment.udp || segment.rst {
        return PASS;
    }
    if flow::is_blocked(&segment.as_receiver()) {
        stats::count(Stat::CgroupDrops);
        return DROP;
    }
    PASS
}

/// A segment sent while another run of the egress judge is in progress on this CPU, judged
/// without the scratch (`syn`: its sequence number if it is a SYN; `payload`: where its data
/// starts, if it has any). A SYN starts the flow's head as the judge would (map memory only).
/// Data on a flow whose hello nobody judged yet that starts like a TLS handshake record or
/// belongs to a head being collected is dropped (TCP sends it again, most likely not from inside
/// another send); the rest passes. Passing it would let a hello sent from a softirq (the peer's
/// window opening) through unjudged, or leave a gap in a head that no retransmission fills.
#[inline(always)]
fn nested(ctx: &SkBuffContext, flow: &FlowKey, syn: Option<u32>, payload: Option<usize>) -> i32 {
    if let Some(isn) = syn {
        flow_head::start(flow, isn);
    }
    let Some(payload) = payload else {
        return PASS;
    };
    if flow::hello_seen(flow) {
        return PASS; // past its hello
    }
    // Unreadable: as if it began a record.
    let record =
        packet::read::<[u8; 2], _>(ctx, payload).is_none_or(|b| b[0] == TLS_HANDSHAKE && b[1] == 3);
    if record || flow_head::collecting(flow) {
        stats::count(Stat::HostNestedDrops);
        return DROP;
    }
    PASS
}

impl packet::Linear for SkBuffContext {
    #[inline(always)]
    fn data(&self) -> usize {
        // SAFETY: the context pointer the kernel passed; a plain field read.
        unsafe { (*self.skb.skb).data as usize }
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).data_end as usize }
    }
}

impl packet::Frame for SkBuffContext {
    #[inline(always)]
    fn segment(&self) -> Option<Segment> {
        packet::parse_l3(self)
    }
}

impl packet::Packet for SkBuffContext {
    #[inline(always)]
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        packet::skb_load_bytes(&self.skb, offset, dst, len)
    }
}
