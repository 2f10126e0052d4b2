//! Attribution and verdict, taken in the kernel at the first TLS call that moves bytes on a
//! socket: the 4-tuple is tied to the library, and a denied library's flow enters the blocklist
//! before its first byte reaches the egress classifier.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use enforcer_common::{
    flow::{FlowKey, FlowState, cookie, direction, verdict},
    hello::evidence,
    stat::Stat,
};

use crate::{
    call_stack, events, flow, policy,
    sock::{self, SockError},
    stats, who,
};

/// Called by every kernel TCP hook form with the socket being read or written.
#[inline(always)]
pub fn on_tcp_io(sk: *const u8, direction: u8) {
    // Who is talking: recorded for every send when the policy has rules scoped to it (`who.rs`).
    if direction == direction::SEND {
        who::record_sender(sk);
    }
    // Fast path: most TCP I/O happens outside any probed TLS call.
    let Some(call) = call_stack::innermost_call() else {
        return;
    };
    let flow = match sock::flow_of(sk) {
        Ok(flow) => flow,
        // Not evidence against any library (fail-open), but not silent either: wrong offsets
        // would leave every flow unattributed.
        Err(SockError::ReadFailed) => {
            stats::count(Stat::SockReadFailures);
            return;
        }
        Err(_) => return,
    };
    let lib_id = cookie::lib_id(call);
    if let Some(known) = flow::state(&flow) {
        // Same library again, or already blocked: nothing new to decide or report.
        if known.lib_id == lib_id
            || known.verdict == verdict::BLOCKED
            || known.verdict == verdict::BLOCKLIST_FULL
        {
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
        evidence: evidence::THREAD,
    };
    flow::record(&flow, &state);
    stats::count(Stat::FlowsAttributed);
    events::attributed(&flow, &state, now);
}

#[inline(always)]
fn decide(flow: &FlowKey, lib_id: u32, dir: u8) -> u8 {
    // A rule scoped to who is talking may decide the library: judged at the hello, where the
    // sender is known (`who.rs`), as a flow scoped by server name is.
    if dir == direction::SEND
        && policy::scoped_action(lib_id).is_none()
        && policy::hello_policy().late_attribution == 0
        && who::applies(lib_id)
    {
        return verdict::PENDING_SERVER_NAME;
    }
    if let Some(nameless) = policy::scoped_action(lib_id) {
        let late = policy::hello_policy().late_attribution != 0;
        // A client's first TLS send is its ClientHello: judged there, by name, in tc. A flow
        // whose first TLS call receives (a server) sends no ClientHello, and on the late hook
        // form the ClientHello has already left: both are judged as if nameless (strictest).
        if dir == direction::SEND && !late {
            return verdict::PENDING_SERVER_NAME;
        }
        return policy::apply(flow, Some(nameless));
    }
    policy::apply(flow, policy::library_action(lib_id))
}
