//! Go binaries built here from Debian's `golang-go` are identified as the `go` family from their
//! own function table, stripped or not, with the Go version of the toolchain and probe points on
//! the entry (after the stack check) and on every return instruction of crypto/tls's functions.
//! Statically linked OpenSSL is identified from `.symtab`, also with prefixed symbol names.

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
        assert_eq!(id.identity.version.as_deref(), Some(version.as_str()), "{name}");
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
                assert_eq!(bytes[r as usize], 0xc3, "{name} {}: not a RET at {r:#x}", p.symbol);
            }
        }
    }
}
