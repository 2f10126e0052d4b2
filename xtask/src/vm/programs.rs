//! The client programs some integration tests build at test time (Go's `crypto/tls` client with
//! `go`, the new-library watcher's client and the stripped static OpenSSL server with `gcc`),
//! built here on the host for the VMs, which have no compiler. The tests take them from
//! `ENFORCER_TEST_PREBUILT` (`enforcer_tests::programs::prebuilt`); `vm/init` points it at
//! `/vm/programs`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{root, target_dir};

/// Builds every program into `target/vm/programs/`; returns (name, path) of each, and the Go
/// version as `go-version`.
pub fn build() -> Result<Vec<(String, PathBuf)>> {
    let dir = target_dir().join("vm/programs");
    fs::create_dir_all(&dir)?;
    let mut out = vec![];
    // The same flags as `enforcer_tests::programs::build_go`.
    for (name, ldflags) in [("go-tls-client", ""), ("go-tls-client-stripped", "-s -w")] {
        let exe = dir.join(name);
        run(Command::new("go")
            .current_dir(root().join("tests/programs/go-tls-client"))
            .args(["build", "-trimpath", &format!("-ldflags={ldflags}"), "-o"])
            .arg(&exe)
            .arg(".")
            .env("GOCACHE", dir.join("gocache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", "0"))?;
        out.push((name.to_string(), exe));
    }
    let version = Command::new("go")
        .args(["env", "GOVERSION"])
        .output()
        .context("cannot run go")?;
    let version = String::from_utf8_lossy(&version.stdout);
    let file = dir.join("go-version");
    fs::write(&file, version.trim().trim_start_matches("go"))?;
    out.push(("go-version".to_string(), file));

    // The same as tests/src/libssl_copies.rs's `build_client`.
    let exe = dir.join("newlib-client");
    run(Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(root().join("tests/programs/newlib-client/client.c"))
        .args(["-lssl", "-lcrypto"]))?;
    out.push(("newlib-client".to_string(), exe));

    // The same as `enforcer_tests::programs::build_hidden_server`: static, then stripped.
    let exe = dir.join("hidden-tls-server");
    run(Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&exe)
        .arg(root().join("tests/programs/hidden-tls-server/server.c"))
        .args(["-static", "-l:libssl.a", "-l:libcrypto.a", "-lpthread"]))?;
    run(Command::new("strip").arg("--strip-all").arg(&exe))?;
    out.push(("hidden-tls-server".to_string(), exe));
    Ok(out)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Where a program goes in the VM.
pub fn vm_path(name: &str) -> PathBuf {
    Path::new("/vm/programs").join(name)
}
