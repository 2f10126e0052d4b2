//! The part of the VM's initramfs every kernel shares: busybox, the host tools the tests run
//! with their shared libraries, a few config files, `vm/init`, the enforcer and the test binaries.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::initramfs::{self, Image};

const INIT: &str = include_str!("../../../vm/init");
/// Tools the tests run (required) and ones handy when reading a failure (optional).
const TOOLS: &[(&str, bool)] = &[
    ("ip", true),
    ("ss", true),
    ("openssl", true),
    ("curl", true),
    ("gnutls-cli", true),
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
/// is missing.
fn stripped(src: &Path, stage: &Path, name: &str) -> Result<PathBuf> {
    fs::create_dir_all(stage)?;
    let dst = stage.join(name);
    let ok = Command::new("strip")
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
/// `programs`: the tests' prebuilt client programs, to `/vm/programs/<name>`.
pub fn common_image(
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

    // busybox (static) in its own directory so its applets never shadow the real tools.
    let busybox = find_tool("busybox").context("busybox not found (Debian: busybox-static)")?;
    img.file_from(Path::new("/bbin/busybox"), &busybox, 0o755);
    for lib in initramfs::ldd(&busybox)? {
        img.host_path(&lib)?;
    }
    let applets = Command::new(&busybox)
        .arg("--list")
        .output()
        .context("cannot run busybox --list")?;
    for a in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
        if a != "busybox" {
            img.symlink(&Path::new("/bbin").join(a), "busybox");
        }
    }

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
    for cfg in [
        "/etc/ssl/openssl.cnf",
        "/usr/lib/ssl/openssl.cnf",
        "/etc/gnutls/config",
        "/etc/ld.so.cache",
    ] {
        if Path::new(cfg).exists() {
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
        if name != "go-version" {
            for lib in initramfs::ldd(path)? {
                img.host_path(&lib)?;
            }
        }
    }
    let bins = test_bins.iter().map(|(n, p)| (p.as_path(), n.as_str()));
    for (src, name) in [(enforcer, "enforcer")].into_iter().chain(bins) {
        let copy = stripped(src, stage, name)?;
        img.file_from(&Path::new("/vm").join(name), &copy, 0o755);
        for lib in initramfs::ldd(src)? {
            img.host_path(&lib)?;
        }
    }
    Ok(img)
}
