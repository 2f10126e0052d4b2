//! The documentation against the code: what README.md, docs/*.md and deploy/README.md show must be
//! what the code does today. What counts as a command line or a code block, and the sample values
//! that replace placeholders such as FILE or IFACE: `enforcer_tests::docs`. (The `cargo xtask`
//! lines are parsed by xtask's own test, `xtask/src/docs.rs`.)
//!
//! - [`commands`]: every `enforcer` command line parses with the agent's clap parser
//!   (`enforcer::cli::Cli`), and so do the arguments a shown `cargo xtask run` forwards;
//! - [`cbom`]: docs/cbom.md's example is a valid CycloneDX 1.7 document of the keys
//!   `enforcer cbom` writes;
//! - [`control`]: the control socket's `recent` answer in docs/operations.md has the agent's keys
//!   and its violations match docs/events.schema.json;
//! - [`events`]: docs/events.md's examples match docs/events.schema.json and its key tables list
//!   the schema's keys;
//! - [`policies`]: every `yaml` block is a policy the parser accepts; a shown `enforcer policy
//!   check` output is what it prints;
//! - [`logs`]: a shown log line comes from the module its target names, with that message and
//!   every field;
//! - here: every repository path the documents name exists.

#[path = "docs/cbom.rs"]
mod cbom;
#[path = "docs/commands.rs"]
mod commands;
#[path = "docs/control.rs"]
mod control;
#[path = "docs/events.rs"]
mod events;
#[path = "docs/logs.rs"]
mod logs;
#[path = "docs/policies.rs"]
mod policies;

use enforcer_tests::docs::repository_paths;

#[test]
fn every_repository_path_in_the_docs_exists() {
    let root = enforcer_tests::workspace();
    let paths = repository_paths();
    let missing: Vec<String> = paths
        .iter()
        .filter(|(_, path)| !root.join(path).exists())
        .map(|(at, path)| format!("{at}: {path}"))
        .collect();
    assert!(paths.len() >= 50, "only {} paths found", paths.len());
    assert!(
        missing.is_empty(),
        "paths named in the docs that do not exist (moved or renamed?):\n{}",
        missing.join("\n")
    );
}
