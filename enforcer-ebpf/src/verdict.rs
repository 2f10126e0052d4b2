//! Attribution and verdict, taken in the kernel at the first TLS call that moves bytes on a
//! socket: the 4-tuple is tied to the library, and a denied library's flow enters the blocklist
//! before its first byte reaches the egress classifier.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated::bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, RingBuf},
};
use enforcer_common::{
    FlowKey, FlowState, HelloPolicy, TlsEvent, action, cookie, direction, hello_verdict, mode,
    stat, verdict,
};

use crate::{sock, stats, tls};

/// Every attributed 4-tuple and its verdict. LRU: old closed flows make room for new ones.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(65536, 0);

/// 4-tuples whose packets XDP (ingress) and tc (egress) drop. Not LRU: a block is never evicted
/// silently; when full, the flow is reported as `BLOCKLIST_FULL` and counted.
#[map(name = "BLOCKLIST")]
pub static BLOCKLIST: HashMap<FlowKey, u8> = HashMap::with_max_entries(16384, 0);

/// Library id → `action::*`, from the policy.
#[map(name = "LIB_ACTIONS")]
pub static LIB_ACTIONS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// `MODE[0]` = `mode::AUDIT` | `mode::ENFORCE`.
#[map(name = "MODE")]
static MODE: Array<u32> = Array::with_max_entries(1, 0);

/// Library id → action for a ClientHello without a readable server name; only libraries with
/// rules scoped by `server_names` are here, and their client flows are judged at the ClientHello
/// (`client_hello.rs`) rather than at attribution.
#[map(name = "SCOPED_LIBS")]
pub static SCOPED_LIBS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// `HELLO_POLICY[0]`: `unattributed_tls` and switches, from the policy and the hook form.
#[map(name = "HELLO_POLICY")]
pub static HELLO_POLICY: Array<HelloPolicy> = Array::with_max_entries(1, 0);

/// One `TlsEvent` per newly attributed (flow, library), one `HelloEvent` per judged ClientHello.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Called by every kernel TCP hook form with the socket being read or written.
#[inline(always)]
pub fn on_tcp_io(sk: *const u8, direction: u8) {
    // Fast path: most TCP I/O happens outside any probed TLS call.
    let Some(call) = tls::innermost_call() else {
        return;
    };
    let Some(flow) = sock::flow_of(sk) else {
        return;
    };
    let lib_id = cookie::lib_id(call);
    // SAFETY: copied out at once.
    if let Some(known) = unsafe { FLOWS.get(flow) } {
        // Same library again, or already blocked: nothing new to decide or report.
        if known.lib_id == lib_id || known.verdict == verdict::BLOCKED {
            return;
        }
    }
    let outcome = decide(&flow, lib_id, direction);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let state = FlowState {
        first_seen_ns: now,
        lib_id,
        verdict: outcome,
        op: cookie::op(call),
        direction,
        _pad: 0,
    };
    // LRU insert cannot fail for lack of room.
    let _ = FLOWS.insert(flow, state, 0);
    stats::bump(stat::FLOWS_ATTRIBUTED);
    report(&flow, &state, now);
}

#[inline(always)]
fn decide(flow: &FlowKey, lib_id: u32, dir: u8) -> u8 {
    // SAFETY: copied out at once.
    if let Some(nameless) = unsafe { SCOPED_LIBS.get(lib_id) }.copied() {
        let late = HELLO_POLICY.get(0).is_some_and(|p| p.late_attribution != 0);
        // A client's first TLS send is its ClientHello: judged there, by name, in tc. A flow
        // whose first TLS call receives (a server) sends no ClientHello, and on the late hook
        // form the ClientHello has already left: both are judged as if nameless (strictest).
        if dir == direction::SEND && !late {
            return hello_verdict::PENDING_SERVER_NAME;
        }
        return apply(flow, Some(nameless));
    }
    // SAFETY: copied out at once.
    apply(flow, unsafe { LIB_ACTIONS.get(lib_id) }.copied())
}

/// The verdict for `lib_action` on `flow` in the current mode; blocklists the flow when denied
/// and enforcing. Also used by the egress classifier for ClientHello decisions.
#[inline(always)]
pub fn apply(flow: &FlowKey, lib_action: Option<u8>) -> u8 {
    let enforcing = MODE.get(0).copied() == Some(mode::ENFORCE);
    match lib_action {
        Some(action::ALLOW) => verdict::ALLOWED,
        Some(action::AUDIT) => verdict::AUDITED,
        Some(action::DENY) if enforcing => {
            if BLOCKLIST.insert(flow, 1, 0).is_ok() {
                verdict::BLOCKED
            } else {
                // Fail-open: the packets go out, but userspace warns loudly and counts it.
                stats::bump(stat::BLOCKLIST_FULL);
                verdict::BLOCKLIST_FULL
            }
        }
        Some(action::DENY) => verdict::WOULD_BLOCK,
        _ => verdict::UNKNOWN_LIBRARY,
    }
}

#[inline(always)]
fn report(flow: &FlowKey, state: &FlowState, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<TlsEvent>(0) else {
        stats::bump(stat::EVENTS_LOST);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(TlsEvent {
        ts_ns: now,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        lib_id: state.lib_id,
        verdict: state.verdict,
        op: state.op,
        direction: state.direction,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
        flow: *flow,
    });
    entry.submit(0);
}

/// A closed connection leaves both tables, so a later connection reusing the 4-tuple is judged
/// afresh (and an allowed library is not dropped because of a dead denied one).
#[inline(always)]
pub fn forget(sk: *const u8) {
    if let Some(flow) = sock::closing_flow_of(sk) {
        let _ = FLOWS.remove(flow);
        let _ = BLOCKLIST.remove(flow);
        crate::client_hello::forget(&flow);
    }
}
