//! Policy reload without detaching (SIGHUP, a change of the policy file, or `enforcer reload`).
//!
//! All or nothing: the new file is parsed and validated first; a bad file changes nothing (the
//! old policy stays in force) and is reported with the parser's error (file, line, key). A good
//! one rewrites `LIB_ACTIONS` for every library probed so far and `MODE`, and becomes the
//! watcher's policy for files found later. New connections are judged by it at once.
//!
//! With `--reevaluate-established`, every flow in `FLOWS` is then judged again: newly denied
//! (enforce) → blocklist + socket abort; newly allowed or audited → out of the blocklist. The
//! policy's `catalog:` section is read too, but a changed catalog only affects files identified
//! from now on (libraries already probed keep their identity).

use std::path::{Path, PathBuf};

use enforcer_common::{FlowState, verdict};
use serde_json::{Value, json};

use crate::{
    events::Reporter,
    live_maps::LiveMaps,
    policy::{self, Action, Mode, Policy},
    sock_destroy,
};

#[derive(Clone, Debug)]
pub struct ReloadConfig {
    pub path: PathBuf,
    pub dry_run: bool,
    pub reevaluate_established: bool,
}

/// What a successful reload changed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub mode: &'static str,
    pub libraries: usize,
    pub actions_changed: usize,
    pub flows_reevaluated: usize,
    pub newly_blocked: usize,
    pub newly_unblocked: usize,
}

/// Reads and validates the policy at `config.path`. Nothing is changed yet.
pub fn read(config: &ReloadConfig) -> Result<Policy, policy::PolicyError> {
    policy::load(&config.path)
}

/// What a reload cannot change yet: the server-name scopes of the libraries probed so far and
/// `unattributed_tls` (they live in the tc program's own maps, which only start-up writes). A
/// policy that changes them is rejected, with this reason, and the one in force stays.
pub fn unsupported_change(new: &Policy, old: &Policy, reporter: &Reporter) -> Option<String> {
    if new.unattributed_tls != old.unattributed_tls {
        return Some("`unattributed_tls` changed: restart the agent to apply it".into());
    }
    for info in reporter.libraries().values() {
        let Some(lib) = &info.library else { continue };
        if new.name_scope(lib) != old.name_scope(lib) {
            return Some(format!(
                "the server_names rules for {} changed: restart the agent to apply them",
                lib.path.display()
            ));
        }
    }
    None
}

/// Applies `new` (already validated) to the kernel maps. `old`: the policy in force.
pub fn apply(
    new: &Policy,
    old: &Policy,
    config: &ReloadConfig,
    maps: &mut LiveMaps,
    reporter: &Reporter,
) -> Result<Summary, crate::live_maps::LiveMapError> {
    let mode = new.effective_mode(config.dry_run);
    let mut summary = Summary {
        mode: mode.name(),
        ..Summary::default()
    };
    let libs = reporter.libraries();
    let mut actions = std::collections::HashMap::new();
    for (id, info) in &libs {
        let Some(lib) = &info.library else { continue };
        let action = new.decide(lib).action;
        if new.name_scope(lib).is_some() {
            // Judged per server name at the ClientHello (unchanged: see `unsupported_change`);
            // its flows are not re-judged by library alone.
            maps.set_action(*id, action.code())?;
            summary.libraries += 1;
            continue;
        }
        if old.decide(lib).action != action {
            summary.actions_changed += 1;
        }
        maps.set_action(*id, action.code())?;
        actions.insert(*id, action);
        summary.libraries += 1;
    }
    maps.set_mode(mode.code())?;
    if !config.reevaluate_established {
        return Ok(summary);
    }
    for (flow, state) in maps.flows() {
        let Some(action) = actions.get(&state.lib_id) else {
            continue; // a library of an earlier run: its decision stands
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
