//! `cargo xtask vm`: the kernel matrix. Boots Debian's stock kernels (bookworm's 6.1 cloud kernel,
//! 6.12 for bookworm) in QEMU and runs the end-to-end enforcement tests (`tests/tests/enforce.rs`)
//! inside, once per kernel TCP hook form, then prints kernel × hook form × test → result and
//! writes it to `target/vm/report.md`. See docs/kernel-support.md.
//!
//! The VM gets a small initramfs, written here without staging files on disk: busybox, the host's
//! `ip`/`ss`/`tc`/`openssl`/`curl`/`gnutls-cli`/`bpftool` with their shared libraries at their
//! host paths, the enforcer and the test binary (debug info stripped), the kernel modules the
//! tests need from the kernel's own package, and `vm/init`, which runs everything and reports
//! `@@vm ...` lines on the serial console. Nothing is shared with the host at run time (the
//! cloud kernels have no 9p), so a VM cannot touch the host.

mod initramfs;
mod kernel;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{root, target_dir};
use initramfs::Image;
use kernel::{Kernel, SERIES};

pub const FORMS: [&str; 3] = ["fentry", "kprobe", "tracepoint"];
/// Inside the VM, per test (the tests' own deadlines are far shorter; this catches hangs).
const TEST_TIMEOUT_S: u64 = 150;
/// Boot, module loading and `check-kernel` (about 10 s under TCG).
const BOOT_TIMEOUT_S: u64 = 120;
const INIT: &str = include_str!("../../vm/init");
/// Tools the tests run (required) and ones handy when reading a failure (optional).
const TOOLS: &[(&str, bool)] = &[
    ("ip", true),
    ("ss", true),
    ("openssl", true),
    ("curl", true),
    ("gnutls-cli", true),
    ("tc", false),
    ("bpftool", false),
];

#[derive(Args, Debug, Clone)]
pub struct VmArgs {
    /// Kernel series to boot: 6.1 (bookworm cloud), 6.12 (bookworm-backports/-security) or all.
    #[arg(long, default_value = "all", value_parser = ["6.1", "6.12", "all"])]
    pub kernel: String,
    /// Kernel TCP hook form(s) to test: fentry, kprobe, tracepoint or all.
    #[arg(long, default_value = "all", value_parser = ["fentry", "kprobe", "tracepoint", "all"])]
    pub hook: String,
    /// Only the tests of tests/tests/enforce.rs whose name contains this (repeatable).
    #[arg(long = "test", value_name = "SUBSTRING")]
    pub tests: Vec<String>,
}

/// One cell of the matrix.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pass(f64),
    Fail(String),
    Unsupported(String),
}

#[derive(Clone, Debug)]
pub struct Row {
    pub kernel: String,
    pub form: &'static str,
    pub test: String,
    pub outcome: Outcome,
}

/// What one kernel's boot gave, for the report.
struct KernelRun {
    series: &'static str,
    package: String,
    origin: String,
    config: Vec<(String, String)>,
    boot_s: Option<f64>,
    wall_s: f64,
    checks: BTreeMap<String, String>,
    log: PathBuf,
    error: Option<String>,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub unsupported: u64,
}

/// `cargo xtask vm ...`.
pub fn vm(args: &VmArgs) -> Result<()> {
    crate::setup::setup()?;
    let counts = run(args)?;
    if counts.failed > 0 {
        bail!(
            "{} kernel matrix cell(s) failed (see above and target/vm/report.md)",
            counts.failed
        );
    }
    Ok(())
}

/// For `cargo xtask test`: the whole matrix (unsupported cells count as ignored); Err only
/// when it could not run at all. `ENFORCER_VM=skip` skips it, saying so.
pub fn ci() -> Result<Counts> {
    if std::env::var("ENFORCER_VM").is_ok_and(|v| v == "skip") {
        println!("xtask: vm kernel matrix SKIPPED: ENFORCER_VM=skip is set");
        return Ok(Counts::default());
    }
    run(&VmArgs {
        kernel: "all".into(),
        hook: "all".into(),
        tests: vec![],
    })
}

fn run(args: &VmArgs) -> Result<Counts> {
    let started = Instant::now();
    let series: Vec<&'static kernel::Series> = SERIES
        .iter()
        .filter(|s| args.kernel == "all" || args.kernel == s.name)
        .collect();
    let forms: Vec<&'static str> = FORMS
        .iter()
        .copied()
        .filter(|f| args.hook == "all" || args.hook == *f)
        .collect();

    let (enforcer, test_bin) = build()?;
    let tests = list_tests(&test_bin, &args.tests)?;
    if tests.is_empty() {
        bail!("no test of tests/tests/enforce.rs matches {:?}", args.tests);
    }
    println!(
        "vm: {} kernel(s) x {} hook form(s) x {} test(s): {}",
        series.len(),
        forms.len(),
        tests.len(),
        tests.join(" ")
    );

    let vm_dir = target_dir().join("vm");
    fs::create_dir_all(vm_dir.join("logs"))?;
    let t = Instant::now();
    let kernels = kernel::fetch(&series);
    println!("vm: kernels ready in {:.1?}", t.elapsed());

    let t = Instant::now();
    let stage = vm_dir.join(format!("stage-{}", std::process::id()));
    let common = common_image(&enforcer, &test_bin, &stage);
    println!("vm: initramfs contents gathered in {:.1?}", t.elapsed());

    let mut rows = vec![];
    let mut runs = vec![];
    for (name, k) in kernels {
        let log = vm_dir.join("logs").join(format!("{name}.log"));
        let outcome = match (&common, k) {
            (Err(e), _) => Err(anyhow::anyhow!("cannot build the initramfs: {e:#}")),
            (_, Err(e)) => Err(e),
            (Ok(img), Ok(k)) => Ok((img, k)),
        };
        match outcome {
            Ok((img, k)) => {
                let (run, r) = boot_kernel(&k, img, &forms, &tests, &log);
                rows.extend(r);
                runs.push(run);
            }
            Err(e) => {
                println!("vm: {name}: not run: {e:#}");
                for &form in &forms {
                    for test in &tests {
                        rows.push(Row {
                            kernel: name.to_string(),
                            form,
                            test: test.clone(),
                            outcome: Outcome::Fail(format!("kernel not run: {e:#}")),
                        });
                    }
                }
                runs.push(KernelRun {
                    series: name,
                    package: "-".into(),
                    origin: "-".into(),
                    config: vec![],
                    boot_s: None,
                    wall_s: 0.0,
                    checks: BTreeMap::new(),
                    log,
                    error: Some(format!("{e:#}")),
                });
            }
        }
    }
    let _ = fs::remove_dir_all(&stage);

    let report = report(&runs, &rows, started.elapsed());
    let path = vm_dir.join("report.md");
    let tmp = vm_dir.join(format!("report.md.tmp-{}", std::process::id()));
    fs::write(&tmp, &report)?;
    fs::rename(&tmp, &path)?;
    println!("\n{report}");
    println!("vm: report written to {}", path.display());
    let counts = count(&rows);
    println!(
        "vm: {} passed, {} failed, {} unsupported in {:.0?}",
        counts.passed,
        counts.failed,
        counts.unsupported,
        started.elapsed()
    );
    Ok(counts)
}

fn count(rows: &[Row]) -> Counts {
    let mut c = Counts::default();
    for r in rows {
        match r.outcome {
            Outcome::Pass(_) => c.passed += 1,
            Outcome::Fail(_) => c.failed += 1,
            Outcome::Unsupported(_) => c.unsupported += 1,
        }
    }
    c
}

/// Builds the enforcer and the end-to-end test binary; returns their paths.
fn build() -> Result<(PathBuf, PathBuf)> {
    crate::cargo(&["build", "-p", "enforcer"])?;
    let enforcer = target_dir().join("debug/enforcer");
    let out = Command::new("cargo")
        .args([
            "test",
            "-p",
            "enforcer-tests",
            "--test",
            "enforce",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!(
            "`cargo test -p enforcer-tests --no-run` failed ({})",
            out.status
        );
    }
    let test_bin = test_executable(&String::from_utf8_lossy(&out.stdout), "enforce")
        .context("cargo built no `enforce` test executable")?;
    Ok((enforcer, test_bin))
}

/// The `executable` of the test target `name` in cargo's `--message-format=json` output.
fn test_executable(json_lines: &str, name: &str) -> Option<PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .filter(|v| {
            v["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
        })
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
}

/// Test names from `<bin> --list --format terse`, kept if they contain one of `filters`.
fn list_tests(bin: &Path, filters: &[String]) -> Result<Vec<String>> {
    let out = Command::new(bin)
        .args(["--list", "--format", "terse"])
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} --list failed", bin.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|t| filters.is_empty() || filters.iter().any(|f| t.contains(f.as_str())))
        .map(str::to_string)
        .collect())
}

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
fn common_image(enforcer: &Path, test_bin: &Path, stage: &Path) -> Result<Image> {
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
    for cfg in [
        "/etc/ssl/openssl.cnf",
        "/usr/lib/ssl/openssl.cnf",
        "/etc/gnutls/config",
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

    for (src, name) in [(enforcer, "enforcer"), (test_bin, "enforce")] {
        let copy = stripped(src, stage, name)?;
        img.file_from(&Path::new("/vm").join(name), &copy, 0o755);
        for lib in initramfs::ldd(src)? {
            img.host_path(&lib)?;
        }
    }
    Ok(img)
}

/// Boots `k` with the image plus its modules and a plan; never fails, a broken boot is a row.
fn boot_kernel(
    k: &Kernel,
    common: &Image,
    forms: &[&'static str],
    tests: &[String],
    log: &Path,
) -> (KernelRun, Vec<Row>) {
    let mut run = KernelRun {
        series: k.series,
        package: k.package.clone(),
        origin: k.origin.clone(),
        config: kernel::NEEDED
            .iter()
            .map(|(_, opt, _)| *opt)
            .chain(kernel::FORM_OPTIONS.iter().copied())
            .map(|o| (o.to_string(), k.config.show(o)))
            .collect(),
        boot_s: None,
        wall_s: 0.0,
        checks: BTreeMap::new(),
        log: log.to_path_buf(),
        error: None,
    };
    println!(
        "vm: {}: {} ({}, {})",
        k.series, k.package, k.release, k.origin
    );
    let result = (|| -> Result<(BootLog, f64)> {
        let modules = k.needed_modules()?;
        let mut img = common.clone();
        for m in &modules {
            img.bytes(
                &Path::new("/vm/modules").join(format!("{}.ko", m.name)),
                m.data.clone(),
                0o644,
            );
        }
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        let conf = format!(
            "MODULES='{}'\nFORMS='{}'\nTESTS='{}'\nTEST_TIMEOUT={TEST_TIMEOUT_S}\n",
            names.join(" "),
            forms.join(" "),
            tests.join(" ")
        );
        img.bytes(Path::new("/vm/conf"), conf.into_bytes(), 0o644);
        let initrd = target_dir().join("vm").join(format!(
            "initrd-{}-{}.cpio",
            k.series,
            std::process::id()
        ));
        let size = img.write(&initrd)?;
        println!(
            "vm: {}: initramfs {:.1} MiB, modules: {}",
            k.series,
            size as f64 / (1 << 20) as f64,
            if names.is_empty() {
                "none needed".to_string()
            } else {
                names.join(" ")
            }
        );
        let deadline = Duration::from_secs(
            BOOT_TIMEOUT_S + TEST_TIMEOUT_S * (forms.len() * tests.len()) as u64,
        );
        let r = qemu(k, &initrd, log, deadline);
        let _ = fs::remove_file(&initrd);
        r
    })();
    let parsed = match result {
        Ok((parsed, wall)) => {
            run.wall_s = wall;
            parsed
        }
        Err(e) => {
            run.error = Some(format!("{e:#}"));
            println!("vm: {}: {e:#}", k.series);
            BootLog::default()
        }
    };
    run.boot_s = parsed.boot_s;
    run.checks = parsed.checks.clone();
    if run.error.is_none() {
        for (m, err) in &parsed.module_errors {
            println!("vm: {}: insmod {m} failed: {err}", k.series);
        }
    }
    let rows = classify(k, &parsed, run.error.as_deref(), forms, tests);
    for r in &rows {
        if let Outcome::Fail(why) = &r.outcome
            && let Some(excerpt) = parsed.excerpt(r.form, &r.test)
        {
            println!(
                "vm: --- {} {} {}: {why}; last lines of its output:\n{excerpt}",
                r.kernel, r.form, r.test
            );
        }
    }
    (run, rows)
}

/// Runs QEMU until it powers off or `deadline` passes (then kills it); prints progress from
/// the serial log as it grows. Returns the parsed log and the wall time.
fn qemu(k: &Kernel, initrd: &Path, log: &Path, deadline: Duration) -> Result<(BootLog, f64)> {
    let _ = fs::remove_file(log);
    // TCG unless asked: a /dev/kvm can exist and still not work (nested, no VT-x), and the
    // timings in docs/kernel-support.md are TCG's.
    let kvm = std::env::var("ENFORCER_VM_ACCEL").is_ok_and(|a| a == "kvm");
    let accel = if kvm { "kvm" } else { "tcg,thread=multi" };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-machine", "q35"])
        .args(["-accel", accel, "-cpu", "max", "-smp", "2", "-m", "2G"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet mitigations=off",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null());
    // QEMU's own messages: to a file, never a pipe nobody reads while it runs.
    let qemu_log = log.with_extension("qemu.log");
    let out = fs::File::create(&qemu_log)
        .with_context(|| format!("cannot create {}", qemu_log.display()))?;
    cmd.stdout(out.try_clone()?).stderr(out);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("cannot run qemu-system-x86_64 (Debian: qemu-system-x86)")?;
    println!(
        "vm: {}: booting ({}, {} MiB, deadline {:?})",
        k.series,
        if kvm { "KVM" } else { "TCG" },
        2048,
        deadline
    );
    let mut seen = 0u64;
    let mut partial = String::new();
    let mut timed_out = false;
    let status = loop {
        progress(k.series, log, &mut seen, &mut partial);
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    progress(k.series, log, &mut seen, &mut partial);
    let wall = started.elapsed().as_secs_f64();
    let qemu_err = fs::read_to_string(&qemu_log).unwrap_or_default();
    let text = fs::read(log).unwrap_or_default();
    let mut parsed = BootLog::parse(&String::from_utf8_lossy(&text));
    if timed_out {
        parsed.stopped = Some(format!("VM killed at the {deadline:?} deadline"));
    } else if parsed.done.is_none() {
        parsed.stopped = Some(format!(
            "VM stopped early ({status}){}",
            if qemu_err.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", qemu_err.trim())
            }
        ));
    }
    if parsed.boot_s.is_none() {
        bail!(
            "the VM never reached /init ({}); serial log: {}",
            parsed.stopped.as_deref().unwrap_or("?"),
            log.display()
        );
    }
    println!("vm: {}: VM done in {wall:.1} s", k.series);
    Ok((parsed, wall))
}

/// Prints the protocol lines that arrived in the log since the last call.
fn progress(series: &str, log: &Path, seen: &mut u64, partial: &mut String) {
    let Ok(mut f) = fs::File::open(log) else {
        return;
    };
    if f.seek(SeekFrom::Start(*seen)).is_err() {
        return;
    }
    let mut buf = vec![];
    if f.read_to_end(&mut buf).is_err() {
        return;
    }
    *seen += buf.len() as u64;
    partial.push_str(&String::from_utf8_lossy(&buf));
    while let Some(nl) = partial.find('\n') {
        let line: String = partial.drain(..=nl).collect();
        let Some(msg) = line.find("@@vm ").map(|i| line[i + 5..].trim().to_string()) else {
            continue;
        };
        let w: Vec<&str> = msg.split_whitespace().collect();
        match w.first().copied() {
            Some("boot") => println!(
                "vm: {series}: /init running at {} s (uname -r {})",
                w.get(1).unwrap_or(&"?"),
                w.get(2).unwrap_or(&"?")
            ),
            Some("check") => println!("vm: {series}: check-kernel: {}", w[1..].join(" ")),
            Some("test") if w.len() >= 5 => println!(
                "vm: {series}: {:<10} {} ... {} ({} s)",
                w[1],
                w[2],
                if w[3] == "0" {
                    "ok".to_string()
                } else {
                    format!("FAILED (exit {})", w[3])
                },
                w[4]
            ),
            Some("module") if w.get(2) != Some(&"ok") => println!("vm: {series}: {msg}"),
            Some("done") => println!("vm: {series}: all done at {} s", w.get(1).unwrap_or(&"?")),
            _ => {}
        }
    }
}

/// The `@@vm` lines of one boot.
#[derive(Default, Debug, Clone)]
struct BootLog {
    boot_s: Option<f64>,
    release: Option<String>,
    module_errors: Vec<(String, String)>,
    facts: BTreeMap<String, bool>,
    checks: BTreeMap<String, String>,
    /// (form, test) → (exit code, seconds).
    tests: BTreeMap<(String, String), (i32, f64)>,
    /// The test started last and never reported (the VM died or was killed during it).
    running: Option<(String, String)>,
    done: Option<f64>,
    /// Why the VM stopped before `done`, if it did.
    stopped: Option<String>,
    /// Log lines per (form, test), for failure excerpts.
    output: BTreeMap<(String, String), Vec<String>>,
}

impl BootLog {
    fn parse(text: &str) -> BootLog {
        let mut b = BootLog::default();
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            let Some(i) = line.find("@@vm ") else {
                if let Some(key) = &current {
                    b.output
                        .entry(key.clone())
                        .or_default()
                        .push(line.to_string());
                }
                continue;
            };
            let msg = &line[i + 5..];
            let (word, rest) = msg.split_once(' ').unwrap_or((msg, ""));
            let w: Vec<&str> = rest.split_whitespace().collect();
            match word {
                "boot" => {
                    b.boot_s = w.first().and_then(|s| s.parse().ok());
                    b.release = w.get(1).map(|s| s.to_string());
                }
                "module" if w.get(1) != Some(&"ok") => {
                    let name = w.first().unwrap_or(&"?").to_string();
                    b.module_errors
                        .push((name, w.get(2..).unwrap_or_default().join(" ")));
                }
                "fact" if w.len() >= 2 => {
                    b.facts.insert(w[0].to_string(), w[1] == "yes");
                }
                "check" if !w.is_empty() => {
                    let line = rest.trim_start()[w[0].len()..].trim().to_string();
                    b.checks.insert(w[0].to_string(), line);
                }
                "test-start" if w.len() >= 2 => {
                    let key = (w[0].to_string(), w[1].to_string());
                    b.running = Some(key.clone());
                    current = Some(key);
                }
                "test" if w.len() >= 4 => {
                    let key = (w[0].to_string(), w[1].to_string());
                    let rc = w[2].parse().unwrap_or(-1);
                    let secs = w[3].parse().unwrap_or(0.0);
                    b.tests.insert(key, (rc, secs));
                    b.running = None;
                    current = None;
                }
                "done" => b.done = w.first().and_then(|s| s.parse().ok()),
                _ => {}
            }
        }
        b
    }

    fn fact(&self, name: &str) -> Option<bool> {
        self.facts.get(name).copied()
    }

    /// The last 60 log lines of a test's run.
    fn excerpt(&self, form: &str, test: &str) -> Option<String> {
        let lines = self.output.get(&(form.to_string(), test.to_string()))?;
        let start = lines.len().saturating_sub(60);
        Some(lines[start..].join("\n"))
    }
}

/// Why the kernel itself cannot have `form`, from its config and what the VM saw; `None` if it
/// should work (then a form that does not attach is enforcer's failure, not the kernel's).
fn kernel_lacks(form: &str, k: &kernel::Config, b: &BootLog) -> Option<String> {
    let no = |fact: &str| b.fact(fact) == Some(false);
    match form {
        "fentry" => {
            for opt in [
                "CONFIG_BPF_JIT",
                "CONFIG_FUNCTION_TRACER",
                "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
            ] {
                if !k.is_y(opt) {
                    return Some(format!("{opt} is not set: no BPF trampolines"));
                }
            }
            if no("btf") {
                return Some("no /sys/kernel/btf/vmlinux".into());
            }
            ["tcp_sendmsg", "tcp_cleanup_rbuf"]
                .iter()
                .find(|f| no(&format!("ftrace:{f}")))
                .map(|f| format!("{f} is not in available_filter_functions"))
        }
        "kprobe" => {
            if !k.is_y("CONFIG_KPROBES") {
                return Some("CONFIG_KPROBES is not set".into());
            }
            if no("kprobe_pmu") {
                return Some("no kprobe PMU (/sys/bus/event_source/devices/kprobe)".into());
            }
            ["tcp_sendmsg", "tcp_cleanup_rbuf"]
                .iter()
                .find(|f| no(&format!("kallsyms:{f}")))
                .map(|f| format!("{f} is not in /proc/kallsyms"))
        }
        "tracepoint" => {
            let has = |t: &str| b.fact(&format!("tracepoint:{t}"));
            let send = [has("tcp_sendmsg_locked"), has("sock_send_length")];
            let recv = [has("sock_recv_length"), has("tcp_rcv_space_adjust")];
            if send.iter().all(|x| *x == Some(false)) {
                Some(
                    "neither tcp:tcp_sendmsg_locked nor sock:sock_send_length exists (send side)"
                        .into(),
                )
            } else if recv.iter().all(|x| *x == Some(false)) {
                Some("neither sock:sock_recv_length nor tcp:tcp_rcv_space_adjust exists (receive side)".into())
            } else {
                None
            }
        }
        _ => None,
    }
}

fn classify(
    k: &Kernel,
    b: &BootLog,
    error: Option<&str>,
    forms: &[&'static str],
    tests: &[String],
) -> Vec<Row> {
    let mut rows = vec![];
    for &form in forms {
        let check = b.checks.get(form);
        for test in tests {
            let outcome = if let Some(e) = error {
                Outcome::Fail(format!("VM run failed: {e}"))
            } else if let Some(m) = b.module_errors.first() {
                Outcome::Fail(format!("insmod {} failed: {}", m.0, m.1))
            } else {
                match check {
                    None => Outcome::Fail(format!(
                        "no check-kernel result: {}",
                        b.stopped.as_deref().unwrap_or("see the log")
                    )),
                    Some(line) if line.starts_with("attaches") => {
                        match b.tests.get(&(form.to_string(), test.clone())) {
                            Some((0, secs)) => Outcome::Pass(*secs),
                            Some((137, secs)) => Outcome::Fail(format!(
                                "killed after {secs} s (per-test limit {TEST_TIMEOUT_S} s)"
                            )),
                            Some((rc, secs)) => {
                                Outcome::Fail(format!("test failed (exit {rc}) after {secs} s"))
                            }
                            None if b.running.as_ref()
                                == Some(&(form.to_string(), test.clone())) =>
                            {
                                Outcome::Fail(format!(
                                    "did not finish: {}",
                                    b.stopped.as_deref().unwrap_or("VM stopped")
                                ))
                            }
                            None => Outcome::Fail(format!(
                                "not run: {}",
                                b.stopped.as_deref().unwrap_or("VM stopped first")
                            )),
                        }
                    }
                    Some(line) => match kernel_lacks(form, &k.config, b) {
                        Some(why) => Outcome::Unsupported(format!(
                            "{why}; check-kernel: {}",
                            short(line, 160)
                        )),
                        None => Outcome::Fail(format!(
                            "the kernel has what {form} needs, but check-kernel says: {}",
                            short(line, 400)
                        )),
                    },
                }
            };
            rows.push(Row {
                kernel: k.series.to_string(),
                form,
                test: test.clone(),
                outcome,
            });
        }
    }
    rows
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

fn report(runs: &[KernelRun], rows: &[Row], total: Duration) -> String {
    let mut r = String::new();
    let c = count(rows);
    let _ = writeln!(r, "# VM kernel matrix\n");
    let _ = writeln!(
        r,
        "{} passed, {} failed, {} unsupported; {:.0} s in all (`cargo xtask vm`, QEMU {}).\n",
        c.passed,
        c.failed,
        c.unsupported,
        total.as_secs_f64(),
        if std::env::var("ENFORCER_VM_ACCEL").is_ok_and(|a| a == "kvm") {
            "KVM"
        } else {
            "TCG"
        }
    );
    let _ = writeln!(
        r,
        "| kernel | package | boot to /init | VM wall time | log |"
    );
    let _ = writeln!(r, "| --- | --- | --- | --- | --- |");
    for k in runs {
        let _ = writeln!(
            r,
            "| {} | {} ({}) | {} | {:.0} s | {} |",
            k.series,
            k.package,
            k.origin,
            k.boot_s.map_or("-".into(), |s| format!("{s:.1} s")),
            k.wall_s,
            k.log.strip_prefix(root()).unwrap_or(&k.log).display()
        );
    }
    let _ = writeln!(r, "\n| kernel | hook | test | result | time / reason |");
    let _ = writeln!(r, "| --- | --- | --- | --- | --- |");
    for row in rows {
        let (result, note) = match &row.outcome {
            Outcome::Pass(s) => ("pass".to_string(), format!("{s:.1} s")),
            Outcome::Fail(why) => ("**FAIL**".to_string(), short(why, 200)),
            Outcome::Unsupported(why) => ("unsupported".to_string(), short(why, 200)),
        };
        let _ = writeln!(
            r,
            "| {} | {} | {} | {result} | {} |",
            row.kernel,
            row.form,
            row.test,
            note.replace('|', "\\|")
        );
    }
    let mut checks = String::new();
    for k in runs {
        for (form, line) in &k.checks {
            let _ = writeln!(
                checks,
                "- {} {form}: {}",
                k.series,
                short(line, 300).replace('|', "\\|")
            );
        }
        if let Some(e) = &k.error {
            let _ = writeln!(checks, "- {}: not run: {e}", k.series);
        }
    }
    if !checks.is_empty() {
        let _ = writeln!(r, "\n`enforcer check-kernel` in each VM:\n\n{checks}");
    }
    let with_config: Vec<&KernelRun> = runs.iter().filter(|k| !k.config.is_empty()).collect();
    if !with_config.is_empty() {
        let _ = write!(
            r,
            "\nKernel config (`y` built in, `m` module loaded from the package):\n\n| option |"
        );
        for k in &with_config {
            let _ = write!(r, " {} |", k.series);
        }
        let _ = write!(r, "\n| --- |");
        for _ in &with_config {
            let _ = write!(r, " --- |");
        }
        let _ = writeln!(r);
        for (i, (opt, _)) in with_config[0].config.iter().enumerate() {
            let _ = write!(r, "| {opt} |");
            for k in &with_config {
                let _ = write!(r, " {} |", k.config.get(i).map_or("?", |c| c.1.as_str()));
            }
            let _ = writeln!(r);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[    0.0] Linux version 6.12\n\
@@vm boot 4.19 6.12.117+deb12-cloud-amd64\n\
@@vm module veth ok\n\
@@vm module cls_bpf failed insmod: can't insert\n\
@@vm fact kprobe_pmu yes\n\
@@vm fact tracepoint:sock_send_length no\n\
@@vm fact tracepoint:tcp_sendmsg_locked no\n\
@@vm check fentry attaches (tcp_sendmsg, tcp_cleanup_rbuf)\n\
@@vm check tracepoint cannot load: tp_tcp_send: verifier\n\
@@vm test-start fentry t1\n\
running 1 test\n\
test t1 ... ok\n\
@@vm test fentry t1 0 13.9\n\
@@vm test-start fentry t2\n\
thread panicked\n\
@@vm test fentry t2 101 3.0\n\
@@vm test-start fentry t3\n\
half a li";

    #[test]
    fn parses_the_protocol() {
        let b = BootLog::parse(LOG);
        assert_eq!(b.boot_s, Some(4.19));
        assert_eq!(b.release.as_deref(), Some("6.12.117+deb12-cloud-amd64"));
        assert_eq!(
            b.module_errors,
            [("cls_bpf".to_string(), "insmod: can't insert".to_string())]
        );
        assert_eq!(b.fact("kprobe_pmu"), Some(true));
        assert_eq!(b.fact("nothing"), None);
        assert_eq!(
            b.checks["fentry"],
            "attaches (tcp_sendmsg, tcp_cleanup_rbuf)"
        );
        assert_eq!(b.checks["tracepoint"], "cannot load: tp_tcp_send: verifier");
        assert_eq!(b.tests[&("fentry".into(), "t1".into())], (0, 13.9));
        assert_eq!(b.tests[&("fentry".into(), "t2".into())], (101, 3.0));
        assert_eq!(b.running, Some(("fentry".into(), "t3".into())));
        assert_eq!(b.done, None);
        assert_eq!(b.excerpt("fentry", "t2").unwrap(), "thread panicked");
    }

    fn kernel(config: &str) -> Kernel {
        Kernel {
            series: "6.x",
            package: "linux-image-test".into(),
            release: "6.x".into(),
            vmlinuz: PathBuf::new(),
            config: kernel::Config::parse(config),
            modules_dir: PathBuf::new(),
            origin: "test".into(),
        }
    }

    #[test]
    fn classifies_cells() {
        let mut b = BootLog::parse(LOG);
        b.module_errors.clear();
        b.stopped = Some("VM killed".into());
        let k = kernel("CONFIG_KPROBES=y\nCONFIG_BPF_JIT=y\n");
        let tests: Vec<String> = ["t1", "t2", "t3", "t4"].map(String::from).to_vec();
        let rows = classify(&k, &b, None, &["fentry", "kprobe", "tracepoint"], &tests);
        let get = |form: &str, t: &str| {
            rows.iter()
                .find(|r| r.form == form && r.test == t)
                .unwrap()
                .outcome
                .clone()
        };
        assert_eq!(get("fentry", "t1"), Outcome::Pass(13.9));
        assert!(matches!(get("fentry", "t2"), Outcome::Fail(w) if w.contains("exit 101")));
        assert!(matches!(get("fentry", "t3"), Outcome::Fail(w) if w.contains("did not finish")));
        assert!(matches!(get("fentry", "t4"), Outcome::Fail(w) if w.contains("not run")));
        // kprobe: no check line at all (the VM died before).
        assert!(matches!(get("kprobe", "t1"), Outcome::Fail(w) if w.contains("no check-kernel")));
        // tracepoint: does not load, and the kernel has no send tracepoint: unsupported.
        assert!(
            matches!(get("tracepoint", "t1"), Outcome::Unsupported(w) if w.contains("sock_send_length"))
        );

        // The same refusal on a kernel that has the tracepoint is enforcer's failure.
        b.facts.insert("tracepoint:sock_send_length".into(), true);
        let rows = classify(&k, &b, None, &["tracepoint"], &tests);
        assert!(matches!(&rows[0].outcome, Outcome::Fail(w) if w.contains("check-kernel says")));

        // A module that did not load fails every cell.
        let b = BootLog::parse(LOG);
        let rows = classify(&k, &b, None, &["fentry"], &tests);
        assert!(
            rows.iter()
                .all(|r| matches!(&r.outcome, Outcome::Fail(w) if w.contains("cls_bpf")))
        );
    }

    #[test]
    fn kernel_support_from_config_and_facts() {
        let b = BootLog::default();
        let none = kernel("");
        assert!(
            kernel_lacks("kprobe", &none.config, &b)
                .unwrap()
                .contains("CONFIG_KPROBES")
        );
        assert!(
            kernel_lacks("fentry", &none.config, &b)
                .unwrap()
                .contains("CONFIG_BPF_JIT")
        );
        assert_eq!(kernel_lacks("tracepoint", &none.config, &b), None);
        let full = kernel(
            "CONFIG_KPROBES=y\nCONFIG_BPF_JIT=y\nCONFIG_FUNCTION_TRACER=y\n\
             CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y\n",
        );
        assert_eq!(kernel_lacks("kprobe", &full.config, &b), None);
        assert_eq!(kernel_lacks("fentry", &full.config, &b), None);
    }

    #[test]
    fn finds_the_test_executable() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"enforcer_tests","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"enforce","kind":["test"]},"executable":"/t/debug/deps/enforce-abc"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executable(json, "enforce"),
            Some(PathBuf::from("/t/debug/deps/enforce-abc"))
        );
        assert_eq!(test_executable(json, "lifecycle"), None);
    }

    #[test]
    fn report_has_every_cell() {
        let rows = vec![
            Row {
                kernel: "6.1".into(),
                form: "kprobe",
                test: "t1".into(),
                outcome: Outcome::Pass(12.0),
            },
            Row {
                kernel: "6.1".into(),
                form: "tracepoint",
                test: "t1".into(),
                outcome: Outcome::Unsupported("no tp | x".into()),
            },
            Row {
                kernel: "6.12".into(),
                form: "fentry",
                test: "t1".into(),
                outcome: Outcome::Fail("boom".into()),
            },
        ];
        let r = report(&[], &rows, Duration::from_secs(5));
        assert!(r.contains("1 passed, 1 failed, 1 unsupported"));
        assert!(r.contains("| 6.1 | kprobe | t1 | pass | 12.0 s |"));
        assert!(r.contains("| 6.1 | tracepoint | t1 | unsupported | no tp \\| x |"));
        assert!(r.contains("| 6.12 | fentry | t1 | **FAIL** | boom |"));
    }
}
