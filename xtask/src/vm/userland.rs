//! The arm64 VM's userspace. The amd64 VM copies the host's own tools with their shared
//! libraries; an arm64 VM needs arm64 builds of them, so Debian bookworm's arm64 packages of the
//! same tools are fetched (with everything they depend on, through the private arm64 apt state
//! the arm64 kernels come from) and unpacked once into `target/vm/arm64-root/`, which goes into
//! the initramfs whole (documentation left out).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{initramfs::Image, kernel::apt::Apt};

/// What the tests run in the VM (`image::TOOLS`' packages) and busybox; apt adds their
/// dependencies (libc6, libssl3, libgnutls30, ...).
const PACKAGES: &[&str] = &[
    "busybox-static",
    "iproute2",
    "openssl",
    "curl",
    "gnutls-bin",
    "bpftool",
    "socat",
    "libc-bin",
];

/// Directories of the packages that the VM does not need.
const SKIP: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/bash-completion",
    "usr/share/zsh",
];

/// Fetches (apt's cache makes a second run a no-op) and unpacks the packages; returns the root.
pub fn root(vm_dir: &Path) -> Result<PathBuf> {
    let apt = Apt::private_arch("bookworm", "arm64", vm_dir)?;
    if apt.needs_update() {
        apt.update()?;
    }
    let debs = vm_dir.join("apt-bookworm-arm64/root-debs");
    fs::create_dir_all(debs.join("partial"))?;
    let out = apt
        .command("apt-get")
        .arg("-o")
        .arg(format!("Dir::Cache::archives={}", debs.display()))
        .args(["-o", "APT::Sandbox::User=root", "-q", "-y"])
        .args(["--no-install-recommends", "install", "--download-only"])
        .args(PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("cannot run apt-get")?;
    if !out.status.success() {
        bail!(
            "apt-get install --download-only (arm64) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    let manifest: String = files.iter().map(|f| format!("{}\n", f.display())).collect();
    let root = vm_dir.join("arm64-root");
    if fs::read_to_string(root.join(".complete")).is_ok_and(|m| m == manifest) {
        return Ok(root);
    }
    let tmp = vm_dir.join(format!("arm64-root.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    for deb in &files {
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(&tmp)
            .status()
            .context("cannot run dpkg-deb")?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed ({status})", deb.display());
        }
    }
    fs::write(tmp.join(".complete"), &manifest)?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root)?;
    println!(
        "vm: arm64 userspace: {} packages unpacked into {}",
        files.len(),
        root.display()
    );
    Ok(root)
}

/// Where `rel` (a path under the unpacked root) goes in the image: merged /usr, as on the host
/// (bookworm's packages still ship `/bin`, `/sbin`, `/lib`; the image has them as symlinks).
fn image_path(rel: &Path) -> PathBuf {
    let mut parts = rel.components();
    match parts.next().and_then(|c| c.as_os_str().to_str()) {
        Some(top @ ("bin" | "sbin" | "lib")) => Path::new("/usr").join(top).join(parts.as_path()),
        _ => Path::new("/").join(rel),
    }
}

/// The whole unpacked root into `img`, at merged-/usr paths.
pub fn add(img: &mut Image, root: &Path) -> Result<()> {
    for top in ["bin", "sbin", "lib"] {
        img.symlink(&Path::new("/").join(top), &format!("usr/{top}"));
    }
    walk(img, root, Path::new(""))
}

fn walk(img: &mut Image, root: &Path, rel: &Path) -> Result<()> {
    let dir = root.join(rel);
    for e in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        let rel = rel.join(e.file_name());
        if SKIP.iter().any(|s| rel == Path::new(s)) || rel == Path::new(".complete") {
            continue;
        }
        let meta = fs::symlink_metadata(e.path())?;
        let at = image_path(&rel);
        if meta.file_type().is_symlink() {
            let target = fs::read_link(e.path())?;
            img.symlink(&at, &target.to_string_lossy());
        } else if meta.is_dir() {
            img.dir(&at);
            walk(img, root, &rel)?;
        } else if meta.is_file() {
            img.file_from(&at, &e.path(), meta.mode() & 0o7777);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_usr() {
        assert_eq!(image_path(Path::new("bin/ip")), Path::new("/usr/bin/ip"));
        assert_eq!(
            image_path(Path::new("lib/aarch64-linux-gnu/libc.so.6")),
            Path::new("/usr/lib/aarch64-linux-gnu/libc.so.6")
        );
        assert_eq!(image_path(Path::new("etc/ssl")), Path::new("/etc/ssl"));
        assert_eq!(image_path(Path::new("library")), Path::new("/library"));
    }
}
