//! [`Datapath::apply`]: a new policy written into the kernel while connections go on.
//!
//! For every library in the table, its action (`LIB_ACTIONS`) and its server-name scope
//! (`SCOPED_LIBS`, `SERVER_NAME_RULES`) in the order of [`PolicyMaps::write_library`], then
//! `MODE` and `unattributed_tls` (`HELLO_POLICY`). The new policy is the one in force from the
//! first write on: libraries registered meanwhile are written with it.
//!
//! Optionally every flow in `FLOWS` of a library the new policy does not scope by server name is
//! then judged again: newly denied (enforce) → blocklist + socket abort; newly allowed or
//! audited → out of the blocklist. Flows of a library the new policy scopes by name keep their
//! verdict (the kernel keeps no flow's name to judge it again by), and so do unattributed flows
//! already past their ClientHello and flows of an earlier run's libraries.

use std::collections::HashMap;

use enforcer_common::flow::{FlowState, verdict};

use tracing::warn;

use super::{
    Datapath, lock,
    maps::{LiveMapError, LiveMaps},
    policy_maps::{self, PolicyMaps},
    records_unneeded, sock_destroy,
    table::LibInfo,
};
use crate::policy::{Action, Mode, NameScope, Policy, posture::Posture};

/// What applying a policy changed.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub libraries: usize,
    pub actions_changed: usize,
    /// Libraries whose server-name scope changed (added, removed or other patterns).
    pub scopes_changed: usize,
    pub unattributed_tls: &'static str,
    pub flows_reevaluated: usize,
    pub newly_blocked: usize,
    pub newly_unblocked: usize,
    /// Libraries whose record calls got probes now (the new policy no longer allows them
    /// unscoped; see `Datapath::register`).
    pub record_probes_added: usize,
}

/// One library's entries under the new policy.
struct Write {
    id: u32,
    action: Action,
    scope: Option<NameScope>,
    posture: Option<Posture>,
    /// A rule scoped to who is talking may decide it.
    who: bool,
}

impl Datapath {
    /// Makes `new` (already validated) the policy in force and writes it into the kernel; with
    /// `reevaluate`, established flows are judged again (see the module doc). A failed map write
    /// stops there and is returned: the maps then hold part of the new policy, and the new policy
    /// stays the one in force (libraries registered later get it).
    pub fn apply(&self, new: Policy, reevaluate: bool) -> Result<Summary, LiveMapError> {
        let (mut summary, actions, mode) = {
            let mut in_force = self.write();
            let old = std::mem::replace(&mut in_force.policy, new);
            let mode = in_force.mode();
            let (hello, unattributed) =
                policy_maps::hello_value(&in_force.policy, in_force.late_attribution);
            let (writes, mut summary) = plan(&old, &in_force.policy, &self.libraries.snapshot());
            summary.mode = mode.name();
            summary.unattributed_tls = unattributed.name();
            let mut maps = lock(&self.policy_maps);
            // `scoped` (the classifier also watches pending flows' first non-ClientHello
            // packet) stays on while any library may still be scoped; it takes the new
            // policy's value at the end.
            let mut during = hello;
            during.scoped |= maps.hello_policy().scoped;
            maps.set_hello_policy(during)?;
            maps.pause_ja4_cache()?;
            write_all(&mut maps, &writes)?;
            maps.write_over_capacity(in_force.policy.default)?;
            maps.write_host_posture(&in_force.policy)?;
            maps.write_who(&in_force.policy)?;
            maps.set_mode(mode.code())?;
            if during != hello {
                maps.set_hello_policy(hello)?;
            }
            // Scoped libraries' flows are judged per server name or sender at the hello, not
            // by library alone: they are not judged again.
            let mut actions: HashMap<u32, Action> = writes
                .iter()
                .filter(|w| w.scope.is_none() && !w.who)
                .map(|w| (w.id, w.action))
                .collect();
            actions.insert(super::OVER_CAPACITY, in_force.policy.default);
            (summary, actions, mode)
        };
        // Before established flows are judged again: a connection of a newly denied library
        // that no hello told the datapath of is then cut at its next record.
        summary.record_probes_added = self.probe_deferred_records();
        if reevaluate {
            reevaluate_flows(&mut lock(&self.maps), &actions, mode, &mut summary)?;
        }
        Ok(summary)
    }
}

impl Datapath {
    /// Probes the record calls of the libraries that had them deferred and that the policy in
    /// force no longer allows unscoped. Returns how many libraries got them; one that cannot be
    /// probed keeps them deferred and is said (its connections stay judged by their hellos).
    fn probe_deferred_records(&self) -> usize {
        let wanted: Vec<(u32, LibInfo)> = {
            let in_force = self.read();
            self.libraries
                .snapshot()
                .into_iter()
                .filter(|(_, info)| info.records_deferred)
                .filter(|(_, info)| {
                    let lib = &info.library;
                    let action = in_force.policy.decide(lib).action;
                    !records_unneeded(lib, action, in_force.policy.name_scope(lib).as_ref())
                })
                .collect()
        };
        let mut added = 0;
        for (id, mut info) in wanted {
            // Not for a library released since the snapshot (its links would outlive it).
            let _releasing = lock(&self.releasing);
            if self.libraries.get(id).is_none() {
                continue;
            }
            let (_, records) = info.library.split_record_probes();
            match self.prober.attach(id, &records, || lock(&self.ebpf)) {
                Ok(_) => {
                    info.records_deferred = false;
                    self.libraries.insert(id, info);
                    added += 1;
                }
                Err(err) => {
                    warn!(id, path = %info.path, "record calls not probed after the reload: {err}");
                }
            }
        }
        added
    }
}

/// What `new` writes for each library, and the counts of what differs from `old`.
fn plan(old: &Policy, new: &Policy, libs: &HashMap<u32, LibInfo>) -> (Vec<Write>, Summary) {
    let mut summary = Summary::default();
    let mut writes = Vec::with_capacity(libs.len());
    for (id, info) in libs {
        let lib = &info.library;
        let action = new.decide(lib).action;
        let scope = new.name_scope(lib);
        if scope != old.name_scope(lib) {
            summary.scopes_changed += 1;
        }
        if old.decide(lib).action != action {
            summary.actions_changed += 1;
        }
        summary.libraries += 1;
        writes.push(Write {
            id: *id,
            action,
            scope,
            posture: new.posture_of(lib).cloned(),
            who: new.who_may_decide(Some(&crate::policy::subject(lib))),
        });
    }
    (writes, summary)
}

fn write_all(maps: &mut PolicyMaps, writes: &[Write]) -> Result<(), LiveMapError> {
    for w in writes {
        maps.write_library(w.id, w.action, w.scope.as_ref(), w.posture.as_ref(), w.who)?;
    }
    Ok(())
}

fn reevaluate_flows(
    maps: &mut LiveMaps,
    actions: &HashMap<u32, Action>,
    mode: Mode,
    summary: &mut Summary,
) -> Result<(), LiveMapError> {
    for (flow, state) in maps.flows() {
        let Some(action) = actions.get(&state.lib_id) else {
            continue; // scoped, or a library of an earlier run: its decision stands
        };
        summary.flows_reevaluated += 1;
        let wanted = verdict_for(*action, mode);
        if wanted == state.verdict {
            continue;
        }
        if wanted == verdict::BLOCKED {
            match maps.block(&flow, state.lib_id) {
                Ok(()) => {
                    summary.newly_blocked += 1;
                    let _ = sock_destroy::destroy(&flow, None);
                }
                Err(_) => maps.set_verdict(&flow, verdict::BLOCKLIST_FULL)?,
            }
        } else {
            if is_blocked(&state) && maps.unblock(&flow)? {
                summary.newly_unblocked += 1;
            }
            maps.set_verdict(&flow, wanted)?;
        }
    }
    Ok(())
}

fn is_blocked(state: &FlowState) -> bool {
    state.verdict == verdict::BLOCKED
}

/// The verdict the kernel would record for a new flow of a library with `action`.
pub fn verdict_for(action: Action, mode: Mode) -> u8 {
    match (action, mode) {
        (Action::Allow, _) => verdict::ALLOWED,
        (Action::Audit, _) => verdict::AUDITED,
        (Action::Deny, Mode::Enforce) => verdict::BLOCKED,
        (Action::Deny, Mode::Audit) => verdict::WOULD_BLOCK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libraries::Library;

    #[test]
    fn verdicts_follow_action_and_mode() {
        assert_eq!(verdict_for(Action::Allow, Mode::Enforce), verdict::ALLOWED);
        assert_eq!(verdict_for(Action::Audit, Mode::Enforce), verdict::AUDITED);
        assert_eq!(verdict_for(Action::Deny, Mode::Enforce), verdict::BLOCKED);
        assert_eq!(verdict_for(Action::Deny, Mode::Audit), verdict::WOULD_BLOCK);
    }

    fn policy(text: &str) -> Policy {
        crate::policy::parse(text, "policy.yaml").unwrap()
    }

    #[test]
    fn the_plan_counts_changed_actions_and_scopes() {
        let libs: HashMap<u32, LibInfo> = [
            (1, "openssl", "/lib/libssl.so.3"),
            (2, "gnutls", "/lib/libgnutls.so.30"),
            (3, "nss", "/lib/libssl3.so"),
        ]
        .into_iter()
        .map(|(id, family, path)| (id, LibInfo::of(&Library::bare(family, path))))
        .collect();
        let old = policy(
            "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n",
        );
        let new = policy(concat!(
            "mode: enforce\ndefault: deny\nlibraries:\n",
            "  - family: openssl\n    action: allow\n",
            "  - family: gnutls\n    action: allow\n",
            "  - family: nss\n    action: allow\n    server_names: ['*.example']\n",
        ));
        let (writes, summary) = plan(&old, &new, &libs);
        assert_eq!(summary.libraries, 3);
        assert_eq!(summary.actions_changed, 1, "gnutls: deny → allow");
        assert_eq!(summary.scopes_changed, 1, "nss: now scoped by name");
        let scoped: Vec<u32> = writes
            .iter()
            .filter(|w| w.scope.is_some())
            .map(|w| w.id)
            .collect();
        assert_eq!(scoped, vec![3]);
        let (_, same) = plan(&new, &new, &libs);
        assert_eq!((same.actions_changed, same.scopes_changed), (0, 0));
    }
}
