//! The JA4 cache's kernel side (`enforcer_common::ja4_key`): when the ClientHello reader
//! (`offer.rs`) has read a hello, it looks its JA4 fields up in `JA4_CACHE`, where userspace put
//! the policy's verdict on the same fields when it first made their JA4. A hit is the flow's
//! JA4 verdict at once (`posture::set_ja4_matched`), so its ServerHello does not wait for
//! userspace; a miss leaves it to userspace (`agent::events::ja4_gate`), as without a cache.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use enforcer_common::{
    flow::FlowKey,
    ja4_key::{JA4_CACHE_ENTRIES, Ja4Key},
    offer::OfferedEvent,
};

use crate::posture;

/// Ja4 fields (with the policy's generation) → the patterns their JA4 matched. Written by
/// userspace; LRU.
#[map(name = "JA4_CACHE")]
static JA4_CACHE: LruHashMap<Ja4Key, u64> = LruHashMap::with_max_entries(JA4_CACHE_ENTRIES, 0);

/// `[0]`: the generation of the policy in force, 0 while it is written or when it has no
/// `ja4` list (no lookups).
#[map(name = "JA4_GENERATION")]
static JA4_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// The key being built (304 bytes: more than the reader's stack can spare).
#[map(name = "JA4_KEY_SCRATCH")]
static JA4_KEY_SCRATCH: PerCpuArray<Ja4Key> = PerCpuArray::with_max_entries(1, 0);

/// If the policy's verdict on `event`'s JA4 fields is cached, it becomes `flow`'s.
#[inline(always)]
pub fn recall(flow: &FlowKey, event: &OfferedEvent) {
    let generation = JA4_GENERATION.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return;
    }
    let Some(key) = JA4_KEY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, valid for this run; nothing else on this CPU uses it meanwhile.
    let key = unsafe { &mut *key };
    if !Ja4Key::fill(key, event, generation) {
        return;
    }
    // SAFETY: copied out at once.
    if let Some(matched) = unsafe { JA4_CACHE.get(key) }.copied() {
        posture::set_ja4_matched(flow, matched);
    }
}
