//! The running agent (`enforcer attach`).
//!
//! [`attach`] starts it and tears it down, [`main_loop`] runs it: [`events`] from the kernel ring,
//! [`watcher`] for library files that appear later, [`reload`] of the policy, the operator socket
//! ([`control`] transport, [`operator`] answers) and [`metrics`]; [`memory`] keeps the heap's
//! resident size near what it holds.

pub mod attach;
pub mod control;
pub mod events;
pub mod main_loop;
pub mod memory;
pub mod metrics;
pub mod operator;
pub mod reload;
pub mod sampler;
pub mod watcher;
