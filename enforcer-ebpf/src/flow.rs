//! What the datapath knows per TCP 4-tuple: the library it was attributed to and its verdict
//! (`FLOWS`), whether its packets are dropped (`BLOCKLIST`, and `BLOCKLIST_OVERFLOW` for blocks
//! that did not fit), whether its ClientHello was judged (`HELLOS_SEEN`), and [`forget`], which
//! clears them when the connection closes.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use enforcer_common::flow::{FlowKey, FlowState, block, held};

use enforcer_common::stat::Stat;

use crate::{
    atomic, flow_head,
    sock::{self, SockError},
    stats,
};

/// Every attributed 4-tuple and its verdict. LRU: old closed flows make room for new ones.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(65536, 0);

/// 4-tuples whose packets XDP (ingress) and tc (egress) drop → `block::*` (who put them there).
/// Not LRU: a block is never evicted; entries leave when their local socket closes, when the
/// operator unblocks them, or when the agent's sweep finds no socket behind them (then they move
/// to `BLOCKLIST_OVERFLOW`). When full, a denied flow goes to `BLOCKLIST_OVERFLOW` instead
/// (verdict `BLOCKLIST_FULL`, counted): it is still dropped.
#[map(name = "BLOCKLIST")]
pub static BLOCKLIST: HashMap<FlowKey, u8> = HashMap::with_max_entries(16384, 0);

/// Blocks that did not fit in `BLOCKLIST`, and blocks the sweep found without a local socket.
/// LRU, so an insert never fails: under a flood the oldest of these (flows whose socket was
/// aborted long ago, or that never had a local one) make room. Looked up only once
/// `OVERFLOW_IN_USE[0]` is set, so it costs nothing until the blocklist first overflowed.
#[map(name = "BLOCKLIST_OVERFLOW")]
pub static BLOCKLIST_OVERFLOW: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// `OVERFLOW_IN_USE[0]` is 1 once anything was put in `BLOCKLIST_OVERFLOW` (sticky: clearing it
/// could race with an insert on another CPU and unblock that flow).
#[map(name = "OVERFLOW_IN_USE")]
pub static OVERFLOW_IN_USE: Array<u32> = Array::with_max_entries(1, 0);

/// Whether `BLOCKLIST` may hold anything (`enforcer_common::flow::held`): slot 0 the kernel's
/// total, slot 1 userspace's flag. With the flag clear and the packet's `BLOCKLIST_BUCKETS` slot
/// zero, the packet programs skip the hash lookup (a 40-byte key) and pay two array reads, which
/// the verifier inlines. A host with nothing blocked, the common case, filters at about the cost
/// of parsing the headers.
#[map(name = "BLOCKLIST_HELD")]
pub static BLOCKLIST_HELD: Array<u64> = Array::with_max_entries(held::ENTRIES, 0);

/// The kernel's `BLOCKLIST` entries per bucket of the 4-tuple (`held::bucket_of`): with flows
/// blocked, a packet whose bucket is empty still skips the hash lookup.
#[map(name = "BLOCKLIST_BUCKETS")]
pub static BLOCKLIST_BUCKETS: Array<u64> = Array::with_max_entries(held::BUCKETS, 0);

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

/// `state` as whether there is one and its value, zeroed when there is none. An `Option`'s
/// payload is undefined when it is `None`, and LLVM may still copy it to the stack on that path:
/// an unwritten register to the verifier (`R4 !read_ok`), which refuses the program. The hello
/// judge met that in the host layer's copy (`cgroup.rs`).
#[inline(always)]
pub fn state_found(flow: &FlowKey) -> (bool, FlowState) {
    // SAFETY: copied out at once.
    let found = unsafe { FLOWS.get(flow) };
    (found.is_some(), found.copied().unwrap_or_default())
}

/// Records (or overwrites) what is known of `flow`.
#[inline(always)]
pub fn record(flow: &FlowKey, state: &FlowState) {
    // LRU insert cannot fail for lack of room.
    let _ = FLOWS.insert(flow, state, 0);
}

#[inline(always)]
fn overflow_in_use() -> bool {
    OVERFLOW_IN_USE.get(0).copied().unwrap_or(0) != 0
}

/// Whether `BLOCKLIST` may hold `flow`: userspace put entries there (it does not count them), or
/// the kernel's count of `flow`'s bucket is not zero. A slot that cannot be read counts as
/// holding.
#[inline(always)]
fn blocklist_may_hold(flow: &FlowKey) -> bool {
    let userspace = BLOCKLIST_HELD.get(held::USERSPACE).copied().unwrap_or(1);
    let bucket = BLOCKLIST_BUCKETS
        .get(held::bucket_of(flow))
        .copied()
        .unwrap_or(1);
    userspace != 0 || bucket != 0
}

/// Adds `delta` (two's complement: `u64::MAX` is -1) to the kernel's count of `BLOCKLIST`
/// entries (`BLOCKLIST_HELD[KERNEL]`) and to that of `flow`'s bucket, atomically: the TCP hooks
/// of every CPU insert and every close deletes.
#[inline(always)]
fn held_add(flow: &FlowKey, delta: u64) {
    if let Some(slot) = BLOCKLIST_HELD.get_ptr_mut(held::KERNEL) {
        atomic::add(slot, delta);
    }
    if let Some(slot) = BLOCKLIST_BUCKETS.get_ptr_mut(held::bucket_of(flow)) {
        atomic::add(slot, delta);
    }
}

#[inline(always)]
pub fn is_blocked(flow: &FlowKey) -> bool {
    // SAFETY: only existence is checked.
    if blocklist_may_hold(flow) && unsafe { BLOCKLIST.get(flow) }.is_some() {
        return true;
    }
    // SAFETY: only existence is checked.
    overflow_in_use() && unsafe { BLOCKLIST_OVERFLOW.get(flow) }.is_some()
}

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = -17;

/// Where [`block`] put a flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// In `BLOCKLIST`.
    Listed,
    /// `BLOCKLIST` was full: in `BLOCKLIST_OVERFLOW` (still dropped; counted).
    Overflow,
}

/// Puts `flow` in the blocklist, or, when it is full, in the overflow table: fail-closed, the
/// flow's packets are dropped either way.
#[inline(always)]
pub fn block(flow: &FlowKey) -> Blocked {
    // Counted before the entry exists, so the packet programs never skip a present entry.
    held_add(flow, 1);
    match BLOCKLIST.insert(flow, block::KERNEL, BPF_NOEXIST) {
        Ok(()) => return Blocked::Listed,
        // Listed already (by the operator, or another CPU): nothing was added.
        Err(EEXIST) => {
            held_add(flow, u64::MAX);
            return Blocked::Listed;
        }
        Err(_) => held_add(flow, u64::MAX),
    }
    if let Some(flag) = OVERFLOW_IN_USE.get_ptr_mut(0) {
        // SAFETY: a u32 in an array map; every writer stores the same value.
        unsafe { *flag = 1 };
    }
    // LRU: the insert makes room rather than fail.
    let _ = BLOCKLIST_OVERFLOW.insert(flow, block::KERNEL, 0);
    Blocked::Overflow
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
/// afresh (and an allowed library is not dropped because of a dead denied one). Returns the
/// flow it forgot, for the tables other modules own (`posture::forget`).
#[inline(always)]
pub fn forget(sk: *const u8) -> Option<FlowKey> {
    match sock::closing_flow_of(sk) {
        Ok(flow) => {
            let _ = FLOWS.remove(flow);
            if BLOCKLIST.remove(flow).is_ok() {
                held_add(&flow, u64::MAX);
            }
            if overflow_in_use() {
                let _ = BLOCKLIST_OVERFLOW.remove(flow);
            }
            let _ = HELLOS_SEEN.remove(flow);
            flow_head::forget(&flow);
            Some(flow)
        }
        // The entries stay until evicted (FLOWS, HELLOS_SEEN) or unblocked (BLOCKLIST).
        Err(SockError::ReadFailed) => {
            stats::count(Stat::SockReadFailures);
            None
        }
        Err(_) => None,
    }
}
