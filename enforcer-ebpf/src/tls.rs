//! Uprobes on TLS library functions: while a thread is inside `SSL_write`, `gnutls_record_recv`,
//! ... we remember which library (and which kind of call) it is in (`call_stack.rs`), so the
//! kernel TCP hooks can attribute the socket the thread touches. The library id and call kind
//! arrive as the attach cookie (`enforcer_common::flow::cookie`), set per attached file by
//! userspace.
//!
//! The same two programs probe the libraries' random sources (`op::is_random`, `random.rs`):
//! one pair of programs per file keeps one `uprobe_multi` link per file and direction.

use aya_ebpf::{
    macros::{raw_tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use enforcer_common::flow::{cookie, op};

use crate::{call_stack, random};

#[uprobe]
pub fn tls_enter(ctx: ProbeContext) -> u32 {
    let cookie = random::attach_cookie(&ctx);
    if op::is_random(cookie::op(cookie)) {
        random::enter(&ctx, cookie);
    } else {
        call_stack::thread_enter(cookie);
    }
    0
}

#[uretprobe]
pub fn tls_exit(ctx: RetProbeContext) -> u32 {
    if op::is_random(cookie::op(random::attach_cookie(&ctx))) {
        random::exit();
    } else {
        call_stack::thread_exit();
    }
    0
}

/// A thread that exits inside a TLS call never returns from it: forget its stack so a later
/// thread reusing the id is not attributed to that library.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn tls_thread_exit(_ctx: RawTracePointContext) -> i32 {
    call_stack::thread_gone();
    0
}
