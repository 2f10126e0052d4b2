//! Atomic adds to map values shared by every CPU (the counting arrays of `flow.rs` and
//! `flow_head.rs`).

/// Adds `delta` (two's complement: `u64::MAX` is -1) to the u64 at `slot`, atomically.
#[inline(always)]
pub fn add(slot: *mut u64, delta: u64) {
    // The BPF target has no atomic read-modify-write in `core::sync::atomic` (load and store
    // only), so the intrinsic: LLVM lowers it, result unused, to BPF's atomic add (`lock
    // *(u64 *)(r + 0) += r`), which every kernel enforcer runs on has.
    // SAFETY: an aligned u64 in an array map, only ever updated atomically by the kernel.
    // SeqCst: the increment must be visible before the insert it announces.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(
            slot, delta,
        );
    }
}
