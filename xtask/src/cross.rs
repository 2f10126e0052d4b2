//! Builds for arm64 (`aarch64-unknown-linux-gnu`) on an x86-64 host.
//!
//! rustup cannot download the target's standard library here, so std is built from the nightly
//! toolchain's `rust-src` (`-Z build-std`), and Debian's `gcc-aarch64-linux-gnu` links (with
//! `libc6-dev-arm64-cross`). The eBPF object follows: `enforcer/build.rs` (aya-build) passes
//! `bpf_target_arch` from the target it builds for, so the object embedded in an aarch64 agent
//! reads arm64's register layout (`enforcer-ebpf/src/regs.rs`, aya-ebpf's `PtRegs`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{root, target_dir};

pub const AARCH64: &str = "aarch64-unknown-linux-gnu";
const LINKER: &str = "aarch64-linux-gnu-gcc";
/// Where the cross linker's libc lives (the dynamic loader, for `qemu-aarch64-static -L`).
pub const SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// The architectures `--arch` accepts, and Debian's name of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Arch> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => bail!("unknown architecture {s:?} (x86_64/amd64 or aarch64/arm64)"),
        }
    }

    /// Debian's architecture name (package names, multiarch paths).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The directory cargo writes a `profile` build to.
    pub fn out_dir(self, profile: &str) -> PathBuf {
        match self {
            Arch::X86_64 => target_dir().join(profile),
            Arch::Aarch64 => target_dir().join(AARCH64).join(profile),
        }
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `cargo <args>` for `arch`, in the workspace root, not yet run: the host's `cargo`, or for
/// aarch64 `cargo +nightly ... --target aarch64-unknown-linux-gnu -Z build-std=std,panic_abort`
/// with the cross linker. `args` starts with the subcommand (`build`, `test`).
pub fn cargo(arch: Arch, args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root());
    match arch {
        Arch::X86_64 => {
            cmd.args(args);
        }
        Arch::Aarch64 => {
            if !have(LINKER) {
                bail!("{LINKER} not found: run `cargo xtask setup` (gcc-aarch64-linux-gnu)");
            }
            if !Path::new(SYSROOT).join("lib").is_dir() {
                bail!("{SYSROOT}/lib not found: run `cargo xtask setup` (libc6-dev-arm64-cross)");
            }
            cmd.arg("+nightly")
                .args(args)
                .args(["--target", AARCH64, "-Z", "build-std=std,panic_abort"])
                .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", LINKER)
                .env("CC_aarch64_unknown_linux_gnu", LINKER)
                .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar");
        }
    }
    Ok(cmd)
}

/// Builds the enforcer for `arch`; returns the binary's path.
pub fn build_enforcer(arch: Arch, release: bool) -> Result<PathBuf> {
    let mut args = vec!["build", "-p", "enforcer"];
    if release {
        args.push("--release");
    }
    let status = cargo(arch, &args)?.status().context("cannot run cargo")?;
    if !status.success() {
        bail!(
            "`cargo {}` for {} failed ({status})",
            args.join(" "),
            arch.debian()
        );
    }
    let bin = arch
        .out_dir(if release { "release" } else { "debug" })
        .join("enforcer");
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

/// `<bin> --list --format terse` of a test binary of `arch` (an aarch64 one under
/// `qemu-aarch64-static`, with the cross libc as its root).
pub fn list_command(arch: Arch, bin: &Path) -> Result<Command> {
    let mut cmd = match arch {
        Arch::X86_64 => Command::new(bin),
        Arch::Aarch64 => {
            if !have("qemu-aarch64-static") {
                bail!("qemu-aarch64-static not found: run `cargo xtask setup` (qemu-user-static)");
            }
            let mut c = Command::new("qemu-aarch64-static");
            c.args(["-L", SYSROOT]).arg(bin);
            c
        }
    };
    cmd.args(["--list", "--format", "terse"]);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings() {
        assert_eq!(Arch::parse("arm64").unwrap(), Arch::Aarch64);
        assert_eq!(Arch::parse("aarch64").unwrap(), Arch::Aarch64);
        assert_eq!(Arch::parse("amd64").unwrap(), Arch::X86_64);
        assert!(Arch::parse("riscv64").is_err());
        assert!(
            Arch::Aarch64
                .out_dir("debug")
                .ends_with("aarch64-unknown-linux-gnu/debug")
        );
    }
}
