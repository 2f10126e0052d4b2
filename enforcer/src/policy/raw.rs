//! The policy file as serde reads it: every key, nothing validated yet (`policy::validate`
//! validates). Unknown keys are errors (`deny_unknown_fields`), which the error module turns
//! into "unknown key, expected one of" with the line and column.

use serde::Deserialize;

use super::{
    Action, Mode,
    posture::RawJa4,
    who::{RawExecutable, RawUser},
};
use crate::catalog::RawCatalog;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default = "default_mode")]
    pub(super) mode: Mode,
    pub(super) default: Action,
    #[serde(default)]
    pub(super) unattributed_tls: Option<Action>,
    #[serde(default)]
    pub(super) unknown_files: Option<Action>,
    #[serde(default)]
    pub(super) quic: Option<Action>,
    #[serde(default)]
    pub(super) tls_versions: Option<Vec<String>>,
    #[serde(default)]
    pub(super) groups: Option<Vec<String>>,
    #[serde(default)]
    pub(super) cipher_suites: Option<Vec<String>>,
    #[serde(default)]
    pub(super) ja4: Option<RawJa4>,
    #[serde(default)]
    pub(super) libraries: Vec<RawRule>,
    #[serde(default)]
    pub(super) catalog: Option<RawCatalog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) family: Option<String>,
    #[serde(default)]
    pub(super) version: Option<String>,
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) sha256: Option<String>,
    #[serde(default)]
    pub(super) server_names: Option<Vec<String>>,
    #[serde(default)]
    pub(super) executables: Option<Vec<RawExecutable>>,
    #[serde(default)]
    pub(super) cgroups: Option<Vec<String>>,
    #[serde(default)]
    pub(super) users: Option<Vec<RawUser>>,
    #[serde(default)]
    pub(super) tls_versions: Option<Vec<String>>,
    #[serde(default)]
    pub(super) groups: Option<Vec<String>>,
    #[serde(default)]
    pub(super) cipher_suites: Option<Vec<String>>,
    #[serde(default)]
    pub(super) ja4: Option<RawJa4>,
    pub(super) action: Action,
}

fn default_mode() -> Mode {
    Mode::Audit
}
