//! The policy: which TLS libraries may talk on this host.
//!
//! A policy is a small YAML file (format reference: `docs/policy.md`):
//!
//! ```yaml
//! mode: enforce          # enforce | audit   (--dry-run forces audit)
//! default: deny          # action for a TLS library no rule matches
//! libraries:
//!   - family: openssl    # a catalog family id
//!     version: ">=3.0.9, <4"
//!     action: allow      # allow | deny | audit
//!   - path: "/opt/vendor/**"
//!     action: deny
//! catalog:               # optional: more families, same shape as catalog/default.yaml
//!   families: []
//! ```
//!
//! The most specific matching rule decides (see [`rules`]). The file is untrusted input: it is
//! size-capped, parsed without panics, and every error names the file, the line and column, and
//! the key (see [`PolicyError`]).

mod error;
mod glob;
pub mod ja4;
pub mod posture;
mod raw;
mod recover;
mod report;
pub mod rules;
mod scope;
pub mod server_names;
mod source;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_all;
#[cfg(test)]
mod tests_posture;
#[cfg(test)]
mod tests_rules;
#[cfg(test)]
mod tests_scope;
#[cfg(test)]
mod tests_who;
mod validate;
pub mod who;
mod who_decide;
mod who_validate;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::libraries::Library;
use raw::RawPolicy;

pub use error::PolicyError;
pub use report::{check_report, errors_json};
pub use rules::{Match, PathGlob, Rule, Subject};
pub use scope::NameScope;
pub use server_names::ServerNamePattern;
pub use source::{EMBEDDED_SOURCE, embedded_default, load, load_all};

/// Largest policy accepted, in bytes: a real policy is a few hundred bytes.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Most rules a policy may hold (each rule's line is located by re-reading the document).
pub const MAX_RULES: usize = 256;

/// Agent-wide mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Nothing is blocked; connections that enforce mode would block are reported as would-block.
    Audit,
    /// Connections of denied libraries are blocked in the kernel.
    Enforce,
}

/// What a policy says about one TLS library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Connections are recorded, never blocked.
    Allow,
    /// Connections are blocked in enforce mode, reported as would-block in audit mode.
    Deny,
    /// Connections are reported at warn level, never blocked.
    Audit,
}

/// A parsed, validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub default: Action,
    /// For TLS on a connection no probed library claimed (`unattributed_tls`; absent: `default`).
    pub unattributed_tls: Action,
    /// For a file a process maps that cannot be analysed (`unknown_files`; absent:
    /// `unattributed_tls`): how the agent reports it (docs/policy.md, "Unknown files").
    pub unknown_files: Action,
    /// For a QUIC Initial datagram, either direction (`quic`; absent: `default`): TLS inside
    /// QUIC is not attributed to a library (docs/policy.md, "QUIC").
    pub quic: Action,
    /// Host-wide crypto-posture requirements (`tls_versions`, `groups`, `cipher_suites`, `ja4`).
    pub posture: posture::Posture,
    /// The distinct patterns of every `ja4` list, numbered (the bits of the lists and of a
    /// flow's `Ja4Verdict`).
    pub ja4_patterns: Vec<ja4::Ja4Pattern>,
    /// The numbering's generation (`Policy::ja4_generation`), made with it.
    ja4_generation: u64,
    /// In file order.
    pub libraries: Vec<Rule>,
    /// The embedded catalog, extended by the policy's `catalog:` section.
    pub catalog: Arc<Catalog>,
    /// Where the policy came from (file path, or the embedded default's name).
    pub source: String,
}

/// The outcome of [`Policy::decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Line of the rule that matched; `None` when `default` applied.
    pub rule_line: Option<usize>,
}

impl Mode {
    /// In the order the documentation and error messages list them.
    pub const ALL: [Mode; 2] = [Mode::Enforce, Mode::Audit];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }

    /// The value of the `MODE` map (`enforcer_common::policy::mode`).
    pub fn code(self) -> u32 {
        match self {
            Mode::Audit => enforcer_common::policy::mode::AUDIT,
            Mode::Enforce => enforcer_common::policy::mode::ENFORCE,
        }
    }
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Allow, Action::Deny, Action::Audit];

    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Audit => "audit",
        }
    }

    /// The value of a `LIB_ACTIONS` entry (`enforcer_common::policy::action`).
    pub fn code(self) -> u8 {
        match self {
            Action::Allow => enforcer_common::policy::action::ALLOW,
            Action::Deny => enforcer_common::policy::action::DENY,
            Action::Audit => enforcer_common::policy::action::AUDIT,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Policy {
    /// The action for a library's connections that no scoped rule (`server_names`) takes: the
    /// most specific matching unscoped rule, else `default`.
    pub fn decide(&self, lib: &Library) -> Decision {
        self.decide_subject(&subject(lib))
    }

    ///
    /// A runtime's file (a JVM, `abi: jvm`) is decided only by the rules naming a runtime
    /// family, else by `unattributed_tls`: its TLS is unattributed TLS unless such a rule takes
    /// it (`who_decide`, "Runtimes").
    pub fn decide_subject(&self, s: &Subject) -> Decision {
        let runtime = self
            .catalog
            .family(s.family.name())
            .is_some_and(|f| f.is_runtime());
        let matches = rules::matching(&self.libraries, s);
        match matches.iter().find(|m| {
            let r = &self.libraries[m.index];
            !r.is_scoped() && (!runtime || self.is_runtime_rule(r))
        }) {
            Some(m) => Decision {
                action: m.action,
                rule_line: Some(m.line),
            },
            None if runtime => Decision {
                action: self.unattributed_tls,
                rule_line: None,
            },
            None => Decision {
                action: self.default,
                rule_line: None,
            },
        }
    }

    /// The unscoped rule that decides `lib` (`None`: `default` does).
    pub fn deciding_rule(&self, lib: &Library) -> Option<&Rule> {
        rules::matching(&self.libraries, &subject(lib))
            .into_iter()
            .find(|m| !self.libraries[m.index].is_scoped())
            .map(|m| &self.libraries[m.index])
    }

    /// Every rule that matches, most specific (the deciding one) first.
    pub fn explain(&self, lib: &Library) -> Vec<Match> {
        rules::matching(&self.libraries, &subject(lib))
    }

    /// The mode in force: `--dry-run` overrides the file and forces audit.
    pub fn effective_mode(&self, dry_run: bool) -> Mode {
        if dry_run { Mode::Audit } else { self.mode }
    }
}

/// The facts about `lib` that rules match on.
///
/// Its paths are the host's: the names, of `lib.path` and of the names processes map it under,
/// that reach this very file (device and inode) in the agent's own mount namespace. A name that
/// reaches it only inside another mount namespace (a container's, or one an unprivileged user
/// made with `unshare -Urm` and a bind mount over `/usr/lib/...`) names nothing on the host, and
/// neither does a `/proc/<pid>/...` link into another process's view: `path` rules do not match
/// them (docs/policy.md, "Paths").
pub fn subject(lib: &Library) -> Subject<'_> {
    subject_with(lib, |p| names_file_here(p, lib.dev, lib.ino))
}

/// [`subject`] with the test of which paths are the host's given.
pub fn subject_with(lib: &Library, is_host_path: impl Fn(&Path) -> bool) -> Subject<'_> {
    let mut paths: Vec<&Path> = Vec::new();
    for p in std::iter::once(&lib.path).chain(&lib.mapped_as) {
        if !paths.contains(&p.as_path()) && is_host_path(p) {
            paths.push(p);
        }
    }
    Subject {
        family: &lib.family,
        version: lib.identity.version.as_deref(),
        paths,
        sha256: lib.identity.sha256.as_deref(),
    }
}

/// Whether `path`, looked up in this mount namespace, is the file `dev`/`ino`.
fn names_file_here(path: &Path, dev: u64, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    if path.starts_with("/proc") {
        return false; // a view into another process's namespace, not a name the host has
    }
    std::fs::metadata(path).is_ok_and(|md| md.is_file() && (md.dev(), md.ino()) == (dev, ino))
}

/// The file's shape, as serde reads it. Keys are listed in error messages from here.
/// Parses and validates a policy. `source` names the file in error messages. The error is the
/// first one found (serde's, else the first check that fails); [`parse_all`] finds them all.
pub fn parse(text: &str, source: &str) -> Result<Policy, PolicyError> {
    collect(text, source, false).map_err(|mut errors| errors.swap_remove(0))
}

/// [`parse`], with every error of the file (not only the first), sorted by position, each once.
pub fn parse_all(text: &str, source: &str) -> Result<Policy, Vec<PolicyError>> {
    collect(text, source, true).map_err(error::sorted)
}

/// The errors in the order they are found; `all`: go on past serde's first error.
fn collect(text: &str, source: &str, all: bool) -> Result<Policy, Vec<PolicyError>> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(vec![error::too_large(source, text.len() as u64)]);
    }
    if is_blank(text) {
        return Err(vec![PolicyError::Invalid {
            file: source.to_owned(),
            line: None,
            column: None,
            key: None,
            message: format!("empty policy: expected {}", error::top_level_expected()),
        }]);
    }
    let de = serde_yaml::Deserializer::from_str(text);
    let recovered = match serde_path_to_error::deserialize::<_, RawPolicy>(de) {
        Ok(raw) => recover::Recovered {
            raw,
            errors: Vec::new(),
            removed: recover::Removed::default(),
        },
        Err(e) if !all => return Err(vec![error::from_yaml(e, source, text)]),
        Err(e) => recover::recover(text, source, error::from_yaml(e, source, text))?,
    };
    let mut errors = recovered.errors;
    let policy = validate::validate(recovered.raw, text, source, &recovered.removed, &mut errors);
    match errors.is_empty() {
        true => Ok(policy),
        false => Err(errors),
    }
}

/// True if the text holds no YAML content: only blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}
