//! Debian's stock kernels: find the package with apt, download and unpack it once into
//! `target/vm/`, read its config, and pull the modules the tests need out of it.

pub mod apt;
mod modules;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use apt::{Apt, add_backports, apt_source_has};

use crate::{
    cross::Arch,
    progress::{self, Progress},
};

/// A kernel series of the matrix and how to find its package.
pub struct Series {
    /// What `--kernel` calls it.
    pub name: &'static str,
    /// Meta packages tried in order; the first whose dependency starts with `prefix` wins.
    metas: &'static [&'static str],
    prefix: &'static str,
    /// Also look in bookworm-backports (added as an apt source if no source lists it).
    backports: bool,
    /// Debian suite other than the host's (bookworm) to take the kernel from, through a private
    /// apt state under `target/vm/apt-<suite>` (the host's sources are left alone).
    suite: Option<&'static str>,
    /// The kernel's architecture: arm64 kernels come through a private arm64 apt state of
    /// bookworm (`target/vm/apt-bookworm-arm64`, with -security and -backports).
    pub arch: Arch,
}

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        // Debian 11's kernel (Amazon Linux 2 runs 5.10 too); bullseye-security has the newest ABI.
        metas: &["linux-image-cloud-amd64", "linux-image-amd64"],
        prefix: "linux-image-5.10.",
        backports: false,
        suite: Some("bullseye"),
        arch: Arch::X86_64,
    },
    Series {
        name: "6.1",
        // bookworm's own kernel; the generic flavour only if the cloud one is gone.
        metas: &["linux-image-cloud-amd64", "linux-image-amd64"],
        prefix: "linux-image-6.1.",
        backports: false,
        suite: None,
        arch: Arch::X86_64,
    },
    Series {
        name: "6.12",
        // Debian ships 6.12 for bookworm in bookworm-backports and (since bookworm became LTS)
        // in bookworm-security; either is Debian's stock build.
        metas: &["linux-image-6.12-cloud-amd64", "linux-image-6.12-amd64"],
        prefix: "linux-image-6.12.",
        backports: true,
        suite: None,
        arch: Arch::X86_64,
    },
    // arm64 (`--arch arm64`): the same two Debian kernels, built for arm64. No 5.10: the agent
    // refuses it on any architecture (docs/kernel-support.md).
    Series {
        name: "6.1-arm64",
        metas: &["linux-image-cloud-arm64", "linux-image-arm64"],
        prefix: "linux-image-6.1.",
        backports: false,
        suite: None,
        arch: Arch::Aarch64,
    },
    Series {
        name: "6.12-arm64",
        metas: &["linux-image-6.12-cloud-arm64", "linux-image-6.12-arm64"],
        prefix: "linux-image-6.12.",
        backports: false,
        suite: None,
        arch: Arch::Aarch64,
    },
];

impl Series {
    /// The `--kernel` name without the architecture suffix (`6.1` for `6.1-arm64`).
    pub fn version(&self) -> &'static str {
        self.name.strip_suffix("-arm64").unwrap_or(self.name)
    }
}

/// An unpacked kernel package.
pub struct Kernel {
    pub series: &'static str,
    pub arch: Arch,
    pub package: String,
    /// `uname -r`, from the modules directory name.
    pub release: String,
    pub vmlinuz: PathBuf,
    pub config: Config,
    pub modules_dir: PathBuf,
    /// How it was obtained (for the report): "cached" or "downloaded".
    pub origin: String,
}

/// What the kernel needs, as (module name, config option). `y`: built in; `m`: the module (and
/// what it depends on) is loaded from the package in the initramfs; unset: the kernel cannot run
/// the tests.
pub const NEEDED: &[(Option<&str>, &str, &str)] = &[
    (None, "CONFIG_BLK_DEV_INITRD", "boot from the initramfs"),
    (None, "CONFIG_DEVTMPFS", "/dev"),
    // The serial console is per architecture: `CONSOLE`.
    (None, "CONFIG_BPF_SYSCALL", "eBPF"),
    (
        None,
        "CONFIG_DEBUG_INFO_BTF",
        "socket offsets from /sys/kernel/btf/vmlinux",
    ),
    (None, "CONFIG_BPF_EVENTS", "kprobe and tracepoint programs"),
    (None, "CONFIG_UPROBE_EVENTS", "TLS library uprobes"),
    (None, "CONFIG_NET_NS", "test network namespaces"),
    (Some("ipv6"), "CONFIG_IPV6", "IPv6 tests"),
    (
        Some("veth"),
        "CONFIG_VETH",
        "veth pair to the test namespace (XDP)",
    ),
    (None, "CONFIG_NET_CLS_ACT", "tc direct-action"),
    (
        Some("sch_ingress"),
        "CONFIG_NET_SCH_INGRESS",
        "clsact qdisc (tc egress)",
    ),
    (
        Some("cls_bpf"),
        "CONFIG_NET_CLS_BPF",
        "cls_bpf filter (tc egress)",
    ),
    (
        Some("inet_diag"),
        "CONFIG_INET_DIAG",
        "sock_diag (ss, SOCK_DESTROY)",
    ),
    (
        Some("tcp_diag"),
        "CONFIG_INET_TCP_DIAG",
        "TCP sock_diag (ss, SOCK_DESTROY)",
    ),
    (
        None,
        "CONFIG_INET_DIAG_DESTROY",
        "SOCK_DESTROY of blocked sockets",
    ),
];

/// The serial console the log comes through: (architecture, option, kernel console name). x86-64
/// QEMU's `-serial` is a 16550 (`ttyS0`); arm64's `virt` machine has a PL011 (`ttyAMA0`).
pub const CONSOLE: &[(Arch, &str, &str)] = &[
    (Arch::X86_64, "CONFIG_SERIAL_8250_CONSOLE", "ttyS0"),
    (Arch::Aarch64, "CONFIG_SERIAL_AMBA_PL011_CONSOLE", "ttyAMA0"),
];

/// The console option and device of `arch`.
pub fn console(arch: Arch) -> (&'static str, &'static str) {
    CONSOLE
        .iter()
        .find(|(a, _, _)| *a == arch)
        .map(|(_, o, d)| (*o, *d))
        .expect("every architecture has a console")
}

/// Options that decide which hook forms the kernel can have (shown in the report).
pub const FORM_OPTIONS: &[&str] = &[
    "CONFIG_KPROBES",
    "CONFIG_KPROBE_EVENTS",
    "CONFIG_FUNCTION_TRACER",
    "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
    "CONFIG_BPF_JIT",
];

/// `/boot/config-*`: option → value (`y`, `m`, a number, a string); unset options are absent.
#[derive(Debug, Default)]
pub struct Config(BTreeMap<String, String>);

impl Config {
    pub fn parse(text: &str) -> Config {
        Config(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.starts_with("CONFIG_"))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect(),
        )
    }

    pub fn get(&self, opt: &str) -> Option<&str> {
        self.0.get(opt).map(String::as_str)
    }

    pub fn is_y(&self, opt: &str) -> bool {
        self.get(opt) == Some("y")
    }

    /// `y`, `m` or `not set`.
    pub fn show(&self, opt: &str) -> String {
        self.get(opt).unwrap_or("not set").to_string()
    }
}

fn vm_dir() -> PathBuf {
    crate::target_dir().join("vm")
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Finds, downloads (once) and unpacks (once) each series' kernel. Per series: the kernel or
/// why it cannot be had (apt has no such package, backports unreachable, no network, ...).
pub fn fetch(series: &[&'static Series]) -> Vec<(&'static str, Result<Kernel>)> {
    let mut host_updated = false;
    let mut out = vec![];
    for s in series {
        let private = match (s.arch, s.suite) {
            (Arch::Aarch64, _) => Some(Apt::private_arch("bookworm", "arm64", &vm_dir())),
            (_, Some(suite)) => Some(Apt::private(suite, &vm_dir())),
            (_, None) => None,
        };
        let apt = match private {
            Some(apt) => match apt {
                Ok(apt) => apt,
                Err(e) => {
                    out.push((s.name, Err(e)));
                    continue;
                }
            },
            None => Apt::host(),
        };
        // A private apt state is refreshed on its own (its first use has no lists at all).
        let mut updated = if apt.is_private() {
            !apt.needs_update()
        } else {
            host_updated
        };
        let mut package = resolve(s, &apt);
        if package.is_none() && !updated && is_root() {
            // Stale or missing lists (a fresh machine): refresh once and retry.
            updated = true;
            match apt.update() {
                Ok(()) => package = resolve(s, &apt),
                Err(e) => println!("vm: {e:#}"),
            }
        }
        let mut backports_note = String::new();
        if package.is_none() && s.backports && !apt_source_has("bookworm-backports") {
            match add_backports() {
                Ok(()) => package = resolve(s, &apt),
                Err(e) => backports_note = format!("; bookworm-backports: {e:#}"),
            }
            if package.is_none() && backports_note.is_empty() {
                backports_note = "; not in bookworm-backports either (unreachable?)".into();
            }
        }
        let result = match package {
            Some(p) => match obtain(s, &p, &apt) {
                // Stale lists name a package the mirror no longer has: refresh once, retry.
                Err(e) if !updated && is_root() => {
                    updated = true;
                    println!("vm: {}: {e:#}; apt-get update and retry", s.name);
                    apt.update().and_then(|()| match resolve(s, &apt) {
                        Some(p) => obtain(s, &p, &apt),
                        None => Err(e),
                    })
                }
                r => r,
            },
            None => match cached_any(s) {
                Some(dir) => {
                    println!(
                        "vm: {}: apt knows no package now; using the cached {}",
                        s.name,
                        dir.display()
                    );
                    load(s, &dir, "cached (apt has none now)")
                }
                None => Err(anyhow::anyhow!(
                    "no Debian package for {} found (apt-cache depends {}){backports_note}",
                    s.name,
                    s.metas.join(" / ")
                )),
            },
        };
        if !apt.is_private() {
            host_updated = host_updated || updated;
        }
        out.push((s.name, result));
    }
    out
}

fn resolve(s: &Series, apt: &Apt) -> Option<String> {
    s.metas
        .iter()
        .find_map(|m| apt.resolve_meta(m, s.prefix, s.arch.debian()))
}

fn kernels_dir() -> PathBuf {
    vm_dir().join("kernels")
}

/// An already unpacked kernel of the series (newest name), for when apt cannot say.
fn cached_any(s: &Series) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(kernels_dir())
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(s.prefix) && !n.contains(".tmp"))
                && p.join(".complete").exists()
        })
        .collect();
    dirs.sort();
    dirs.pop()
}

fn obtain(s: &'static Series, package: &str, apt: &Apt) -> Result<Kernel> {
    let dir = kernels_dir().join(package);
    if dir.join(".complete").exists() {
        return load(s, &dir, "cached");
    }
    let debs = vm_dir().join("debs");
    fs::create_dir_all(&debs)?;
    let cached_deb = fs::read_dir(&debs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        });
    let (deb, origin) = match cached_deb {
        Some(d) => (d, "cached .deb, unpacked"),
        None => (download(&debs, package, apt)?, "downloaded"),
    };
    let tmp = kernels_dir().join(format!("{package}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))
        .with_context(|| format!("cannot unpack {}", deb.display()))?;
    fs::write(tmp.join(".complete"), deb.display().to_string())?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)?;
    load(s, &dir, origin)
}

fn download(debs: &Path, package: &str, apt: &Apt) -> Result<PathBuf> {
    let tmp = debs.join(format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    println!("vm: apt-get download {package}");
    let mut cmd = apt.command("apt-get");
    cmd.args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
        .current_dir(&tmp);
    let got = if progress::on_terminal() {
        // Tens of MiB on a first run: show them arrive (apt-get writes the .deb in place).
        let _bar = Progress::bytes(
            apt.package_size(package),
            &format!("apt-get download {package}"),
        );
        let worker = std::thread::spawn(move || output(&mut cmd));
        while !worker.is_finished() {
            progress::set_position(bytes_in(&tmp));
            std::thread::sleep(Duration::from_millis(200));
        }
        worker.join().expect("the download thread does not panic")
    } else {
        output(&mut cmd)
    };
    got.with_context(|| format!("cannot download {package} (is the Debian mirror reachable?)"))?;
    let deb = fs::read_dir(&tmp)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let dest = debs.join(deb.file_name().expect("has a name"));
    fs::rename(&deb, &dest)?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(dest)
}

/// The size of the files in `dir` and below.
fn bytes_in(dir: &Path) -> u64 {
    fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some(if meta.is_dir() {
                    bytes_in(&e.path())
                } else {
                    meta.len()
                })
            })
            .sum()
    })
}

fn load(s: &'static Series, dir: &Path, origin: &str) -> Result<Kernel> {
    let package = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let boot = dir.join("boot");
    let find_boot = |prefix: &str| -> Result<PathBuf> {
        fs::read_dir(&boot)
            .with_context(|| format!("{} has no boot/", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("no boot/{prefix}* in {}", dir.display()))
    };
    let vmlinuz = find_boot("vmlinuz-")?;
    let config = Config::parse(&fs::read_to_string(find_boot("config-")?)?);
    let modules_root = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|p| dir.join(p))
        .find(|p| p.is_dir())
        .with_context(|| format!("no lib/modules in {}", dir.display()))?;
    let modules_dir = fs::read_dir(&modules_root)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .with_context(|| format!("{} is empty", modules_root.display()))?;
    let release = modules_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    Ok(Kernel {
        series: s.name,
        arch: s.arch,
        package,
        release,
        vmlinuz,
        config,
        modules_dir,
        origin: origin.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_config() {
        let c = Config::parse("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\nCONFIG_S=\"x\"\n");
        assert!(c.is_y("CONFIG_A"));
        assert_eq!(c.get("CONFIG_B"), None);
        assert_eq!(c.show("CONFIG_B"), "not set");
        assert_eq!(c.get("CONFIG_C"), Some("m"));
        assert_eq!(c.get("CONFIG_S"), Some("x"));
    }

    #[test]
    fn counts_the_bytes_below_a_directory() {
        let d = tempfile::tempdir().expect("tempdir");
        fs::write(d.path().join("a.deb"), [0u8; 10]).expect("write");
        fs::create_dir(d.path().join("partial")).expect("mkdir");
        fs::write(d.path().join("partial/b"), [0u8; 5]).expect("write");
        assert_eq!(bytes_in(d.path()), 15);
        assert_eq!(bytes_in(&d.path().join("missing")), 0);
    }
}
