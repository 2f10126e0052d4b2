//! The verdicts the kernel waits for on rules scoped to who is talking
//! (`enforcer_common::who`): a hello event of a flow such a rule may decide names its sender
//! (recorded by the kernel in `SENDERS`); the sender is resolved to host names
//! (`crate::speakers`), judged by the policy in force, and the answer written to `WHO_CACHE`
//! under the sender's identity, so the held hello (TCP sends it again) and every later one of the
//! same executable, cgroup and user go by it in the kernel. A deny in enforce mode is also
//! blocklisted and its socket aborted here at once, without waiting for the retransmission.
//!
//! Fail closed: a sender the kernel did not record, or one whose names cannot be resolved
//! (process gone, executable deleted, named only in another mount namespace), matches no
//! scoped rule; the flow is judged by the rules without them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use enforcer_common::{
    event::{HelloEvent, UNATTRIBUTED},
    flow::{FlowKey, verdict},
    who::{WhoKey, who_action},
};
use serde_json::{Value, json};
use tracing::warn;

use crate::datapath::{PolicyView, maps::LiveMaps, verdict_for, who_maps::WhoGateMaps};
use crate::policy::{Action, Policy, who::Speaker};

/// Flows whose judgement is remembered for their later events, at most.
const REMEMBERED: usize = 4096;

/// What was decided about one flow's sender, for its events.
#[derive(Clone, Debug)]
pub struct Judged {
    pub speaker: Speaker,
    /// The scoped rule that decided (line, its keys, why), if one did.
    pub rule: Option<(usize, String, Vec<String>)>,
    /// The action in force for the flow.
    pub action: Action,
    /// `flow::verdict::*` for that action in the mode in force.
    pub verdict: u8,
    /// Enforce mode: a pending hello was held by the kernel (it is judged again when TCP sends
    /// it again, and reported then, unless refused here).
    pub held: bool,
}

impl Judged {
    pub fn json(&self) -> Value {
        let s = &self.speaker;
        json!({
            "executable": s.exe.as_ref().map(|p| p.display().to_string()),
            "cgroup": s.cgroup,
            "uid": s.uid,
            "rule_line": self.rule.as_ref().map(|r| r.0),
            "rule": self.rule.as_ref().map(|r| r.1.clone()),
            "reasons": self.rule.as_ref().map_or(Vec::new(), |r| r.2.clone()),
        })
    }
}

pub struct WhoGate {
    policy: PolicyView,
    maps: Mutex<WhoGateMaps>,
    live: Arc<Mutex<LiveMaps>>,
    recent: Mutex<HashMap<FlowKey, Judged>>,
}

impl WhoGate {
    pub fn new(policy: PolicyView, maps: WhoGateMaps, live: Arc<Mutex<LiveMaps>>) -> Self {
        Self {
            policy,
            maps: Mutex::new(maps),
            live,
            recent: Mutex::default(),
        }
    }

    /// Judges the sender of `event`'s flow (`lib`: its library, `None` when unattributed).
    /// `None` when the policy in force has no rule scoped to who is talking. A pending event
    /// (`verdict::PENDING_WHO`) gets its answer written into the kernel.
    pub fn judge(
        &self,
        event: &HelloEvent,
        lib: Option<&crate::libraries::Library>,
    ) -> Option<Judged> {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        // The generation before the policy: an answer is never filed under a newer policy's.
        let generation = maps.generation();
        let sender = maps.sender(&event.flow);
        drop(maps);
        // The flow's socket closed before its event was read (its `SENDERS` entry goes with
        // it): what was judged of it at its held hello still stands.
        if sender.is_none()
            && let Some(earlier) = self.recent(&event.flow)
        {
            return Some(earlier);
        }
        let in_force = self.policy.read();
        let policy = &in_force.policy;
        if !policy.has_who_rules() {
            return None;
        }
        let mode = in_force.mode();
        let speaker = sender
            .map(|s| crate::speakers::resolve(&s, policy.who_needs_sha256()))
            .unwrap_or_default();
        let subject = lib.map(crate::policy::subject);
        let decision = policy.decide_who(subject.as_ref(), &speaker);
        let base = base_action(policy, lib, event.lib_id);
        let action = decision.as_ref().map_or(base, |d| d.action);
        let judged = Judged {
            rule: decision.as_ref().map(|d| {
                (
                    d.line,
                    policy.libraries[d.index].describe(),
                    d.reasons.clone(),
                )
            }),
            speaker,
            action,
            verdict: verdict_for(action, mode),
            held: mode == crate::policy::Mode::Enforce,
        };
        drop(in_force);
        if event.verdict == verdict::PENDING_WHO
            && let Some(sender) = sender
        {
            let key = WhoKey::of(&sender, event.lib_id, generation);
            let code = decision.map_or(who_action::NONE, |d| d.action.code());
            let written = self
                .maps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .answer(&key, code);
            if let Err(err) = written {
                warn!(%err, "writing a verdict on who is talking failed; the flow's hello waits, then is judged without the scoped rules");
            }
        }
        if judged.verdict == verdict::BLOCKED && event.verdict == verdict::PENDING_WHO {
            let blocked = crate::datapath::lock(&self.live).block_judged(&event.flow, event.lib_id);
            if let Err(err) = blocked {
                warn!(%err, "blocklisting a flow refused by a rule scoped to who is talking failed; its hello stays held, then is judged without the scoped rules");
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() >= REMEMBERED {
            recent.clear();
        }
        recent.insert(event.flow, judged.clone());
        Some(judged)
    }

    /// What was last judged about `flow`'s sender, for its reports.
    pub fn recent(&self, flow: &FlowKey) -> Option<Judged> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(flow)
            .cloned()
    }
}

/// The flow's action without the scoped-by-who rules: its library's (by library alone; a
/// name scope is the kernel's), or `unattributed_tls`.
fn base_action(policy: &Policy, lib: Option<&crate::libraries::Library>, lib_id: u32) -> Action {
    match lib {
        Some(lib) if lib_id != UNATTRIBUTED => policy.decide(lib).action,
        _ => policy.unattributed_tls,
    }
}
