//! Per-CPU counters read by userspace: `STATS` (indexed by `enforcer_common::stat::Stat`), and
//! the one `bump` every counter map of the object uses (`WATCH_STATS`, `DISCOVER_STATS` too).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use enforcer_common::stat::{COUNT, Stat};

/// Drops, losses and pressure, one `u64` per `Stat` per CPU.
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT, 0);

/// Adds one to `STATS[stat]` on this CPU.
#[inline(always)]
pub fn count(stat: Stat) {
    bump(&STATS, stat.index());
}

/// Adds one to `map[index]` on this CPU (an index past the map's end is ignored).
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, index: u32) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot: no other writer can race with us on this CPU.
        unsafe { *counter += 1 };
    }
}
