//! Which rule scoped to who is talking (`who.rs`) decides a process's TLS, for the agent (its
//! answers go into the kernel's `WHO_CACHE`) and `enforcer policy explain` alike.
//!
//! For a library: the rules that match it, most specific first (`rules::matching`), are walked
//! until one decides. A rule scoped to who is talking decides if it matches the process; one
//! that does not is passed over. The first rule that is not scoped to who is talking ends the
//! walk: it (or, for a rule with `server_names`, the name judgement) decides, and the scoped
//! rules behind it are less specific. For unattributed TLS: the rules without library keys, in
//! file order (they are all as specific), and else `unattributed_tls`.
//!
//! **Runtimes.** Unattributed TLS of a process that maps a runtime's file (a JVM: `abi: jvm`,
//! the catalog's `java`) is first judged as that file's: by the rules naming a runtime family
//! that match it (most specific first, as for a library; one scoped to who is talking decides
//! only if it matches the process). Only if none does is it unattributed TLS as above. A
//! runtime's TLS is never a native library's: a JVM using one (netty-tcnative's libssl) is
//! attributed to that library by the kernel, and never reaches this.

use super::rules::{self, Subject};
use super::who::Speaker;
use super::{Action, Policy};

/// A rule scoped to who is talking that decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhoDecision {
    /// Index into the policy's rules.
    pub index: usize,
    pub line: usize,
    pub action: Action,
    /// Why it matches, library keys first.
    pub reasons: Vec<String>,
    /// Decided as the TLS of the runtime the process maps (`Speaker::runtime`, a JVM), which
    /// is then the library of the flow.
    pub runtime: bool,
}

impl Policy {
    /// True if any rule is scoped to who is talking.
    pub fn has_who_rules(&self) -> bool {
        self.libraries.iter().any(|r| r.who.is_some()) || self.has_runtime_rules()
    }

    /// True if a rule names a runtime family (`family: java`): the process that sends
    /// unattributed TLS is then looked at for the runtime it maps.
    pub fn has_runtime_rules(&self) -> bool {
        self.libraries.iter().any(|r| self.is_runtime_rule(r))
    }

    /// True if the rule names a runtime family (`abi: jvm`).
    pub fn is_runtime_rule(&self, r: &super::Rule) -> bool {
        r.family
            .as_ref()
            .and_then(|f| self.catalog.family(f.name()))
            .is_some_and(|f| f.is_runtime())
    }

    /// True if a rule pins an executable's contents (the resolver then hashes executables).
    pub fn who_needs_sha256(&self) -> bool {
        self.libraries
            .iter()
            .filter_map(|r| r.who.as_ref())
            .any(|w| w.needs_sha256())
    }

    /// True if some rule scoped to who is talking could decide the TLS of library `s` (`None`:
    /// unattributed TLS) for some process: only then does the kernel ask about its senders.
    pub fn who_may_decide(&self, s: Option<&Subject>) -> bool {
        (s.is_none() && self.has_runtime_rules()) || self.who_candidates(s).next().is_some()
    }

    /// The rule scoped to who is talking that decides process `p`'s TLS through library `s`
    /// (`None`: unattributed TLS); `None` if no such rule does (the flow is judged as without
    /// them).
    pub fn decide_who(&self, s: Option<&Subject>, p: &Speaker) -> Option<WhoDecision> {
        if s.is_none()
            && let Some(decision) = self.decide_runtime(p)
        {
            return Some(decision);
        }
        self.who_candidates(s).find_map(|(index, mut reasons)| {
            let rule = &self.libraries[index];
            let who = rule.who.as_ref()?;
            reasons.extend(who.matches(p)?);
            Some(WhoDecision {
                index,
                line: rule.line,
                action: rule.action,
                reasons,
                runtime: false,
            })
        })
    }

    /// The rule naming a runtime family that decides the unattributed TLS of process `p`, as
    /// the TLS of the runtime it maps.
    fn decide_runtime(&self, p: &Speaker) -> Option<WhoDecision> {
        let runtime = p.runtime.as_ref()?;
        let subject = super::subject(runtime);
        rules::matching(&self.libraries, &subject)
            .into_iter()
            .filter(|m| self.is_runtime_rule(&self.libraries[m.index]))
            .find_map(|m| {
                let rule = &self.libraries[m.index];
                let mut reasons = vec![format!(
                    "the process maps {} {} ({})",
                    runtime.family,
                    runtime.path.display(),
                    runtime
                        .identity
                        .version
                        .as_deref()
                        .unwrap_or("version unknown")
                )];
                reasons.extend(m.reasons);
                if let Some(who) = &rule.who {
                    reasons.extend(who.matches(p)?);
                }
                Some(WhoDecision {
                    index: m.index,
                    line: rule.line,
                    action: rule.action,
                    reasons,
                    runtime: true,
                })
            })
    }

    /// The rules scoped to who is talking that may decide for `s`, in the order they are tried,
    /// with the reasons their library keys match.
    fn who_candidates<'a>(
        &'a self,
        s: Option<&Subject>,
    ) -> Box<dyn Iterator<Item = (usize, Vec<String>)> + 'a> {
        match s {
            None => Box::new(
                self.libraries
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.who.is_some() && !r.names_library())
                    .map(|(i, _)| (i, Vec::new())),
            ),
            Some(s) => {
                let matches = rules::matching(&self.libraries, s);
                let candidates: Vec<(usize, Vec<String>)> = matches
                    .into_iter()
                    .take_while(|m| self.libraries[m.index].who.is_some())
                    .map(|m| (m.index, m.reasons))
                    .collect();
                Box::new(candidates.into_iter())
            }
        }
    }
}
