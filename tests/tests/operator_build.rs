//! A warm build prints no `warning:` line: the eBPF build's cargo output (`Compiling ...`,
//! `Finished ...`) is not forwarded as build-script warnings (enforcer/build.rs).
//!
//! The build script is made to run again (and with it the nested eBPF `cargo build`) by giving
//! `AYA_BUILD_SKIP`, which it watches, a value it has not had: anything but `1`/`true` builds.

use std::process::Command;

use enforcer_tests::workspace;

#[test]
fn warm_build_prints_no_warning_lines() {
    let value = format!("0-{}", std::process::id());
    let out = Command::new(env!("CARGO"))
        .args(["build", "-p", "enforcer", "--color", "never"])
        .current_dir(workspace())
        .env("AYA_BUILD_SKIP", &value)
        .output()
        .expect("run cargo build");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo build failed:\n{stderr}");
    assert!(
        stderr.contains("Compiling enforcer v"),
        "the build script did not run again (the test proves nothing):\n{stderr}"
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("warning"))
        .collect();
    assert!(warnings.is_empty(), "warning lines:\n{stderr}");
    // The nested build's output is kept, for `cargo build -vv` and for failures.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| workspace().join(d))
        .unwrap_or_else(|| workspace().join("target"));
    let logs = std::fs::read_dir(target.join("debug/build"))
        .expect("the target directory's debug/build")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("out/ebpf-build.log"))
        .filter(|p| p.is_file())
        .count();
    assert!(logs >= 1, "no ebpf-build.log");
}
