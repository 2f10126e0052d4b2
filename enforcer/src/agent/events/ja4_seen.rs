//! The JA4 of each recent flow, from its `offered` event, for the reports made later about the
//! same connection: its `negotiated` event and `enforcer flows`. Bounded: the oldest flows make
//! room (a JA4 is wanted within seconds of the ClientHello, at the ServerHello).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use enforcer_common::flow::FlowKey;

/// Flows remembered: far more than ClientHellos in flight between hello and ServerHello.
pub const CAPACITY: usize = 16_384;
/// A JA4 older than this (kernel clock) is not the one of a report about the flow: the 4-tuple
/// was used again since.
const FRESH_NS: u64 = 120_000_000_000;

#[derive(Default)]
struct Table {
    /// Flow → (when its ClientHello was reported, its JA4; `None`: no JA4 could be made).
    by_flow: HashMap<FlowKey, (u64, Option<String>)>,
    /// Insertion order, for eviction (a flow seen again is queued again; its older place is
    /// skipped when it comes up).
    order: VecDeque<(FlowKey, u64)>,
}

#[derive(Default)]
pub struct Ja4Seen(Mutex<Table>);

impl Ja4Seen {
    /// Records the JA4 of `flow`'s ClientHello, reported at `ts_ns`.
    pub fn record(&self, flow: FlowKey, ts_ns: u64, ja4: Option<String>) {
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.by_flow.insert(flow, (ts_ns, ja4));
        t.order.push_back((flow, ts_ns));
        while t.order.len() > CAPACITY {
            let Some((old, ts)) = t.order.pop_front() else {
                break;
            };
            if t.by_flow.get(&old).is_some_and(|(seen, _)| *seen == ts) {
                t.by_flow.remove(&old);
            }
        }
    }

    /// The JA4 of `flow`'s latest ClientHello reported before `at_ns` (and not long before):
    /// `None` when none is known, `Some(None)` when it was reported and no JA4 could be made.
    pub fn before(&self, flow: &FlowKey, at_ns: u64) -> Option<Option<String>> {
        let t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (ts, ja4) = t.by_flow.get(flow)?;
        (*ts <= at_ns && at_ns - ts < FRESH_NS).then(|| ja4.clone())
    }

    /// The JA4 of `flow`'s latest ClientHello, however old (`enforcer flows`: the flow is open).
    pub fn latest(&self, flow: &FlowKey) -> Option<String> {
        let t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.by_flow.get(flow).and_then(|(_, ja4)| ja4.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16) -> FlowKey {
        FlowKey {
            local_port: port,
            ..Default::default()
        }
    }

    #[test]
    fn a_report_finds_the_ja4_of_its_own_connection_only() {
        let seen = Ja4Seen::default();
        seen.record(flow(1), 1_000, Some("t13d_a_b".into()));
        assert_eq!(seen.before(&flow(1), 2_000), Some(Some("t13d_a_b".into())));
        assert_eq!(
            seen.before(&flow(1), 500),
            None,
            "reported after the ServerHello"
        );
        assert_eq!(
            seen.before(&flow(1), 1_000 + FRESH_NS),
            None,
            "an older use of the 4-tuple"
        );
        assert_eq!(seen.before(&flow(2), 2_000), None);
        seen.record(flow(2), 3_000, None);
        assert_eq!(seen.before(&flow(2), 3_000), Some(None), "reported, unread");
    }

    #[test]
    fn the_oldest_flows_make_room() {
        let seen = Ja4Seen::default();
        for port in 0..CAPACITY as u16 {
            seen.record(flow(port), port as u64, Some(port.to_string()));
        }
        // Flow 0 seen again: its first place, next out, no longer evicts it.
        seen.record(flow(0), 1 << 20, Some("again".into()));
        assert_eq!(seen.latest(&flow(0)).as_deref(), Some("again"));
        assert_eq!(seen.latest(&flow(1)).as_deref(), Some("1"));
        seen.record(flow(60_000), 1 << 21, None);
        assert_eq!(seen.latest(&flow(1)), None, "the oldest: evicted");
        assert_eq!(seen.latest(&flow(2)).as_deref(), Some("2"));
        assert_eq!(seen.latest(&flow(0)).as_deref(), Some("again"));
    }
}
