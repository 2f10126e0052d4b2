//! `cargo xtask <command>`: set up the toolchain, build, run and test enforcer.

mod bench;
mod cross;
#[cfg(test)]
mod docs;
mod fuzz;
mod progress;
mod setup;
mod test;
mod vm;

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::Parser;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "enforcer developer tasks")]
enum Cmd {
    /// Install what building and testing need (Debian packages, rust-src, bpf-linker, mounts).
    /// Idempotent; a no-op when everything is in place.
    Setup,
    /// Setup, then build the enforcer binary (its build.rs builds the eBPF object).
    Build {
        #[arg(long)]
        release: bool,
        /// Target architecture: x86_64 (the host) or aarch64 (cross-built with nightly's
        /// build-std and gcc-aarch64-linux-gnu, to target/aarch64-unknown-linux-gnu/).
        #[arg(long, default_value = "x86_64", value_parser = ["x86_64", "amd64", "aarch64", "arm64"])]
        arch: String,
    },
    /// Setup, build (release), then run `enforcer attach [ARGS]` (root only).
    Run {
        /// Arguments for `enforcer attach`, e.g. `-- --iface eth0 --policy policies/openssl-only.yaml`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, unit and integration tests, rustfmt and clippy (root only).
    Test,
    /// Measure what enforcement costs (root only): writes bench/REPORT.md and bench/report.json.
    /// Never fails on slow numbers, only when a figure cannot be measured. See docs/benchmarks.md.
    Bench {
        /// Each figure once with small counts, to check that they still run; writes to
        /// target/bench/quick/ unless --out is given.
        #[arg(long)]
        quick: bool,
        /// Only these figures (1-10), e.g. `--only 1,4`.
        #[arg(long, value_delimiter = ',')]
        only: Vec<u32>,
        /// Directory to write REPORT.md and report.json to.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Use this enforcer binary instead of building target/release/enforcer.
        #[arg(long)]
        enforcer: Option<PathBuf>,
    },
    /// Run the cargo-fuzz targets (policy_parse, elf_identify, btf_offsets, go_tables,
    /// cbom_build, ja4_string) for N seconds each; installs cargo-fuzz if missing. See
    /// docs/fuzzing.md.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Boot Debian's stock kernels (5.10, 6.1, 6.12; arm64: 6.1, 6.12) in QEMU and run the
    /// end-to-end enforcement tests inside with each kernel TCP hook form; prints kernel x hook
    /// x test.
    Vm(vm::VmArgs),
}

fn main() -> ExitCode {
    // Children (cargo, aya-build) must find the bpf-linker that setup installs.
    let bin = setup::cargo_home().join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if !dirs.contains(&bin) {
        dirs.insert(0, bin);
        let joined = std::env::join_paths(dirs).expect("PATH entries are joinable");
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("PATH", joined) };
    }
    let result = match Cmd::parse() {
        Cmd::Setup => setup::setup(),
        Cmd::Build { release, arch } => setup::setup()
            .and_then(|()| cross::Arch::parse(&arch))
            .and_then(|arch| {
                let bin = cross::build_enforcer(arch, release)?;
                println!("xtask: built {}", bin.display());
                Ok(())
            }),
        Cmd::Run { args } => run(&args),
        Cmd::Test => return test::test(),
        Cmd::Fuzz { seconds, target } => fuzz::run(&fuzz::Options { seconds, target }),
        Cmd::Bench {
            quick,
            only,
            out,
            enforcer,
        } => bench::run(bench::Options {
            quick,
            only,
            out,
            enforcer,
        }),
        Cmd::Vm(args) => vm::vm(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (parent of this crate's manifest directory).
pub fn root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {what}` must run as root: it loads eBPF programs, attaches XDP/tc and \
             creates network namespaces (try `sudo -E cargo xtask {what}`)"
        );
    }
    Ok(())
}

/// `cargo <args>` in the workspace root; Err if it cannot start or exits non-zero.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new("cargo")
        .args(args)
        .current_dir(root())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    require_root("run")?;
    setup::setup()?;
    let bin = cross::build_enforcer(cross::Arch::X86_64, true)?;
    let err = Command::new(&bin).arg("attach").args(args).exec();
    Err(err).with_context(|| format!("cannot exec {}", bin.display()))
}

#[cfg(test)]
mod tests {
    use super::Cmd;
    use clap::Parser;

    fn run_args(argv: &[&str]) -> Vec<String> {
        match Cmd::try_parse_from(argv).expect("parses") {
            Cmd::Run { args } => args,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn run_forwards_enforcer_args() {
        let want = ["--iface", "eth0", "--dry-run"];
        assert_eq!(
            run_args(&["xtask", "run", "--", "--iface", "eth0", "--dry-run"]),
            want
        );
        assert_eq!(
            run_args(&["xtask", "run", "--iface", "eth0", "--dry-run"]),
            want
        );
        assert!(run_args(&["xtask", "run"]).is_empty());
    }
}
