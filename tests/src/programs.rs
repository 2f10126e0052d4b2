//! Test programs built at test time from `tests/programs/`: a Go HTTPS client (Debian's
//! `golang-go`, offline, standard library only), a C client linked statically against
//! Debian's `libssl.a` / `libcrypto.a` (plus a copy whose symbols carry aws-lc-sys's prefix), and
//! the C clients and server of the content-bound attribution tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cmd, sh};

/// Where `cargo xtask vm` puts the test programs it built on the host: the VMs have no `go` or
/// `gcc`. Unset on the host, where every test builds its own.
pub const PREBUILT_ENV: &str = "ENFORCER_TEST_PREBUILT";

/// `$ENFORCER_TEST_PREBUILT/<name>` copied to `dest` (the tests name their programs, and the
/// agent reports them by path and name), if that directory is set. Panics if it is set but lacks
/// the program: the VM image is then incomplete.
pub fn prebuilt(name: &str, dest: &Path) -> Option<PathBuf> {
    let dir = std::env::var_os(PREBUILT_ENV)?;
    let src = Path::new(&dir).join(name);
    std::fs::copy(&src, dest)
        .unwrap_or_else(|e| panic!("{PREBUILT_ENV} is set but {}: {e}", src.display()));
    Some(dest.to_path_buf())
}

/// `1.19.8` for Debian bookworm's `go` (from the prebuilt programs' `go-version` in a VM).
pub fn go_version() -> String {
    if let Some(dir) = std::env::var_os(PREBUILT_ENV) {
        let file = Path::new(&dir).join("go-version");
        let v = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{PREBUILT_ENV}: {}: {e}", file.display()));
        return v.trim().to_owned();
    }
    let v = sh(&mut cmd("go", ["env", "GOVERSION"]));
    v.trim().trim_start_matches("go").to_owned()
}

/// Builds tests/programs/go-tls-client as `dir/name` with `ldflags`, offline: no module
/// download, build cache in `dir`.
pub fn build_go(dir: &Path, name: &str, ldflags: &str) -> PathBuf {
    let src = crate::workspace().join("tests/programs/go-tls-client");
    let out = dir.join(name);
    if std::env::var_os(PREBUILT_ENV).is_some() {
        // Prebuilt: `go-tls-client` (no ldflags) and `go-tls-client-stripped` (`-s -w`).
        let variant = match ldflags {
            "" => "go-tls-client",
            "-s -w" => "go-tls-client-stripped",
            other => {
                panic!("no prebuilt Go client for ldflags {other:?} (xtask/src/vm/programs.rs)")
            }
        };
        return prebuilt(variant, &out).expect("the directory is set");
    }
    let mut go = Command::new("go");
    go.current_dir(&src)
        .args(["build", "-trimpath", &format!("-ldflags={ldflags}"), "-o"])
        .arg(&out)
        .arg(".")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0");
    sh(&mut go);
    out
}

/// Links tests/programs/static-tls-client against libssl.a and libcrypto.a as `dir/name`.
pub fn build_static_openssl(dir: &Path, name: &str) -> PathBuf {
    let src = crate::workspace().join("tests/programs/static-tls-client/client.c");
    let out = dir.join(name);
    let lib = "/usr/lib/x86_64-linux-gnu";
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .arg(format!("{lib}/libssl.a"))
        .arg(format!("{lib}/libcrypto.a"))
        .args(["-lpthread", "-ldl"]);
    sh(&mut cc);
    out
}

/// A copy of `exe` as `dir/name` whose defined `.symtab` symbols are renamed
/// `aws_lc_0_28_0_NAME`, as aws-lc-sys (under aws-lc-rs) names every symbol it defines.
pub fn with_aws_lc_prefix(exe: &Path, dir: &Path, name: &str) -> PathBuf {
    let mut nm = Command::new("nm");
    nm.arg("--defined-only").arg(exe);
    // Local symbols may repeat (one per object file): each name once.
    let mut names = std::collections::BTreeSet::new();
    for line in sh(&mut nm).lines() {
        let mut f = line.split_whitespace().skip(1);
        if let (Some(kind), Some(sym)) = (f.next(), f.next())
            && "TtDdBbRr".contains(kind)
            && !sym.starts_with('_')
            && !sym.contains('@')
            && sym != "main"
        {
            names.insert(sym.to_owned());
        }
    }
    let map_file = dir.join(format!("{name}.map"));
    let map: String = names
        .iter()
        .map(|n| format!("{n} aws_lc_0_28_0_{n}\n"))
        .collect();
    std::fs::write(&map_file, map).expect("write the rename map");
    let out = dir.join(name);
    let mut objcopy = Command::new("objcopy");
    objcopy
        .arg(format!("--redefine-syms={}", map_file.display()))
        .arg(exe)
        .arg(&out);
    sh(&mut objcopy);
    out
}

/// Builds tests/programs/uring-tls-client (OpenSSL over memory BIOs, socket writes by
/// io_uring; Debian's `liburing-dev`) as `dir/uring-tls-client`.
pub fn build_uring_client(dir: &Path) -> PathBuf {
    build_c(dir, "uring-tls-client", &["-luring", "-lssl", "-lcrypto"])
}

/// Builds tests/programs/nested-tls-client (a GnuTLS client whose records are sent from inside
/// an OpenSSL call; Debian's `libgnutls28-dev`) as `dir/nested-tls-client`.
pub fn build_nested_client(dir: &Path) -> PathBuf {
    build_c(dir, "nested-tls-client", &["-lgnutls", "-lssl", "-lcrypto"])
}

/// Builds tests/programs/launder-random-client (OpenSSL's own ClientHello sent with a random
/// the program asked libcrypto's `RAND_bytes` for) as `dir/launder-random-client`.
pub fn build_launder_client(dir: &Path) -> PathBuf {
    build_c(dir, "launder-random-client", &["-lssl", "-lcrypto"])
}

/// Builds tests/programs/hidden-tls-server, an OpenSSL server linked statically against
/// Debian's `libssl.a` and stripped (no symbol left for enforcer to find), as
/// `dir/hidden-tls-server`.
pub fn build_hidden_server(dir: &Path) -> PathBuf {
    if let Some(out) = prebuilt("hidden-tls-server", &dir.join("hidden-tls-server")) {
        return out;
    }
    let out = build_source(
        dir,
        "hidden-tls-server",
        "server.c",
        &["-static", "-l:libssl.a", "-l:libcrypto.a", "-lpthread"],
    );
    sh(Command::new("strip").arg("--strip-all").arg(&out));
    out
}

/// Builds tests/programs/hello-flood (bare ClientHello records on fresh connections, no TLS
/// library; and a server that accepts and closes) as `dir/hello-flood`, readable and runnable
/// by every user.
pub fn build_hello_flood(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let out = build_c(dir, "hello-flood", &[]);
    for path in [dir, out.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    }
    out
}

/// Builds tests/programs/denied-loop-client (one GnuTLS process connecting every INTERVAL ms,
/// timing each handshake from the TCP connection on) as `dir/denied-loop-client`.
pub fn build_denied_loop_client(dir: &Path) -> PathBuf {
    build_c(dir, "denied-loop-client", &["-lgnutls"])
}

fn build_c(dir: &Path, name: &str, libs: &[&str]) -> PathBuf {
    build_source(dir, name, "client.c", libs)
}

fn build_source(dir: &Path, name: &str, file: &str, libs: &[&str]) -> PathBuf {
    let src = crate::workspace().join(format!("tests/programs/{name}/{file}"));
    let out = dir.join(name);
    let mut gcc = Command::new("gcc");
    gcc.args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .args(libs);
    sh(&mut gcc);
    out
}

/// A crypto provider of rustls, as tests/programs/rustls-client's features name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RustlsProvider {
    /// aws-lc-rs (aws-lc linked statically), built with rustc's default (legacy) mangling.
    AwsLcRs,
    /// ring, built with `-C symbol-mangling-version=v0`, so both manglings are covered.
    Ring,
}

impl RustlsProvider {
    pub fn feature(self) -> &'static str {
        match self {
            RustlsProvider::AwsLcRs => "aws-lc-rs",
            RustlsProvider::Ring => "ring",
        }
    }
}

/// Builds tests/programs/rustls-client from crates.io (its committed `Cargo.lock`, `--locked`)
/// with `provider`, plain (`release`) or with `strip = true` (`stripped`), and copies its client
/// to `dir/name` (a new file the watcher examines at `exec`). The build goes to
/// `target/rustls-client/<provider>`, kept between runs: aws-lc-sys takes minutes the first time.
pub fn build_rustls(dir: &Path, name: &str, provider: RustlsProvider, stripped: bool) -> PathBuf {
    build_rustls_program(dir, name, provider, stripped, "rustls-client")
}

/// As [`build_rustls`], for the server (`rustls-server ADDR PORT CERT KEY`).
pub fn build_rustls_server(
    dir: &Path,
    name: &str,
    provider: RustlsProvider,
    stripped: bool,
) -> PathBuf {
    build_rustls_program(dir, name, provider, stripped, "rustls-server")
}

fn build_rustls_program(
    dir: &Path,
    name: &str,
    provider: RustlsProvider,
    stripped: bool,
    program: &str,
) -> PathBuf {
    let src = crate::workspace().join("tests/programs/rustls-client");
    let target = crate::workspace()
        .join("target/rustls-client")
        .join(provider.feature());
    let profile = if stripped { "stripped" } else { "release" };
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&src)
        .args(["build", "--quiet", "--locked", "--profile", profile])
        .args(["--features", provider.feature(), "--target-dir"])
        .arg(&target);
    // The test's own cargo environment must not leak into this separate project.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
    ] {
        cargo.env_remove(var);
    }
    if provider == RustlsProvider::Ring {
        cargo.env("RUSTFLAGS", "-C symbol-mangling-version=v0");
    }
    sh(&mut cargo);
    let out = dir.join(name);
    std::fs::copy(target.join(profile).join(program), &out)
        .unwrap_or_else(|e| panic!("copy {program} to {}: {e}", out.display()));
    out
}

/// Builds tests/programs/wolfssl-client (Debian's `libwolfssl-dev`) as `dir/wolfssl-client`.
pub fn build_wolfssl_client(dir: &Path) -> PathBuf {
    build_c(dir, "wolfssl-client", &["-lwolfssl"])
}

/// Builds tests/programs/mbedtls-client (Debian's `libmbedtls-dev`) as `dir/mbedtls-client`.
pub fn build_mbedtls_client(dir: &Path) -> PathBuf {
    build_c(
        dir,
        "mbedtls-client",
        &["-lmbedtls", "-lmbedx509", "-lmbedcrypto"],
    )
}

/// Builds tests/programs/aws-lc-client from crates.io (aws-lc-sys with libssl; its committed
/// `Cargo.lock`, `--locked`) and copies it to `dir/name`. The build goes to
/// `target/aws-lc-client`, kept between runs: AWS-LC takes minutes the first time.
pub fn build_aws_lc_client(dir: &Path, name: &str) -> PathBuf {
    let src = crate::workspace().join("tests/programs/aws-lc-client");
    let target = crate::workspace().join("target/aws-lc-client");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&src)
        .args(["build", "--quiet", "--locked", "--release", "--target-dir"])
        .arg(&target);
    // The test's own cargo environment must not leak into this separate project.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
    ] {
        cargo.env_remove(var);
    }
    sh(&mut cargo);
    let out = dir.join(name);
    std::fs::copy(target.join("release/aws-lc-client"), &out)
        .unwrap_or_else(|e| panic!("copy aws-lc-client to {}: {e}", out.display()));
    out
}
