//! The blocklist sweep. A `BLOCKLIST` entry leaves when its local socket closes; an entry no
//! local socket will ever close stays: a NAT'd or forwarded flow the egress classifier blocked
//! (its 4-tuple is the wire's, no socket of this host has it), or a denied connection in another
//! network namespace (the hooks see it, the agent's socket abort cannot reach it, and its owner
//! can hold it open). Enough of those fill the blocklist.
//!
//! So, at every run, the kernel's entries are looked up as sockets (sock_diag, this namespace);
//! an entry without a socket at two runs in a row moves to `BLOCKLIST_OVERFLOW`, where it is
//! still dropped but, being LRU, makes room for newer blocks when that table fills. Two runs,
//! so that a flow blocked a moment before its socket shows up (or just after it was aborted,
//! while the peer still retransmits) is not moved at once. The operator's blocks are left alone.

use std::collections::HashSet;

use enforcer_common::flow::{FlowKey, block};

use super::{
    maps::{LiveMapError, LiveMaps},
    sock_destroy,
};

/// What one run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Kernel entries looked up.
    pub checked: usize,
    /// Entries without a socket, seen for the first time (moved at the next run if still so).
    pub suspects: usize,
    /// Entries moved to `BLOCKLIST_OVERFLOW`.
    pub moved: usize,
}

/// The state between runs: the entries without a socket at the last run.
#[derive(Default)]
pub struct BlocklistSweep {
    suspects: HashSet<FlowKey>,
}

impl BlocklistSweep {
    pub fn run(&mut self, maps: &mut LiveMaps) -> Result<Swept, LiveMapError> {
        let flows: Vec<FlowKey> = maps
            .blocked_entries()
            .into_iter()
            .filter(|(_, who)| *who != block::OPERATOR)
            .map(|(flow, _)| flow)
            .collect();
        let live = sock_destroy::live(&flows);
        let mut swept = Swept {
            checked: flows.len(),
            ..Swept::default()
        };
        let mut suspects = HashSet::new();
        for (flow, live) in flows.into_iter().zip(live) {
            if live {
                continue;
            }
            if self.suspects.contains(&flow) {
                maps.demote(&flow)?;
                swept.moved += 1;
            } else {
                suspects.insert(flow);
            }
        }
        swept.suspects = suspects.len();
        self.suspects = suspects;
        Ok(swept)
    }
}
