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
    who::{Sender, WhoKey, who_action},
};
use serde_json::{Value, json};
use tracing::warn;

use crate::datapath::{PolicyView, maps::LiveMaps, verdict_for, who_maps::WhoGateMaps};
use crate::policy::{Action, who::Speaker};

/// Flows whose judgement is remembered for their later events, at most.
const REMEMBERED: usize = 4096;

/// What was decided about one flow's sender, for its events.
#[derive(Clone, Debug)]
pub struct Judged {
    pub speaker: Speaker,
    /// The scoped rule that decided (line, its keys, why), if one did.
    pub rule: Option<(usize, String, Vec<String>)>,
    /// `flow::verdict::*` for that action in the mode in force; `PENDING_WHO` where the
    /// kernel's name rules decide (known only when it judges the hello again).
    pub verdict: u8,
    /// Enforce mode: a pending hello was held by the kernel (it is judged again when TCP sends
    /// it again, and reported then, unless refused here).
    pub held: bool,
    /// A held hello refused here: its flow is blocklisted (and its socket to be aborted) now.
    pub refused_now: bool,
    /// The sender as the kernel recorded it (`None`: not recorded).
    pub sender: Option<Sender>,
    /// Unattributed TLS decided as the TLS of the runtime the sender maps (a JVM): the library
    /// of the flow.
    pub runtime: Option<crate::libraries::Library>,
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

    /// The runtime the flow's TLS was judged as (`library` of a `client_hello` event, without
    /// an id: a runtime's file is listed, never probed).
    pub fn runtime_json(&self) -> Option<Value> {
        let r = self.runtime.as_ref()?;
        Some(json!({
            "id": null,
            "family": r.family.name(),
            "path": r.path.display().to_string(),
            "version": r.identity.version,
            "container_path": null,
            "host_path": r.path.display().to_string(),
        }))
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
        // Without such rules, nothing to do (not even a map lookup).
        let (want_sha256, runtimes) = {
            let in_force = self.policy.read();
            if !in_force.policy.has_who_rules() {
                return None;
            }
            // The runtime a sender maps matters to unattributed TLS only.
            let runtimes = (event.lib_id == UNATTRIBUTED && in_force.policy.has_runtime_rules())
                .then(|| in_force.policy.catalog.clone());
            (in_force.policy.who_needs_sha256(), runtimes)
        };
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        // The generation before the policy is read again: an answer is never filed under a
        // newer policy's generation.
        let generation = maps.generation();
        let sender = maps.sender(&event.flow);
        drop(maps);
        // Judged already at its held hello (the process may have exited since), and the same
        // sender, or its `SENDERS` entry was evicted meanwhile: that judgement stands.
        if let Some(earlier) = self.recent(&event.flow)
            && (sender.is_none() || earlier.sender == sender)
        {
            return Some(earlier);
        }
        // Resolved without the policy locked (a reload waits for no `/proc` read or hash).
        let (speaker, complete) = sender
            .map(|s| crate::speakers::resolve(&s, want_sha256, runtimes.as_deref()))
            .unwrap_or_default();
        let in_force = self.policy.read();
        let policy = &in_force.policy;
        let mode = in_force.mode();
        let subject = lib.map(crate::policy::subject);
        let decision = policy.decide_who(subject.as_ref(), &speaker);
        let speaker_runtime = speaker.runtime.clone();
        // Without a scoped rule the flow gets what the kernel gives it; that is known here only
        // where no server name is needed for it (unattributed TLS, a library without name
        // rules), and not under the late hook form (which lowers `unattributed_tls: deny`).
        let base = match lib {
            Some(l) if event.lib_id != UNATTRIBUTED => policy
                .name_scope(l)
                .is_none()
                .then(|| policy.decide(l).action),
            _ => Some(policy.unattributed_tls),
        }
        .filter(|_| !in_force.late_attribution);
        let action = decision.as_ref().map(|d| d.action).or(base);
        let pending = event.verdict == verdict::PENDING_WHO;
        let enforcing = mode == crate::policy::Mode::Enforce;
        let judged = Judged {
            rule: decision.as_ref().map(|d| {
                (
                    d.line,
                    policy.libraries[d.index].describe(),
                    d.reasons.clone(),
                )
            }),
            speaker,
            verdict: action.map_or(verdict::PENDING_WHO, |a| verdict_for(a, mode)),
            held: enforcing,
            refused_now: pending && enforcing && action == Some(Action::Deny),
            sender,
            runtime: decision.as_ref().filter(|d| d.runtime).and(speaker_runtime),
        };
        drop(in_force);
        // Facts a gone process left unknown are not kept as its identity's verdict: the kernel
        // asks again (and a held hello is judged without the scoped rules after its wait).
        if pending
            && complete
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
        // Refused: cut now rather than at the retransmission (the caller aborts the socket).
        if judged.refused_now {
            let blocked = crate::datapath::lock(&self.live).block_judged(&event.flow, event.lib_id);
            if let Err(err) = blocked {
                warn!(%err, "blocklisting a flow refused by a rule scoped to who is talking failed; its hello stays held, then is judged again");
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
