//! rustls, end to end: a client built here from crates.io (tests/programs/rustls-client) with
//! each crypto provider, aws-lc-rs (legacy mangling) and ring (v0 mangling), each plain and with
//! `strip = true`, against `openssl s_server -www` in the peer namespace.
//!
//! - Unstripped builds are identified from their `.symtab` (Rust paths of the catalog, demangled)
//!   and attributed by their hellos' randoms (the provider's `SecureRandom::fill`, called by
//!   rustls' own code): `family: rustls` allowed lets them talk (event: family `rustls`, evidence
//!   `random`, the executable as the library path, the crate version); `family: rustls` denied
//!   refuses them within [`REFUSED_WITHIN`] of the client's own run time, their socket aborted.
//! - The server (`rustls-server`, unstripped, each provider) on this host is judged by its
//!   ServerHello's random the same way: a client in the namespace gets its answer under the
//!   allowing policy, none under the denying one.
//! - Stripped builds keep no symbol, so nothing in them can be probed: their hellos are
//!   unattributed TLS (docs/policy.md, "rustls"), refused under `unattributed_tls: deny` and let
//!   through under `unattributed_tls: allow`, whatever the rustls rule says.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use enforcer_tests::programs::{RustlsProvider, build_rustls, build_rustls_server};
use enforcer_tests::{
    Agent, Cert, NetNs, Server,
    content::{REFUSED_WITHIN, free_port},
    require_root, run_with_timeout,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
const PORT: u16 = 8473;
const REQUEST: &str = "GET / HTTP/1.0\r\n\r\n";

const ALLOW_RUSTLS: &str = "\
mode: enforce
default: deny
unattributed_tls: deny
libraries:
  - family: rustls
    action: allow
";

const DENY_RUSTLS: &str = "\
mode: enforce
default: allow
unattributed_tls: allow
libraries:
  - family: rustls
    action: deny
";

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

/// Runs `client` against `peer:port`; returns the outcome and the local port it printed.
fn run(client: &Client, peer: IpAddr, port: u16, cert: &Cert) -> (enforcer_tests::Outcome, u16) {
    let out = run_with_timeout(
        Command::new(&client.exe)
            .arg(peer.to_string())
            .arg(port.to_string())
            .arg(REQUEST)
            .arg(cert.cert_path()),
        b"",
        CLIENT,
    );
    let from = out
        .stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("from ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the client prints its port: {out:?}"));
    (out, from)
}

/// How long the client takes to start, connect to a closed port and exit (also gets its file
/// examined by the agent, so the measured run is not paused).
fn baseline(client: &Client, peer: IpAddr, cert: &Cert) -> Duration {
    let out = run_with_timeout(
        Command::new(&client.exe)
            .arg(peer.to_string())
            .arg(free_port().to_string())
            .arg(REQUEST)
            .arg(cert.cert_path()),
        b"",
        CLIENT,
    );
    assert!(!out.success(), "nothing listens there: {out:?}");
    out.elapsed
}

fn event(agent: &mut Agent, kind: &'static str, from: u16) -> Value {
    agent.wait_for(
        move |v| v["type"] == kind && v["local"]["port"] == from,
        EVENT,
    )
}

fn start(ns: &NetNs, policy: &str) -> Agent {
    let args = enforcer_tests::hook_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, policy, &args);
    agent.wait_ready(READY);
    agent
}

/// `enforcer libs --json` while the four clients wait for a ServerHello from a listener that never
/// answers: the unstripped ones are `rustls` with the crate's version and their session and random
/// functions probed; the stripped ones are not listed.
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
        assert!(
            symbols
                .iter()
                .any(|s| s.ends_with("as rustls::crypto::SecureRandom>::fill")),
            "{name}: the provider's random source is probed: {symbols:?}"
        );
    }
}

#[test]
fn rustls_clients_allowed_and_denied_by_family_stripped_ones_unattributed() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("enforcer-rustls-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let clients = clients(dir.path());
    let version = rustls_version();
    let ns = NetNs::new();
    let (local, peer) = (IpAddr::V4(ns.host_v4), IpAddr::V4(ns.peer_v4));
    let cert = Cert::new(&[peer]);
    let _server = Server::www(&ns, peer, PORT, &cert);

    let mut agent = start(&ns, ALLOW_RUSTLS);
    for c in &clients {
        let name = c.exe.display();
        let took = baseline(c, peer, &cert);
        let (out, from) = run(c, peer, PORT, &cert);
        if c.stripped {
            assert!(
                !out.success(),
                "{name}: stripped, unattributed, must be refused: {out:?}"
            );
            assert!(
                out.elapsed < took + REFUSED_WITHIN,
                "{name}: refused after {:?} (alone: {took:?})",
                out.elapsed
            );
            let e = event(&mut agent, "client_hello", from);
            assert_eq!(e["attributed"], false, "{name}: {e}");
            assert_eq!(e["verdict"], "blocked", "{name}: {e}");
            assert_eq!(e["local"]["addr"], local.to_string(), "{name}: {e}");
            continue;
        }
        assert!(
            out.success() && out.stdout_str().contains("s_server"),
            "{name}: allowed by its family, must complete: {out:?}\n{}",
            agent.stderr()
        );
        let e = event(&mut agent, "connection", from);
        assert_eq!(e["verdict"], "allowed", "{name}: {e}");
        assert_eq!(e["evidence"], "random", "{name}: {e}");
        assert_eq!(e["library"]["family"], "rustls", "{name}: {e}");
        assert_eq!(e["library"]["path"], c.exe.to_str().unwrap(), "{name}: {e}");
        assert_eq!(e["library"]["version"], version.as_str(), "{name}: {e}");
        assert_eq!(e["local"]["addr"], local.to_string(), "{name}: {e}");
    }
    drop(agent);

    let mut agent = start(&ns, DENY_RUSTLS);
    for c in &clients {
        let name = c.exe.display();
        let took = baseline(c, peer, &cert);
        let (out, from) = run(c, peer, PORT, &cert);
        if c.stripped {
            assert!(
                out.success() && out.stdout_str().contains("s_server"),
                "{name}: stripped, unattributed TLS is allowed: {out:?}\n{}",
                agent.stderr()
            );
            let e = event(&mut agent, "client_hello", from);
            assert_eq!(e["attributed"], false, "{name}: {e}");
            assert_eq!(e["verdict"], "allowed", "{name}: {e}");
            continue;
        }
        assert!(
            !out.success() && !out.stdout_str().contains("s_server"),
            "{name}: denied by its family, must be refused: {out:?}"
        );
        assert!(
            out.elapsed < took + REFUSED_WITHIN,
            "{name}: refused after {:?} (alone: {took:?})",
            out.elapsed
        );
        let e = event(&mut agent, "connection", from);
        assert_eq!(e["verdict"], "blocked", "{name}: {e}");
        assert_eq!(e["evidence"], "random", "{name}: {e}");
        assert_eq!(e["library"]["family"], "rustls", "{name}: {e}");
        assert_eq!(e["library"]["path"], c.exe.to_str().unwrap(), "{name}: {e}");
        // The connection event and the hello's both abort the socket; whichever comes second
        // finds it gone.
        let hello = event(&mut agent, "client_hello", from);
        assert_eq!(hello["verdict"], "blocked", "{name}: {hello}");
        assert!(
            e["socket_aborted"] == true || hello["socket_aborted"] == true,
            "{name}: the socket was aborted: {e}\n{hello}"
        );
    }
}

/// The server on this host's veth address, a client in the namespace: the ServerHello's random
/// names rustls (`ServerConnection::new` gave the code range), for each provider.
#[test]
fn rustls_servers_judged_by_their_server_hello() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("enforcer-rustls-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let ns = NetNs::new();
    let host = IpAddr::V4(ns.host_v4);
    let cert = Cert::new(&[host]);
    let servers: Vec<PathBuf> = [
        (RustlsProvider::AwsLcRs, "rls-awslc"),
        (RustlsProvider::Ring, "rls-ring"),
    ]
    .iter()
    .map(|&(p, name)| build_rustls_server(dir.path(), name, p, false))
    .collect();
    for (policy, allowed) in [(ALLOW_RUSTLS, true), (DENY_RUSTLS, false)] {
        let mut agent = start(&ns, policy);
        for exe in &servers {
            let name = exe.display();
            let port = free_port();
            let mut child = Command::new(exe)
                .arg(host.to_string())
                .arg(port.to_string())
                .arg(cert.cert_path())
                .arg(cert.key_path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start the server");
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
                &mut line,
            )
            .expect("read the server's first line");
            let _server = enforcer_tests::content::Background(child);
            assert_eq!(line.trim(), "listening", "{name}");
            let connect = format!("{host}:{port}");
            let mut c = ns.exec("openssl", ["s_client", "-quiet", "-connect", &connect]);
            let out = run_with_timeout(&mut c, b"PING\n", Duration::from_secs(5));
            let answered = out.stdout_str().contains("rustls-server");
            assert_eq!(answered, allowed, "{name}: {out:?}\n{}", agent.stderr());
            let e = agent.wait_for(
                move |v| {
                    v["type"] == "connection"
                        && v["library"]["family"] == "rustls"
                        && v["local"]["port"] == port
                },
                EVENT,
            );
            let verdict = if allowed { "allowed" } else { "blocked" };
            assert_eq!(e["verdict"], verdict, "{name}: {e}");
            assert_eq!(e["evidence"], "random", "{name}: {e}");
            assert_eq!(e["library"]["path"], exe.to_str().unwrap(), "{name}: {e}");
        }
        drop(agent);
    }
}
