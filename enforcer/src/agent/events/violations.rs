//! The newest policy violations (connections `blocked`, `would-block`, `blocklist-full`), kept
//! in a bounded ring for the control socket's `recent` request: what `enforcer top` lists. Each
//! is the `connection` record as the events report it (docs/events.md).

use std::collections::VecDeque;

use serde_json::Value;

/// How many violations are kept: the oldest goes when a new one comes.
pub const MAX_RECENT: usize = 64;

#[derive(Default)]
pub struct Ring {
    records: VecDeque<Value>,
    /// Violations since start, kept or not.
    seen: u64,
}

impl Ring {
    pub fn push(&mut self, record: Value) {
        if self.records.len() == MAX_RECENT {
            self.records.pop_front();
        }
        self.records.push_back(record);
        self.seen += 1;
    }

    /// The kept records, newest first.
    pub fn newest_first(&self) -> Vec<Value> {
        self.records.iter().rev().cloned().collect()
    }

    /// Violations since start, including those the ring no longer holds.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_and_counts_all() {
        let mut ring = Ring::default();
        for i in 0..(MAX_RECENT as u64 + 10) {
            ring.push(Value::from(i));
        }
        let kept = ring.newest_first();
        assert_eq!(kept.len(), MAX_RECENT);
        assert_eq!(kept[0], MAX_RECENT as u64 + 9);
        assert_eq!(kept[MAX_RECENT - 1], 10);
        assert_eq!(ring.seen(), MAX_RECENT as u64 + 10);
    }
}
