//! Types shared by the eBPF programs (`enforcer-ebpf`) and userspace (`enforcer`).
//!
//! Every struct here crosses the kernel/user boundary through a map or a ring buffer, so each is
//! `#[repr(C)]`, has explicit padding fields (the verifier rejects reads of uninitialised stack
//! bytes, and hash map keys must not carry garbage), and a compile-time size check.
//!
//! | module     | what                                                                     |
//! | ---------- | ------------------------------------------------------------------------ |
//! | `flow`     | a TCP 4-tuple and what is known about it: `FlowKey`, `FlowState`, verdicts |
//! | `hello`    | content-bound attribution: hello randoms, flow heads, evidence       |
//! | `policy`   | what userspace writes from the policy: actions, mode, ClientHello scopes |
//! | `posture`  | what a connection negotiated (ServerHello) and the rules on it          |
//! | `offer`    | what a client offers (ClientHello fields for JA4), reassembled per flow  |
//! | `iana`     | IANA's names of TLS versions, groups and cipher suites                  |
//! | `quic`     | QUIC Initial packets recognised from a UDP datagram's first bytes      |
//! | `event`    | the records of the `EVENTS` ring buffer, each behind one `Header`        |
//! | `stat`     | the `STATS` counters: one enumeration, its size and its names            |
//! | `maps`     | the datapath's map names, and which of them `--pin` keeps                |
//! | `watch`    | new executable files: the watcher's maps, config and events              |
//! | `who`      | rules scoped to who is talking: senders, the verdict cache               |
//! | `discover` | `enforcer discover`: its maps and per-function counters                  |
#![no_std]

pub mod discover;
pub mod event;
pub mod flow;
pub mod hello;
pub mod iana;
pub mod ja4_key;
pub mod maps;
pub mod offer;
pub mod policy;
pub mod posture;
pub mod quic;
pub mod stat;
pub mod tc_return;
pub mod watch;
pub mod who;
