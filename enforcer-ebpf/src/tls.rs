//! Uprobes on TLS library functions: while a thread is inside `SSL_write`, `gnutls_record_recv`,
//! ... we remember which library (and which kind of call) it is in (`call_stack.rs`), so the
//! kernel TCP hooks can attribute the socket the thread touches. The library id and call kind
//! arrive as the attach cookie (`enforcer_common::flow::cookie`), set per attached file by
//! userspace.
//!
//! The same two programs probe the libraries' random sources (`op::is_random`, `random.rs`) and
//! their session functions (`op::SESSION`, entry only): one pair of programs per file keeps one
//! `uprobe_multi` link per file and direction.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use enforcer_common::flow::{cookie, op};

use crate::{call_stack, random};

#[uprobe]
pub fn tls_enter(ctx: ProbeContext) -> u32 {
    let cookie = random::attach_cookie(&ctx);
    match cookie::op(cookie) {
        op::SESSION => random::session(&ctx, cookie),
        o if op::is_random(o) => random::enter(&ctx, cookie),
        _ => call_stack::thread_enter(cookie),
    }
    0
}

#[uretprobe]
pub fn tls_exit(ctx: RetProbeContext) -> u32 {
    let cookie = random::attach_cookie(&ctx);
    match cookie::op(cookie) {
        o if op::is_random(o) => random::exit(&ctx, cookie),
        // Not attached to session functions; a no-op if it ever were.
        op::SESSION => {}
        _ => call_stack::thread_exit(),
    }
    0
}

/// A thread that exits inside a TLS call never returns from it: forget its stack so a later
/// thread reusing the id is not attributed to that library.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn tls_thread_exit(_ctx: RawTracePointContext) -> i32 {
    call_stack::thread_gone();
    let id = bpf_get_current_pid_tgid();
    if id as u32 == (id >> 32) as u32 {
        // The leader: the process is going, and its tgid may come back as another process.
        random::forget_process();
    }
    0
}

/// A process that executes another program keeps its tgid but not its code: the code ranges of
/// its libraries (`random.rs`) are gone with the old image.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn tls_process_exec(_ctx: RawTracePointContext) -> i32 {
    random::forget_process();
    0
}
