//! Every `enforcer` command line the documents show parses, and so do the arguments a shown
//! `cargo xtask run` forwards to `enforcer attach`.

use clap::Parser;
use enforcer::cli::Cli;
use enforcer_tests::docs::{CommandLine, command_lines, unparsed};

/// `cargo xtask run [--] ARGS` runs `enforcer attach ARGS`: those, as `enforcer` command lines.
fn forwarded_by_xtask_run() -> Vec<CommandLine> {
    command_lines("cargo xtask")
        .into_iter()
        .filter_map(|line| {
            let attach: Vec<Vec<String>> = line
                .variants
                .iter()
                .flatten()
                .filter_map(|args| args.strip_prefix(&["run".to_string()]))
                .map(|rest| {
                    let rest = rest.strip_prefix(&["--".to_string()]).unwrap_or(rest);
                    std::iter::once("attach".to_string())
                        .chain(rest.iter().cloned())
                        .collect()
                })
                .collect();
            (!attach.is_empty()).then_some(CommandLine {
                variants: Ok(attach),
                ..line
            })
        })
        .collect()
}

#[test]
fn every_enforcer_command_line_in_the_docs_parses() {
    let lines = command_lines("enforcer");
    let forwarded = forwarded_by_xtask_run();
    let mut failures = vec![];
    let mut checked = 0;
    for set in [&lines, &forwarded] {
        let (f, n) = unparsed("enforcer", set, |args| {
            Cli::try_parse_from(std::iter::once("enforcer").chain(args.iter().map(String::as_str)))
                .map(drop)
        });
        failures.extend(f);
        checked += n;
    }
    assert!(
        lines.len() >= 20 && !forwarded.is_empty(),
        "only {} enforcer command lines and {} cargo xtask run lines found in the docs: is the \
         extractor broken?",
        lines.len(),
        forwarded.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} documented command lines do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
