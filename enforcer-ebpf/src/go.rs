//! Go `crypto/tls` calls, tracked per goroutine.
//!
//! A goroutine can park inside `(*Conn).Write` (waiting for the socket) and resume on another OS
//! thread, while its first thread runs other goroutines: a per-thread stack (`tls.rs`) would
//! attribute those goroutines' I/O to TLS and pop the wrong thread's entry on return. So Go calls
//! are keyed by (process, goroutine): under Go's register ABI (amd64, Go 1.17+) R14 holds the
//! running goroutine's `g` pointer in Go code, at the probed entry and return instructions alike,
//! and still at the `SYSCALL` that reaches the kernel TCP hook (the runtime's syscall stubs do not
//! touch R14). The hook reads R14 from the task's saved user registers (`bpf_task_pt_regs`).
//!
//! Userspace puts `go_enter` after each function's stack check (a stack growth re-runs the
//! prologue, not the body) and `go_exit`, a plain uprobe, on each of its `RET` instructions: a
//! uretprobe would replace the return address on a stack that Go may move. Limits: a call left
//! by a panic or `runtime.Goexit` never reaches a `RET`; its entry stays until the LRU evicts
//! it, and meanwhile TCP I/O of that goroutine (or of a new goroutine reusing its `g`) in the
//! same process is attributed to Go's TLS. A non-Go thread of the process (cgo) whose R14 happens
//! to equal such a `g` is misattributed the same way; C-ABI library calls of the thread are
//! looked up first.

use aya_ebpf::bindings::pt_regs;
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};

use crate::tls::{self, CallStack};

/// A goroutine of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoroutineKey {
    tgid: u32,
    _pad: u32,
    g: u64,
}

/// (process, goroutine) → `crypto/tls` calls in progress. LRU: goroutines that leave a call
/// without returning (panic, Goexit) cannot fill it.
#[map(name = "GO_CALLS")]
static GO_CALLS: LruHashMap<GoroutineKey, CallStack> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn key(g: u64) -> GoroutineKey {
    GoroutineKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        g,
    }
}

/// R14 of the probed instruction: the current goroutine.
#[inline(always)]
fn g_of(ctx: &ProbeContext) -> u64 {
    // SAFETY: a uprobe's context is the user registers at the probed instruction.
    unsafe { (*ctx.regs).r14 }
}

#[uprobe]
pub fn go_enter(ctx: ProbeContext) -> u32 {
    let g = g_of(&ctx);
    if g == 0 {
        return 0;
    }
    // SAFETY: a uprobe context is a valid argument for this helper.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    tls::push(&GO_CALLS, &key(g), cookie);
    0
}

/// On a `RET` of a probed function: a plain uprobe, not a uretprobe.
#[uprobe]
pub fn go_exit(ctx: ProbeContext) -> u32 {
    let g = g_of(&ctx);
    if g != 0 {
        tls::pop(&GO_CALLS, &key(g));
    }
    0
}

/// The innermost `crypto/tls` call of the goroutine whose system call the current thread is
/// running, from R14 of its saved user registers.
#[inline(always)]
pub fn innermost_call() -> Option<u64> {
    // SAFETY: plain helper calls; `bpf_task_pt_regs` returns the current task's saved user
    // registers, read with `bpf_probe_read_kernel` (a kernel thread's are garbage: no match).
    let g = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        if regs.is_null() {
            return None;
        }
        bpf_probe_read_kernel(&(*regs).r14).ok()?
    };
    if g == 0 {
        return None;
    }
    // SAFETY: copied out at once.
    let stack = unsafe { GO_CALLS.get(key(g)) }?;
    tls::innermost(stack)
}
