//! `cargo xtask test`: build, unit tests, integration tests (one at a time), rustfmt, clippy.
//! Every step runs even when an earlier one failed; the exit code and the closing
//! `xtask: N passed, N failed` line cover them all.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use crate::{cargo, require_root, root, setup, target_dir};

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Steps that failed without a failing test to show for it (compile error, fmt, clippy).
    failed_steps: Vec<String>,
}

pub fn test() -> ExitCode {
    if let Err(e) = require_root("test").and_then(|()| setup::setup()) {
        eprintln!("xtask: error: {e:#}");
        println!("xtask: 0 passed, 1 failed");
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let bin = target_dir().join("debug/enforcer");
    let bin = bin.to_str().expect("target dir is UTF-8");
    let mut t = Tally::default();

    t.step("build", || cargo(&["build", "-p", "enforcer"]).is_ok());
    let unit = [
        "test",
        "--workspace",
        "--exclude",
        "enforcer-ebpf",
        "--exclude",
        "enforcer-tests",
    ];
    t.cargo_test(
        "unit tests",
        &[&unit[..], &["--no-fail-fast"]].concat(),
        bin,
    );
    // The integration tests share the kernel's uprobes and hooks: one at a time.
    let integ = [
        "test",
        "-p",
        "enforcer-tests",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ];
    t.cargo_test("integration tests", &integ, bin);
    // Benchmarks still run (each figure once, small counts; never judged on numbers).
    t.step("bench --quick", || {
        crate::bench::run(crate::bench::Options {
            quick: true,
            only: vec![],
            out: None,
            enforcer: Some(target_dir().join("debug/enforcer")),
        })
        .map_err(|e| eprintln!("xtask: bench --quick: {e:#}"))
        .is_ok()
    });
    // Debian's 6.1 and 6.12 kernels in QEMU, every hook form (docs/kernel-support.md).
    println!("xtask: === vm kernel matrix");
    match crate::vm::ci() {
        Ok(c) => {
            t.passed += c.passed;
            t.failed += c.failed;
            t.ignored += c.unsupported;
        }
        Err(e) => {
            eprintln!("xtask: vm kernel matrix: {e:#}");
            t.failed_steps.push("vm kernel matrix".into());
        }
    }
    // Each cargo-fuzz target for a short, bounded time (docs/fuzzing.md).
    t.step("fuzz smoke", || {
        crate::fuzz::smoke()
            .inspect_err(|e| eprintln!("xtask: fuzz smoke: {e:#}"))
            .is_ok()
    });
    t.step("rustfmt", || {
        cargo(&["fmt", "--all", "--", "--check"]).is_ok()
    });
    let clippy = [
        "clippy",
        "--workspace",
        "--exclude",
        "enforcer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    t.step("clippy", || cargo(&clippy).is_ok());
    // The eBPF crate is linted for its real target (nightly, build-std), like it is built.
    let clippy_ebpf = [
        "+nightly",
        "clippy",
        "--manifest-path",
        "enforcer-ebpf/Cargo.toml",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ];
    t.step("clippy (eBPF)", || cargo(&clippy_ebpf).is_ok());

    for s in &t.failed_steps {
        println!("xtask: step failed: {s}");
    }
    println!(
        "xtask: {} ignored, {:.0?} (tests, rustfmt, clippy)",
        t.ignored,
        started.elapsed()
    );
    let failed = t.failed + t.failed_steps.len() as u64;
    println!("xtask: {} passed, {} failed", t.passed, failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

impl Tally {
    fn step(&mut self, name: &str, f: impl FnOnce() -> bool) {
        println!("xtask: === {name}");
        if !f() {
            self.failed_steps.push(name.to_string());
        }
    }

    /// Runs `cargo <args>` with ENFORCER_BIN set, echoing its stdout while summing the
    /// `test result:` lines of every test binary.
    fn cargo_test(&mut self, name: &str, args: &[&str], enforcer_bin: &str) {
        println!("xtask: === {name}");
        let child = Command::new("cargo")
            .args(args)
            .current_dir(root())
            .env("ENFORCER_BIN", enforcer_bin)
            .stdout(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("xtask: cannot run cargo: {e}");
                self.failed_steps.push(name.to_string());
                return;
            }
        };
        let failed_before = self.failed;
        let reader = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut out = std::io::stdout();
        for line in reader.split(b'\n').map_while(Result::ok) {
            let _ = out.write_all(&line);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            if let Some((p, f, i)) = parse_result(&String::from_utf8_lossy(&line)) {
                self.passed += p;
                self.failed += f;
                self.ignored += i;
            }
        }
        let ok = child.wait().is_ok_and(|s| s.success());
        if !ok && self.failed == failed_before {
            self.failed_steps.push(name.to_string());
        }
    }
}

/// `test result: ok. 3 passed; 1 failed; 2 ignored; 0 measured; ...` -> (3, 1, 2).
fn parse_result(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let (mut p, mut f, mut i) = (None, None, None);
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => p = Some(n),
            "failed" => f = Some(n),
            "ignored" => i = Some(n),
            _ => {}
        }
    }
    Some((p?, f?, i.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::parse_result;

    #[test]
    fn parses_libtest_summaries() {
        let ok = "test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; \
                  finished in 0.01s";
        assert_eq!(parse_result(ok), Some((12, 0, 3)));
        let bad = "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(parse_result(bad), Some((1, 2, 0)));
        assert_eq!(parse_result("running 3 tests"), None);
        assert_eq!(parse_result("test foo ... ok"), None);
    }
}
