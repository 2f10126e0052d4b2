//! rustls: a client built here from crates.io (tests/programs/rustls-client) with each crypto
//! provider, aws-lc-rs (legacy mangling) and ring (v0 mangling), each plain and with
//! `strip = true`. Unstripped builds are identified from their `.symtab` (the catalog's Rust
//! paths, demangled); stripped builds keep no symbol and are not identified (docs/policy.md,
//! "rustls").

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use enforcer_tests::programs::{RustlsProvider, build_rustls};
use enforcer_tests::{Cert, require_root};
use serde_json::Value;

const REQUEST: &str = "GET / HTTP/1.0\r\n\r\n";

struct Client {
    exe: PathBuf,
    stripped: bool,
}

/// The four builds, as `dir/rl-<provider>[-strip]` (command names under 15 bytes).
fn clients(dir: &Path) -> Vec<Client> {
    let mut out = Vec::new();
    for (provider, tag) in [
        (RustlsProvider::AwsLcRs, "awslc"),
        (RustlsProvider::Ring, "ring"),
    ] {
        for stripped in [false, true] {
            let name = format!("rl-{tag}{}", if stripped { "-strip" } else { "" });
            let exe = build_rustls(dir, &name, provider, stripped);
            out.push(Client { exe, stripped });
        }
    }
    out
}

/// rustls' version in the client's Cargo.lock (what its panic paths name).
fn rustls_version() -> String {
    let lock = enforcer_tests::workspace().join("tests/programs/rustls-client/Cargo.lock");
    let text = std::fs::read_to_string(&lock).expect("read the client's Cargo.lock");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"rustls\"" {
            let v = lines.next().expect("a version line");
            return v
                .trim_start_matches("version = \"")
                .trim_end_matches('"')
                .to_owned();
        }
    }
    panic!("no rustls in {}", lock.display());
}

/// `enforcer libs --json` while the four clients wait for a ServerHello from a listener that never
/// answers: the unstripped ones are `rustls` with the crate's version and their session functions
/// probed; the stripped ones are not listed.
#[test]
fn unstripped_builds_are_identified_stripped_ones_are_not() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("enforcer-rustls-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let clients = clients(dir.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let cert = Cert::new(&[IpAddr::from([127, 0, 0, 1])]);
    let running: Vec<enforcer_tests::content::Background> = clients
        .iter()
        .map(|c| {
            let mut child = Command::new(&c.exe)
                .args(["127.0.0.1", &port.to_string(), REQUEST])
                .arg(cert.cert_path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start the client");
            // `from PORT` once connected: its executable is mapped by now.
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
                &mut line,
            )
            .expect("read the client's first line");
            assert!(line.starts_with("from "), "{line:?}");
            enforcer_tests::content::Background(child)
        })
        .collect();
    let text =
        enforcer_tests::sh(Command::new(enforcer_tests::enforcer_bin()).args(["libs", "--json"]));
    drop(running);
    let inventory: Value = serde_json::from_str(&text).expect("libs --json is JSON");
    let libs = inventory["libraries"].as_array().expect("a list");
    let version = rustls_version();
    for c in &clients {
        let name = c.exe.to_str().unwrap();
        let listed = libs.iter().find(|l| l["path"] == name);
        if c.stripped {
            assert!(
                listed.is_none(),
                "{name}: stripped, not identified: {listed:?}"
            );
            continue;
        }
        let lib = listed.unwrap_or_else(|| panic!("{name} is listed: {text}"));
        assert_eq!(lib["family"], "rustls", "{lib}");
        assert_eq!(lib["version"], version.as_str(), "{lib}");
        let symbols: Vec<&str> = lib["probes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["symbol"].as_str())
            .collect();
        assert!(
            symbols.contains(&"rustls::client::client_conn::connection::ClientConnection::new"),
            "{name}: the session function is probed: {symbols:?}"
        );
    }
}
