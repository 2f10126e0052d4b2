//! One run of the host layer's egress judge per CPU at a time (`cgroup.rs`).
//!
//! The judge keeps the hello it reads in per-CPU scratch maps (`HELLO_SCRATCH`, and the
//! readers' `OFFER_ARGS`, `POSTURE_ARGS`, `OFFER_TEMPLATE`). The XDP and tc programs cannot be
//! interrupted by one another on a CPU (they run in softirq, or with bottom halves off), but
//! cgroup_skb egress runs in the sending process's context with bottom halves on: a softirq
//! that transmits (an ACK, a segment the peer's window let out) can run the same judge on the
//! same CPU in the middle of it. The kernel only keeps the run from migrating. So a run marks
//! its CPU busy here for as long as it uses the scratch, through its tail call into a reader,
//! which leaves; a run that finds its CPU busy takes the scratch-free path (`cgroup::nested`).
//!
//! The mark is a plain read and write, not an atomic exchange: an interrupting run completes
//! before the one it interrupted resumes, so the pair cannot interleave with it. (A kernel with
//! full preemption can also switch tasks in the middle of a run, between the two: that window
//! is two instructions.)

use aya_ebpf::{macros::map, maps::PerCpuArray};

/// What a cgroup_skb program returns: 1 lets the packet go, 0 drops it (egress: the sender's
/// TCP retransmits until the socket is aborted). Here for the readers the host layer
/// tail-calls as well as for `cgroup.rs`.
pub const PASS: i32 = 1;
pub const DROP: i32 = 0;

/// `[0]` = 1 while a run of the host layer's egress judge uses the scratch on this CPU.
#[map(name = "HOST_BUSY")]
static HOST_BUSY: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// True: no run was in progress on this CPU and this one now is; it must `leave`, on every
/// path (a reader it tail-calls leaves for it).
#[inline(always)]
pub fn enter() -> bool {
    let Some(busy) = HOST_BUSY.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU map value, valid for this run.
    unsafe {
        if *busy != 0 {
            return false;
        }
        *busy = 1;
    }
    true
}

/// The run that `enter`ed is done with the scratch.
#[inline(always)]
pub fn leave() {
    if let Some(busy) = HOST_BUSY.get_ptr_mut(0) {
        // SAFETY: per-CPU map value, valid for this run.
        unsafe { *busy = 0 };
    }
}
