//! Policy reload without detaching (SIGHUP, a change of the policy file, or `enforcer reload`).
//!
//! All or nothing: the new file is parsed and validated first; a bad file changes nothing (the
//! old policy stays in force) and is reported with the parser's error (file, line, key). A good
//! one is applied by [`Datapath::apply`](crate::datapath::Datapath::apply): every library
//! registered so far is written again, then `MODE` and `unattributed_tls`, and the new policy
//! decides the files found later. New connections are judged by it at once; with
//! `--reevaluate-established` established ones too. The policy's `catalog:` section is read
//! too, but a changed catalog only affects files identified from now on (libraries already
//! probed keep their identity).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{
    datapath::Summary,
    policy::{self, Policy},
};

#[derive(Clone, Debug)]
pub struct ReloadConfig {
    pub path: PathBuf,
    pub reevaluate_established: bool,
    /// The file's [`fingerprint`] taken just before the policy in force was read at start: the
    /// change poll starts from it, so a file replaced at any moment after that read (while the
    /// agent starts, or between `ready` and the first poll) is reloaded.
    pub loaded: Option<Fingerprint>,
}

/// (inode, size, mtime seconds, mtime nanoseconds).
pub type Fingerprint = (u64, u64, i64, i64);

/// Reads and validates the policy at `config.path`. Nothing is changed yet.
pub fn read(config: &ReloadConfig) -> Result<Policy, policy::PolicyError> {
    policy::load(&config.path)
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
        "record_probes_added": summary.record_probes_added,
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
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
