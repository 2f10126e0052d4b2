//! The policy: which TLS libraries may talk on this host.
//!
//! A policy is a small YAML file (format reference: `docs/policy.md`):
//!
//! ```yaml
//! mode: enforce          # enforce | audit   (--dry-run forces audit)
//! default: deny          # action for a TLS library no rule matches
//! libraries:
//!   - family: openssl    # openssl | gnutls
//!     action: allow      # allow | deny | audit
//! ```
//!
//! The file is untrusted input: it is size-capped, parsed without panics, and every error names
//! the file, the line and column, and the key (see [`PolicyError`]).

mod error;
#[cfg(test)]
mod tests;

use std::fmt::{self, Write as _};
use std::io::Read as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::family::Family;
pub use error::PolicyError;

/// Largest policy accepted, in bytes: a real policy is a few hundred bytes.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

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

/// One entry of `libraries:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub action: Action,
    /// 1-based line of the rule in the policy file.
    pub line: usize,
}

/// A parsed, validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub default: Action,
    /// At most one rule per family (checked by [`parse`]).
    pub libraries: Vec<Rule>,
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

    /// The value of the `MODE` map (`enforcer_common::mode`).
    pub fn code(self) -> u32 {
        match self {
            Mode::Audit => enforcer_common::mode::AUDIT,
            Mode::Enforce => enforcer_common::mode::ENFORCE,
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

    /// The value of a `LIB_ACTIONS` entry (`enforcer_common::action`).
    pub fn code(self) -> u8 {
        match self {
            Action::Allow => enforcer_common::action::ALLOW,
            Action::Deny => enforcer_common::action::DENY,
            Action::Audit => enforcer_common::action::AUDIT,
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
    /// The action for a library of `family`: its rule if there is one, else `default`.
    pub fn decide(&self, family: Family) -> Decision {
        match self.libraries.iter().find(|r| r.family == family) {
            Some(rule) => Decision {
                action: rule.action,
                rule_line: Some(rule.line),
            },
            None => Decision {
                action: self.default,
                rule_line: None,
            },
        }
    }

    /// The mode in force: `--dry-run` overrides the file and forces audit.
    pub fn effective_mode(&self, dry_run: bool) -> Mode {
        if dry_run { Mode::Audit } else { self.mode }
    }
}

/// The file's shape, as serde reads it. Keys are listed in error messages from here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default = "default_mode")]
    mode: Mode,
    default: Action,
    #[serde(default)]
    libraries: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    family: Family,
    action: Action,
}

fn default_mode() -> Mode {
    Mode::Audit
}

/// Parses and validates a policy. `source` names the file in error messages.
pub fn parse(text: &str, source: &str) -> Result<Policy, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(error::too_large(source, text.len() as u64));
    }
    if is_blank(text) {
        return Err(PolicyError::Invalid {
            file: source.to_owned(),
            line: None,
            column: None,
            message: format!("empty policy: expected {}", error::top_level_expected()),
        });
    }
    let de = serde_yaml::Deserializer::from_str(text);
    let raw: RawPolicy =
        serde_path_to_error::deserialize(de).map_err(|e| error::from_yaml(e, source, text))?;

    // Valid policies have at most one rule per family, so this locates at most
    // `Family::ALL.len() + 1` rules (one re-parse each) before it returns.
    let mut libraries: Vec<Rule> = Vec::with_capacity(raw.libraries.len().min(Family::ALL.len()));
    for (index, rule) in raw.libraries.into_iter().enumerate() {
        let (line, column) = error::locate_rule(text, index);
        if let Some(first) = libraries.iter().find(|r| r.family == rule.family) {
            return Err(PolicyError::Invalid {
                file: source.to_owned(),
                line: Some(line),
                column: Some(column),
                message: format!(
                    "libraries[{index}]: duplicate rule for family '{}' (first rule at line {})",
                    rule.family, first.line
                ),
            });
        }
        libraries.push(Rule {
            family: rule.family,
            action: rule.action,
            line,
        });
    }
    Ok(Policy {
        mode: raw.mode,
        default: raw.default,
        libraries,
        source: source.to_owned(),
    })
}

/// Reads and parses the policy at `path`.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let name = path.display().to_string();
    let io_err = |error| PolicyError::Io {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size > MAX_POLICY_BYTES as u64 {
        return Err(error::too_large(&name, size));
    }
    // Files in /proc and pipes report size 0: the read itself is capped too.
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(error::too_large(&name, bytes.len() as u64));
    }
    let text = String::from_utf8(bytes).map_err(|e| PolicyError::Invalid {
        file: name.clone(),
        line: None,
        column: None,
        message: format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()),
    })?;
    parse(&text, &name)
}

/// Name under which the embedded default policy reports itself.
pub const EMBEDDED_SOURCE: &str = "<embedded policies/default.yaml>";

/// The policy used when none is given: audit mode, default deny, OpenSSL allowed.
pub fn embedded_default() -> Policy {
    const TEXT: &str = include_str!("../../policies/default.yaml");
    // A unit test parses the same text, so this cannot fail in a tested build.
    parse(TEXT, EMBEDDED_SOURCE).unwrap_or_else(|e| panic!("embedded default policy: {e}"))
}

/// The summary printed by `enforcer policy check FILE`.
pub fn check_report(p: &Policy) -> String {
    let mut out = String::new();
    let mode_note = match p.mode {
        Mode::Enforce => "connections of denied libraries are blocked",
        Mode::Audit => "nothing is blocked; denied connections are reported as would-block",
    };
    let _ = writeln!(out, "{}: valid policy", p.source);
    let _ = writeln!(out, "mode: {} ({mode_note})", p.mode);
    let _ = writeln!(
        out,
        "default: {} (for TLS libraries no rule matches)",
        p.default
    );
    let _ = writeln!(out, "rules: {}", p.libraries.len());
    for rule in &p.libraries {
        let _ = writeln!(
            out,
            "  line {}: {} -> {}",
            rule.line, rule.family, rule.action
        );
    }
    let _ = writeln!(out, "effective:");
    for family in Family::ALL {
        let d = p.decide(family);
        let why = match d.rule_line {
            Some(line) => format!("rule at line {line}"),
            None => "default".to_owned(),
        };
        let _ = writeln!(out, "  {family}: {} ({why})", d.action);
    }
    out
}

/// True if the text holds no YAML content: only blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}
