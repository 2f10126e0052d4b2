//! What the datapath knows per TCP 4-tuple: the library it was attributed to and its verdict
//! (`FLOWS`), whether its packets are dropped (`BLOCKLIST`), whether its ClientHello was judged
//! (`HELLOS_SEEN`), and [`forget`], which clears all three when the connection closes.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap},
};
use enforcer_common::flow::{FlowKey, FlowState};

use enforcer_common::stat::Stat;

use crate::{
    flow_head,
    sock::{self, SockError},
    stats,
};

/// Every attributed 4-tuple and its verdict. LRU: old closed flows make room for new ones.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(65536, 0);

/// 4-tuples whose packets XDP (ingress) and tc (egress) drop. Not LRU: a block is never evicted
/// silently; when full, the flow is reported as `BLOCKLIST_FULL` and counted.
#[map(name = "BLOCKLIST")]
pub static BLOCKLIST: HashMap<FlowKey, u8> = HashMap::with_max_entries(16384, 0);

/// Flows whose first ClientHello was judged → its TCP sequence number (for debugging with
/// `bpftool map dump`). A flow here is not parsed again.
#[map(name = "HELLOS_SEEN")]
pub static HELLOS_SEEN: LruHashMap<FlowKey, u32> = LruHashMap::with_max_entries(16384, 0);

/// What `FLOWS` holds for `flow`, copied out.
#[inline(always)]
pub fn state(flow: &FlowKey) -> Option<FlowState> {
    // SAFETY: copied out at once.
    unsafe { FLOWS.get(flow) }.copied()
}

/// Records (or overwrites) what is known of `flow`.
#[inline(always)]
pub fn record(flow: &FlowKey, state: &FlowState) {
    // LRU insert cannot fail for lack of room.
    let _ = FLOWS.insert(flow, state, 0);
}

#[inline(always)]
pub fn is_blocked(flow: &FlowKey) -> bool {
    // SAFETY: only existence is checked.
    unsafe { BLOCKLIST.get(flow) }.is_some()
}

/// Puts `flow` in the blocklist; false if it is full.
#[inline(always)]
pub fn block(flow: &FlowKey) -> bool {
    BLOCKLIST.insert(flow, 1, 0).is_ok()
}

/// Whether the ClientHello of `flow` was judged already.
#[inline(always)]
pub fn hello_seen(flow: &FlowKey) -> bool {
    // SAFETY: only existence is checked.
    unsafe { HELLOS_SEEN.get(flow) }.is_some()
}

#[inline(always)]
pub fn mark_hello_seen(flow: &FlowKey, seq: u32) {
    let _ = HELLOS_SEEN.insert(flow, seq, 0);
}

/// A closed connection leaves every table, so a later connection reusing the 4-tuple is judged
/// afresh (and an allowed library is not dropped because of a dead denied one).
#[inline(always)]
pub fn forget(sk: *const u8) {
    match sock::closing_flow_of(sk) {
        Ok(flow) => {
            let _ = FLOWS.remove(flow);
            let _ = BLOCKLIST.remove(flow);
            let _ = HELLOS_SEEN.remove(flow);
            flow_head::forget(&flow);
        }
        // The entries stay until evicted (FLOWS, HELLOS_SEEN) or unblocked (BLOCKLIST).
        Err(SockError::ReadFailed) => stats::count(Stat::SockReadFailures),
        Err(_) => {}
    }
}
