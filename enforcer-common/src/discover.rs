//! `enforcer discover` (`enforcer-ebpf/src/discover.rs`, `enforcer/src/discover/`): every
//! function of a library gets an entry and a return uprobe whose cookie is its slot in the current
//! chunk; a per-thread stack of the slots in progress tells, at each kernel TCP send or receive,
//! which library functions enclose it.

/// `LruHashMap<u32, Stack>` (thread id → library calls in progress; private to the eBPF side).
pub const STACKS: &str = "DISCOVER_STACKS";
/// `PerCpuArray<FnHits>`, indexed by slot.
pub const HITS: &str = "DISCOVER_HITS";
/// `PerCpuArray<u64>` indexed by `discover::stat::*`.
pub const STATS: &str = "DISCOVER_STATS";
/// Load-time global (u32): non-zero only in `enforcer discover`. The agent loads the object
/// with it 0, and the verifier prunes the discovery code from its TCP hooks.
pub const ENABLED_GLOBAL: &str = "DISCOVER_ENABLED";

/// Most functions probed at once (slots of `HITS`).
pub const MAX_SLOTS: u32 = 8192;
/// Frames kept per thread; deeper calls are counted (`stat::OVERFLOW`), not recorded.
pub const MAX_DEPTH: usize = 32;
/// Cookie bit: the function is exported (in `.dynsym`), i.e. an entry point of the library.
pub const COOKIE_EXPORTED: u64 = 1 << 32;

pub mod stat {
    /// A call deeper than `MAX_DEPTH`.
    pub const OVERFLOW: u32 = 0;
    /// A kernel TCP send or receive inside at least one probed function.
    pub const EVENTS: u32 = 1;
    /// A new thread stack could not be stored.
    pub const NO_STACK: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// What one probed function did during a run, per CPU (userspace sums). `[send, recv]`
/// pairs are indexed by `direction::*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FnHits {
    /// Times it was entered.
    pub calls: u64,
    /// Kernel TCP events while it was anywhere on the thread's stack.
    pub enclosed: [u64; 2],
    /// ... while it was the innermost probed function.
    pub innermost: [u64; 2],
    /// ... while it was the outermost exported probed function (the outermost probed one
    /// when none is exported): the entry point the application called.
    pub outermost: [u64; 2],
    /// Calls that returned having enclosed sends only, receives only, and both.
    pub calls_send_only: u64,
    pub calls_recv_only: u64,
    pub calls_both: u64,
}
const _: () = assert!(core::mem::size_of::<FnHits>() == 80);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, only u64 fields, valid for any bit pattern.
unsafe impl aya::Pod for FnHits {}
