//! The running agent (`enforcer attach`).
//!
//! [`attach`] starts it and tears it down, [`main_loop`] runs it: [`events`] from the kernel rings
//! (a reader thread each), [`sampler`] (counters and map fill, the blocklist sweep),
//! [`watcher`] for library files that appear later, [`reload`] of the policy, the operator socket
//! ([`control`] transport, [`operator`] answers) and [`metrics`]; [`memory`] keeps the heap's
//! resident size near what it holds.

/// Lowers the calling thread's priority (nice 10): for the agent's threads whose work can wait
/// (hello events, owner lookups, record output, sampling), so that under CPU contention (a
/// flood) the connection-event reader, which aborts denied sockets, runs first.
pub(crate) fn background_thread() {
    // SAFETY: plain syscalls about the calling thread.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// Raises the calling thread's priority (nice -10) when the agent may (root, CAP_SYS_NICE); else
/// leaves it. For the connection-event reader: its socket aborts must not wait behind a flood.
pub(crate) fn urgent_thread() {
    // SAFETY: plain syscalls about the calling thread.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10);
    }
}

pub mod attach;
pub mod control;
pub mod events;
pub mod layers;
pub mod main_loop;
pub mod memory;
pub mod metrics;
pub mod operator;
pub mod reload;
pub mod sampler;
pub mod watcher;
