//! The TLS calls in progress: per thread for C-ABI libraries (`TLS_CALLS`, pushed by `tls.rs`)
//! and per goroutine for Go's `crypto/tls` (`GO_CALLS`, pushed by `go.rs`). The kernel TCP hooks
//! ask [`innermost_call`] which library call, if any, is moving the bytes.
//!
//! Calls nest (`SSL_connect` → `SSL_do_handshake`, or a compat layer calling another library):
//! the innermost call is the one moving bytes. Deeper nesting keeps counting but attributes to
//! the deepest recorded frame.
//!
//! Go calls are keyed by (process, goroutine) because a goroutine can park inside
//! `(*Conn).Write` and resume on another OS thread (see `go.rs`): under Go's register ABI
//! (amd64, Go 1.17+) R14 holds the running goroutine's `g`, and still does at the `SYSCALL` that
//! reaches the kernel TCP hook, which reads it from the task's saved user registers.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::map,
    maps::LruHashMap,
};
use enforcer_common::stat::Stat;

use crate::stats;

const MAX_DEPTH: usize = 4;

/// `cookies[d]` is the call at depth `d` (1-based; slot 0 stays unused), so the innermost
/// call is `cookies[min(depth, MAX_DEPTH)]`: an index the verifier of older kernels (6.1) can
/// bound, unlike `depth - 1` after a `depth == 0` check, which it does not narrow.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallStack {
    cookies: [u64; MAX_DEPTH + 1],
    depth: u32,
    _pad: u32,
}

/// A goroutine of a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoroutineKey {
    tgid: u32,
    _pad: u32,
    g: u64,
}

/// Thread id → TLS calls in progress. LRU so a thread that died inside a call (its uretprobe never
/// ran) cannot fill the map; `tls_thread_exit` also removes it eagerly.
#[map(name = "TLS_CALLS")]
static TLS_CALLS: LruHashMap<u32, CallStack> = LruHashMap::with_max_entries(16384, 0);

/// (process, goroutine) → `crypto/tls` calls in progress. LRU: goroutines that leave a call
/// without returning (panic, Goexit) cannot fill it.
#[map(name = "GO_CALLS")]
static GO_CALLS: LruHashMap<GoroutineKey, CallStack> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn current_tid() -> u32 {
    // Lower 32 bits: the thread id (the kernel's pid).
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn goroutine(g: u64) -> GoroutineKey {
    GoroutineKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        g,
    }
}

/// The current thread entered a TLS library call (`cookie`: library and kind of call).
#[inline(always)]
pub fn thread_enter(cookie: u64) {
    push(&TLS_CALLS, &current_tid(), cookie);
}

/// The current thread returned from its innermost TLS library call.
#[inline(always)]
pub fn thread_exit() {
    pop(&TLS_CALLS, &current_tid());
}

/// The current thread is exiting: whatever it was inside of is over.
#[inline(always)]
pub fn thread_gone() {
    let _ = TLS_CALLS.remove(current_tid());
}

/// Goroutine `g` of the current process entered a `crypto/tls` call.
#[inline(always)]
pub fn goroutine_enter(g: u64, cookie: u64) {
    push(&GO_CALLS, &goroutine(g), cookie);
}

/// Goroutine `g` of the current process returned from its innermost `crypto/tls` call.
#[inline(always)]
pub fn goroutine_exit(g: u64) {
    pop(&GO_CALLS, &goroutine(g));
}

/// Records a call entered by whoever `key` names (a thread, or a goroutine).
#[inline(always)]
fn push<K>(map: &LruHashMap<K, CallStack>, key: &K, cookie: u64) {
    match map.get_ptr_mut(key) {
        Some(stack) => {
            // SAFETY: map value pointer, valid for this program run; only the key's owner (one
            // thread, or one goroutine, which runs on one thread at a time) writes it.
            let stack = unsafe { &mut *stack };
            let depth = stack.depth as usize + 1;
            match stack.cookies.get_mut(depth) {
                Some(slot) => *slot = cookie,
                None => stats::count(Stat::TlsStackOverflow),
            }
            stack.depth = stack.depth.saturating_add(1);
        }
        None => {
            let mut stack = CallStack {
                cookies: [0; MAX_DEPTH + 1],
                depth: 1,
                _pad: 0,
            };
            stack.cookies[1] = cookie;
            // Failure (map full even after LRU eviction) means this call goes unattributed:
            // fail-open, nothing else we could do here.
            let _ = map.insert(key, stack, 0);
        }
    }
}

/// Ends the innermost call of `key`; the entry goes when none is left.
#[inline(always)]
fn pop<K>(map: &LruHashMap<K, CallStack>, key: &K) {
    if let Some(stack) = map.get_ptr_mut(key) {
        // SAFETY: as in `push`.
        let stack = unsafe { &mut *stack };
        stack.depth = stack.depth.saturating_sub(1);
        if stack.depth == 0 {
            let _ = map.remove(key);
        }
    }
}

/// The cookie of the innermost call recorded in `stack`.
#[inline(always)]
fn innermost(stack: &CallStack) -> Option<u64> {
    let depth = stack.depth as usize;
    if depth == 0 {
        return None;
    }
    stack.cookies.get(depth.min(MAX_DEPTH)).copied()
}

/// The cookie of the innermost TLS call the current thread is in, if any: a C-ABI library call
/// of this thread, else a Go `crypto/tls` call of the goroutine running on it.
#[inline(always)]
pub fn innermost_call() -> Option<u64> {
    // SAFETY: the value is copied out immediately.
    match unsafe { TLS_CALLS.get(current_tid()) }.and_then(innermost) {
        Some(cookie) => Some(cookie),
        None => goroutine_call(),
    }
}

/// The innermost `crypto/tls` call of the goroutine whose system call the current thread is
/// running, from R14 (amd64) / R28 (arm64) of its saved user registers (`regs.rs`).
#[inline(always)]
fn goroutine_call() -> Option<u64> {
    // SAFETY: plain helper calls; `bpf_task_pt_regs` returns the current task's saved user
    // registers, read with `bpf_probe_read_kernel` (a kernel thread's are garbage: no match).
    let g = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        if regs.is_null() {
            return None;
        }
        bpf_probe_read_kernel(crate::regs::goroutine(&*regs)).ok()?
    };
    if g == 0 {
        return None;
    }
    // SAFETY: copied out at once.
    let stack = unsafe { GO_CALLS.get(goroutine(g)) }?;
    innermost(stack)
}
