//! Policy reload without detaching (SIGHUP, a change of the policy file, or `enforcer reload`).
//!
//! All or nothing: the new file is parsed and validated first; a bad file changes nothing (the
//! old policy stays in force) and is reported with the parser's error (file, line, key). A good
//! one rewrites, for every library probed so far, its action (`LIB_ACTIONS`) and its
//! server-name scope (`SCOPED_LIBS`, `SERVER_NAME_RULES`), then `MODE` and `unattributed_tls`
//! (`HELLO_POLICY`), and becomes the watcher's policy for files found later. New connections
//! are judged by it at once.
//!
//! With `--reevaluate-established`, every flow in `FLOWS` of a library the new policy does not
//! scope by server name is then judged again: newly denied (enforce) → blocklist + socket abort;
//! newly allowed or audited → out of the blocklist. Flows of a library the new policy scopes by
//! name keep their verdict (the kernel keeps no flow's name to judge it again by), and so do
//! unattributed flows already past their ClientHello. The policy's `catalog:` section is read
//! too, but a changed catalog only affects files identified from now on (libraries already
//! probed keep their identity).

use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::Key;
use enforcer_common::{
    flow::{FlowState, verdict},
    policy::ServerNameKey,
};
use serde_json::{Value, json};

use crate::{
    agent::events::Reporter,
    datapath::{
        loader,
        maps::{LiveMapError, LiveMaps},
        sock_destroy,
    },
    policy::{self, Action, Mode, NameScope, Policy},
};

#[derive(Clone, Debug)]
pub struct ReloadConfig {
    pub path: PathBuf,
    pub dry_run: bool,
    pub reevaluate_established: bool,
    /// The kernel hook attributes sends after they leave (`sock_send_length`): start-up lowered
    /// `unattributed_tls: deny` to audit for it, and a reload does the same.
    pub late_attribution: bool,
}

/// What a successful reload changed.
#[derive(Debug, Default, serde::Serialize)]
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
}

/// Reads and validates the policy at `config.path`. Nothing is changed yet.
pub fn read(config: &ReloadConfig) -> Result<Policy, policy::PolicyError> {
    policy::load(&config.path)
}

/// Applies `new` (already validated) to the kernel maps. `old`: the policy in force.
pub fn apply(
    new: &Policy,
    old: &Policy,
    config: &ReloadConfig,
    maps: &mut LiveMaps,
    reporter: &Reporter,
) -> Result<Summary, LiveMapError> {
    let mode = new.effective_mode(config.dry_run);
    let (hello, unattributed) = loader::hello_policy(new, config.late_attribution);
    let mut summary = Summary {
        mode: mode.name(),
        unattributed_tls: unattributed.name(),
        ..Summary::default()
    };
    // `scoped` (the classifier also watches pending flows' first non-ClientHello packet) stays
    // on while any library may still be scoped; it takes the new policy's value at the end.
    let mut during = hello;
    during.scoped |= maps.hello_policy().scoped;
    maps.set_hello_policy(during)?;
    let libs = reporter.libraries();
    let mut actions = std::collections::HashMap::new();
    for (id, info) in &libs {
        let Some(lib) = &info.library else { continue };
        let action = new.decide(lib).action;
        let scope = new.name_scope(lib);
        if scope != old.name_scope(lib) {
            summary.scopes_changed += 1;
        }
        if old.decide(lib).action != action {
            summary.actions_changed += 1;
        }
        write_library(maps, *id, action, scope.as_ref())?;
        summary.libraries += 1;
        if scope.is_none() {
            // Scoped libraries' flows are judged per server name at the ClientHello, not by
            // library alone: they are not re-judged below.
            actions.insert(*id, action);
        }
    }
    maps.set_mode(mode.code())?;
    if during != hello {
        maps.set_hello_policy(hello)?;
    }
    if !config.reevaluate_established {
        return Ok(summary);
    }
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
                    let _ = sock_destroy::destroy(&flow);
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
    Ok(summary)
}

/// Rewrites one library's action and server-name scope while its connections go on.
///
/// The kernel reads these maps per packet, between any two of the writes below, so their order
/// is chosen such that every connection is judged by the old policy or by the new one, never
/// allowed where both would deny it:
/// - A flow of a library in `SCOPED_LIBS` waits for its ClientHello; there its name is looked
///   up in `SERVER_NAME_RULES` (longest pattern of that library), with `LIB_ACTIONS` for names
///   no pattern matches and the `SCOPED_LIBS` value for a ClientHello without a name. A library
///   not in `SCOPED_LIBS` is judged at attribution by `LIB_ACTIONS`.
/// - Scoped after the reload: the new patterns go in first (overwriting kept ones), then
///   `SCOPED_LIBS` and `LIB_ACTIONS`, then the stale patterns go out. Meanwhile the trie holds
///   old ∪ new patterns: a name whose longest match is a new pattern gets the new policy's
///   action; one whose longest match is a stale pattern gets the old one's (it was the longest
///   match in the old trie too); a name matching neither gets `LIB_ACTIONS`, old or new, each
///   right for its policy. A library that was unscoped only becomes scoped once its patterns
///   are in, so it is never judged by name against a partial trie.
/// - Unscoped after the reload: `LIB_ACTIONS` first, then out of `SCOPED_LIBS` (new flows are
///   judged at attribution by the new action), then the patterns go out. A flow attributed just
///   before and still waiting for its ClientHello is judged by an old pattern or the new action,
///   or, without a name, denied (the kernel's answer for a waiting flow whose library is no
///   longer listed: stricter than either policy, never looser).
fn write_library(
    maps: &mut LiveMaps,
    lib_id: u32,
    action: Action,
    scope: Option<&NameScope>,
) -> Result<(), LiveMapError> {
    let Some(scope) = scope else {
        maps.set_action(lib_id, action.code())?;
        maps.remove_scoped(lib_id)?;
        for key in maps.name_rules_of(lib_id) {
            maps.remove_name_rule(&key)?;
        }
        return Ok(());
    };
    let mut wanted = Vec::with_capacity(scope.patterns.len());
    for (pattern, pattern_action, _) in &scope.patterns {
        let (bits, data) = pattern.kernel_key(lib_id);
        let key = Key::new(bits, data);
        maps.insert_name_rule(&key, pattern_action.code())?;
        wanted.push(key);
    }
    maps.set_scoped(lib_id, scope.nameless.code())?;
    maps.set_action(lib_id, action.code())?;
    for key in maps.name_rules_of(lib_id) {
        if !wanted.iter().any(|w| same_key(w, &key)) {
            maps.remove_name_rule(&key)?;
        }
    }
    Ok(())
}

/// The trie compares the first `prefix_len` bits only: bytes past them do not tell keys apart.
fn same_key(a: &Key<ServerNameKey>, b: &Key<ServerNameKey>) -> bool {
    let (da, db) = (a.data(), b.data());
    let used = (a.prefix_len().saturating_sub(32) / 8) as usize;
    let used = used.min(da.name.len());
    a.prefix_len() == b.prefix_len()
        && da.lib_id_be == db.lib_id_be
        && da.name[..used] == db.name[..used]
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

/// The `reload` event for a successful reload.
pub fn applied_record(path: &Path, summary: &Summary) -> Value {
    json!({
        "type": "reload",
        "ok": true,
        "policy": path.display().to_string(),
        "mode": summary.mode,
        "libraries": summary.libraries,
        "actions_changed": summary.actions_changed,
        "scopes_changed": summary.scopes_changed,
        "unattributed_tls": summary.unattributed_tls,
        "flows_reevaluated": summary.flows_reevaluated,
        "newly_blocked": summary.newly_blocked,
        "newly_unblocked": summary.newly_unblocked,
    })
}

/// The `reload` event for a rejected policy.
pub fn rejected_record(path: &Path, error: &str) -> Value {
    json!({
        "type": "reload",
        "ok": false,
        "policy": path.display().to_string(),
        "error": error,
    })
}

/// What identifies the file's content for the change poll: (inode, size, mtime). A file
/// replaced by rename (editors, Kubernetes ConfigMap updates) changes the inode.
pub fn fingerprint(path: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_action_and_mode() {
        assert_eq!(verdict_for(Action::Allow, Mode::Enforce), verdict::ALLOWED);
        assert_eq!(verdict_for(Action::Audit, Mode::Enforce), verdict::AUDITED);
        assert_eq!(verdict_for(Action::Deny, Mode::Enforce), verdict::BLOCKED);
        assert_eq!(verdict_for(Action::Deny, Mode::Audit), verdict::WOULD_BLOCK);
    }

    #[test]
    fn a_replaced_file_changes_the_fingerprint() {
        let dir = tempfile_dir();
        let path = dir.join("p.yaml");
        std::fs::write(&path, "a").unwrap();
        let before = fingerprint(&path);
        let tmp = dir.join("p.tmp");
        std::fs::write(&tmp, "a").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(
            before,
            fingerprint(&path),
            "same size and content, new inode"
        );
        assert_eq!(fingerprint(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("enforcer-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
