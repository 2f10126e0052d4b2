//! enforcer's eBPF programs. Built by `enforcer/build.rs` (aya-build, nightly, `bpfel-unknown-none`)
//! and embedded in the `enforcer` binary; on the host this crate compiles to an empty program.
//!
//! Read in this order to follow the verdict path: `call_stack.rs` (which library call is moving
//! bytes), `verdict.rs` (the TCP hook attributes the socket and judges it), `flow.rs` (the flow
//! table and the blocklist), `tc.rs` / `xdp.rs` (packets of blocklisted flows dropped).
//!
//! | file              | programs                                    | maps it owns |
//! | ----------------- | ------------------------------------------- | ------------ |
//! | `tls.rs`          | uprobe/uretprobe on TLS library functions (and their random sources) | — |
//! | `random.rs`       | (called by `tls.rs`) hello randoms where they are made | `HELLO_RANDOMS`, `RANDOM_LIBS`, `RANDOM_CALLS` |
//! | `go.rs`           | Go crypto/tls entry and RET uprobes         | — |
//! | `call_stack.rs`   | (helpers) per-thread and per-goroutine TLS call stacks | `TLS_CALLS`, `GO_CALLS` |
//! | `tcp.rs`          | kernel TCP send/receive hooks, 3 forms; connection close | — |
//! | `verdict.rs`      | (called by `tcp.rs`) attribution, verdict   | — |
//! | `flow.rs`         | (helpers) what is known per 4-tuple; `forget` at close | `FLOWS`, `BLOCKLIST`, `BLOCKLIST_OVERFLOW`, `OVERFLOW_IN_USE`, `BLOCKLIST_HELD`, `BLOCKLIST_BUCKETS`, `HELLOS_SEEN` |
//! | `policy.rs`       | (helpers) the policy userspace wrote; `apply` | `LIB_ACTIONS`, `MODE`, `SCOPED_LIBS`, `HELLO_POLICY`, `SERVER_NAME_RULES` |
//! | `events.rs`       | (helpers) records for userspace             | `EVENTS`, `HELLO_EVENTS` |
//! | `sock.rs`         | (helpers) 4-tuple of a `struct sock`        | global `SOCK_OFFSETS` |
//! | `packet.rs`       | (helpers) 4-tuple of an Ethernet frame      | — |
//! | `packet/direct.rs` | (helpers) its fast path: direct packet access | — |
//! | `ingress.rs`      | (called by `xdp.rs`, `tc.rs`) the ingress judge | — |
//! | `xdp.rs`          | ingress drop (XDP)                          | — |
//! | `tc.rs`           | egress drop; ingress drop (tc)              | — |
//! | `cgroup.rs`       | the host layer (`--host-layer cgroup`): drop on every interface; egress hello judge | `JUDGE_CG`, `JUDGE_ARGS` |
//! | `host_guard.rs`   | (helpers) one host-layer judge run per CPU at a time | `HOST_BUSY` |
//! | `hello.rs`        | (called by `tc.rs`, `cgroup.rs`) hellos judged by their random; unattributed TLS | — |
//! | `flow_head.rs`    | (called by `hello.rs`) the first 43 bytes of each new flow's stream | `FLOW_HEADS`, `HEAD_BUCKETS` |
//! | `posture.rs`      | ServerHello readers (tail-called by `tc.rs`, `xdp.rs`, `cgroup.rs`): negotiated version, suite, group; `tls_versions` / `groups` / `cipher_suites` | `POSTURES`, `POSTURE_RULES`, `POSTURE_ENABLED`, `JA4_VERDICTS`, `POSTURE_ARGS`, `POSTURE_TC`, `POSTURE_XDP`, `POSTURE_XDP_NOFRAGS`, `POSTURE_CG` |
//! | `server_hello.rs` | (called by `posture.rs`) the ServerHello's fields | — |
//! | `offer.rs`        | ClientHello readers (tail-called by `tc.rs`, `xdp.rs`, `cgroup.rs`): the hello reassembled across segments, its fields reported for JA4 | `OFFERS`, `OFFER_BUCKETS`, `OFFER_TEMPLATE`, `OFFER_EVENT`, `OFFER_ARGS`, `OFFER_TC`, `OFFER_XDP`, `OFFER_XDP_NOFRAGS`, `OFFER_CG` |
//! | `offer_fields.rs` | (called by `offer.rs`) the ClientHello's fields | — |
//! | `ja4_cache.rs`    | (called by `offer.rs`) a read hello's JA4 verdict, if userspace cached it | `JA4_CACHE`, `JA4_GENERATION`, `JA4_KEY_SCRATCH` |
//! | `client_hello.rs` | (called by `hello.rs`) ClientHello: SNI, name scopes | `HELLO_SCRATCH` |
//! | `stats.rs`        | (helpers) counters; the one `bump`          | `STATS` |
//! | `atomic.rs`       | (helpers) atomic add to a shared map value  | — |
//! | `regs.rs`         | (helpers) user registers by name, per architecture (Go's `g`, stack pointer) | — |
//! | `who.rs`          | (called by `verdict.rs`, `hello.rs`) rules scoped to who is talking: each flow's sender, userspace's verdicts | `SENDERS`, `WHO_CACHE`, `WHO_WAIT`, `WHO_LIBS`, `WHO_CONFIG` |
//! | `exec.rs`         | new executable files: mmap / exec hooks     | `KNOWN_FILES`, `NEW_FILES`, `PAUSED`, `WATCH_CONFIG`, `WATCH_STATS` |
//! | `discover.rs`     | `enforcer discover`: uprobes on every function, its own TCP hooks | `DISCOVER_STACKS`, `DISCOVER_HITS`, `DISCOVER_STATS` |
//!
//! Imports go one way (no module imports one that imports it; `enforcer/tests/import_cycles.rs`
//! checks): programs → `ingress` → `posture` → `server_hello`; programs → `ingress` → `offer` → `offer_fields`, `ja4_cache` → `posture`, `client_hello`, `events`; programs → `verdict` / `hello` → `who`, `client_hello`, `random`, `flow_head` → `policy` →
//! `flow` → `sock`, `stats`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `flow.rs`: the atomic add of `BLOCKLIST_HELD` (the target's `core::sync::atomic` has none);
// `packet/direct.rs`: single-instruction misaligned packet loads (asm).
#![cfg_attr(
    target_arch = "bpf",
    allow(internal_features),
    feature(core_intrinsics, asm_experimental_arch)
)]

#[cfg(target_arch = "bpf")]
mod atomic;
#[cfg(target_arch = "bpf")]
mod call_stack;
#[cfg(target_arch = "bpf")]
mod cgroup;
#[cfg(target_arch = "bpf")]
mod client_hello;
#[cfg(target_arch = "bpf")]
mod discover;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod exec;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod flow_head;
#[cfg(target_arch = "bpf")]
mod go;
#[cfg(target_arch = "bpf")]
mod hello;
#[cfg(target_arch = "bpf")]
mod host_guard;
#[cfg(target_arch = "bpf")]
mod ingress;
#[cfg(target_arch = "bpf")]
mod ja4_cache;
#[cfg(target_arch = "bpf")]
mod offer;
#[cfg(target_arch = "bpf")]
mod offer_fields;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod posture;
#[cfg(target_arch = "bpf")]
mod quic;
#[cfg(target_arch = "bpf")]
mod random;
#[cfg(target_arch = "bpf")]
mod regs;
#[cfg(target_arch = "bpf")]
mod server_hello;
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
mod who;
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
