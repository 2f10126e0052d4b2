//! Per-CPU counters read by userspace (`STATS`, indexed by `enforcer_common::stat`).

use aya_ebpf::{macros::map, maps::PerCpuArray};
use enforcer_common::hello_stat;

/// Drops, losses and pressure, one `u64` per `stat::*` and `hello_stat::*` index per CPU.
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(hello_stat::COUNT, 0);

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer can race with us on this CPU.
        unsafe { *counter += 1 };
    }
}
