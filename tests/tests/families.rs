//! Real clients of every TLS family this host ships, each attributed to the right family and
//! version and allowed or dropped as a policy with version-range and path-glob rules says:
//! OpenSSL (`curl`, `openssl s_client`, Python `ssl`), GnuTLS (`gnutls-cli`), NSS (`tstclnt`),
//! and a copied-and-renamed libssl loaded by a process (Python `ctypes`, no `ssl` module).
//! Also `enforcer libs --json` (a process in another mount namespace included) and
//! `enforcer policy explain`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use enforcer_tests::{
    Agent, Cert, NetNs, Outcome, Server, cmd, enforcer_bin, require_root, run_with_timeout, sh,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";
/// Vendored copies live under this prefix, which the policy's path glob denies.
const VENDOR_PREFIX: &str = "enforcer-vendor-";

/// Allows the distribution's OpenSSL 3 by version range and NSS by family; GnuTLS only below
/// 3.7 (so 3.7.x falls to the default); vendored copies of anything are denied by path, which is
/// more specific than the version rule.
const POLICY: &str = "\
mode: enforce
default: deny
libraries:
  - family: openssl
    version: \">=3.0.9, <4\"
    action: allow
  - family: openssl
    action: deny
  - family: gnutls
    version: \"<3.7\"
    action: allow
  - family: nss
    action: allow
  - path: \"/tmp/enforcer-vendor-*/**\"
    action: deny
";

/// The upstream version of a Debian package: `2:3.87.1-1+deb12u4` → `3.87.1`.
fn upstream_version(package: &str) -> String {
    let v = sh(&mut cmd("dpkg-query", ["-W", "-f=${Version}", package]));
    let v = v.split_once(':').map_or(v.as_str(), |(_, r)| r);
    v.split(['-', '+', '~']).next().unwrap().to_owned()
}

/// Loads a copy of the system libssl under a new name with `ctypes` and, on a line on stdin,
/// connects to `host:port`, handshakes and writes `marker` through it. Exits 0 on success, 2 if
/// the handshake or the write fails.
const CTYPES_CLIENT: &str = r#"
import ctypes, socket, sys
lib = ctypes.CDLL(sys.argv[1])
P = ctypes.c_void_p
lib.TLS_client_method.restype = P
lib.SSL_CTX_new.restype = P; lib.SSL_CTX_new.argtypes = [P]
lib.SSL_new.restype = P; lib.SSL_new.argtypes = [P]
lib.SSL_set_fd.argtypes = [P, ctypes.c_int]
lib.SSL_connect.argtypes = [P]
lib.SSL_write.argtypes = [P, ctypes.c_char_p, ctypes.c_int]
print("loaded", flush=True)
go = sys.stdin.readline().split()
if not go:
    sys.exit(3)
host, port = go
s = socket.create_connection((host, int(port)), timeout=10)
ssl = lib.SSL_new(lib.SSL_CTX_new(lib.TLS_client_method()))
lib.SSL_set_fd(ssl, s.fileno())
if lib.SSL_connect(ssl) != 1:
    sys.exit(2)
marker = sys.argv[2].encode()
sys.exit(0 if lib.SSL_write(ssl, marker, len(marker)) == len(marker) else 2)
"#;

/// A process holding a renamed libssl copy, waiting for its go.
struct Vendored {
    child: Child,
    stdin: Option<ChildStdin>,
    _dir: tempfile::TempDir,
    lib: PathBuf,
}

impl Vendored {
    fn start(marker: &str) -> Vendored {
        let dir = tempfile::Builder::new()
            .prefix(VENDOR_PREFIX)
            .tempdir_in("/tmp")
            .expect("temp dir");
        let lib = dir.path().join("libvendortls.so.1");
        std::fs::copy(Path::new(LIBDIR).join("libssl.so.3"), &lib).expect("copy libssl");
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", CTYPES_CLIENT])
            .arg(&lib)
            .arg(marker)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line).expect("python3 says loaded");
        assert_eq!(line.trim(), "loaded", "the renamed libssl did not load");
        let stdin = child.stdin.take();
        Vendored {
            child,
            stdin,
            _dir: dir,
            lib,
        }
    }

    /// Tells it to connect; waits for it to exit (at most `CLIENT`). True if it succeeded.
    fn connect(&mut self, to: SocketAddr) -> bool {
        let mut stdin = self.stdin.take().expect("connect once");
        writeln!(stdin, "{} {}", to.ip(), to.port()).expect("write go");
        drop(stdin);
        let deadline = std::time::Instant::now() + CLIENT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the ctypes client hangs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vendored {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills and reaps a client on drop.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connection(agent: &mut Agent, comm: &str, remote: SocketAddr) -> Value {
    let comm = comm.to_owned();
    agent.wait_for(
        move |v| {
            v["type"] == "connection"
                && v["comm"] == comm.as_str()
                && v["remote"]["addr"] == remote.ip().to_string().as_str()
                && v["remote"]["port"] == remote.port()
        },
        EVENT,
    )
}

fn assert_library(event: &Value, family: &str, version: &str, verdict: &str) {
    assert_eq!(event["library"]["family"], family, "{event}");
    assert_eq!(event["library"]["version"], version, "{event}");
    assert_eq!(event["verdict"], verdict, "{event}");
}

fn python_ssl(to: SocketAddr, line: &str) -> Outcome {
    let script = "import socket, ssl, sys\nctx = ssl.create_default_context()\nctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\nwith socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:\n    with ctx.wrap_socket(s) as t:\n        t.sendall(sys.argv[3].encode())\n";
    let args = [
        "-c".to_owned(),
        script.to_owned(),
        to.ip().to_string(),
        to.port().to_string(),
        line.to_owned(),
    ];
    run_with_timeout(&mut cmd("/usr/bin/python3", args), b"", CLIENT)
}

#[test]
fn every_family_attributed_with_version_and_decided_by_policy() {
    require_root();
    let openssl = upstream_version("libssl3");
    let gnutls = upstream_version("libgnutls30");
    let nss = upstream_version("libnss3");
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let www = Server::www(&ns, peer, 8443, &cert);
    let plain = |port| Server::plain(&ns, peer, port, &cert);
    let (s_client_srv, py_srv, gnutls_srv, nss_srv, vendor_srv) = (
        plain(9441),
        plain(9442),
        plain(9443),
        plain(9445),
        plain(9446),
    );
    let vendor_marker = "VENDORED-MUST-NOT-ARRIVE";
    // Running before the agent starts, so the agent's scan finds the renamed copy.
    let mut vendored = Vendored::start(vendor_marker);
    let mut agent = Agent::with_policy(&ns.host_if, POLICY, &[]);
    agent.wait_ready(READY);

    // OpenSSL 3.0.x from the distribution: allowed by the version-range rule.
    let out = run_with_timeout(
        &mut cmd("curl", ["-sk", "--max-time", "10", &www.url()]),
        b"",
        CLIENT,
    );
    assert!(out.success(), "curl: {out:?}\n{}", agent.stderr());
    assert_library(
        &connection(&mut agent, "curl", www.addr()),
        "openssl",
        &openssl,
        "allowed",
    );

    let line = "s_client says hello\n";
    let addr = s_client_srv.addr().to_string();
    let out = run_with_timeout(
        &mut cmd(
            "openssl",
            ["s_client", "-quiet", "-no_ign_eof", "-connect", &addr],
        ),
        line.as_bytes(),
        CLIENT,
    );
    assert!(out.success(), "s_client: {out:?}");
    s_client_srv.wait_received(line.as_bytes(), EVENT);
    let event = connection(&mut agent, "openssl", s_client_srv.addr());
    assert_library(&event, "openssl", &openssl, "allowed");
    assert!(
        event["library"]["path"]
            .as_str()
            .unwrap()
            .contains("libssl.so.3"),
        "{event}"
    );

    let out = python_ssl(py_srv.addr(), "python says hello\n");
    assert!(out.success(), "python3 ssl: {out:?}");
    py_srv.wait_received(b"python says hello\n", EVENT);
    assert_library(
        &connection(&mut agent, "python3", py_srv.addr()),
        "openssl",
        &openssl,
        "allowed",
    );

    // NSS (libssl3.so, I/O through libnspr4): allowed by family. tstclnt keeps reading until
    // the server closes, so it is stopped once its line has arrived.
    let mut tstclnt = Command::new("tstclnt")
        .args([
            "-h",
            &peer.to_string(),
            "-p",
            &nss_srv.addr().port().to_string(),
            "-D",
            "-o",
            "-f",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tstclnt runs");
    // Its stdin stays open: tstclnt aborts the handshake when stdin ends before it completes.
    let mut stdin = tstclnt.stdin.take().unwrap();
    stdin.write_all(b"tstclnt says hello\n").unwrap();
    let tstclnt = Killed(tstclnt);
    nss_srv.wait_received(b"tstclnt says hello\n", EVENT);
    drop((tstclnt, stdin));
    let event = connection(&mut agent, "tstclnt", nss_srv.addr());
    assert_library(&event, "nss", &nss, "allowed");
    assert!(
        event["library"]["path"]
            .as_str()
            .unwrap()
            .ends_with("libssl3.so"),
        "{event}"
    );

    // GnuTLS 3.7.x: the "<3.7" rule does not match, the default denies.
    let marker = b"GNUTLS-MUST-NOT-ARRIVE\n";
    let port = gnutls_srv.addr().port().to_string();
    let out = run_with_timeout(
        &mut cmd(
            "gnutls-cli",
            ["--insecure", "--port", &port, &peer.to_string()],
        ),
        marker,
        CLIENT,
    );
    assert!(!out.success(), "gnutls-cli must fail: {out:?}");
    assert_library(
        &connection(&mut agent, "gnutls-cli", gnutls_srv.addr()),
        "gnutls",
        &gnutls,
        "blocked",
    );
    assert!(!String::from_utf8_lossy(&gnutls_srv.received()).contains("GNUTLS-MUST-NOT-ARRIVE"));

    // The renamed copy: still OpenSSL 3.0.x (its libcrypto states the version), but the path
    // rule is more specific than the version rule: blocked.
    assert!(
        !vendored.connect(vendor_srv.addr()),
        "the vendored client must fail"
    );
    let event = connection(&mut agent, "python3", vendor_srv.addr());
    assert_library(&event, "openssl", &openssl, "blocked");
    assert_eq!(
        event["library"]["path"],
        vendored.lib.to_str().unwrap(),
        "{event}"
    );
    assert!(!String::from_utf8_lossy(&vendor_srv.received()).contains(vendor_marker));
    drop(agent);
}

/// A process that loaded a libssl copy from a tmpfs mounted only in its own mount namespace.
fn spawn_in_private_mount_ns() -> (Child, ChildStdout) {
    let script = format!(
        "set -e; mount -t tmpfs none /mnt; cp {LIBDIR}/libssl.so.3 /mnt/libcontainer.so; \
         exec /usr/bin/python3 -c 'import ctypes,sys; ctypes.CDLL(\"/mnt/libcontainer.so\"); print(\"loaded\", flush=True); sys.stdin.read()'"
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare runs");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "loaded",
        "the namespaced process did not load its libssl"
    );
    (child, out.into_inner())
}

#[test]
fn libs_json_lists_identities_pids_verdicts_and_other_mount_namespaces() {
    require_root();
    let (mut child, _out) = spawn_in_private_mount_ns();
    let pid = child.id();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let text = sh(Command::new(enforcer_bin())
        .args(["libs", "--json", "--policy"])
        .arg(&policy));
    let _ = child.kill();
    let _ = child.wait();
    let inv: Value = serde_json::from_str(&text).expect("libs --json is JSON");
    let libs = inv["libraries"].as_array().unwrap();
    let find = |path: &str| libs.iter().find(|l| l["path"] == path);

    let system = find(&format!("{LIBDIR}/libssl.so.3")).expect("system libssl listed");
    assert_eq!(system["family"], "openssl");
    assert_eq!(system["version"], upstream_version("libssl3").as_str());
    let sha = sh(&mut cmd("sha256sum", [format!("{LIBDIR}/libssl.so.3")]));
    assert_eq!(system["sha256"], sha.split_whitespace().next().unwrap());
    assert_eq!(system["build_id"].as_str().unwrap().len(), 40);
    assert_eq!(system["verdict"]["action"], "allow");
    assert_eq!(system["verdict"]["rule_line"], 4);
    assert_eq!(
        find(&format!("{LIBDIR}/libssl3.so")).unwrap()["family"],
        "nss"
    );
    assert_eq!(
        find(&format!("{LIBDIR}/libssl3.so")).unwrap()["companion"],
        format!("{LIBDIR}/libnspr4.so")
    );
    let gnutls = libs
        .iter()
        .find(|l| l["family"] == "gnutls")
        .expect("gnutls listed");
    assert_eq!(gnutls["verdict"]["action"], "deny");
    assert_eq!(gnutls["verdict"]["rule_line"], Value::Null);

    // Only reachable through /proc/<pid>/: listed with the name the process uses and its pid.
    let contained = libs
        .iter()
        .find(|l| {
            l["mapped_as"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == "/mnt/libcontainer.so")
        })
        .unwrap_or_else(|| {
            panic!("library of pid {pid} in its own mount namespace missing:\n{text}")
        });
    assert!(
        contained["path"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/proc/{pid}/")),
        "{contained}"
    );
    assert!(
        contained["pids"]
            .as_array()
            .unwrap()
            .contains(&Value::from(pid)),
        "{contained}"
    );
    assert_eq!(contained["family"], "openssl");
    assert_eq!(contained["sha256"], system["sha256"]);
}

#[test]
fn policy_explain_names_the_rule_each_library_hits() {
    require_root();
    let vendored = Vendored::start("unused");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let text = sh(Command::new(enforcer_bin())
        .args(["policy", "explain"])
        .arg(&policy));
    let openssl = upstream_version("libssl3");
    let block = |path: &str| {
        let start = text
            .find(&format!("\n{path} ("))
            .unwrap_or_else(|| panic!("{path} in:\n{text}"));
        let rest = &text[start + 1..];
        rest[..rest.find("\n\n").unwrap_or(rest.len())].to_owned()
    };
    let system = block(&format!("{LIBDIR}/libssl.so.3"));
    assert!(
        system.contains(&format!("-> allow: rule at line 4 (family=openssl version=\">=3.0.9, <4\"): family is openssl; version {openssl} is in '>=3.0.9, <4'")),
        "{system}"
    );
    assert!(
        system.contains("also matches line 7 (family=openssl) -> deny: less specific"),
        "{system}"
    );
    let copy = block(vendored.lib.to_str().unwrap());
    assert!(
        copy.contains("-> deny: rule at line 14 (path=\"/tmp/enforcer-vendor-*/**\")"),
        "{copy}"
    );
    assert!(copy.contains("also matches line 4"), "{copy}");
    let gnutls = text
        .lines()
        .position(|l| l.contains("(gnutls "))
        .expect("gnutls listed");
    assert_eq!(
        text.lines().nth(gnutls + 1).unwrap().trim(),
        "-> deny: default (no rule matches)"
    );
    drop(vendored);
}
