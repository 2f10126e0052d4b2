//! The host-wide layer (`--host-layer cgroup`): cgroup_skb programs on the root cgroup v2. They
//! run for every socket of every process, whatever interface or network namespace its packets
//! take (loopback, WireGuard, container veths, interfaces not given to `attach`), and drop the
//! packets of blocklisted flows there. They judge no hello: the hello judge and its readers stay
//! on the named interfaces' XDP/tc programs. What they add is that a denied flow's packets stop
//! in the kernel wherever they go, also before the agent has aborted its socket, and that no
//! other program can let them through: the kernel runs every program of a cgroup's
//! `BPF_F_ALLOW_MULTI` chain and drops a packet any of them drops.
//!
//! `skb->data` is the network header in cgroup_skb (the kernel pushes back to it), so packets
//! are parsed from their IP header: direct packet access, the load helpers past the linear part.

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use enforcer_common::stat::Stat;

use crate::{flow, packet, stats};

/// What a cgroup_skb program returns: 1 lets the packet go, 0 drops it (egress: the sender gets
/// `EPERM`-like congestion; TCP retransmits until the socket is aborted).
const PASS: i32 = 1;
const DROP: i32 = 0;

// Names distinct in their first 15 bytes, all the kernel keeps of a program's name (bpftool and
// the bench tell the two apart by it).
#[cgroup_skb(egress)]
pub fn enforcer_cg_egress(ctx: SkBuffContext) -> i32 {
    judge(&ctx, true)
}

#[cgroup_skb(ingress)]
pub fn enforcer_cg_ingress(ctx: SkBuffContext) -> i32 {
    judge(&ctx, false)
}

#[inline(always)]
fn judge(ctx: &SkBuffContext, egress: bool) -> i32 {
    let Some(segment) = packet::parse_l3(ctx) else {
        return PASS;
    };
    // A bare RST lets the peer forget a connection we aborted, as on tc egress.
    if segment.udp || segment.rst {
        return PASS;
    }
    let flow = match egress {
        true => segment.as_sender(),
        false => segment.as_receiver(),
    };
    if flow::is_blocked(&flow) {
        stats::count(Stat::CgroupDrops);
        return DROP;
    }
    PASS
}

/// cgroup_skb programs may read the linear part through packet pointers (Linux 5.2+); aya's
/// `SkBuffContext` keeps its `data`/`data_end` accessors crate-private, so they are read here.
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

impl packet::Packet for SkBuffContext {
    #[inline(always)]
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        packet::skb_load_bytes(&self.skb, offset, dst, len)
    }
}
