//! Shell completions and man pages, as an operator installs them: bash loads the completion
//! script (`complete -p enforcer` then names its function), and `man -l` renders the page of
//! `enforcer` and of every subcommand.

use std::process::Command;

use enforcer_tests::{cmd, enforcer_bin, sh};

fn enforcer() -> String {
    enforcer_bin().to_str().expect("utf-8 path").to_owned()
}

#[test]
fn bash_loads_the_completion() {
    let script = format!(
        "source <('{}' completions bash) && complete -p enforcer",
        enforcer()
    );
    let out = sh(&mut cmd("bash", ["-c", script.as_str()]));
    assert!(
        out.contains("-F _enforcer") && out.trim_end().ends_with(" enforcer"),
        "complete -p enforcer: {out}"
    );
    // The function completes subcommands: `enforcer pol<TAB>` offers `policy`.
    let complete = format!(
        "source <('{}' completions bash) && COMP_WORDS=(enforcer pol) COMP_CWORD=1 && \
         _enforcer enforcer pol enforcer && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        enforcer()
    );
    let offered = sh(&mut cmd("bash", ["-c", complete.as_str()]));
    assert!(
        offered.lines().any(|l| l == "policy"),
        "offered: {offered:?}"
    );
}

#[test]
fn zsh_and_fish_scripts_are_written() {
    for shell in ["zsh", "fish"] {
        let out = sh(&mut cmd(&enforcer(), ["completions", shell]));
        assert!(out.contains("attach") && out.contains("policy"), "{shell}");
    }
}

#[test]
fn man_renders_a_page_for_every_subcommand() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let listed = sh(cmd(&enforcer(), ["man", "--out"]).arg(dir.path()));
    // Every subcommand `enforcer --help` lists (and the nested `policy` ones) has its page.
    let help = sh(&mut cmd(&enforcer(), ["--help"]));
    let subcommands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section")
        .split("Options:")
        .next()
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert!(subcommands.len() >= 10, "subcommands: {subcommands:?}");
    // (page, the command line its synopsis shows)
    let mut pages: Vec<(String, String)> = subcommands
        .iter()
        .map(|s| (format!("enforcer-{s}.1"), format!("enforcer {s}")))
        .collect();
    pages.push(("enforcer.1".into(), "enforcer".into()));
    for sub in ["check", "explain"] {
        let page = format!("enforcer-policy-{sub}.1");
        pages.push((page, format!("enforcer policy {sub}")));
    }
    for (page, command) in &pages {
        let path = dir.path().join(page);
        assert!(
            listed.contains(page.as_str()),
            "{page} not listed:\n{listed}"
        );
        let out = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(&path)
            .env("MANWIDTH", "100")
            .output()
            .expect("man (man-db; `cargo xtask setup` installs it)");
        // Justified text: runs of spaces taken as one.
        let text = String::from_utf8_lossy(&out.stdout)
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let name = page.trim_end_matches(".1");
        assert!(
            out.status.success() && text.contains("NAME") && text.contains(name),
            "man -l {page}: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("SYNOPSIS") && text.contains(command.as_str()),
            "{page} has a synopsis with its command line:\n{text}"
        );
    }
}
