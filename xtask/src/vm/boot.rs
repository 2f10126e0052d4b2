//! One kernel's run: its initramfs (the shared part plus its modules and a plan), QEMU until
//! it powers off or the deadline passes, progress from the serial log, and the rows it gave.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    BOOT_TIMEOUT_S, Outcome, Row, TEST_TIMEOUT_S,
    boot_log::BootLog,
    classify::classify,
    initramfs::Image,
    kernel::{self, Kernel},
};
use crate::{
    cross::Arch,
    progress::{self, say},
    target_dir,
};

/// What one kernel's boot gave, for the report.
pub struct KernelRun {
    pub series: &'static str,
    pub package: String,
    pub origin: String,
    pub config: Vec<(String, String)>,
    pub boot_s: Option<f64>,
    pub wall_s: f64,
    pub checks: BTreeMap<String, String>,
    pub log: PathBuf,
    pub error: Option<String>,
}

/// Boots `k` with the image plus its modules and a plan; never fails, a broken boot is a row.
pub fn boot_kernel(
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
            .chain([kernel::console(k.arch).0])
            .chain(kernel::FORM_OPTIONS.iter().copied())
            .map(|o| (o.to_string(), k.config.show(o)))
            .collect(),
        boot_s: None,
        wall_s: 0.0,
        checks: BTreeMap::new(),
        log: log.to_path_buf(),
        error: None,
    };
    say!(
        "vm: {}: {} ({}, {})",
        k.series,
        k.package,
        k.release,
        k.origin
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
        say!(
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
            say!("vm: {}: {e:#}", k.series);
            BootLog::default()
        }
    };
    run.boot_s = parsed.boot_s;
    run.checks = parsed.checks.clone();
    if run.error.is_none() {
        for (m, err) in &parsed.module_errors {
            say!("vm: {}: insmod {m} failed: {err}", k.series);
        }
    }
    let rows = classify(k, &parsed, run.error.as_deref(), forms, tests);
    for r in &rows {
        if let Outcome::Fail(why) = &r.outcome
            && let Some(excerpt) = parsed.excerpt(r.form, &r.test)
        {
            say!(
                "vm: --- {} {} {}: {why}; last lines of its output:\n{excerpt}",
                r.kernel,
                r.form,
                r.test
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
    // arm64: the `virt` machine (PL011 console, ttyAMA0) and `-cpu max` under TCG (KVM only on
    // an arm64 host). Debian's arm64 vmlinuz is a plain `Image` (not compressed), which QEMU
    // boots directly with -kernel.
    let (qemu, machine) = match k.arch {
        Arch::X86_64 => ("qemu-system-x86_64", "q35"),
        Arch::Aarch64 => ("qemu-system-aarch64", "virt"),
    };
    let (_, console) = kernel::console(k.arch);
    let mut cmd = Command::new(qemu);
    cmd.args(["-nodefaults", "-no-user-config", "-machine", machine])
        .args(["-accel", accel, "-cpu", "max", "-smp", "2", "-m", "2G"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console={console} panic=-1 quiet mitigations=off"))
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
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
        .with_context(|| format!("cannot run {qemu}: run `cargo xtask setup`"))?;
    say!(
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
    say!("vm: {}: VM done in {wall:.1} s", k.series);
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
            // Not a line of its own: what the bar (on a terminal) says is running.
            Some("test-start") if w.len() >= 3 => {
                progress::set_message(format!("{series} {} {}", w[1], w[2]))
            }
            Some("boot") => say!(
                "vm: {series}: /init running at {} s (uname -r {})",
                w.get(1).unwrap_or(&"?"),
                w.get(2).unwrap_or(&"?")
            ),
            Some("check") => say!("vm: {series}: check-kernel: {}", w[1..].join(" ")),
            Some("refused") => say!("vm: {series}: check-kernel: {msg}"),
            Some("test") if w.len() >= 5 => {
                say!(
                    "vm: {series}: {:<10} {} ... {} ({} s)",
                    w[1],
                    w[2],
                    if w[3] == "0" {
                        "ok".to_string()
                    } else {
                        format!("FAILED (exit {})", w[3])
                    },
                    w[4]
                );
                progress::step_done();
            }
            Some("module") if w.get(2) != Some(&"ok") => say!("vm: {series}: {msg}"),
            Some("done") => say!("vm: {series}: all done at {} s", w.get(1).unwrap_or(&"?")),
            _ => {}
        }
    }
}
