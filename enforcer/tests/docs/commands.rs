//! Every `enforcer` command line the documents show parses, and so do the arguments a shown
//! `cargo xtask run` forwards to `enforcer attach`.

use clap::Parser;
use enforcer::cli::Cli;
use enforcer_tests::docs::command_lines;

/// `Err` with clap's first line (what is wrong) if `enforcer ARGS` does not parse.
fn parse(args: &[String]) -> Result<(), String> {
    let argv = std::iter::once("enforcer").chain(args.iter().map(String::as_str));
    match Cli::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string().lines().next().unwrap_or_default().to_string()),
    }
}

#[test]
fn every_enforcer_command_line_in_the_docs_parses() {
    let mut failures = vec![];
    let mut checked = 0;
    let lines = command_lines("enforcer");
    for line in &lines {
        match &line.variants {
            Err(e) => failures.push(format!("{}: `{}`: {e}", line.at, line.text)),
            Ok(variants) => {
                for args in variants {
                    checked += 1;
                    println!("{}: enforcer {}", line.at, args.join(" "));
                    if let Err(e) = parse(args) {
                        failures.push(format!("{}: `enforcer {}`: {e}", line.at, args.join(" ")));
                    }
                }
            }
        }
    }
    // `cargo xtask run [--] ARGS` runs `enforcer attach ARGS`.
    for line in command_lines("cargo xtask") {
        for args in line.variants.iter().flatten() {
            let Some(forwarded) = args.strip_prefix(&["run".to_string()]) else {
                continue;
            };
            let forwarded = forwarded
                .strip_prefix(&["--".to_string()])
                .unwrap_or(forwarded);
            let attach: Vec<String> = std::iter::once("attach".to_string())
                .chain(forwarded.iter().cloned())
                .collect();
            checked += 1;
            println!("{}: enforcer {}", line.at, attach.join(" "));
            if let Err(e) = parse(&attach) {
                failures.push(format!(
                    "{}: `cargo xtask {}` forwards `enforcer {}`: {e}",
                    line.at,
                    args.join(" "),
                    attach.join(" ")
                ));
            }
        }
    }
    assert!(
        lines.len() >= 20,
        "only {} enforcer command lines found in the docs: is the extractor broken?",
        lines.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} documented command lines do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
