//! The part of the VM's initramfs every kernel shares: busybox, the host tools the tests run
//! with their shared libraries, a few config files, `vm/init`, the enforcer and the test binaries.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{
    initramfs::{self, Image},
    userland,
};
use crate::cross::Arch;

const INIT: &str = include_str!("../../../vm/init");
/// Tools the tests run (required) and ones handy when reading a failure (optional).
const TOOLS: &[(&str, bool)] = &[
    ("ip", true),
    ("ss", true),
    ("openssl", true),
    ("curl", true),
    ("gnutls-cli", true),
    // coreutils' `true` at /usr/bin/true: a program that is not TLS, for the watcher tests to
    // copy (busybox's applets are one binary that runs by its name).
    ("true", true),
    ("tc", false),
    ("bpftool", false),
    // Only some tests of `cargo xtask vm --full` use these.
    ("gnutls-serv", false),
    ("socat", false),
];

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Strips debug info (the debug enforcer is ~100 MB, ~20 MB without); a plain copy if `strip`
/// is missing. `strip` is the host's, or binutils-aarch64-linux-gnu's for arm64.
fn stripped(arch: Arch, src: &Path, stage: &Path, name: &str) -> Result<PathBuf> {
    fs::create_dir_all(stage)?;
    let dst = stage.join(name);
    let strip = match arch {
        Arch::X86_64 => "strip",
        Arch::Aarch64 => "aarch64-linux-gnu-strip",
    };
    let ok = Command::new(strip)
        .arg("--strip-debug")
        .arg("-o")
        .arg(&dst)
        .arg(src)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fs::copy(src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
    }
    Ok(dst)
}

/// Everything but the kernel-specific part (modules, /vm/conf).
/// `test_bins`: (name, path) of each integration test binary, copied to `/vm/<name>`;
/// `programs`: the tests' prebuilt client programs, to `/vm/programs/<name>`. For arm64, the
/// tools and libraries come from `arm64_root` (`userland`) instead of the host.
pub fn common_image(
    arch: Arch,
    arm64_root: Option<&Path>,
    enforcer: &Path,
    test_bins: &[(String, PathBuf)],
    programs: &[(String, PathBuf)],
    stage: &Path,
) -> Result<Image> {
    let mut img = Image::default();
    img.bytes(Path::new("/init"), INIT.as_bytes().to_vec(), 0o755);
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/root",
        "/vm/modules",
    ] {
        img.dir(Path::new(d));
    }
    img.char_dev(Path::new("/dev/console"), 5, 1);
    img.char_dev(Path::new("/dev/null"), 1, 3);

    match arm64_root {
        None => host_tools(&mut img)?,
        Some(root) => {
            userland::add(&mut img, root)?;
            // busybox in its own directory as on amd64. Its applet list is the host's
            // busybox-static's (the same Debian version, which cannot run the arm64 one).
            img.file_from(Path::new("/bbin/busybox"), &root.join("bin/busybox"), 0o755);
            add_applets(&mut img)?;
        }
    }
    // openssl.cnf comes with the arm64 packages; the host's ld.so.cache names amd64 paths.
    let configs: &[&str] = match arch {
        Arch::X86_64 => &[
            "/etc/ssl/openssl.cnf",
            "/usr/lib/ssl/openssl.cnf",
            "/etc/gnutls/config",
            "/etc/ld.so.cache",
        ],
        Arch::Aarch64 => &["/etc/gnutls/config"],
    };
    for cfg in configs {
        if Path::new(cfg).exists() && !img.contains(Path::new(cfg)) {
            img.host_path(Path::new(cfg))?;
        }
    }
    // Not /bin/sh of the host: whatever calls sh gets busybox.
    if !img.contains(Path::new("/usr/bin/sh")) {
        img.symlink(Path::new("/usr/bin/sh"), "/bbin/busybox");
    }
    img.bytes(
        Path::new("/etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        0o644,
    );
    img.bytes(Path::new("/etc/group"), b"root:x:0:\n".to_vec(), 0o644);
    img.bytes(
        Path::new("/etc/hosts"),
        b"127.0.0.1 localhost\n::1 localhost\n".to_vec(),
        0o644,
    );

    img.dir(Path::new("/vm/programs"));
    for (name, path) in programs {
        img.file_from(&super::programs::vm_path(name), path, 0o755);
        if name != "go-version" && arch == Arch::X86_64 {
            for lib in initramfs::ldd(path)? {
                img.host_path(&lib)?;
            }
        }
    }
    let bins = test_bins.iter().map(|(n, p)| (p.as_path(), n.as_str()));
    for (src, name) in [(enforcer, "enforcer")].into_iter().chain(bins) {
        let copy = stripped(arch, src, stage, name)?;
        img.file_from(&Path::new("/vm").join(name), &copy, 0o755);
        // arm64: libc and libgcc_s are in the unpacked packages already.
        if arch == Arch::X86_64 {
            for lib in initramfs::ldd(src)? {
                img.host_path(&lib)?;
            }
        }
    }
    Ok(img)
}

/// busybox and the tools of the host (amd64), with their shared libraries at their host paths.
fn host_tools(img: &mut Image) -> Result<()> {
    // busybox (static) in its own directory so its applets never shadow the real tools.
    let busybox = find_tool("busybox").context("busybox not found (Debian: busybox-static)")?;
    img.file_from(Path::new("/bbin/busybox"), &busybox, 0o755);
    for lib in initramfs::ldd(&busybox)? {
        img.host_path(&lib)?;
    }
    add_applets(img)?;

    for (tool, required) in TOOLS {
        match find_tool(tool) {
            Some(p) => img
                .host_binary(&p)
                .with_context(|| format!("cannot add {}", p.display()))?,
            None if *required => bail!("{tool} not found: `cargo xtask setup` installs it"),
            None => println!("vm: {tool} not found on the host: not in the VM"),
        }
    }
    // The watcher tests find the system libssl with `/sbin/ldconfig -p` (the host's cache: the
    // libraries it names that the VM has are at the same paths).
    if Path::new("/sbin/ldconfig").exists() {
        img.host_binary(Path::new("/sbin/ldconfig"))?;
    }
    Ok(())
}

/// `/bbin/<applet>` → busybox for each applet of the host's busybox-static.
fn add_applets(img: &mut Image) -> Result<()> {
    let busybox = find_tool("busybox").context("busybox not found (Debian: busybox-static)")?;
    let applets = Command::new(&busybox)
        .arg("--list")
        .output()
        .context("cannot run busybox --list")?;
    for a in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
        if a != "busybox" {
            img.symlink(&Path::new("/bbin").join(a), "busybox");
        }
    }
    Ok(())
}
