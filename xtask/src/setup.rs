//! `cargo xtask setup`: everything a fresh machine of this image needs, checked before done.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

const PACKAGES: &[&str] = &[
    "iproute2",
    "openssl",
    "curl",
    "gnutls-bin",
    "libnss3-tools",
    "golang-go",
    "qemu-system-x86",
    // arm64 (`cargo xtask build --arch aarch64`, `cargo xtask vm --arch arm64`): the cross
    // linker and libc, the VM, and qemu-user to list the tests of an aarch64 test binary.
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-system-arm",
    "qemu-user-static",
    "busybox-static",
    "cpio",
    "xz-utils", // cargo xtask vm unpacks the 6.12 kernel modules (.ko.xz)
    "bpftool",
    "python3",
    "libssl-dev",           // tests/tests/new_libraries.rs builds a TLS client with gcc
    "systemd",              // tests/tests/deploy.rs: systemd-analyze verify deploy/enforcer.service
    "socat",        // tests/tests/content_attribution.rs: a local relay, and one-byte writes
    "nodejs",       // tests/tests/content_attribution.rs: Node.js with its own OpenSSL
    "liburing-dev", // tests/programs/uring-tls-client
    "libgnutls28-dev", // tests/programs/nested-tls-client
    "redis-server", // cargo xtask bench, figure 9: a real application over TLS
    "redis-tools",  // cargo xtask bench, figure 9: redis-benchmark --tls
    "man-db",       // tests/tests/operator_manuals.rs: man -l renders each page
    "mptcpd",       // tests/tests/bypass_paths.rs: mptcpize (MPTCP clients and server)
    "python3-venv", // tests/tests/bypass_paths.rs: the aioquic virtualenv
    "tmux",         // tests/tests/operator_top.rs: `enforcer top` in a real terminal
    "libwolfssl-dev", // tests/programs/wolfssl-client (tests/tests/native_families.rs)
    "libmbedtls-dev", // tests/programs/mbedtls-client (tests/tests/native_families.rs)
    "cmake",        // tests/programs/aws-lc-client: aws-lc-sys builds libssl with CMake
    "libclang-dev", // tests/programs/aws-lc-client: aws-lc-sys's `ssl` feature runs bindgen
    "default-jdk-headless", // tests/tests/java.rs: a Java TLS client (javac, java)
    // tests/tests/containers.rs and deploy.rs: real containers (dockerd, started by the tests
    // when none runs) from a root filesystem debootstrap builds (cached under target/).
    "docker.io",
    "debootstrap",
];

enum Status {
    Already,
    Installed,
    Skipped(String),
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Already => f.write_str("ok (already)"),
            Status::Installed => f.write_str("installed"),
            Status::Skipped(why) => write!(f, "skipped ({why})"),
        }
    }
}

pub fn setup() -> Result<()> {
    step("debian packages", packages)?;
    step("rust-src (nightly)", rust_src)?;
    step("bpf-linker 0.13", bpf_linker)?;
    step("tracefs + bpffs mounts", mounts)?;
    step("aioquic (PyPI) venv", quic_venv)?;
    Ok(())
}

fn step(name: &str, f: fn() -> Result<Status>) -> Result<()> {
    let t = Instant::now();
    let status = f().with_context(|| format!("setup step `{name}` failed"))?;
    match status {
        Status::Installed => println!("setup: {name:<24} {status} ({:.1?})", t.elapsed()),
        _ => println!("setup: {name:<24} {status}"),
    }
    Ok(())
}

/// `$CARGO_HOME`, else `$HOME/.cargo`.
pub fn cargo_home() -> PathBuf {
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cargo")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The QUIC peers of tests/tests/bypass_paths.rs: aioquic from PyPI in a virtualenv under
/// `target/` (Debian has no QUIC client or server in bookworm). Pinned, so reruns are no-ops.
const AIOQUIC: &str = "aioquic==1.7.2";

fn quic_venv() -> Result<Status> {
    let venv = crate::root().join("target/venv-quic");
    let python = venv.join("bin/python3");
    let has = |python: &Path| {
        Command::new(python)
            .args([
                "-c",
                "import aioquic, sys; sys.exit(aioquic.__version__ != '1.7.2')",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&python) {
        return Ok(Status::Already);
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", AIOQUIC]))?;
    if !has(&python) {
        bail!(
            "{AIOQUIC} installed into {} but does not import",
            venv.display()
        );
    }
    Ok(Status::Installed)
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn packages() -> Result<Status> {
    // One dpkg-query for all; it exits 1 when some are unknown but still prints the known ones.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(PACKAGES)
        .output()
        .context("cannot run dpkg-query (is this Debian?)")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !listed
                .lines()
                .any(|l| l == format!("{p} install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(Status::Already);
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    if !is_root() {
        bail!(
            "packages missing ({}) and not root to install them",
            missing.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        run(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update"])?;
    // QEMU's packages must all come from one release: qemu-utils of bookworm-backports (which
    // some images carry) `Breaks:` bookworm's qemu-system-common, so apt refuses the whole
    // install. Then the QEMU packages are installed from backports, in a transaction of their own.
    let (qemu, rest): (Vec<&str>, Vec<&str>) = missing.iter().partition(|p| p.starts_with("qemu-"));
    match qemu_backport() {
        Some(version) if !qemu.is_empty() => {
            println!("setup: qemu-utils is {version} (bookworm-backports): QEMU from there");
            if !crate::vm::apt_source_has("bookworm-backports") {
                crate::vm::add_backports()?;
            }
            apt(&[&["install", "-y", "-t", "bookworm-backports"][..], &qemu].concat())?;
            if !rest.is_empty() {
                apt(&[&["install", "-y"][..], &rest].concat())?;
            }
        }
        _ => apt(&[&["install", "-y"][..], &missing].concat())?,
    }
    Ok(Status::Installed)
}

/// The installed qemu-utils' version when it is a bookworm backport (`~bpo12`).
fn qemu_backport() -> Option<String> {
    let version = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "qemu-utils"]))?;
    version.contains("~bpo12").then_some(version)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("`rustc +nightly --print sysroot` failed: is the nightly toolchain installed?")?;
    Ok(PathBuf::from(sysroot))
}

fn rust_src() -> Result<Status> {
    let core = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.exists() {
        return Ok(Status::Already);
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    Ok(Status::Installed)
}

/// `bpf-linker --version` of the copy in `$CARGO_HOME/bin`, else of the one on PATH.
fn bpf_linker_version() -> Option<String> {
    let local = cargo_home().join("bin/bpf-linker");
    [local.as_os_str(), "bpf-linker".as_ref()]
        .into_iter()
        .find_map(|bin| output(Command::new(bin).arg("--version")))
}

fn bpf_linker() -> Result<Status> {
    if bpf_linker_version().is_some_and(|v| v.starts_with("bpf-linker 0.13.")) {
        return Ok(Status::Already);
    }
    // Build against rustc's own LLVM: P/lib/{libLLVM.so, libLLVM.so.<ver>} -> the sysroot's copy.
    let lib = nightly_sysroot()?.join("lib");
    let name = fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: nightly without LLVM?",
                lib.display()
            )
        })?;
    // libLLVM.so.22.1-rust-1.97.0-nightly -> llvm-22
    let major = name["libLLVM.so.".len()..]
        .split(['.', '-'])
        .next()
        .unwrap_or_default();
    if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
        bail!("cannot read the LLVM major version from {name}");
    }
    let prefix = cargo_home().join("enforcer-llvm");
    let plib = prefix.join("lib");
    fs::create_dir_all(&plib).with_context(|| format!("cannot create {}", plib.display()))?;
    for link in ["libLLVM.so", name.as_str()] {
        symlink(&lib.join(&name), &plib.join(link))?;
    }
    let features = format!("llvm-{major}");
    println!(
        "setup: building bpf-linker 0.13 against {} (takes ~80 s)",
        lib.join(&name).display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            "~0.13",
            "--no-default-features",
        ])
        .args(["--features", &features, "--locked"])
        .env("LLVM_PREFIX", &prefix))?;
    match bpf_linker_version() {
        Some(v) if v.starts_with("bpf-linker 0.13.") => Ok(Status::Installed),
        v => bail!("bpf-linker installed but `bpf-linker --version` says {v:?}"),
    }
}

/// Make `link` a symlink to `target`, replacing whatever is there.
fn symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))
}

fn mounts() -> Result<Status> {
    let table = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    let mounted = |dir: &str, fstype: &str| {
        table.lines().any(|l| {
            let mut f = l.split_whitespace().skip(1);
            f.next() == Some(dir) && f.next() == Some(fstype)
        })
    };
    let wanted = [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")];
    let missing: Vec<_> = wanted.iter().filter(|(t, d)| !mounted(d, t)).collect();
    if missing.is_empty() {
        return Ok(Status::Already);
    }
    if !is_root() {
        return Ok(Status::Skipped("not root".into()));
    }
    // Only for debugging (trace_pipe, bpftool map dump): failure is reported, not fatal.
    for (fstype, dir) in missing {
        if let Err(e) = run(Command::new("mount").args(["-t", fstype, fstype, dir])) {
            return Ok(Status::Skipped(format!("{e:#}")));
        }
    }
    Ok(Status::Installed)
}
