//! The subcommands other than `attach` (which is [`crate::agent`]): each runs once and exits.

pub mod detach;
pub mod discover;
pub mod explain;
pub mod explain_processes;
pub mod inventory;
pub mod kernel_check;
pub mod manuals;
pub mod progress;
pub mod top;
