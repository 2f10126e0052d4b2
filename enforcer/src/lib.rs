//! enforcer: decides by TLS library which TCP connections may talk, in the kernel.
//!
//! The library holds every part; `main.rs` is only the command line. See docs/architecture.md.

pub mod agent_loop;
pub mod attach;
pub mod btf;
pub mod catalog;
pub mod control;
pub mod detach;
pub mod discover;
pub mod events;
pub mod explain;
pub mod family;
pub mod hooks;
pub mod iface;
pub mod inventory;
pub mod kernel_check;
pub mod libraries;
pub mod live_maps;
pub mod loader;
pub mod metrics;
pub mod operator;
pub mod pin;
pub mod policy;
pub mod reload;
pub mod sock_destroy;
pub mod tc;
pub mod uprobes;
pub mod version;
pub mod watcher;
