//! What the kernel needs to judge one library's connections by server name: the action for each
//! pattern (as the longest-prefix match of the `SERVER_NAME_RULES` trie will find it), the
//! action for names no pattern matches, and the action for a ClientHello without a readable name.
//!
//! The trie picks the longest matching pattern, the policy the most specific matching rule.
//! They agree because each pattern's entry holds the action of the most specific rule among
//! those that apply to *every* name the pattern matches: the unscoped rules and the scoped rules
//! with a pattern covering it (`*.example` covers `*.a.example`). A name the trie resolves to
//! pattern P is matched by no longer pattern, so exactly those rules apply to it.

use super::{Action, Policy, ServerNamePattern, rules};
use crate::libraries::Library;

/// Most patterns in one rule's `server_names`.
pub const MAX_NAMES_PER_RULE: usize = 64;

/// One library's server-name table; `None` from [`Policy::name_scope`] when no rule is scoped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameScope {
    /// For names no pattern matches (the library's unscoped decision).
    pub base: Action,
    /// For a ClientHello without a readable name, and for server-side connections: the
    /// strictest action any name could get (deny, then audit, then allow), so a scoped deny
    /// cannot be dodged by leaving the name out.
    pub nameless: Action,
    /// Each distinct pattern of the library's scoped rules, with its action and deciding line
    /// (`None`: `default`).
    pub patterns: Vec<(ServerNamePattern, Action, Option<usize>)>,
}

fn strictness(a: Action) -> u8 {
    match a {
        Action::Allow => 0,
        Action::Audit => 1,
        Action::Deny => 2,
    }
}

impl Policy {
    /// The server-name table of `lib`, if any rule matching it has `server_names`.
    pub fn name_scope(&self, lib: &Library) -> Option<NameScope> {
        // Rules scoped to who is talking are judged apart (`who_decide.rs`): not by name.
        let matches: Vec<rules::Match> = rules::matching(&self.libraries, &super::subject(lib))
            .into_iter()
            .filter(|m| self.libraries[m.index].who.is_none())
            .collect();
        let rule = |i: usize| &self.libraries[i];
        if !matches.iter().any(|m| rule(m.index).is_name_scoped()) {
            return None;
        }
        let base = self.decide(lib).action;
        let mut patterns: Vec<(ServerNamePattern, Action, Option<usize>)> = Vec::new();
        for m in &matches {
            for p in rule(m.index).server_names.iter().flatten() {
                if patterns.iter().any(|(q, _, _)| q == p) {
                    continue;
                }
                // Matches are most specific first: the first that applies to all of p decides.
                let decider = matches.iter().find(|d| match &rule(d.index).server_names {
                    None => true,
                    Some(qs) => qs.iter().any(|q| q.covers(p)),
                });
                let (action, line) = match decider {
                    Some(d) => (d.action, Some(d.line)),
                    None => (self.default, None),
                };
                patterns.push((p.clone(), action, line));
            }
        }
        let nameless = patterns
            .iter()
            .map(|(_, a, _)| *a)
            .chain([base])
            .max_by_key(|a| strictness(*a))
            .unwrap_or(base);
        Some(NameScope {
            base,
            nameless,
            patterns,
        })
    }

    /// The action for `lib`'s connection to `server_name` (`None`: no readable name), as the
    /// kernel decides it; for `policy explain` and tests.
    pub fn decide_connection(&self, lib: &Library, server_name: Option<&str>) -> Action {
        let Some(scope) = self.name_scope(lib) else {
            return self.decide(lib).action;
        };
        let Some(name) = server_name else {
            return scope.nameless;
        };
        scope
            .patterns
            .iter()
            .filter(|(p, _, _)| p.matches(name))
            .max_by_key(|(p, _, _)| p.kernel_bytes().len())
            .map_or(scope.base, |(_, a, _)| *a)
    }
}
