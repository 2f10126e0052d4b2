//! enforcer: decides by TLS library which TCP connections may talk, in the kernel.
//!
//! The library holds every part; `main.rs` only parses the command line ([`cli`]), sets up logging
//! and runs the command. See docs/architecture.md.
//!
//! - [`datapath`]: what is in the kernel and our handles on it (the eBPF object and its maps, the
//!   uprobes, the TCP hook, XDP/tc on the interfaces, pinning).
//! - [`agent`]: the running `enforcer attach`: start-up, the main loop, new-library watcher, events,
//!   reload, the operator socket and metrics.
//! - [`commands`]: the other subcommands (`detach`, `discover`, `libs`, `policy explain`,
//!   `check-kernel`).
//! - [`errors`]: an error's chain as the operator reads it, each cause once.
//! - [`cbom`]: the CycloneDX 1.7 CBOM `enforcer cbom` prints, from a snapshot of the agent.
//! - [`containers`]: which container a process runs in, from its cgroup path.
//! - [`netns`]: other processes' network namespaces: their cookies, and sockets made inside them.
//! - Domain: [`policy`], [`catalog`], [`libraries`] (finding and identifying TLS library files),
//!   [`family`], [`version`]. These know nothing of the kernel.

pub mod agent;
pub mod catalog;
pub mod cbom;
pub mod cli;
pub mod commands;
pub mod containers;
pub mod datapath;
pub mod errors;
pub mod family;
pub mod libraries;
pub mod netns;
pub mod policy;
pub mod speakers;
pub mod version;
