//! What apt knows: the package a meta package depends on, the sources it reads, adding
//! bookworm-backports when the 6.12 kernel is only there, and a private apt state for kernels of
//! another Debian release (bullseye's 5.10), which leaves the host's sources alone.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{is_root, output};

/// The host's apt, or a private one (own sources, lists and cache) for another Debian suite.
pub struct Apt {
    /// `-o` options that point apt at the private state; empty for the host's.
    options: Vec<String>,
    lists: Option<PathBuf>,
}

impl Apt {
    pub fn host() -> Apt {
        Apt {
            options: vec![],
            lists: None,
        }
    }

    /// `target/vm/apt-<suite>/`: `<suite>` and `<suite>-security` from the host's Debian mirrors
    /// (the same hosts as bookworm and bookworm-security), signed by the keys of
    /// `debian-archive-keyring`, which has the older releases' keys too.
    pub fn private(suite: &str, vm_dir: &Path) -> Result<Apt> {
        Apt::private_in(&vm_dir.join(format!("apt-{suite}")), suite, None)
    }

    /// `target/vm/apt-<suite>-<arch>/`: the host's own release for another architecture
    /// (`APT::Architecture`), with `<suite>-backports` too; the host's dpkg and sources are
    /// left alone (its foreign architectures are not touched).
    pub fn private_arch(suite: &str, arch: &str, vm_dir: &Path) -> Result<Apt> {
        Apt::private_in(
            &vm_dir.join(format!("apt-{suite}-{arch}")),
            suite,
            Some(arch),
        )
    }

    fn private_in(dir: &Path, suite: &str, arch: Option<&str>) -> Result<Apt> {
        let lists = dir.join("lists");
        for d in [lists.join("partial"), dir.join("cache/archives/partial")] {
            fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mirror = debian_mirror();
        let security = security_mirror();
        let backports = match arch {
            Some(_) => format!("deb [signed-by={keyring}] {mirror} {suite}-backports main\n"),
            None => String::new(),
        };
        let sources = dir.join("sources.list");
        fs::write(
            &sources,
            format!(
                "# Written by `cargo xtask vm` (enforcer): Debian kernels (and, for another \
                 architecture, the VM's userspace) for the VM matrix.\n\
                 deb [signed-by={keyring}] {mirror} {suite} main\n\
                 deb [signed-by={keyring}] {security} {suite}-security main\n{backports}"
            ),
        )
        .with_context(|| format!("cannot write {}", sources.display()))?;
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        let mut options = vec![
            opt("Dir::Etc::SourceList", &sources),
            opt("Dir::Etc::SourceParts", &dir.join("sources.list.d")),
            opt("Dir::State::Lists", &lists),
            opt("Dir::Cache", &dir.join("cache")),
            "Dir::State::status=/dev/null".to_string(),
        ];
        if let Some(arch) = arch {
            options.push(format!("APT::Architecture={arch}"));
            options.push(format!("APT::Architectures={arch}"));
        }
        Ok(Apt {
            options,
            lists: Some(lists),
        })
    }

    pub fn is_private(&self) -> bool {
        self.lists.is_some()
    }

    /// A private state that has no package lists yet (never updated). apt may keep them
    /// compressed (`..._Packages.lz4`).
    pub fn needs_update(&self) -> bool {
        self.lists.as_ref().is_some_and(|l| {
            !fs::read_dir(l).is_ok_and(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
        })
    }

    /// `tool` (apt-get, apt-cache) with this state's options.
    pub fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd
    }

    /// The `Depends:` of `apt-cache depends <meta>` that names a kernel image of the series
    /// for Debian architecture `arch`.
    pub fn resolve_meta(&self, meta: &str, prefix: &str, arch: &str) -> Option<String> {
        let out = output(self.command("apt-cache").args(["depends", meta])).ok()?;
        pick_dependency(&out, prefix, arch)
    }

    /// The `Size:` apt's lists give for the candidate version of `package` (for the download's
    /// progress bar), if it says.
    pub fn package_size(&self, package: &str) -> Option<u64> {
        let out = output(
            self.command("apt-cache")
                .args(["show", "--no-all-versions", package]),
        )
        .ok()?;
        size_field(&out)
    }

    pub fn update(&self) -> Result<()> {
        if self.is_private() {
            println!("vm: apt-get update (private state for another Debian release)");
        }
        let mut cmd = self.command("apt-get");
        cmd.args(["update", "-q"]);
        run_update(cmd)
    }
}

fn pick_dependency(apt_depends: &str, prefix: &str, arch: &str) -> Option<String> {
    let suffix = format!("-{arch}");
    apt_depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| d.trim().trim_matches(|c| c == '<' || c == '>').to_string())
        .find(|d| {
            d.starts_with(prefix)
                && d.ends_with(&suffix)
                && !d.ends_with("-dbg")
                && !d.contains("unsigned")
        })
}

/// The first `Size:` of an `apt-cache show` record.
fn size_field(record: &str) -> Option<u64> {
    record
        .lines()
        .find_map(|l| l.strip_prefix("Size:"))
        .and_then(|n| n.trim().parse().ok())
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
pub fn apt_source_has(suite: &str) -> bool {
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
pub fn add_backports() -> Result<()> {
    if !is_root() {
        bail!("bookworm-backports is not an apt source and adding it needs root");
    }
    let text = format!(
        "# Added by `cargo xtask vm` or `setup` (enforcer): Debian's 6.12 kernel for the VM kernel\n\
         # matrix, QEMU matching a backported qemu-utils.\n\
         Types: deb\nURIs: {}\nSuites: bookworm-backports\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        debian_mirror()
    );
    fs::write(BACKPORTS_SOURCE, text)
        .with_context(|| format!("cannot write {BACKPORTS_SOURCE}"))?;
    println!("vm: added {BACKPORTS_SOURCE}; apt-get update");
    apt_update()
}

/// The mirror the host uses for bookworm-security (the private state's `-security` suite).
fn security_mirror() -> String {
    for f in apt_source_files() {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        if let Some(uri) = mirror_of(&text, "bookworm-security") {
            return uri;
        }
    }
    "http://deb.debian.org/debian-security".to_string()
}

fn apt_update() -> Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.args(["update", "-q"]);
    run_update(cmd)
}

fn run_update(mut cmd: Command) -> Result<()> {
    let out = cmd
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_image_of_the_series() {
        let out =
            "linux-image-6.12-cloud-amd64\n  Depends: linux-image-6.12.117+deb12-cloud-amd64\n";
        assert_eq!(
            pick_dependency(out, "linux-image-6.12.", "amd64"),
            Some("linux-image-6.12.117+deb12-cloud-amd64".into())
        );
        let bpo = "linux-image-cloud-amd64\n  Depends: linux-image-6.12.95+bpo-cloud-amd64\n";
        assert_eq!(pick_dependency(bpo, "linux-image-6.1.", "amd64"), None);
        assert_eq!(pick_dependency("", "linux-image-6.1.", "amd64"), None);
        let arm = "linux-image-cloud-arm64\n  Depends: linux-image-6.1.0-57-cloud-arm64\n";
        assert_eq!(
            pick_dependency(arm, "linux-image-6.1.", "arm64"),
            Some("linux-image-6.1.0-57-cloud-arm64".into())
        );
        assert_eq!(pick_dependency(arm, "linux-image-6.1.", "amd64"), None);
    }

    #[test]
    fn reads_the_package_size() {
        let rec = "Package: linux-image-6.12.57+deb12-cloud-amd64\nInstalled-Size: 98765\n\
                   Size: 51234567\nSHA256: ab\n";
        assert_eq!(size_field(rec), Some(51234567));
        assert_eq!(size_field("Package: x\n"), None);
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
}
