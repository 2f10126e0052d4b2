//! `enforcer libs [--json]`: every TLS library file on this host, its identity, the processes
//! mapping it, and the verdict the policy gives it.
//!
//! Processes in other mount namespaces (containers) are included: discovery reaches their files
//! through `/proc/<pid>/root` or `/proc/<pid>/map_files` (see [`crate::libraries`]), and
//! `mapped_as` shows the name the process itself uses.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::progress::Progress;
use crate::agent::events::op_name;
use crate::libraries::{self, DiscoverOptions, Library, LibraryError};
use crate::policy::Policy;

/// Discovers the libraries with the policy's catalog.
pub fn discover(policy: &Policy) -> Result<Vec<Library>, LibraryError> {
    let opts = DiscoverOptions {
        catalog: policy.catalog.clone(),
        ..DiscoverOptions::default()
    };
    // A bar on stderr where a person watches it; nothing added to the output otherwise.
    let progress = Progress::on_terminal(
        "examining files for TLS libraries {bar:40} {pos}/{len} ({elapsed})",
        true,
    );
    if !progress.shown() {
        return libraries::discover(&opts);
    }
    libraries::discover_with_progress(&opts, &mut |done, total| {
        progress.set(done, total, String::new());
    })
}

/// One library as a JSON object (the `--json` format, see docs/policy.md "Inventory"). `number`:
/// its place in the listing, from 1 (the id an agent started now would give it).
pub fn library_json(lib: &Library, number: usize, policy: &Policy) -> Value {
    let d = policy.decide(lib);
    let probes: Vec<Value> = lib
        .probes
        .iter()
        .map(|p| {
            json!({
                "symbol": p.symbol,
                "op": op_name(p.op),
                "file_offset": p.file_offset,
                "file": lib.probe_path(p).display().to_string(),
            })
        })
        .collect();
    json!({
        "id": number,
        "family": lib.family,
        "version": lib.identity.version,
        "path": lib.path.display().to_string(),
        "dev": lib.dev,
        "inode": lib.ino,
        "size": lib.identity.size,
        "build_id": lib.identity.build_id,
        "sha256": lib.identity.sha256,
        "mapped_as": lib.mapped_as.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "pids": lib.pids,
        "companion": lib.companion.as_ref().map(|c| c.path.display().to_string()),
        "probes": probes,
        "verdict": { "action": d.action.name(), "rule_line": d.rule_line },
    })
}

/// The whole inventory as one JSON document.
pub fn json(libs: &[Library], policy: &Policy) -> Value {
    json!({
        "policy": policy.source,
        "mode": policy.mode.name(),
        "default": policy.default.name(),
        "libraries": libs.iter().zip(1..).map(|(l, n)| library_json(l, n, policy)).collect::<Vec<_>>(),
    })
}

/// The inventory for people.
pub fn text(libs: &[Library], policy: &Policy) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} TLS librar{} (policy {}, mode {})",
        libs.len(),
        if libs.len() == 1 { "y" } else { "ies" },
        policy.source,
        policy.mode
    );
    for (lib, number) in libs.iter().zip(1..) {
        let d = policy.decide(lib);
        let why = match d.rule_line {
            Some(l) => format!("rule at line {l}"),
            // A runtime's file (a JVM): its TLS is unattributed TLS unless a rule names it.
            None if lib.probes.is_empty() => "unattributed_tls".to_owned(),
            None => "default".to_owned(),
        };
        let unknown = || "unknown".to_owned();
        let _ = writeln!(
            out,
            "\n[{number}] {} {}: {} ({why})",
            lib.family,
            lib.identity.version.clone().unwrap_or_else(unknown),
            d.action
        );
        let _ = writeln!(out, "  path       {}", lib.path.display());
        for name in lib.mapped_as.iter().filter(|n| **n != lib.path) {
            let _ = writeln!(out, "  mapped as  {}", name.display());
        }
        let _ = writeln!(
            out,
            "  file       dev {} inode {}, {} bytes",
            lib.dev, lib.ino, lib.identity.size
        );
        let _ = writeln!(
            out,
            "  build-id   {}",
            lib.identity.build_id.clone().unwrap_or_else(unknown)
        );
        let _ = writeln!(
            out,
            "  sha256     {}",
            lib.identity.sha256.clone().unwrap_or_else(unknown)
        );
        if let Some(c) = &lib.companion {
            let _ = writeln!(out, "  companion  {}", c.path.display());
        }
        let pids: Vec<String> = lib.pids.iter().map(u32::to_string).collect();
        let pids = match pids.len() {
            0 => "none".to_owned(),
            n if n > 20 => format!("{} ... ({n} processes)", pids[..20].join(" ")),
            n => format!(
                "{} ({n} process{})",
                pids.join(" "),
                if n == 1 { "" } else { "es" }
            ),
        };
        let _ = writeln!(out, "  pids       {pids}");
        if lib.probes.is_empty() {
            let _ = writeln!(
                out,
                "  probes     none: a runtime, whose TLS is its own compiled code (judged by the process that sends it)"
            );
        }
    }
    out
}
