//! What the figures stand on: Debian packages, the compiled load generator, BCC's kernel headers,
//! and a description of the machine.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::report::Machine;
use crate::{root, target_dir};

/// Packages the figures use beyond `cargo xtask setup`'s: a C compiler and OpenSSL headers for
/// `bench/tlsperf.c`, iperf3, BCC's tools (sslsniff, the peer reference) and kernel headers for
/// BCC to compile against (see [`bcc_kernel_source`]); and, also in setup's list, the real
/// clients of figure 7 (curl, socat, Node.js) and redis for figure 9.
const PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    "libssl-dev",
    "openssl",
    "gnutls-bin",
    "iperf3",
    "bpfcc-tools",
    "python3-bpfcc",
    "linux-headers-amd64",
    "curl",
    "socat",
    "nodejs",
    "redis-server",
    "redis-tools",
];

pub fn ensure_packages() -> Result<()> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(PACKAGES)
        .output()
        .context("cannot run dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !text
                .lines()
                .any(|l| l == format!("{p} install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("bench: installing Debian packages: {}", missing.join(" "));
    for args in [vec!["update"], [&["install", "-y"][..], &missing].concat()] {
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
    }
    Ok(())
}

/// Where the bench keeps what it builds (not committed).
pub fn work_dir() -> PathBuf {
    target_dir().join("bench")
}

/// Compiles `bench/tlsperf.c` against the system OpenSSL.
pub fn build_tlsperf() -> Result<PathBuf> {
    let src = root().join("bench/tlsperf.c");
    let bin = work_dir().join("tlsperf");
    fs::create_dir_all(work_dir())?;
    let fresh = match (fs::metadata(&src), fs::metadata(&bin)) {
        (Ok(s), Ok(b)) => b.modified()? >= s.modified()?,
        _ => false,
    };
    if !fresh {
        let out = Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&bin)
            .arg(&src)
            .args(["-lssl", "-lcrypto", "-lpthread"])
            .output()
            .context("cannot run gcc")?;
        if !out.status.success() {
            bail!(
                "compiling {} failed: {}",
                src.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(bin)
}

/// BCC compiles its programs against kernel headers at run time. This kernel has none
/// (custom build, no `/lib/modules/$(uname -r)`, `CONFIG_IKHEADERS` unset), so BCC is pointed
/// (`BCC_KERNEL_SOURCE`) at Debian's newest `linux-headers-*-amd64` merged with its `-common`
/// half (Debian splits a header tree in two; BCC wants one). The probes BCC tools use (uprobes:
/// `pt_regs` and helper calls) do not depend on the kernel version of the headers.
/// Returns the tree, or why there is none.
pub fn bcc_kernel_source() -> Result<PathBuf> {
    let mut arch: Vec<PathBuf> = fs::read_dir("/usr/src")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-headers-") && n.ends_with("-amd64"))
        })
        .collect();
    arch.sort();
    let Some(arch) = arch.pop() else {
        bail!("no /usr/src/linux-headers-*-amd64 (package linux-headers-amd64)");
    };
    let name = arch.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let common = arch.with_file_name(format!("{}-common", name.trim_end_matches("-amd64")));
    if !common.is_dir() {
        bail!("{} has no {}", arch.display(), common.display());
    }
    let tree = work_dir().join(format!("bcc-kernel-src-{name}"));
    if !tree.join("include/linux/kconfig.h").exists() {
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir_all(&tree)?;
        for src in [&common, &arch] {
            let status = Command::new("cp")
                .arg("-rsf")
                .arg(format!("{}/.", src.display()))
                .arg(&tree)
                .status()?;
            if !status.success() {
                bail!("cannot build the header tree {}", tree.display());
            }
        }
    }
    Ok(tree)
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

pub fn machine(enforcer: &Path) -> Machine {
    let mut fields: Vec<(String, String)> = vec![];
    let mut put = |k: &str, v: String| fields.push((k.to_string(), v));
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let hypervisor = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.contains(" hypervisor"));
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    put(
        "date",
        first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
    );
    put("kernel", first_line(Command::new("uname").args(["-srvm"])));
    put(
        "cpu",
        format!(
            "{cpus} × {cpu}{}",
            if hypervisor { " (virtual machine)" } else { "" }
        ),
    );
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.contains("nested_pvm=1") {
        put(
            "virtualisation",
            "KVM guest under PVM (nested_pvm=1): exceptions and syscalls are world switches, \
             see the trap costs below"
                .into(),
        );
    }
    let mem = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(kb) = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    {
        put("memory", format!("{:.1} GiB", kb as f64 / 1048576.0));
    }
    put(
        "os",
        fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .unwrap_or("")
            .trim_matches('"')
            .to_string(),
    );
    put(
        "openssl",
        first_line(Command::new("openssl").arg("version")),
    );
    put(
        "gnutls",
        first_line(Command::new("gnutls-cli").arg("--version")),
    );
    put(
        "enforcer",
        format!(
            "{} ({}), commit {}",
            enforcer.display(),
            first_line(Command::new(enforcer).arg("--version")),
            first_line(Command::new("git").args([
                "-C",
                &root().to_string_lossy(),
                "describe",
                "--always",
                "--dirty"
            ]))
        ),
    );
    Machine { fields }
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` turned off for the bench's life (restored when dropped): on, the
/// kernel reads the clock twice around every BPF program run, which inflates every per-packet
/// and per-call figure (an empty XDP program measured 91 ns with it, 11 ns without).
pub struct BpfStatsOff {
    was_on: bool,
}

impl BpfStatsOff {
    pub fn new() -> BpfStatsOff {
        let was_on = fs::read_to_string(BPF_STATS).is_ok_and(|v| v.trim() == "1");
        if was_on && fs::write(BPF_STATS, "0").is_err() {
            eprintln!("bench: could not turn kernel.bpf_stats_enabled off: BPF figures include it");
            return BpfStatsOff { was_on: false };
        }
        BpfStatsOff { was_on }
    }

    /// For the report's machine table.
    pub fn describe(&self) -> String {
        match self.was_on {
            true => "was on: off during the run (it adds two clock reads to every program run), \
                     restored after"
                .into(),
            false => "off".into(),
        }
    }
}

impl Drop for BpfStatsOff {
    fn drop(&mut self) {
        if self.was_on {
            let _ = fs::write(BPF_STATS, "1");
        }
    }
}
