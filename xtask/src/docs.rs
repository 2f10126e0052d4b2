//! The documentation against xtask: every `cargo xtask ...` line that README.md, docs/*.md and
//! deploy/README.md show parses with xtask's own clap parser, and the example in `cargo xtask run
//! --help` is one of them (the arguments a documented `cargo xtask run` forwards are parsed as
//! `enforcer attach` by `enforcer/tests/docs.rs`). What counts as a command line and how
//! placeholders are filled in: `enforcer_tests::docs`.

use clap::{CommandFactory, Parser};
use enforcer_tests::docs::{command_lines, unparsed};

use super::Cmd;

#[test]
fn every_cargo_xtask_line_in_the_docs_parses() {
    let lines = command_lines("cargo xtask");
    let (failures, _) = unparsed("cargo xtask", &lines, |args| {
        Cmd::try_parse_from(std::iter::once("cargo xtask").chain(args.iter().map(String::as_str)))
            .map(drop)
    });
    assert!(
        lines.len() >= 10,
        "only {} cargo xtask lines found in the docs: is the extractor broken?",
        lines.len()
    );
    assert!(
        failures.is_empty(),
        "documented cargo xtask lines that do not parse:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_run_help_example_is_a_documented_command_line() {
    let cmd = Cmd::command();
    let help = cmd
        .find_subcommand("run")
        .and_then(|run| run.get_arguments().find(|a| a.get_id() == "args"))
        .and_then(|a| a.get_help())
        .map(|h| h.to_string())
        .expect("`run` documents its arguments");
    let example = help
        .split('`')
        .skip(1)
        .step_by(2)
        .find_map(|span| span.strip_prefix("-- "))
        .unwrap_or_else(|| panic!("no `-- ARGS` example in {help:?}"));
    let want: Vec<String> = ["run", "--"]
        .into_iter()
        .chain(example.split_whitespace())
        .map(str::to_string)
        .collect();
    let documented = command_lines("cargo xtask")
        .into_iter()
        .any(|l| l.variants.is_ok_and(|v| v.contains(&want)));
    assert!(
        documented,
        "`cargo xtask run --help` shows `{}`, which no document shows as `cargo xtask {}` (the \
         documented ones are checked against enforcer attach's parser)",
        example,
        want.join(" ")
    );
}
