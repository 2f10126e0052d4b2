//! Crypto posture on the wire: the ServerHello of every judged flow is read (`server_hello.rs`)
//! for what the connection negotiated, recorded (`POSTURES`, `enforcer flows`), reported (a
//! `negotiated` event) and judged by the policy's `tls_versions` / `groups` / `cipher_suites`
//! (`POSTURE_RULES`): a connection that breaks a rule is dropped at its ServerHello, before any
//! application byte, and blocklisted (its socket is aborted by userspace); in audit mode it is
//! reported as would-block.
//!
//! The reader runs as a program of its own, reached by a tail call from the packet programs
//! (`tc.rs` egress for servers on this host, `ingress.rs` for clients), so the verifier walks
//! its extension loop once and not once for every path of the caller: inlined, it made the
//! egress program 2.5× slower to verify, past the VM matrix's start-up bound on 6.1 under TCG.
//! The kernel lets a program tail-call only programs of its own type (and, for XDP, of its own
//! frags support): one table and one copy of the reader per caller kind. The caller passes the
//! segment through `POSTURE_ARGS` (registers and stack do not survive a tail call). An empty
//! table (the reader not loaded) makes the tail call fail: the caller passes the packet.
//!
//! Cost to the callers: a segment whose payload starts with a ServerHello's six header bytes
//! (`16 03 0x .. .. 02`) costs one per-CPU array write and the tail call; others nothing more
//! than reading those six bytes (ingress) or nothing at all (egress: the hello judge found it).

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_SHOT, xdp_action},
    helpers::generated::bpf_ktime_get_ns,
    macros::{cgroup_skb, classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::{SkBuffContext, TcContext, XdpContext},
};
use enforcer_common::{
    event::UNATTRIBUTED,
    flow::{FlowKey, verdict},
    policy::action,
    posture::{
        HOST_RULE, JA4_WAIT_NS, Ja4Verdict, NegotiatedEvent, Posture, PostureRule, broken,
        ja4_state, rule,
    },
    stat::Stat,
};

use crate::{events, flow, host_guard, packet, policy, server_hello, stats};
use enforcer_common::tc_return::PASS as TC_PASS;

/// What each flow negotiated (LRU: closed flows make room). Not pinned: per run.
#[map(name = "POSTURES")]
static POSTURES: LruHashMap<FlowKey, Posture> = LruHashMap::with_max_entries(65536, 0);

/// `HOST_RULE` → the host-wide rule; library id → that library's rule. Written by userspace.
#[map(name = "POSTURE_RULES")]
static POSTURE_RULES: HashMap<u32, PostureRule> = HashMap::with_max_entries(4096, 0);

/// Flow → the policy's JA4 patterns its ClientHello matched, written by userspace from the
/// `offered` event (the kernel does not hash); `WAITING` marks put here while a ServerHello
/// waits for it. LRU: flows that never reach a ServerHello make room.
#[map(name = "JA4_VERDICTS")]
static JA4_VERDICTS: LruHashMap<FlowKey, Ja4Verdict> = LruHashMap::with_max_entries(65536, 0);

/// `[0]` = 1 when `POSTURE_RULES` holds a rule.
#[map(name = "POSTURE_ENABLED")]
static POSTURE_ENABLED: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "POSTURE_TC")]
static POSTURE_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map(name = "POSTURE_XDP")]
static POSTURE_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map(name = "POSTURE_XDP_NOFRAGS")]
static POSTURE_XDP_NOFRAGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map(name = "POSTURE_CG")]
static POSTURE_CG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The segment handed to the reader.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Args {
    pub flow: FlowKey,
    /// Offset of the ServerHello (the segment's payload) in the frame.
    pub payload: u32,
    /// `flow::direction::*` of the ServerHello.
    pub direction: u8,
    pub _pad: [u8; 3],
}

#[map(name = "POSTURE_ARGS")]
static POSTURE_ARGS: PerCpuArray<Args> = PerCpuArray::with_max_entries(1, 0);

const TLS_HANDSHAKE: u8 = 0x16;
const SERVER_HELLO: u8 = 2;
const BPF_NOEXIST: u64 = 1;

/// Whether a segment's first six payload bytes are a ServerHello's record and handshake
/// headers.
#[inline(always)]
pub fn starts_server_hello(head: &[u8; 6]) -> bool {
    head[0] == TLS_HANDSHAKE && head[1] == 3 && head[2] <= 4 && head[5] == SERVER_HELLO
}

/// Which table the caller tail-calls through.
#[derive(Clone, Copy)]
pub enum Caller {
    Tc,
    Xdp,
    XdpNoFrags,
    /// The host layer's egress program (`cgroup.rs`).
    Cgroup,
}

/// Hands the segment to the reader. Returns only if the tail call failed (no reader loaded,
/// or the args slot missing): the caller then passes the packet.
#[inline(always)]
pub fn read<C: EbpfContext>(ctx: &C, caller: Caller, args: Args) {
    let Some(slot) = POSTURE_ARGS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, valid for this run; the reader runs next on this CPU.
    unsafe { *slot = args };
    let table = match caller {
        Caller::Tc => &POSTURE_TC,
        Caller::Xdp => &POSTURE_XDP,
        Caller::XdpNoFrags => &POSTURE_XDP_NOFRAGS,
        Caller::Cgroup => &POSTURE_CG,
    };
    // SAFETY: control goes to the reader and does not come back on success.
    unsafe { table.tail_call(ctx, 0) };
}

#[classifier]
pub fn posture_tc(ctx: TcContext) -> i32 {
    if judge(&ctx) {
        stats::count(Stat::TcDrops);
        return TC_ACT_SHOT;
    }
    TC_PASS
}

#[xdp(frags)]
pub fn posture_xdp(ctx: XdpContext) -> u32 {
    xdp_verdict(&ctx)
}

#[xdp]
pub fn posture_xdp_nofrags(ctx: XdpContext) -> u32 {
    xdp_verdict(&ctx)
}

/// The host layer's (`cgroup.rs`, egress: servers on this host): the run it continues marked
/// its CPU busy.
#[cgroup_skb(egress)]
pub fn posture_cg(ctx: SkBuffContext) -> i32 {
    let drop = judge(&ctx);
    host_guard::leave();
    if drop {
        stats::count(Stat::CgroupDrops);
        return host_guard::DROP;
    }
    host_guard::PASS
}

#[inline(always)]
fn xdp_verdict(ctx: &XdpContext) -> u32 {
    if judge(ctx) {
        stats::count(Stat::XdpDrops);
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

/// Reads, records, reports and judges the ServerHello the caller found; true: drop it.
/// Only the first ServerHello of a flow whose own hello the egress judge saw is judged: a
/// retransmission, or ciphertext of an older flow that happens to begin like a ServerHello,
/// passes.
#[inline(always)]
fn judge<P: packet::Packet>(packet: &P) -> bool {
    let Some(args) = POSTURE_ARGS.get(0).copied() else {
        return false;
    };
    let flow = args.flow;
    if !flow::hello_seen(&flow) {
        return false;
    }
    // Unreadable (cut short, inconsistent lengths): nothing is known, and a rule on any field
    // is broken by it (fail closed). The flow's first bytes from the server are its ServerHello.
    let posture = server_hello::read(packet, args.payload as usize).unwrap_or_default();
    // SAFETY: copied out at once.
    let before = unsafe { POSTURES.get(flow) }.copied();
    if posture.retried != 0 {
        // A HelloRetryRequest: the real ServerHello follows; remember that one came.
        if before.is_none() {
            let mark = Posture {
                retried: 1,
                ..Default::default()
            };
            let _ = POSTURES.insert(flow, mark, BPF_NOEXIST);
        }
        return false;
    }
    // Judged already, unless what is there is a HelloRetryRequest's mark.
    let mut posture = posture;
    match before {
        Some(b) if b.retried != 0 && b.read == 0 => posture.retried = 1,
        Some(_) => return false,
        None => {}
    }
    let lib_id = flow::state(&flow).map_or(UNATTRIBUTED, |s| s.lib_id);
    let (broke, whose, ja4_pending) = match rules_broken(&flow, lib_id, &posture) {
        Ruling::Met { ja4_pending } => (broken::NONE, rule::HOST, ja4_pending),
        Ruling::Broken(b, whose) => (b, whose, 0),
        // Dropped, not recorded: TCP sends the ServerHello again and it is judged then.
        Ruling::Wait => {
            stats::count(Stat::ServerHellosHeld);
            return true;
        }
    };
    let _ = POSTURES.insert(flow, posture, 0);
    let v = if broke == broken::NONE {
        verdict::ALLOWED
    } else {
        policy::apply(&flow, Some(action::DENY))
    };
    let dropped = v == verdict::BLOCKED || v == verdict::BLOCKLIST_FULL;
    let event = NegotiatedEvent {
        flow,
        lib_id,
        verdict: v,
        direction: args.direction,
        broken: broke,
        rule: whose,
        posture,
        ja4_pending,
        ..Default::default()
    };
    // SAFETY: plain helper call.
    events::negotiated(&event, unsafe { bpf_ktime_get_ns() }, dropped);
    dropped
}

/// Forgets what `flow` negotiated and its JA4 verdict (its socket closed).
#[inline(always)]
pub fn forget(flow: &FlowKey) {
    let _ = POSTURES.remove(flow);
    let _ = JA4_VERDICTS.remove(flow);
}

/// `flow`'s JA4 matched the policy's patterns `matched` (a JA4 cache hit, `ja4_cache.rs`).
#[inline(always)]
pub fn set_ja4_matched(flow: &FlowKey, matched: u64) {
    let v = Ja4Verdict {
        matched,
        state: ja4_state::MATCHED,
        ..Default::default()
    };
    let _ = JA4_VERDICTS.insert(flow, v, 0);
}

/// How the rules judge a ServerHello.
enum Ruling {
    /// Every requirement met; `ja4_pending`: a `ja4` rule applies whose verdict is not there
    /// (audit mode: userspace judges it).
    Met { ja4_pending: u8 },
    /// `broken::*`, `rule::*`: the first requirement broken, and whose.
    Broken(u8, u8),
    /// Enforcing, a `ja4` rule applies and the flow's JA4 verdict is not there yet: drop the
    /// ServerHello until it is (at most `JA4_WAIT_NS`).
    Wait,
}

/// The host-wide rule's requirements, then the library's; then their `ja4` lists, against the
/// verdict userspace wrote for the flow.
#[inline(always)]
fn rules_broken(flow: &FlowKey, lib_id: u32, posture: &Posture) -> Ruling {
    if POSTURE_ENABLED.get(0).copied() != Some(1) {
        return Ruling::Met { ja4_pending: 0 };
    }
    // SAFETY: map value references, read within this run.
    let host = unsafe { POSTURE_RULES.get(HOST_RULE) };
    let own = match lib_id {
        UNATTRIBUTED => None,
        // SAFETY: as above.
        id => unsafe { POSTURE_RULES.get(id) },
    };
    for (r, whose) in [(host, rule::HOST), (own, rule::LIBRARY)] {
        if let Some(r) = r {
            let b = r.broken_by(posture);
            if b != broken::NONE {
                return Ruling::Broken(b, whose);
            }
        }
    }
    let host_ja4 = host.is_some_and(PostureRule::needs_ja4);
    let own_ja4 = own.is_some_and(PostureRule::needs_ja4);
    if !host_ja4 && !own_ja4 {
        return Ruling::Met { ja4_pending: 0 };
    }
    let first = if host_ja4 { rule::HOST } else { rule::LIBRARY };
    // SAFETY: copied out at once.
    let found = unsafe { JA4_VERDICTS.get(flow) }.copied();
    match found {
        Some(v) if v.state == ja4_state::MATCHED => {
            for (r, whose) in [(host, rule::HOST), (own, rule::LIBRARY)] {
                if let Some(r) = r
                    && !r.ja4_met(v.matched)
                {
                    return Ruling::Broken(broken::JA4, whose);
                }
            }
            Ruling::Met { ja4_pending: 0 }
        }
        Some(v) if v.state == ja4_state::UNREAD => Ruling::Broken(broken::JA4, first),
        _ if !policy::enforcing() => Ruling::Met { ja4_pending: 1 },
        // SAFETY: plain helper call.
        waiting => match (waiting, unsafe { bpf_ktime_get_ns() }) {
            (Some(w), now) if now.wrapping_sub(w.since_ns) > JA4_WAIT_NS => {
                Ruling::Broken(broken::JA4, first)
            }
            (Some(_), _) => Ruling::Wait,
            (None, now) => {
                let mark = Ja4Verdict {
                    since_ns: now,
                    ..Default::default()
                };
                // Not over a verdict userspace wrote meanwhile.
                let _ = JA4_VERDICTS.insert(flow, mark, BPF_NOEXIST);
                Ruling::Wait
            }
        },
    }
}
