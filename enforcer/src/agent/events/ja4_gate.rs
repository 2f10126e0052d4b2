//! The JA4 verdicts the kernel waits for: when the policy has a `ja4` list, every flow's JA4
//! (made here from its `offered` event; the kernel does not hash) is matched against the
//! policy's patterns and which matched is written to `JA4_VERDICTS`. The ServerHello of a flow
//! a `ja4` rule applies to is dropped until its verdict is there (TCP sends it again), so no
//! application byte passes before the rule is applied (`enforcer-ebpf/src/posture.rs`). The
//! verdict also goes into the JA4 cache under the hello's JA4 fields (`enforcer_common::ja4_key`),
//! from which the kernel gives later hellos with the same fields their verdict at once.

use std::sync::Mutex;

use aya::maps::{HashMap, MapData};
use enforcer_common::{
    event::UNATTRIBUTED,
    flow::FlowKey,
    ja4_key::Ja4Key,
    offer::OfferedEvent,
    posture::{HOST_RULE, Ja4Verdict, PostureRule, ja4_state, rule},
};
use tracing::warn;

use crate::datapath::{PolicyView, maps::Ja4Maps};

pub struct Ja4Gate {
    policy: PolicyView,
    /// `JA4_VERDICTS` and `JA4_CACHE`, written together.
    written: Mutex<Written>,
    /// `POSTURE_RULES` (read only): the rules as the kernel judges them, for audit mode.
    rules: HashMap<MapData, u32, PostureRule>,
}

struct Written {
    verdicts: HashMap<MapData, FlowKey, Ja4Verdict>,
    cache: HashMap<MapData, Ja4Key, u64>,
}

impl Ja4Gate {
    pub fn new(policy: PolicyView, maps: Ja4Maps) -> Self {
        Self {
            policy,
            written: Mutex::new(Written {
                verdicts: maps.verdicts,
                cache: maps.cache,
            }),
            rules: maps.rules,
        }
    }

    /// Audit mode, where the kernel never waits: the rule (`rule::*`) whose `ja4` lists the
    /// JA4 of a flow of `lib_id` breaks, judged as the kernel would (`seen`: `None` when no
    /// `offered` event came, `Some(None)` when no JA4 could be made: both break every list).
    pub fn audit(&self, lib_id: u32, seen: Option<Option<&str>>) -> Option<u8> {
        let matched = seen
            .flatten()
            .map(|ja4| self.policy.read().policy.ja4_matched(ja4));
        let own = (lib_id != UNATTRIBUTED).then_some(lib_id);
        [(Some(HOST_RULE), rule::HOST), (own, rule::LIBRARY)]
            .into_iter()
            .filter_map(|(key, whose)| Some((self.rules.get(&key?, 0).ok()?, whose)))
            .filter(|(r, _)| r.needs_ja4())
            .find(|(r, _)| matched.is_none_or(|m| !r.ja4_met(m)))
            .map(|(_, whose)| whose)
    }

    /// Writes the verdict of the flow of `event` (`ja4`: its JA4, `None` when none could be
    /// made, which breaks every `ja4` rule) and caches it under the hello's fields, if the
    /// policy in force has `ja4` lists.
    pub fn judge(&self, event: &OfferedEvent, ja4: Option<&str>) {
        let (verdict, generation) = {
            let in_force = self.policy.read();
            if !in_force.policy.has_ja4_rules() {
                return;
            }
            (
                verdict_for(&in_force.policy, ja4),
                in_force.policy.ja4_generation(),
            )
        };
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Over a waiting mark the kernel put. A failure leaves the ServerHello waiting until
        // it is judged as breaking the rule (fail closed).
        if let Err(err) = written.verdicts.insert(event.flow, verdict, 0) {
            warn!(%err, "writing a JA4 verdict failed; the flow's ServerHello waits, then is dropped");
        }
        if verdict.state == ja4_state::MATCHED
            && let Some(key) = Ja4Key::of(event, generation)
            && let Err(err) = written.cache.insert(key, verdict.matched, 0)
        {
            warn!(%err, "caching a JA4 verdict failed; hellos like this one wait for theirs");
        }
    }
}

/// The verdict of a JA4 under `policy`.
pub fn verdict_for(policy: &crate::policy::Policy, ja4: Option<&str>) -> Ja4Verdict {
    match ja4 {
        Some(ja4) => Ja4Verdict {
            matched: policy.ja4_matched(ja4),
            state: ja4_state::MATCHED,
            ..Default::default()
        },
        None => Ja4Verdict {
            state: ja4_state::UNREAD,
            ..Default::default()
        },
    }
}
