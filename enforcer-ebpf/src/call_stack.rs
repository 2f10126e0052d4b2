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
    maps::{Array, LruHashMap},
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

/// Buckets of the thread id in `CALLS_OPEN` (a power of two: the bucket is the id's low bits).
const THREAD_BUCKETS: u32 = 1024;
/// The slot of `CALLS_OPEN` that counts `GO_CALLS` entries.
const GOROUTINES: u32 = THREAD_BUCKETS;

/// Entries of `TLS_CALLS` per bucket of the thread id, and in slot `GOROUTINES` those of
/// `GO_CALLS`. The kernel TCP hooks run on every send and receive of the host, nearly all
/// outside any probed call (an allowed library's record calls carry no probes): a thread whose
/// bucket counts none skips the `TLS_CALLS` lookup, and with no goroutine inside a call the
/// saved-register read and the `GO_CALLS` lookup are skipped too (issue 14: they were most of
/// the hooks' cost). Raised before an insert that adds an entry, lowered after a removal that
/// took one, so never below the entries; an entry the LRU evicts leaves its count behind (its
/// bucket then costs the lookup, nothing is missed).
#[map(name = "CALLS_OPEN")]
static CALLS_OPEN: Array<u64> = Array::with_max_entries(THREAD_BUCKETS + 1, 0);

#[inline(always)]
fn thread_bucket(tid: u32) -> u32 {
    tid & (THREAD_BUCKETS - 1)
}

/// Whether slot `slot` counts an entry (unreadable counts as yes).
#[inline(always)]
fn open(slot: u32) -> bool {
    CALLS_OPEN.get(slot).copied().unwrap_or(1) != 0
}

#[inline(always)]
fn count(slot: u32, delta: u64) {
    if let Some(counter) = CALLS_OPEN.get_ptr_mut(slot) {
        crate::atomic::add(counter, delta);
    }
}

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
    let tid = current_tid();
    push(&TLS_CALLS, &tid, thread_bucket(tid), cookie);
}

/// The current thread returned from its innermost TLS library call.
#[inline(always)]
pub fn thread_exit() {
    let tid = current_tid();
    pop(&TLS_CALLS, &tid, thread_bucket(tid));
}

/// The current thread is exiting: whatever it was inside of is over.
#[inline(always)]
pub fn thread_gone() {
    let tid = current_tid();
    if TLS_CALLS.remove(tid).is_ok() {
        count(thread_bucket(tid), u64::MAX);
    }
}

/// Goroutine `g` of the current process entered a `crypto/tls` call.
#[inline(always)]
pub fn goroutine_enter(g: u64, cookie: u64) {
    push(&GO_CALLS, &goroutine(g), GOROUTINES, cookie);
}

/// Goroutine `g` of the current process returned from its innermost `crypto/tls` call.
#[inline(always)]
pub fn goroutine_exit(g: u64) {
    pop(&GO_CALLS, &goroutine(g), GOROUTINES);
}

/// Records a call entered by whoever `key` names (a thread, or a goroutine); `slot` is its
/// count in `CALLS_OPEN`.
#[inline(always)]
fn push<K>(map: &LruHashMap<K, CallStack>, key: &K, slot: u32, cookie: u64) {
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
            // Counted before the entry exists, so a hook never skips a present stack.
            count(slot, 1);
            // Failure (map full even after LRU eviction) means this call goes unattributed:
            // fail-open, nothing else we could do here.
            if map.insert(key, stack, 0).is_err() {
                count(slot, u64::MAX);
            }
        }
    }
}

/// Ends the innermost call of `key`; the entry goes when none is left.
#[inline(always)]
fn pop<K>(map: &LruHashMap<K, CallStack>, key: &K, slot: u32) {
    if let Some(stack) = map.get_ptr_mut(key) {
        // SAFETY: as in `push`.
        let stack = unsafe { &mut *stack };
        stack.depth = stack.depth.saturating_sub(1);
        if stack.depth == 0 && map.remove(key).is_ok() {
            count(slot, u64::MAX);
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
    let tid = current_tid();
    if open(thread_bucket(tid)) {
        // SAFETY: the value is copied out immediately.
        if let Some(cookie) = unsafe { TLS_CALLS.get(tid) }.and_then(innermost) {
            return Some(cookie);
        }
    }
    if open(GOROUTINES) {
        goroutine_call()
    } else {
        None
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
