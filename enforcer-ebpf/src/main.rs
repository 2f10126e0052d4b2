//! enforcer's eBPF programs. Built by `enforcer/build.rs` (aya-build, nightly, `bpfel-unknown-none`)
//! and embedded in the `enforcer` binary; on the host this crate compiles to an empty program.
//!
//! | file         | programs                                   | maps it owns                        |
//! | ------------ | ------------------------------------------ | ----------------------------------- |
//! | `tls.rs`     | uprobe/uretprobe on TLS library functions  | `TLS_CALLS` (per-thread call stack) |
//! | `tcp.rs`     | kernel TCP send/receive hooks, 3 forms     | —                                   |
//! | `verdict.rs` | (called by `tcp.rs`) attribution, verdict  | `FLOWS`, `BLOCKLIST`, `LIB_ACTIONS`, `MODE`, `EVENTS` |
//! | `sock.rs`    | (helpers) 4-tuple of a `struct sock`       | global `SOCK_OFFSETS`               |
//! | `packet.rs`  | (helpers) 4-tuple of an Ethernet frame     | —                                   |
//! | `xdp.rs`     | ingress drop                               | —                                   |
//! | `tc.rs`      | egress drop                                | —                                   |
//! | `client_hello.rs` | (called by `tc.rs`) ClientHello: SNI, unattributed TLS, name scopes | `SERVER_NAME_RULES`, `HELLOS_SEEN`, `HELLO_SCRATCH` |
//! | `stats.rs`   | (helpers) counters                         | `STATS`                             |
//! | `exec.rs`    | new executable files: mmap / exec hooks    | `KNOWN_FILES`, `NEW_FILES`, `PAUSED`, `WATCH_CONFIG`, `WATCH_STATS` |
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod client_hello;
#[cfg(target_arch = "bpf")]
mod exec;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod stats;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod tcp;
#[cfg(target_arch = "bpf")]
mod tls;
#[cfg(target_arch = "bpf")]
mod verdict;
#[cfg(target_arch = "bpf")]
mod xdp;

/// A panic the compiler could not prove unreachable becomes an infinite loop, which the verifier
/// rejects at load time: a reachable panic is a load error, never a silent runtime path.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_probe_read_kernel` is a GPL-only helper.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
