//! The kernel modules the tests need, taken from the kernel's own package with what they depend
//! on (read from `.modinfo`), decompressed, in load order.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{Kernel, NEEDED, console};

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
        let (console_opt, _) = console(self.arch);
        let console = (None, console_opt, "the serial console (the log)");
        for (module, opt, why) in NEEDED.iter().chain([&console]) {
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
