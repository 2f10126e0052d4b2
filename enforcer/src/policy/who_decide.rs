//! Which rule scoped to who is talking (`who.rs`) decides a process's TLS, for the agent (its
//! answers go into the kernel's `WHO_CACHE`) and `enforcer policy explain` alike.
//!
//! For a library: the rules that match it, most specific first (`rules::matching`), are walked
//! until one decides. A rule scoped to who is talking decides if it matches the process; one
//! that does not is passed over. The first rule that is not scoped to who is talking ends the
//! walk: it (or, for a rule with `server_names`, the name judgement) decides, and the scoped
//! rules behind it are less specific. For unattributed TLS: the rules without library keys, in
//! file order (they are all as specific), and else `unattributed_tls`.

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
}

impl Policy {
    /// True if any rule is scoped to who is talking.
    pub fn has_who_rules(&self) -> bool {
        self.libraries.iter().any(|r| r.who.is_some())
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
        self.who_candidates(s).next().is_some()
    }

    /// The rule scoped to who is talking that decides process `p`'s TLS through library `s`
    /// (`None`: unattributed TLS); `None` if no such rule does (the flow is judged as without
    /// them).
    pub fn decide_who(&self, s: Option<&Subject>, p: &Speaker) -> Option<WhoDecision> {
        self.who_candidates(s).find_map(|(index, mut reasons)| {
            let rule = &self.libraries[index];
            let who = rule.who.as_ref()?;
            reasons.extend(who.matches(p)?);
            Some(WhoDecision {
                index,
                line: rule.line,
                action: rule.action,
                reasons,
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
