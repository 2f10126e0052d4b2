//! Uprobes on TLS library functions: while a thread is inside `SSL_write`, `gnutls_record_recv`,
//! ... we remember which library (and which kind of call) it is in, so the kernel TCP hooks can
//! attribute the socket the thread touches. The library id and call kind arrive as the attach
//! cookie (`enforcer_common::cookie`), set per attached file by userspace.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::{map, raw_tracepoint, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use enforcer_common::stat;

use crate::{go, stats};

/// Calls nest (`SSL_connect` → `SSL_do_handshake`, or a compat layer calling another library):
/// the innermost call is the one moving bytes. Deeper nesting keeps counting but attributes to
/// the deepest recorded frame.
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

/// Thread id → TLS calls in progress. LRU so a thread that died inside a call (its uretprobe never
/// ran) cannot fill the map; `sched_process_exit` below also removes it eagerly.
#[map(name = "TLS_CALLS")]
static TLS_CALLS: LruHashMap<u32, CallStack> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn current_tid() -> u32 {
    // Lower 32 bits: the thread id (the kernel's pid).
    bpf_get_current_pid_tgid() as u32
}

#[uprobe]
pub fn tls_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: a uprobe context is a valid argument for this helper.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    push(&TLS_CALLS, &current_tid(), cookie);
    0
}

#[uretprobe]
pub fn tls_exit(_ctx: RetProbeContext) -> u32 {
    pop(&TLS_CALLS, &current_tid());
    0
}

/// Records a call entered by whoever `key` names (a thread, or a goroutine: `go.rs`).
#[inline(always)]
pub fn push<K>(map: &LruHashMap<K, CallStack>, key: &K, cookie: u64) {
    match map.get_ptr_mut(key) {
        Some(stack) => {
            // SAFETY: map value pointer, valid for this program run; only the key's owner (one
            // thread, or one goroutine, which runs on one thread at a time) writes it.
            let stack = unsafe { &mut *stack };
            let depth = stack.depth as usize + 1;
            match stack.cookies.get_mut(depth) {
                Some(slot) => *slot = cookie,
                None => stats::bump(stat::TLS_STACK_OVERFLOW),
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
pub fn pop<K>(map: &LruHashMap<K, CallStack>, key: &K) {
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
pub fn innermost(stack: &CallStack) -> Option<u64> {
    let depth = stack.depth as usize;
    if depth == 0 {
        return None;
    }
    stack.cookies.get(depth.min(MAX_DEPTH)).copied()
}

/// A thread that exits inside a TLS call never returns from it: forget its stack so a later
/// thread reusing the id is not attributed to that library.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn tls_thread_exit(_ctx: RawTracePointContext) -> i32 {
    let _ = TLS_CALLS.remove(current_tid());
    0
}

/// The cookie of the innermost TLS call the current thread is in, if any: a C-ABI library call
/// of this thread, else a Go `crypto/tls` call of the goroutine running on it.
#[inline(always)]
pub fn innermost_call() -> Option<u64> {
    // SAFETY: the value is copied out immediately.
    match unsafe { TLS_CALLS.get(current_tid()) }.and_then(innermost) {
        Some(cookie) => Some(cookie),
        None => go::innermost_call(),
    }
}
