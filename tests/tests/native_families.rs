//! The families beyond OpenSSL and GnuTLS, end to end with the real library (issue 17): a
//! wolfSSL client on Debian's libwolfssl, an Mbed TLS client on Debian's libmbedtls (CTR_DRBG),
//! both C programs built here (tests/programs/wolfssl-client, mbedtls-client), and an AWS-LC
//! client built from crates.io (tests/programs/aws-lc-client: aws-lc-sys with its libssl,
//! linked statically). Each talks to `openssl s_server -quiet` in the peer namespace.
//!
//! - Allowed by `family` and a version range: the client completes, its line arrives, and the
//!   `connection` event names the family, the version, the library path and the 4-tuple; its
//!   `client_hello` event names the same library with `evidence: random` (the hello's random
//!   came from the random source the catalog probes: `wc_RNG_GenerateBlock`,
//!   `mbedtls_ctr_drbg_random`, `RAND_bytes`). Unattributed TLS is denied under that policy, and
//!   a library that binds its hellos and did not make the random is unattributed, so a hello
//!   its random did not name would fail. The same client through a local `socat` relay (no
//!   thread of the library touches the relay's socket) is allowed by its random alone.
//! - Denied by `family` (unattributed TLS and the default allowed): the client is refused within
//!   [`REFUSED_WITHIN`] of its own run time against a closed port, no byte of its line reaches
//!   the peer, and its socket is aborted (the `connection` event, taken in the send hook before
//!   the ClientHello left).
//!
//! BoringSSL is not built (AWS-LC stands for the family); LibreSSL has no source on a registry
//! and no Debian package (docs/policy.md, "LibreSSL").

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::programs::{build_aws_lc_client, build_mbedtls_client, build_wolfssl_client};
use enforcer_tests::{
    Agent, Cert, NetNs, Outcome, Server, cmd,
    content::{Background, REFUSED_WITHIN, free_port},
    require_root, run_with_timeout, sh,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);

struct Client {
    /// What the events name: `wolfssl`, `mbedtls`, `aws-lc`.
    family: &'static str,
    exe: PathBuf,
    /// The file the agent names as the library.
    library: String,
    version: String,
    port: u16,
}

/// The upstream version of a Debian package: `5.5.4-2+deb12u3` → `5.5.4`.
fn upstream_version(package: &str) -> String {
    let v = sh(&mut cmd("dpkg-query", ["-W", "-f=${Version}", package]));
    let v = v.split_once(':').map_or(v.as_str(), |(_, r)| r);
    v.split(['-', '+', '~']).next().unwrap().to_owned()
}

/// The shared library `exe` loads whose name starts with `stem` (`ldd`), resolved.
fn loaded(exe: &Path, stem: &str) -> String {
    let out = sh(Command::new("ldd").arg(exe));
    let path = out
        .lines()
        .find_map(|l| {
            let (name, rest) = l.trim().split_once(" => ")?;
            name.starts_with(stem)
                .then(|| rest.split_whitespace().next().map(str::to_owned))?
        })
        .unwrap_or_else(|| panic!("{} loads no {stem}: {out}", exe.display()));
    std::fs::canonicalize(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .to_string_lossy()
        .into_owned()
}

fn clients(dir: &Path) -> Vec<Client> {
    let wolfssl = build_wolfssl_client(dir);
    let mbedtls = build_mbedtls_client(dir);
    let aws_lc = build_aws_lc_client(dir, "aws-lc-client");
    // AWS-LC states its version through OpenSSL_version(), which the client prints.
    // (Before connecting: port 1 refuses, so it exits 1 after printing it.)
    let out = run_with_timeout(
        Command::new(&aws_lc).args(["127.0.0.1", "1", "-"]),
        b"",
        CLIENT,
    )
    .stdout_str();
    let aws_lc_version = out
        .lines()
        .find_map(|l| l.strip_prefix("library AWS-LC "))
        .unwrap_or_else(|| panic!("aws-lc-client prints its library: {out}"))
        .trim()
        .to_owned();
    vec![
        Client {
            family: "wolfssl",
            library: loaded(&wolfssl, "libwolfssl"),
            exe: wolfssl,
            version: upstream_version("libwolfssl35"),
            port: 9471,
        },
        Client {
            family: "mbedtls",
            library: loaded(&mbedtls, "libmbedtls"),
            exe: mbedtls,
            version: upstream_version("libmbedtls14"),
            port: 9472,
        },
        Client {
            family: "aws-lc",
            library: aws_lc.to_string_lossy().into_owned(),
            exe: aws_lc,
            version: aws_lc_version,
            port: 9473,
        },
    ]
}

/// Runs `client` against `to` with `line`; the outcome and the local port it printed.
fn run(client: &Client, to: SocketAddr, line: &str) -> (Outcome, u16) {
    let out = run_with_timeout(
        Command::new(&client.exe)
            .arg(to.ip().to_string())
            .arg(to.port().to_string())
            .arg(line),
        b"",
        CLIENT,
    );
    let from = out
        .stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("from ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}: prints its port: {}", client.family, show(&out)));
    (out, from)
}

/// The outcome as text: status, time, stdout and stderr.
fn show(out: &Outcome) -> String {
    format!(
        "{} after {:?}, stdout {:?}, stderr {:?}",
        out.status,
        out.elapsed,
        out.stdout_str(),
        out.stderr_str()
    )
}

/// How long the client takes to start, be refused by a closed port and exit (also gets its
/// files examined by the agent first, so the measured run is not paused).
fn baseline(client: &Client, peer: IpAddr) -> Duration {
    let out = run_with_timeout(
        Command::new(&client.exe)
            .arg(peer.to_string())
            .arg(free_port().to_string())
            .arg("-"),
        b"",
        CLIENT,
    );
    assert!(
        !out.success(),
        "{}: nothing listens there: {}",
        client.family,
        show(&out)
    );
    out.elapsed
}

/// `socat` on 127.0.0.1 relaying each connection to `to`, listening when returned; its port.
fn relay(to: SocketAddr) -> (Background, u16) {
    let port = free_port();
    let child = Command::new("socat")
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("TCP:{to}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (Debian package socat; cargo xtask setup)");
    let child = Background(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < EVENT, "socat never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
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

/// `>=MAJOR.MINOR, <MAJOR+1` around `version`.
fn range(version: &str) -> String {
    let mut parts = version.split('.');
    let major: u32 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a major version");
    let minor = parts.next().unwrap_or("0");
    format!(">={major}.{minor}, <{}", major + 1)
}

fn assert_names(e: &Value, c: &Client, local: IpAddr, from: u16, to: SocketAddr) {
    let f = c.family;
    assert_eq!(e["library"]["family"], f, "{f}: {e}");
    assert_eq!(e["library"]["version"], c.version.as_str(), "{f}: {e}");
    assert_eq!(e["library"]["path"], c.library.as_str(), "{f}: {e}");
    assert_eq!(e["local"]["addr"], local.to_string(), "{f}: {e}");
    assert_eq!(e["local"]["port"], from, "{f}: {e}");
    assert_eq!(e["remote"]["addr"], to.ip().to_string(), "{f}: {e}");
    assert_eq!(e["remote"]["port"], to.port(), "{f}: {e}");
}

#[test]
fn native_families_attributed_by_their_randoms_and_decided_by_policy() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("enforcer-families-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let clients = clients(dir.path());
    let ns = NetNs::new();
    let (local, peer) = (IpAddr::V4(ns.host_v4), IpAddr::V4(ns.peer_v4));
    let cert = Cert::new(&[peer]);

    let mut allow =
        String::from("mode: enforce\ndefault: deny\nunattributed_tls: deny\nlibraries:\n");
    let mut deny =
        String::from("mode: enforce\ndefault: allow\nunattributed_tls: allow\nlibraries:\n");
    for c in &clients {
        let r = range(&c.version);
        allow.push_str(&format!(
            "  - family: {}\n    version: \"{r}\"\n    action: allow\n",
            c.family
        ));
        deny.push_str(&format!("  - family: {}\n    action: deny\n", c.family));
    }

    let mut agent = start(&ns, &allow);
    for c in &clients {
        let f = c.family;
        let server = Server::plain(&ns, peer, c.port, &cert);
        let line = format!("{f} says hello\n");
        let (out, from) = run(c, server.addr(), &line);
        assert!(
            out.success(),
            "{f}: allowed by family and version, must complete: {}\n{}",
            show(&out),
            agent.stderr()
        );
        server.wait_received(line.as_bytes(), EVENT);
        let e = event(&mut agent, "connection", from);
        assert_eq!(e["verdict"], "allowed", "{f}: {e}");
        assert_names(&e, c, local, from, server.addr());
        // The thread inside the handshake call claimed the socket first (the connection
        // event's evidence); the ClientHello's random then named the same library.
        let hello = event(&mut agent, "client_hello", from);
        assert_eq!(hello["attributed"], true, "{f}: {hello}");
        assert_eq!(hello["evidence"], "random", "{f}: {hello}");
        assert_eq!(hello["verdict"], "allowed", "{f}: {hello}");
        assert_names(&hello, c, local, from, server.addr());

        // Through a local relay: socat's socket carries the hello and no thread of the library
        // touches it, so only the random can name the library (else unattributed, denied).
        let relayed = Server::plain(&ns, peer, c.port + 10, &cert);
        let (_relay, port) = relay(relayed.addr());
        let line = format!("{f} relayed\n");
        let out = run_with_timeout(
            Command::new(&c.exe).args(["127.0.0.1", &port.to_string(), &line]),
            b"",
            CLIENT,
        );
        assert!(out.success(), "{f}: relayed: {}", show(&out));
        relayed.wait_received(line.as_bytes(), EVENT);
        let to = relayed.addr();
        let hello = agent.wait_for(
            move |v| v["type"] == "client_hello" && v["remote"]["port"] == to.port(),
            EVENT,
        );
        assert_eq!(hello["attributed"], true, "{f}: relayed: {hello}");
        assert_eq!(hello["evidence"], "random", "{f}: relayed: {hello}");
        assert_eq!(hello["verdict"], "allowed", "{f}: relayed: {hello}");
        assert_eq!(hello["library"]["family"], f, "{f}: relayed: {hello}");
        assert_eq!(
            hello["library"]["version"],
            c.version.as_str(),
            "{f}: {hello}"
        );
        assert_eq!(hello["library"]["path"], c.library.as_str(), "{f}: {hello}");
    }
    drop(agent);

    let mut agent = start(&ns, &deny);
    for c in &clients {
        let f = c.family;
        let server = Server::plain(&ns, peer, c.port, &cert);
        let took = baseline(c, peer);
        let marker = format!("{}-MUST-NOT-ARRIVE\n", f.to_uppercase());
        let (out, from) = run(c, server.addr(), &marker);
        assert!(
            !out.success(),
            "{f}: denied by family, must be refused: {}",
            show(&out)
        );
        assert!(
            out.elapsed < took + REFUSED_WITHIN,
            "{f}: refused after {:?} (alone: {took:?})",
            out.elapsed
        );
        // The send hook, in the thread inside the handshake call, blocklisted the flow before
        // its ClientHello left; the agent aborted the socket.
        let e = event(&mut agent, "connection", from);
        assert_eq!(e["verdict"], "blocked", "{f}: {e}");
        assert_names(&e, c, local, from, server.addr());
        assert_eq!(
            e["socket_aborted"], true,
            "{f}: the socket was aborted: {e}"
        );
        assert!(
            server.received().is_empty(),
            "{f}: no application byte at the peer: {:?}",
            String::from_utf8_lossy(&server.received())
        );
    }
}
