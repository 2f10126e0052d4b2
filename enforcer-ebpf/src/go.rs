//! Go `crypto/tls` calls, tracked per goroutine (`call_stack.rs`).
//!
//! A goroutine can park inside `(*Conn).Write` (waiting for the socket) and resume on another OS
//! thread, while its first thread runs other goroutines: a per-thread stack would attribute those
//! goroutines' I/O to TLS and pop the wrong thread's entry on return. So Go calls are keyed by
//! (process, goroutine): under Go's register ABI (amd64, Go 1.17+) R14 holds the running
//! goroutine's `g` pointer in Go code, at the probed entry and return instructions alike, and
//! still at the `SYSCALL` that reaches the kernel TCP hook (the runtime's syscall stubs do not
//! touch R14).
//!
//! Userspace puts `go_enter` after each function's stack check (a stack growth re-runs the
//! prologue, not the body) and `go_exit`, a plain uprobe, on each of its `RET` instructions: a
//! uretprobe would replace the return address on a stack that Go may move. Limits: a call left
//! by a panic or `runtime.Goexit` never reaches a `RET`; its entry stays until the LRU evicts
//! it, and meanwhile TCP I/O of that goroutine (or of a new goroutine reusing its `g`) in the
//! same process is attributed to Go's TLS. A non-Go thread of the process (cgo) whose R14 happens
//! to equal such a `g` is misattributed the same way; C-ABI library calls of the thread are
//! looked up first.

use aya_ebpf::{
    EbpfContext, helpers::bpf_get_attach_cookie, macros::uprobe, programs::ProbeContext,
};

use crate::call_stack;

/// R14 (amd64) / R28 (arm64) of the probed instruction: the current goroutine.
#[inline(always)]
fn g_of(ctx: &ProbeContext) -> u64 {
    // SAFETY: a uprobe's context is the user registers at the probed instruction.
    unsafe { *crate::regs::goroutine(&*ctx.regs) }
}

#[uprobe]
pub fn go_enter(ctx: ProbeContext) -> u32 {
    let g = g_of(&ctx);
    if g == 0 {
        return 0;
    }
    // SAFETY: a uprobe context is a valid argument for this helper.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    call_stack::goroutine_enter(g, cookie);
    0
}

/// On a `RET` of a probed function: a plain uprobe, not a uretprobe.
#[uprobe]
pub fn go_exit(ctx: ProbeContext) -> u32 {
    let g = g_of(&ctx);
    if g != 0 {
        call_stack::goroutine_exit(g);
    }
    0
}
