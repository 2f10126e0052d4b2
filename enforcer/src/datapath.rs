//! The datapath: the eBPF object in the kernel and our typed handles on it.
//!
//! [`loader`] loads the object, [`maps`] holds the maps the agent reads and writes while it runs,
//! [`uprobes`] and [`hooks`] attach the programs that attribute a flow to a library (the TLS
//! uprobes and the kernel TCP hook), [`iface`] and [`tc`] put the blocklist filters on the
//! interfaces (XDP ingress, tc egress), [`pin`] keeps all of it in force past the agent, and
//! [`sock_destroy`] aborts a blocked socket. [`btf`] is here, not with the domain modules: it reads
//! the running kernel's `struct sock` layout, which only the eBPF programs consume.

pub mod btf;
pub mod hooks;
pub mod iface;
pub mod loader;
pub mod maps;
pub mod pin;
pub mod sock_destroy;
pub mod tc;
pub mod uprobes;
