//! The kernel TCP hook in three interchangeable forms; userspace loads and attaches exactly one
//! form (`--kernel-hook`). All of them hand the socket to `verdict::on_tcp_io`.
//!
//! Fail-open everywhere here: a socket we cannot read is left alone (an unreadable socket is not
//! evidence against any library), and a hook never changes what the kernel does.

use aya_ebpf::{
    macros::{fentry, kprobe, raw_tracepoint},
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
};
use enforcer_common::direction;

use crate::verdict;

// --- fentry form (BPF trampolines; cheapest) ---------------------------------------------------

#[fentry(function = "tcp_sendmsg")]
pub fn fentry_tcp_sendmsg(ctx: FEntryContext) -> i32 {
    verdict::on_tcp_io(ctx.arg(0), direction::SEND);
    0
}

#[fentry(function = "tcp_cleanup_rbuf")]
pub fn fentry_tcp_cleanup_rbuf(ctx: FEntryContext) -> i32 {
    verdict::on_tcp_io(ctx.arg(0), direction::RECV);
    0
}

// --- kprobe form (the design card's hooks) -----------------------------------------------------

#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        verdict::on_tcp_io(sk, direction::SEND);
    }
    0
}

/// `tcp_cleanup_rbuf` rather than `tcp_recvmsg`: it also runs for `tcp_read_sock` readers.
#[kprobe]
pub fn kprobe_tcp_cleanup_rbuf(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<*const u8>(0) {
        verdict::on_tcp_io(sk, direction::RECV);
    }
    0
}

// --- tracepoint form (raw tracepoints; works where kprobes and trampolines do not) -------------
// Every tracepoint these attach to has `struct sock *sk` as its first TP_PROTO argument:
// send: `tcp_sendmsg_locked` (inside tcp_sendmsg, before data is pushed, so the verdict beats the
// packet to tc) or `sock_send_length` (after the send; last resort). receive: `sock_recv_length`
// or `tcp_rcv_space_adjust`.

#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn tp_tcp_send(ctx: RawTracePointContext) -> i32 {
    verdict::on_tcp_io(ctx.arg(0), direction::SEND);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn tp_tcp_recv(ctx: RawTracePointContext) -> i32 {
    verdict::on_tcp_io(ctx.arg(0), direction::RECV);
    0
}

// --- connection end (a tracepoint; present with every form) ------------------------------------

const TCP_CLOSE: i32 = 7;

/// `inet_sock_set_state(sk, oldstate, newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tp_sock_state(ctx: RawTracePointContext) -> i32 {
    let newstate: i32 = ctx.arg(2);
    if newstate == TCP_CLOSE {
        verdict::forget(ctx.arg(0));
    }
    0
}
