//! `enforcer discover`: which functions of a library enclose the kernel's TCP sends and receives.
//!
//! Userspace probes every function of the library (a chunk at a time) with `discover_enter` /
//! `discover_exit`, the attach cookie being the function's slot in the chunk (plus
//! `COOKIE_EXPORTED`). Each thread keeps a stack of the probed calls in progress; discover's own
//! kernel TCP hook programs (`discover_*`, the forms of `tcp.rs`) call [`on_tcp_io`], which
//! credits every frame of the stack (`FnHits`). The agent never loads them.
//!
//! Frames carry the user stack pointer at entry, so the stack heals itself when a return probe
//! never runs (`longjmp`, the kernel's per-task limit of 64 pending return probes, a thread that
//! dies): a frame whose stack area a new call reuses, or that an outer call returns past, is gone.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::{map, uprobe, uretprobe},
    maps::{LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};
use enforcer_common::discover::{COOKIE_EXPORTED, FnHits, MAX_DEPTH, MAX_SLOTS, stat};

use crate::{sock, stats, tcp::tcp_hooks};

const FRAME_EXPORTED: u32 = 1;
const FRAME_SENT: u32 = 2;
const FRAME_RECEIVED: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Frame {
    /// User stack pointer at entry (at the return address on x86-64).
    sp: u64,
    slot: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Stack {
    frames: [Frame; MAX_DEPTH],
    depth: u32,
    _pad: u32,
}

/// Thread id → probed calls in progress. (Map names stay within the kernel's 15 characters:
/// `uprobe_multi` copies of the programs find their maps by name.) LRU: threads that die inside a call cannot fill it.
#[map(name = "DISCOVER_STACKS")]
static DISCOVER_STACKS: LruHashMap<u32, Stack> = LruHashMap::with_max_entries(8192, 0);

/// A new `Stack` is built here (it is larger than the 512-byte eBPF stack).
#[map(name = "DISC_SCRATCH")]
static DISC_SCRATCH: PerCpuArray<Stack> = PerCpuArray::with_max_entries(1, 0);

/// What each slot's function did; userspace sums the CPUs and zeroes it between chunks.
#[map(name = "DISCOVER_HITS")]
static DISCOVER_HITS: PerCpuArray<FnHits> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

/// `discover::stat::*` counters.
#[map(name = "DISCOVER_STATS")]
static DISCOVER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[inline(always)]
fn bump_stat(index: u32) {
    stats::bump(&DISCOVER_STATS, index);
}

#[inline(always)]
fn hits(slot: u32) -> Option<&'static mut FnHits> {
    // SAFETY: per-CPU slot, valid for this program run, no concurrent writer on this CPU.
    DISCOVER_HITS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// The user stack pointer of a probe context.
#[inline(always)]
fn user_sp(regs: *const aya_ebpf::bindings::pt_regs) -> u64 {
    // SAFETY: the context of a uprobe is its pt_regs, readable directly.
    let regs = unsafe { &*regs };
    crate::regs::stack_pointer(regs)
}

#[uprobe]
pub fn discover_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: a uprobe context is a valid argument for this helper.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let slot = cookie as u32;
    let flags = if cookie & COOKIE_EXPORTED != 0 {
        FRAME_EXPORTED
    } else {
        0
    };
    let sp = user_sp(ctx.regs);
    if let Some(h) = hits(slot) {
        h.calls += 1;
    }
    let tid = current_tid();
    let stack = match DISCOVER_STACKS.get_ptr_mut(tid) {
        // SAFETY: map value of this thread, valid for this program run.
        Some(s) => unsafe { &mut *s },
        None => {
            let Some(fresh) = DISC_SCRATCH.get_ptr_mut(0) else {
                return 0;
            };
            // SAFETY: per-CPU scratch, ours for this run.
            unsafe { (*fresh).depth = 0 };
            // SAFETY: as above. By reference: a copy would not fit the 512-byte eBPF stack.
            let fresh: &Stack = unsafe { &*fresh };
            if DISCOVER_STACKS.insert(tid, fresh, 0).is_err() {
                bump_stat(stat::NO_STACK);
                return 0;
            }
            match DISCOVER_STACKS.get_ptr_mut(tid) {
                // SAFETY: as above.
                Some(s) => unsafe { &mut *s },
                None => return 0,
            }
        }
    };
    // Frames below this call's stack pointer belong to calls that are over (their return probe
    // did not run). Equal stack pointers stay: a tail call enters with its caller's.
    for _ in 0..MAX_DEPTH {
        let depth = stack.depth as usize;
        if depth == 0 || depth > MAX_DEPTH || stack.frames[slot_of(depth - 1)].sp >= sp {
            break;
        }
        stack.depth -= 1;
    }
    let depth = stack.depth as usize;
    if depth < MAX_DEPTH {
        stack.frames[slot_of(depth)] = Frame { sp, slot, flags };
        stack.depth += 1;
    } else {
        bump_stat(stat::OVERFLOW);
    }
    0
}

/// `i` masked into the frame array. The compiler's bounds checks compare one copy of a register
/// and index with another, which the verifier cannot connect; a mask bounds the index itself
/// (MAX_DEPTH is a power of two, and callers check `i < MAX_DEPTH` first).
#[inline(always)]
fn slot_of(i: usize) -> usize {
    i & (MAX_DEPTH - 1)
}

#[uretprobe]
pub fn discover_exit(ctx: RetProbeContext) -> u32 {
    let sp = user_sp(ctx.regs);
    let tid = current_tid();
    let Some(stack) = DISCOVER_STACKS.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: map value of this thread, valid for this program run.
    let stack = unsafe { &mut *stack };
    // Returning pops this call's frame (entered at or below the stack pointer it returns to),
    // the frames of tail calls sharing it, and any deeper leftovers.
    for _ in 0..MAX_DEPTH {
        let depth = stack.depth as usize;
        if depth == 0 || depth > MAX_DEPTH {
            break;
        }
        let top = &stack.frames[slot_of(depth - 1)];
        if top.sp > sp {
            break;
        }
        finish(top);
        stack.depth -= 1;
    }
    0
}

/// Books a finished call by what it enclosed.
#[inline(always)]
fn finish(frame: &Frame) {
    let sent = frame.flags & FRAME_SENT != 0;
    let received = frame.flags & FRAME_RECEIVED != 0;
    if !sent && !received {
        return;
    }
    if let Some(h) = hits(frame.slot) {
        match (sent, received) {
            (true, true) => h.calls_both += 1,
            (true, false) => h.calls_send_only += 1,
            _ => h.calls_recv_only += 1,
        }
    }
}

tcp_hooks!(
    on_tcp_io,
    discover_fentry_send,
    discover_fentry_recv,
    discover_kprobe_send,
    discover_kprobe_recv,
    discover_tp_send,
    discover_tp_recv
);

/// Called by discover's kernel TCP hooks with the socket and `direction::*`. Sockets that name
/// no flow (not TCP, unconnected, unreadable) are ignored.
#[inline(always)]
fn on_tcp_io(sk: *const u8, direction: u8) {
    let Some(stack) = DISCOVER_STACKS.get_ptr_mut(current_tid()) else {
        return;
    };
    // SAFETY: map value of this thread, valid for this program run.
    let stack = unsafe { &mut *stack };
    let depth = (stack.depth as usize).min(MAX_DEPTH);
    if depth == 0 || sock::flow_of(sk).is_err() {
        return;
    }
    bump_stat(stat::EVENTS);
    let d = (direction & 1) as usize;
    let bit = if d == 0 { FRAME_SENT } else { FRAME_RECEIVED };
    let mut outer: Option<u32> = None;
    let mut first: Option<u32> = None;
    let mut innermost: Option<u32> = None;
    for i in 0..MAX_DEPTH {
        if i >= depth {
            break;
        }
        let frame = &mut stack.frames[slot_of(i)];
        frame.flags |= bit;
        if let Some(h) = hits(frame.slot) {
            h.enclosed[d] += 1;
        }
        if first.is_none() {
            first = Some(frame.slot);
        }
        if outer.is_none() && frame.flags & FRAME_EXPORTED != 0 {
            outer = Some(frame.slot);
        }
        innermost = Some(frame.slot);
    }
    if let Some(h) = outer.or(first).and_then(hits) {
        h.outermost[d] += 1;
    }
    if let Some(h) = innermost.and_then(hits) {
        h.innermost[d] += 1;
    }
}
