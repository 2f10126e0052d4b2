//! `enforcer completions SHELL` and `enforcer man --out DIR`: shell completions and man pages,
//! generated from the command line definition ([`crate::cli::Cli`]), so they never fall behind
//! it. The Containerfile ships both (deploy/README.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, Shell};

/// The completion script for `shell`. (Into memory: clap_complete panics if a write fails,
/// e.g. into a closed pipe.)
pub fn completions(shell: Shell) -> Vec<u8> {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out
}

/// Writes `enforcer.1` and a page for each subcommand (`enforcer-policy-check.1`, ...) into
/// `dir` (created if needed); returns the files written.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(cmd, dir, &mut written)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(written)
}

fn write_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    written.push(clap_mangen::Man::new(cmd).generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_for_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for page in [
            "enforcer.1",
            "enforcer-attach.1",
            "enforcer-policy.1",
            "enforcer-policy-check.1",
            "enforcer-completions.1",
        ] {
            assert!(names.iter().any(|n| n == page), "no {page} in {names:?}");
        }
        let attach = std::fs::read_to_string(dir.path().join("enforcer-attach.1")).unwrap();
        assert!(attach.contains("control\\-socket"), "{attach}");
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(completions(shell)).unwrap();
            assert!(
                text.contains("attach") && text.contains("policy"),
                "{shell:?}"
            );
        }
    }
}
