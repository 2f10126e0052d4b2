//! enforcer: decides by TLS library which TCP connections may talk, in the kernel.
//! (temporary while modules are written in parallel)

mod btf;
mod catalog;
mod family;
mod iface;
mod libraries;
mod policy;
mod sock_destroy;
mod tc;

fn main() {}
