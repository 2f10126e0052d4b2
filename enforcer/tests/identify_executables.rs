//! Go binaries built here from Debian's `golang-go` are identified as the `go` family from their
//! own function table, stripped or not, with the Go version of the toolchain and probe points on
//! the entry (after the stack check) and on every return instruction of crypto/tls's functions.
//! Statically linked OpenSSL is identified from `.symtab`, also with prefixed symbol names
//! (`aws_lc_0_28_0_SSL_write`, as aws-lc-sys names them).

use std::path::{Path, PathBuf};
use std::process::Command;

use enforcer::libraries;

fn go_version() -> String {
    let out = Command::new("go")
        .args(["env", "GOVERSION"])
        .output()
        .expect("`go` must be installed (cargo xtask setup installs golang-go)");
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    v.strip_prefix("go").unwrap_or(&v).to_owned()
}

/// Builds tests/programs/go-tls-client into `dir` offline, with `ldflags`.
fn build_go(dir: &Path, name: &str, ldflags: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/programs/go-tls-client");
    let out = dir.join(name);
    let status = Command::new("go")
        .current_dir(&src)
        .args(["build", "-trimpath", &format!("-ldflags={ldflags}"), "-o"])
        .arg(&out)
        .arg(".")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .status()
        .expect("go build runs");
    assert!(status.success(), "go build {name} failed");
    out
}

#[test]
fn go_binaries_are_identified_stripped_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let version = go_version();
    for (name, ldflags) in [("plain", ""), ("stripped", "-s -w")] {
        let exe = build_go(dir.path(), name, ldflags);
        let id = libraries::identify(&exe)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: not identified"));
        assert_eq!(id.family.name(), "go", "{name}");
        assert_eq!(
            id.identity.version.as_deref(),
            Some(version.as_str()),
            "{name}"
        );
        let symbols: Vec<&str> = id.probes.iter().map(|p| p.symbol.as_str()).collect();
        assert_eq!(
            symbols,
            [
                "crypto/tls.(*Conn).Write",
                "crypto/tls.(*Conn).Read",
                "crypto/tls.(*Conn).handshakeContext"
            ],
            "{name}"
        );
        let bytes = std::fs::read(&exe).unwrap();
        for p in &id.probes {
            assert!(p.is_go(), "{name} {}: no return probes", p.symbol);
            for &r in &p.return_offsets {
                assert_eq!(
                    bytes[r as usize], 0xc3,
                    "{name} {}: not a RET at {r:#x}",
                    p.symbol
                );
            }
        }
    }
}

/// Links tests/programs/static-tls-client against Debian's libssl.a and libcrypto.a into `dir`,
/// and a copy whose symbols are renamed the way aws-lc-sys prefixes them. Returns both paths.
pub fn build_static(dir: &Path) -> (PathBuf, PathBuf) {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/programs/static-tls-client/client.c");
    let plain = dir.join("static-openssl");
    let lib = "/usr/lib/x86_64-linux-gnu";
    let status = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&plain)
        .arg(&src)
        .arg(format!("{lib}/libssl.a"))
        .arg(format!("{lib}/libcrypto.a"))
        .args(["-lpthread", "-ldl"])
        .status()
        .expect("cc runs (cargo xtask setup installs libssl-dev)");
    assert!(status.success(), "linking the static client failed");
    // Every defined symbol of .symtab, renamed `aws_lc_0_28_0_NAME` (.dynsym is left alone: the
    // program still runs).
    let nm = Command::new("nm")
        .arg("--defined-only")
        .arg(&plain)
        .output()
        .expect("nm runs");
    // Local symbols may repeat (one per object file): each name once.
    let mut names = std::collections::BTreeSet::new();
    for line in String::from_utf8_lossy(&nm.stdout).lines() {
        let mut f = line.split_whitespace().skip(1);
        if let (Some(kind), Some(name)) = (f.next(), f.next())
            && "TtDdBbRr".contains(kind)
            && !name.starts_with('_')
            && !name.contains('@')
            && name != "main"
        {
            names.insert(name.to_owned());
        }
    }
    let map_file = dir.join("prefix.map");
    let map: String = names
        .iter()
        .map(|n| format!("{n} aws_lc_0_28_0_{n}\n"))
        .collect();
    std::fs::write(&map_file, map).unwrap();
    let prefixed = dir.join("static-prefixed");
    let status = Command::new("objcopy")
        .arg(format!("--redefine-syms={}", map_file.display()))
        .arg(&plain)
        .arg(&prefixed)
        .status()
        .expect("objcopy runs");
    assert!(status.success(), "objcopy failed");
    (plain, prefixed)
}

#[test]
fn static_openssl_is_identified_with_or_without_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, prefixed) = build_static(dir.path());
    for exe in [&plain, &prefixed] {
        let id = libraries::identify(exe)
            .unwrap_or_else(|e| panic!("{}: {e}", exe.display()))
            .unwrap_or_else(|| panic!("{}: not identified", exe.display()));
        assert_eq!(id.family.name(), "openssl", "{}", exe.display());
        let symbols: Vec<&str> = id.probes.iter().map(|p| p.symbol.as_str()).collect();
        for s in ["SSL_write", "SSL_read", "SSL_connect"] {
            assert!(
                symbols.contains(&s),
                "{}: {s} not probed: {symbols:?}",
                exe.display()
            );
        }
        assert!(id.probes.iter().all(|p| !p.is_go()));
    }
    // The same functions, at the same places.
    let offsets = |exe: &Path| {
        let mut o: Vec<(String, u64)> = libraries::identify(exe)
            .unwrap()
            .unwrap()
            .probes
            .into_iter()
            .map(|p| (p.symbol, p.file_offset))
            .collect();
        o.sort();
        o
    };
    assert_eq!(offsets(&plain), offsets(&prefixed));
}
