//! `cargo xtask fuzz`: run the cargo-fuzz targets of `fuzz/` (see docs/fuzzing.md).
//!
//! Installs cargo-fuzz into `$CARGO_HOME/bin` if it is missing (idempotent, like bpf-linker in
//! `setup`), builds every target once with the nightly toolchain (libFuzzer, ASan, coverage),
//! fills each working corpus (`fuzz/corpus/<target>/`, not committed) from the committed seeds
//! (`fuzz/seeds/<target>/`), the repository's `policies/*.yaml` and a slice of the running
//! kernel's BTF, then fuzzes each target for a fixed time. A crash, a hang over [`TIMEOUT_S`] or
//! an allocation over the RSS limit fails the run; libFuzzer leaves the input in
//! `fuzz/artifacts/<target>/`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{root, setup};

/// Every fuzz target, in the order they run.
pub const TARGETS: [&str; 6] = [
    "policy_parse",
    "elf_identify",
    "btf_offsets",
    "go_tables",
    "cbom_build",
    "ja4_string",
];
/// Seconds per target in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 20;
/// cargo-fuzz release series installed when absent (0.13.x builds with stable 1.95).
const CARGO_FUZZ_VERSION: &str = "~0.13.2";
const CARGO_FUZZ_PREFIX: &str = "cargo-fuzz 0.13.";
/// One input taking longer than this is a hang, reported like a crash.
const TIMEOUT_S: u64 = 10;
/// libFuzzer's RSS limit (and per-allocation limit): ASan included, a bounded parser of inputs
/// of a few KiB stays far below.
const RSS_LIMIT_MB: u64 = 2048;

pub struct Options {
    pub seconds: u64,
    /// One target, or all of them.
    pub target: Option<String>,
}

/// `cargo xtask fuzz`.
pub fn run(opts: &Options) -> Result<()> {
    let targets: Vec<&str> = match opts.target.as_deref() {
        None => TARGETS.to_vec(),
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "unknown fuzz target {t:?} (targets: {})",
            TARGETS.join(", ")
        ),
    };
    if opts.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    cargo_fuzz()?;
    build()?;
    let mut failed = Vec::new();
    for t in targets {
        if let Err(e) = fuzz(t, opts.seconds) {
            eprintln!("fuzz: {t}: {e:#}");
            failed.push(t);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz target(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// `cargo xtask test`'s step: every target for [`SMOKE_SECONDS`].
pub fn smoke() -> Result<()> {
    run(&Options {
        seconds: SMOKE_SECONDS,
        target: None,
    })
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn status(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `cargo-fuzz --version` of the copy in `$CARGO_HOME/bin`, else of the one on PATH.
fn cargo_fuzz_version() -> Option<String> {
    let local = setup::cargo_home().join("bin/cargo-fuzz");
    [local.as_os_str(), "cargo-fuzz".as_ref()]
        .into_iter()
        .find_map(|bin| output(Command::new(bin).arg("--version")))
}

/// Installs cargo-fuzz 0.13 unless it is there already.
fn cargo_fuzz() -> Result<()> {
    if cargo_fuzz_version().is_some_and(|v| v.starts_with(CARGO_FUZZ_PREFIX)) {
        println!("fuzz: cargo-fuzz ok (already)");
        return Ok(());
    }
    let t = Instant::now();
    println!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} (takes ~1 min)");
    status(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))?;
    match cargo_fuzz_version() {
        Some(v) if v.starts_with(CARGO_FUZZ_PREFIX) => {
            println!("fuzz: cargo-fuzz installed ({:.1?})", t.elapsed());
            Ok(())
        }
        v => bail!("cargo-fuzz installed but `cargo-fuzz --version` says {v:?}"),
    }
}

fn logs_dir() -> Result<PathBuf> {
    let logs = fuzz_dir().join("target/xtask-logs");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    Ok(logs)
}

/// Runs `cmd` with its output in `log`; on failure, shows the end of it.
fn logged(cmd: &mut Command, log_path: &Path) -> Result<std::process::ExitStatus> {
    let log = fs::File::create(log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let status = cmd
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        let text = fs::read_to_string(log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("  | {l}");
        }
    }
    Ok(status)
}

/// Builds every target (the eBPF object included: the targets link the enforcer library).
fn build() -> Result<()> {
    let t = Instant::now();
    let log = logs_dir()?.join("build.log");
    let status = logged(
        Command::new("cargo").args(["+nightly", "fuzz", "build"]),
        &log,
    )?;
    if !status.success() {
        bail!(
            "building the fuzz targets (nightly) failed ({status}); log: {}",
            log.display()
        );
    }
    println!("fuzz: targets built ({:.1?})", t.elapsed());
    Ok(())
}

/// Runs one target for `seconds`; its output goes to `fuzz/target/xtask-logs/<target>.log`.
fn fuzz(target: &str, seconds: u64) -> Result<()> {
    let corpus = prepare_corpus(target)?;
    let log_path = logs_dir()?.join(format!("{target}.log"));
    let dict = fuzz_dir().join(format!("dict/{target}.dict"));
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", "run", target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1");
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let t = Instant::now();
    println!("fuzz: {target}: {seconds} s (log: {})", log_path.display());
    let _ = std::io::stdout().flush();
    let status = logged(&mut cmd, &log_path)?;
    if !status.success() {
        bail!(
            "{status} after {:.0?}; the input is in {}",
            t.elapsed(),
            fuzz_dir().join("artifacts").join(target).display()
        );
    }
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    // "#123456\tDONE   cov: 812 ft: 3045 corp: 410/61Kb ..." then "Done 123456 runs in 20 second(s)"
    let done = text.lines().rev().find(|l| l.contains("DONE"));
    let runs = text.lines().rev().find(|l| l.starts_with("Done "));
    println!(
        "fuzz: {target}: ok ({}; {})",
        runs.unwrap_or("?").trim(),
        done.map(|l| l.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    Ok(())
}

/// `fuzz/corpus/<target>/`, with the seeds added (libFuzzer skips duplicates).
fn prepare_corpus(target: &str) -> Result<PathBuf> {
    let corpus = fuzz_dir().join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
    let mut sources = vec![fuzz_dir().join("seeds").join(target)];
    if target == "policy_parse" {
        sources.push(root().join("policies"));
    }
    for dir in sources {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let is_script = Path::new(&name)
                .extension()
                .is_some_and(|x| x == "sh" || x == "md" || x == "go");
            if is_script || !e.path().is_file() {
                continue;
            }
            let dest = corpus.join(&name);
            if !dest.exists() {
                fs::copy(e.path(), &dest)
                    .with_context(|| format!("cannot copy {}", e.path().display()))?;
            }
        }
    }
    if target == "btf_offsets" {
        match fs::read("/sys/kernel/btf/vmlinux")
            .ok()
            .and_then(|b| btf_slice(&b))
        {
            Some(slice) => {
                let release = output(Command::new("uname").arg("-r")).unwrap_or_default();
                let dest = corpus.join(format!("vmlinux-sock-slice-{release}"));
                fs::write(&dest, slice)
                    .with_context(|| format!("cannot write {}", dest.display()))?;
            }
            None => println!("fuzz: no usable /sys/kernel/btf/vmlinux: committed seeds only"),
        }
    }
    Ok(corpus)
}

// BTF kinds (the kernel's Documentation/bpf/btf.rst).
const INT: u8 = 1;
const PTR: u8 = 2;
const ARRAY: u8 = 3;
const STRUCT: u8 = 4;
const UNION: u8 = 5;
const ENUM: u8 = 6;
const FWD: u8 = 7;
const TYPEDEF: u8 = 8;
const VOLATILE: u8 = 9;
const CONST: u8 = 10;
const RESTRICT: u8 = 11;
const FUNC: u8 = 12;
const FUNC_PROTO: u8 = 13;
const VAR: u8 = 14;
const DATASEC: u8 = 15;
const FLOAT: u8 = 16;
const DECL_TAG: u8 = 17;
const TYPE_TAG: u8 = 18;
const ENUM64: u8 = 19;

struct RawType<'a> {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    extra: &'a [u8],
}

impl RawType<'_> {
    fn kind(&self) -> u8 {
        ((self.info >> 24) & 0x1f) as u8
    }
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// A small, valid BTF blob cut out of a little-endian vmlinux BTF: `struct sock` and every type
/// it contains by value (transitively), with pointers turned into `void *` so the closure stays
/// small. Real layouts (anonymous unions, bitfields, `kind_flag`, typedef chains) as seeds for
/// `btf_offsets`. `None` if the input is not BTF this understands or has no `struct sock`.
pub fn btf_slice(b: &[u8]) -> Option<Vec<u8>> {
    if b.get(..3)? != [0x9f, 0xeb, 1] {
        return None; // big-endian or another version: not worth supporting for a seed
    }
    let hdr_len = le32(b, 4)? as usize;
    let (type_off, type_len) = (le32(b, 8)? as usize, le32(b, 12)? as usize);
    let (str_off, str_len) = (le32(b, 16)? as usize, le32(b, 20)? as usize);
    let types_raw = b.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
    let strings = b.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
    let name = |off: u32| -> Option<&[u8]> {
        let rest = strings.get(off as usize..)?;
        Some(&rest[..rest.iter().position(|&c| c == 0)?])
    };

    let mut types = vec![RawType {
        name_off: 0,
        info: 0,
        size_or_type: 0,
        extra: &[],
    }];
    let mut pos = 0;
    while pos < types_raw.len() {
        let (name_off, info, size_or_type) = (
            le32(types_raw, pos)?,
            le32(types_raw, pos + 4)?,
            le32(types_raw, pos + 8)?,
        );
        let vlen = (info & 0xffff) as usize;
        let extra_len = match ((info >> 24) & 0x1f) as u8 {
            PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
            INT | VAR | DECL_TAG => 4,
            ARRAY => 12,
            STRUCT | UNION | DATASEC | ENUM64 => 12 * vlen,
            ENUM | FUNC_PROTO => 8 * vlen,
            _ => return None,
        };
        let extra = types_raw.get(pos + 12..pos + 12 + extra_len)?;
        types.push(RawType {
            name_off,
            info,
            size_or_type,
            extra,
        });
        pos += 12 + extra_len;
    }
    let sock = (1..types.len())
        .find(|&i| types[i].kind() == STRUCT && name(types[i].name_off) == Some(b"sock"))?;

    // The closure of `sock` through by-value references.
    let mut keep = BTreeSet::new();
    let mut todo = vec![sock];
    while let Some(id) = todo.pop() {
        if id == 0 || !keep.insert(id) {
            continue;
        }
        let t = types.get(id)?;
        match t.kind() {
            TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => todo.push(t.size_or_type as usize),
            ARRAY => {
                todo.push(le32(t.extra, 0)? as usize);
                todo.push(le32(t.extra, 4)? as usize);
            }
            STRUCT | UNION => {
                for m in t.extra.chunks_exact(12) {
                    todo.push(le32(m, 4)? as usize);
                }
            }
            INT | ENUM | ENUM64 | FLOAT | FWD | PTR => {}
            _ => return None, // functions and variables are not reached by value
        }
    }
    let new_id: HashMap<usize, u32> = keep
        .iter()
        .enumerate()
        .map(|(i, &old)| (old, i as u32 + 1))
        .collect();
    let map_id = |old: u32| new_id.get(&(old as usize)).copied().unwrap_or(0);

    let mut out_strings = vec![0u8];
    let mut string_ids: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let mut intern = |off: u32| -> Option<u32> {
        let s = name(off)?;
        if s.is_empty() {
            return Some(0);
        }
        Some(*string_ids.entry(s.to_vec()).or_insert_with(|| {
            let at = out_strings.len() as u32;
            out_strings.extend_from_slice(s);
            out_strings.push(0);
            at
        }))
    };
    let mut out_types = Vec::new();
    let mut word = |w: u32| out_types.extend_from_slice(&w.to_le_bytes());
    for &old in &keep {
        let t = &types[old];
        word(intern(t.name_off)?);
        word(t.info);
        match t.kind() {
            PTR => word(0), // void *
            TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG => word(map_id(t.size_or_type)),
            _ => word(t.size_or_type),
        }
        match t.kind() {
            ARRAY => {
                word(map_id(le32(t.extra, 0)?));
                word(map_id(le32(t.extra, 4)?));
                word(le32(t.extra, 8)?);
            }
            STRUCT | UNION => {
                for m in t.extra.chunks_exact(12) {
                    word(intern(le32(m, 0)?)?);
                    word(map_id(le32(m, 4)?));
                    word(le32(m, 8)?);
                }
            }
            ENUM => {
                for v in t.extra.chunks_exact(8) {
                    word(intern(le32(v, 0)?)?);
                    word(le32(v, 4)?);
                }
            }
            ENUM64 => {
                for v in t.extra.chunks_exact(12) {
                    word(intern(le32(v, 0)?)?);
                    word(le32(v, 4)?);
                    word(le32(v, 8)?);
                }
            }
            _ => {
                for w in t.extra.chunks_exact(4) {
                    word(le32(w, 0)?);
                }
            }
        }
    }
    let mut out = vec![0x9f, 0xeb, 1, 0];
    let tl = out_types.len() as u32;
    for w in [24, 0, tl, tl, out_strings.len() as u32] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&out_types);
    out.extend_from_slice(&out_strings);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btf_slice_of_garbage_is_none() {
        assert_eq!(btf_slice(b""), None);
        assert_eq!(btf_slice(b"\x9f\xeb\x01\x00"), None);
        assert_eq!(btf_slice(&[0u8; 64]), None);
    }

    #[test]
    fn btf_slice_of_this_kernel_is_small() {
        let Ok(vmlinux) = fs::read("/sys/kernel/btf/vmlinux") else {
            return; // no BTF on this machine
        };
        let slice = btf_slice(&vmlinux).expect("struct sock in vmlinux BTF");
        assert!(slice.len() < vmlinux.len() / 10, "{} bytes", slice.len());
    }
}
