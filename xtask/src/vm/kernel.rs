//! Debian's stock kernels: find the package with apt, download and unpack it once into
//! `target/vm/`, read its config, and pull the modules the tests need out of it.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// A kernel series of the matrix and how to find its package.
pub struct Series {
    /// What `--kernel` calls it.
    pub name: &'static str,
    /// Meta packages tried in order; the first whose dependency starts with `prefix` wins.
    metas: &'static [&'static str],
    prefix: &'static str,
    /// Also look in bookworm-backports (added as an apt source if no source lists it).
    backports: bool,
}

pub const SERIES: &[Series] = &[
    Series {
        name: "6.1",
        // bookworm's own kernel; the generic flavour only if the cloud one is gone.
        metas: &["linux-image-cloud-amd64", "linux-image-amd64"],
        prefix: "linux-image-6.1.",
        backports: false,
    },
    Series {
        name: "6.12",
        // Debian ships 6.12 for bookworm in bookworm-backports and (since bookworm became LTS)
        // in bookworm-security; either is Debian's stock build.
        metas: &["linux-image-6.12-cloud-amd64", "linux-image-6.12-amd64"],
        prefix: "linux-image-6.12.",
        backports: true,
    },
];

/// An unpacked kernel package.
pub struct Kernel {
    pub series: &'static str,
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
    (
        None,
        "CONFIG_SERIAL_8250_CONSOLE",
        "console on ttyS0 (the log)",
    ),
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

/// The `Depends:` of `apt-cache depends <meta>` that names a kernel image of the series.
fn resolve_meta(meta: &str, prefix: &str) -> Option<String> {
    let out = output(Command::new("apt-cache").args(["depends", meta])).ok()?;
    pick_dependency(&out, prefix)
}

fn pick_dependency(apt_depends: &str, prefix: &str) -> Option<String> {
    apt_depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().trim_matches(|c| c == '<' || c == '>').to_string())
        .find(|d| {
            d.starts_with(prefix)
                && d.ends_with("-amd64")
                && !d.ends_with("-dbg")
                && !d.contains("unsigned")
        })
}

/// `/etc/apt/sources.list` and the `.list` / `.sources` files beside it.
fn apt_source_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            dir.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources")),
        );
    }
    files
}

/// Whether some apt source already lists `suite` (deb822 `Suites:` or one-line `deb`).
fn apt_source_has(suite: &str) -> bool {
    apt_source_files().iter().any(|f| {
        fs::read_to_string(f).is_ok_and(|t| {
            t.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.split_whitespace().any(|w| w == suite))
        })
    })
}

/// The Debian mirror apt already uses for bookworm, so backports comes from the same place.
fn debian_mirror() -> String {
    for f in apt_source_files() {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        if let Some(uri) = mirror_of(&text, "bookworm") {
            return uri;
        }
    }
    "http://deb.debian.org/debian".to_string()
}

fn mirror_of(sources: &str, suite: &str) -> Option<String> {
    for block in sources.split("\n\n") {
        let field = |k: &str| block.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
        if field("Suites:").is_some_and(|s| s.split_whitespace().any(|w| w == suite))
            && let Some(uri) = field("URIs:").and_then(|u| u.split_whitespace().next())
        {
            return Some(uri.to_string());
        }
    }
    for l in sources.lines() {
        let Some(rest) = l.trim().strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']').map_or("", |(_, r)| r),
            None => rest,
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        if w.get(1) == Some(&suite) {
            return Some(w[0].to_string());
        }
    }
    None
}

pub const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/enforcer-bookworm-backports.sources";

/// Adds bookworm-backports (same mirror as bookworm) and refreshes apt's lists.
fn add_backports() -> Result<()> {
    if !is_root() {
        bail!("bookworm-backports is not an apt source and adding it needs root");
    }
    let text = format!(
        "# Added by `cargo xtask vm` (enforcer): Debian's 6.12 kernel for the VM kernel matrix.\n\
         Types: deb\nURIs: {}\nSuites: bookworm-backports\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        debian_mirror()
    );
    fs::write(BACKPORTS_SOURCE, text)
        .with_context(|| format!("cannot write {BACKPORTS_SOURCE}"))?;
    println!("vm: added {BACKPORTS_SOURCE}; apt-get update");
    apt_update()
}

fn apt_update() -> Result<()> {
    let out = Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("cannot run apt-get")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("apt-get update failed: {}", err.trim());
    }
    // apt-get update exits 0 even when a source is unreachable: pass its warnings on.
    for l in err
        .lines()
        .filter(|l| l.starts_with("W:") || l.starts_with("E:"))
    {
        println!("vm: apt: {l}");
    }
    Ok(())
}

/// Finds, downloads (once) and unpacks (once) each series' kernel. Per series: the kernel or
/// why it cannot be had (apt has no such package, backports unreachable, no network, ...).
pub fn fetch(series: &[&'static Series]) -> Vec<(&'static str, Result<Kernel>)> {
    let mut updated = false;
    let mut out = vec![];
    for s in series {
        let mut package = resolve(s);
        if package.is_none() && !updated && is_root() {
            // Stale or missing lists (a fresh machine): refresh once and retry.
            updated = true;
            match apt_update() {
                Ok(()) => package = resolve(s),
                Err(e) => println!("vm: {e:#}"),
            }
        }
        let mut backports_note = String::new();
        if package.is_none() && s.backports && !apt_source_has("bookworm-backports") {
            match add_backports() {
                Ok(()) => package = resolve(s),
                Err(e) => backports_note = format!("; bookworm-backports: {e:#}"),
            }
            if package.is_none() && backports_note.is_empty() {
                backports_note = "; not in bookworm-backports either (unreachable?)".into();
            }
        }
        let result = match package {
            Some(p) => match obtain(s, &p) {
                // Stale lists name a package the mirror no longer has: refresh once, retry.
                Err(e) if !updated && is_root() => {
                    updated = true;
                    println!("vm: {}: {e:#}; apt-get update and retry", s.name);
                    apt_update().and_then(|()| match resolve(s) {
                        Some(p) => obtain(s, &p),
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
        out.push((s.name, result));
    }
    out
}

fn resolve(s: &Series) -> Option<String> {
    s.metas.iter().find_map(|m| resolve_meta(m, s.prefix))
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

fn obtain(s: &'static Series, package: &str) -> Result<Kernel> {
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
        None => (download(&debs, package)?, "downloaded"),
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

fn download(debs: &Path, package: &str) -> Result<PathBuf> {
    let tmp = debs.join(format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    println!("vm: apt-get download {package}");
    output(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
            .current_dir(&tmp),
    )
    .with_context(|| format!("cannot download {package} (is the Debian mirror reachable?)"))?;
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
        package,
        release,
        vmlinuz,
        config,
        modules_dir,
        origin: origin.to_string(),
    })
}

/// A module ready for the initramfs: its (decompressed) bytes.
pub struct Module {
    pub name: String,
    pub data: Vec<u8>,
}

impl Kernel {
    /// What the tests need that is a module here, with dependencies, in load order. Fails
    /// naming the option if something the tests need is missing from the kernel altogether.
    pub fn needed_modules(&self) -> Result<Vec<Module>> {
        let mut missing = vec![];
        let mut order: Vec<Module> = vec![];
        for (module, opt, why) in NEEDED {
            match (self.config.get(opt), module) {
                (Some("y"), _) => {}
                (Some("m"), Some(m)) => self.add_module(m, &mut order, 0)?,
                _ => missing.push(format!("{opt} ({why})")),
            }
        }
        if !missing.is_empty() {
            bail!(
                "{} lacks what the tests need: {}",
                self.package,
                missing.join(", ")
            );
        }
        Ok(order)
    }

    fn add_module(&self, name: &str, order: &mut Vec<Module>, depth: u32) -> Result<()> {
        let norm = |n: &str| n.replace('-', "_");
        if depth > 16 || order.iter().any(|m| norm(&m.name) == norm(name)) {
            return Ok(());
        }
        let file = find_module(&self.modules_dir, name)?
            .with_context(|| format!("module {name} not in {}", self.modules_dir.display()))?;
        let data = decompress(&file)?;
        for dep in modinfo_depends(&data)
            .with_context(|| format!("cannot read .modinfo of {}", file.display()))?
        {
            self.add_module(&dep, order, depth + 1)?;
        }
        order.push(Module {
            name: norm(name),
            data,
        });
        Ok(())
    }
}

fn find_module(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let want: Vec<String> = [name.replace('-', "_"), name.replace('_', "-")]
        .iter()
        .flat_map(|n| {
            ["", ".xz", ".zst", ".gz"]
                .iter()
                .map(move |z| format!("{n}.ko{z}"))
        })
        .collect();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)?.filter_map(|e| e.ok()) {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| want.iter().any(|w| w == n))
            {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

fn decompress(file: &Path) -> Result<Vec<u8>> {
    let (tool, package) = match file.extension().and_then(|x| x.to_str()) {
        Some("xz") => ("xz", "xz-utils"),
        Some("zst") => ("zstd", "zstd"),
        Some("gz") => ("gzip", "gzip"),
        _ => return fs::read(file).with_context(|| format!("cannot read {}", file.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(file)
        .output()
        .with_context(|| {
            format!(
                "cannot run {tool} (Debian: {package}), needed to unpack {}",
                file.display()
            )
        })?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", file.display());
    }
    Ok(out.stdout)
}

/// The `depends=` list of a kernel module's `.modinfo` section (ELF64 little-endian).
pub fn modinfo_depends(elf: &[u8]) -> Result<Vec<String>> {
    let rd = |off: usize, n: usize| -> Result<u64> {
        let b = elf.get(off..off + n).context("truncated ELF")?;
        let mut v = 0u64;
        for (i, x) in b.iter().enumerate() {
            v |= (*x as u64) << (8 * i);
        }
        Ok(v)
    };
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        bail!("not a little-endian ELF64 file");
    }
    let shoff = rd(0x28, 8)? as usize;
    let shentsize = rd(0x3a, 2)? as usize;
    let shnum = rd(0x3c, 2)? as usize;
    let shstrndx = rd(0x3e, 2)? as usize;
    let section = |i: usize| -> Result<(u64, usize, usize)> {
        let h = shoff + i * shentsize;
        Ok((rd(h, 4)?, rd(h + 24, 8)? as usize, rd(h + 32, 8)? as usize))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = elf
        .get(stroff..stroff + strsize)
        .context("bad section name table")?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let name = strtab
            .get(name as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let data = elf.get(off..off + size).context("bad .modinfo")?;
        for entry in data.split(|&b| b == 0) {
            if let Some(deps) = entry.strip_prefix(b"depends=") {
                return Ok(String::from_utf8_lossy(deps)
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect());
            }
        }
        return Ok(vec![]);
    }
    bail!("no .modinfo section")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_image_of_the_series() {
        let out =
            "linux-image-6.12-cloud-amd64\n  Depends: linux-image-6.12.117+deb12-cloud-amd64\n";
        assert_eq!(
            pick_dependency(out, "linux-image-6.12."),
            Some("linux-image-6.12.117+deb12-cloud-amd64".into())
        );
        let bpo = "linux-image-cloud-amd64\n  Depends: linux-image-6.12.95+bpo-cloud-amd64\n";
        assert_eq!(pick_dependency(bpo, "linux-image-6.1."), None);
        assert_eq!(pick_dependency("", "linux-image-6.1."), None);
    }

    #[test]
    fn finds_the_mirror() {
        let deb822 = "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\n\
                      Types: deb\nURIs: http://s.example/sec\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_of(deb822, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        let one = "# x\ndeb [arch=amd64 signed-by=/k.gpg] http://o.example/d bookworm main\n";
        assert_eq!(
            mirror_of(one, "bookworm").as_deref(),
            Some("http://o.example/d")
        );
        assert_eq!(mirror_of(one, "trixie"), None);
    }

    #[test]
    fn parses_config() {
        let c = Config::parse("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\nCONFIG_S=\"x\"\n");
        assert!(c.is_y("CONFIG_A"));
        assert_eq!(c.get("CONFIG_B"), None);
        assert_eq!(c.show("CONFIG_B"), "not set");
        assert_eq!(c.get("CONFIG_C"), Some("m"));
        assert_eq!(c.get("CONFIG_S"), Some("x"));
    }

    /// A minimal ELF64 with a section name table and a .modinfo section.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        let str_off = elf.len();
        elf.extend_from_slice(shstr);
        let mi_off = elf.len();
        elf.extend_from_slice(modinfo);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, str_off, shstr.len());
        sh(11, mi_off, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_module_dependencies() {
        let m = fake_module(b"license=GPL\0depends=inet_diag,foo\0vermagic=6.1\0");
        assert_eq!(modinfo_depends(&m).unwrap(), ["inet_diag", "foo"]);
        let m = fake_module(b"license=GPL\0depends=\0");
        assert!(modinfo_depends(&m).unwrap().is_empty());
        assert!(modinfo_depends(b"\x7fELF").is_err());
        assert!(modinfo_depends(&m[..70]).is_err());
    }
}
