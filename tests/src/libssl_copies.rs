//! Fresh copies of the system's libssl (new files the agent has never seen) and the small C
//! client that loads one through `LD_LIBRARY_PATH` (tests/programs/newlib-client).

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{Agent, Cert, NetNs, Server, cmd, require_root, sh};

const CLIENT_C: &str = include_str!("../programs/newlib-client/client.c");

/// Where a test of fresh copies runs: the system's libssl, and an `openssl s_server -www` peer
/// in a new network namespace. Fields drop in order: the server first, the namespace last.
pub struct Site {
    pub www: Server,
    pub cert: Cert,
    pub ns: NetNs,
    pub peer: IpAddr,
    /// [`system_libssl`], what the copies are made from.
    pub libssl: PathBuf,
}

impl Site {
    /// Checks for root, finds the system's libssl, makes the namespace and starts the `www`
    /// peer at its IPv4 address on `port`.
    pub fn new(port: u16) -> Site {
        require_root();
        let libssl = system_libssl();
        let ns = NetNs::new();
        let peer = IpAddr::V4(ns.peer_v4);
        let cert = Cert::new(&[peer]);
        let www = Server::www(&ns, peer, port, &cert);
        Site {
            www,
            cert,
            ns,
            peer,
            libssl,
        }
    }

    /// An agent on the namespace under `policy` (with `extra` arguments) that watches for new
    /// library files (`new_files: pause` in its `ready` event, which it returns), ready within
    /// `ready`.
    pub fn watching_agent(&self, policy: &str, extra: &[&str], ready: Duration) -> (Agent, Value) {
        let (agent, event) = Agent::ready_with_policy(&self.ns, policy, extra, ready);
        assert_eq!(
            event["new_files"],
            "pause",
            "the agent must watch for new library files: {event}\n{}",
            agent.stderr()
        );
        (agent, event)
    }
}

/// The system's `libssl.so.3` (what `-lssl` links against).
pub fn system_libssl() -> PathBuf {
    let listed = sh(&mut cmd("/sbin/ldconfig", ["-p"]));
    let from_cache = listed
        .lines()
        .filter(|l| l.trim_start().starts_with("libssl.so.3 ") && l.contains("x86-64"))
        .filter_map(|l| l.rsplit("=> ").next())
        .map(|p| PathBuf::from(p.trim()))
        .find(|p| p.is_file());
    let path = from_cache
        .or_else(|| {
            [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib64",
                "/lib64",
                "/usr/lib",
            ]
            .iter()
            .map(|d| Path::new(d).join("libssl.so.3"))
            .find(|p| p.is_file())
        })
        .expect("no libssl.so.3 on this host (install libssl3; `cargo xtask setup`)");
    fs::canonicalize(path).expect("libssl.so.3 resolves")
}

/// A directory holding a fresh copy of libssl named `libssl.so.3` (a new file: new inode,
/// never seen by the agent). Removed on drop.
pub fn fresh_copy(prefix: &str, libssl: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    fs::copy(libssl, dir.path().join("libssl.so.3")).expect("copy libssl");
    dir
}

/// The copy's real path (what the agent reports).
pub fn copy_path(dir: &tempfile::TempDir) -> String {
    fs::canonicalize(dir.path().join("libssl.so.3"))
        .expect("copy exists")
        .display()
        .to_string()
}

/// Compiles the client into `dir`; panics with gcc's message (and the fix) if it cannot.
pub fn build_client(dir: &Path) -> PathBuf {
    let src = dir.join("tls_client.c");
    let bin = dir.join("tls_client");
    if let Some(prebuilt) = crate::programs::prebuilt("newlib-client", &bin) {
        return prebuilt;
    }
    fs::write(&src, CLIENT_C).expect("write client source");
    let out = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .args(["-lssl", "-lcrypto"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc ({e}): `cargo xtask setup` installs it"));
    assert!(
        out.status.success(),
        "gcc failed (libssl-dev missing? `cargo xtask setup` installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The value of `key=` in the client's output.
pub fn field(stdout: &str, key: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
}
