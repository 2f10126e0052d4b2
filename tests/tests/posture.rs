//! Crypto posture end to end: what each connection negotiates, read from its ServerHello by the
//! packet programs (`enforcer-ebpf/src/posture.rs`), reported as a `negotiated` event, and
//! judged by the policy's `groups` and `tls_versions` (docs/policy.md, "Crypto posture").
//!
//! - rustls (aws-lc-rs) client on this host, rustls server in the peer namespace: a client
//!   offering only X25519MLKEM768 is allowed by a rule requiring it; one offering only X25519 is
//!   dropped at the ServerHello (ingress), its socket aborted, and the server gets no
//!   application byte.
//! - The same with the server on this host (its ServerHello judged on egress).
//! - A TLS 1.2-only GnuTLS client and a TLS 1.2-only OpenSSL client are dropped by a host-wide
//!   `tls_versions: [">=1.3"]`; a TLS 1.3 OpenSSL client passes.

use std::{
    io::{BufRead, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use enforcer_tests::programs::{RustlsProvider, build_rustls, build_rustls_server};
use enforcer_tests::{
    Agent, Cert, NetNs, Server, cmd,
    content::{Background, free_port},
    ops::{LongClient, ctl, sample, scrape},
    require_root, run_with_timeout,
    schema::{events_schema, validate_event},
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
/// A refused client fails this fast (its socket is aborted when the ServerHello is dropped).
const REFUSED_WITHIN: Duration = Duration::from_secs(1);
const REQUEST: &str = "GET / HTTP/1.0\r\n\r\n";

const PQ_RUSTLS: &str = "\
mode: enforce
default: deny
unattributed_tls: allow
libraries:
  - family: rustls
    action: allow
    groups: [X25519MLKEM768]
";

const TLS13_ONLY: &str = "\
mode: enforce
default: deny
tls_versions: [\">=1.3\"]
libraries:
  - family: openssl
    action: allow
  - family: gnutls
    action: allow
";

fn start(ns: &NetNs, policy: &str) -> Agent {
    let args = enforcer_tests::hook_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, policy, &args);
    agent.wait_ready(READY);
    agent
}

fn negotiated(agent: &mut Agent, port_key: &'static str, port: u16) -> Value {
    let e = agent.wait_for(
        move |v| v["type"] == "negotiated" && v[port_key]["port"] == port,
        EVENT,
    );
    checked(e)
}

/// `e`, after checking it against docs/events.schema.json (and printed: docs/events.md shows
/// such lines).
fn checked(e: Value) -> Value {
    if let Err(why) = validate_event(&events_schema(), &e) {
        panic!("{why}: {e}");
    }
    println!("event: {e}");
    e
}

/// The rustls server, its `read N` lines on a channel.
struct RustlsServer {
    _child: Background,
    reads: mpsc::Receiver<String>,
}

impl RustlsServer {
    fn start(mut cmd: Command, groups: &str) -> RustlsServer {
        let mut child: Child = cmd
            .env("RUSTLS_GROUPS", groups)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start rustls-server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok);
        assert_eq!(first.as_deref(), Some("listening"));
        let (tx, reads) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        RustlsServer {
            _child: Background(child),
            reads,
        }
    }

    /// Application bytes the server got on its next connection.
    fn next_read(&self) -> usize {
        let line = self
            .reads
            .recv_timeout(Duration::from_secs(10))
            .expect("the server reports each connection");
        line.strip_prefix("read ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("server line {line:?}"))
    }
}

fn rustls_client(
    exe: &Path,
    groups: &str,
    peer: IpAddr,
    port: u16,
    cert: &Cert,
    ns: Option<&NetNs>,
) -> (enforcer_tests::Outcome, u16) {
    let mut c = match ns {
        Some(ns) => ns.exec(exe.to_str().unwrap(), std::iter::empty::<&str>()),
        None => Command::new(exe),
    };
    c.env("RUSTLS_GROUPS", groups)
        .arg(peer.to_string())
        .arg(port.to_string())
        .arg(REQUEST)
        .arg(cert.cert_path());
    let out = run_with_timeout(&mut c, b"", CLIENT);
    let from = out
        .stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("from ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("the client prints its port: {out:?}"));
    (out, from)
}

fn builds(dir: &Path) -> (PathBuf, PathBuf) {
    (
        build_rustls(dir, "pq-client", RustlsProvider::AwsLcRs, false),
        build_rustls_server(dir, "pq-server", RustlsProvider::AwsLcRs, false),
    )
}

#[test]
fn a_post_quantum_rule_lets_ml_kem_through_and_drops_x25519_at_the_server_hello() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("enforcer-posture-")
        .tempdir_in("/tmp")
        .unwrap();
    let (client, server) = builds(dir.path());
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let port = free_port();
    let mut server_cmd = ns.exec(
        server.to_str().unwrap(),
        [peer.to_string(), port.to_string()],
    );
    server_cmd.arg(cert.cert_path()).arg(cert.key_path());
    let srv = RustlsServer::start(server_cmd, "X25519MLKEM768,X25519");
    let mut agent = start(&ns, PQ_RUSTLS);

    let (out, from) = rustls_client(&client, "X25519MLKEM768", peer, port, &cert, None);
    assert!(
        out.success() && out.stdout_str().contains("rustls-server"),
        "{out:?}\n{}",
        agent.stderr()
    );
    assert_eq!(srv.next_read(), REQUEST.len());
    let e = negotiated(&mut agent, "local", from);
    assert_eq!(e["tls"]["version"], "1.3", "{e}");
    assert_eq!(e["tls"]["group"], "X25519MLKEM768", "{e}");
    assert_eq!(e["tls"]["post_quantum"], true, "{e}");
    assert_eq!(e["side"], "client", "{e}");
    assert_eq!(e["library"]["family"], "rustls", "{e}");
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert!(e["broken_rule"].is_null(), "{e}");

    let (out, from) = rustls_client(&client, "X25519", peer, port, &cert, None);
    assert!(!out.success(), "the classical client is refused: {out:?}");
    assert!(
        out.elapsed < REFUSED_WITHIN,
        "refused after {:?}: {out:?}",
        out.elapsed
    );
    assert_eq!(srv.next_read(), 0, "no application byte reached the server");
    let e = negotiated(&mut agent, "local", from);
    assert_eq!(e["tls"]["group"], "x25519", "{e}");
    assert_eq!(e["tls"]["post_quantum"], false, "{e}");
    assert_eq!(e["broken_rule"]["key"], "groups", "{e}");
    assert_eq!(e["broken_rule"]["rule"], "library", "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(e["socket_aborted"], true, "{e}");
}

#[test]
fn a_server_on_this_host_is_judged_by_the_server_hello_it_sends() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("enforcer-posture-")
        .tempdir_in("/tmp")
        .unwrap();
    let (client, server) = builds(dir.path());
    let ns = NetNs::new();
    let host = IpAddr::V4(ns.host_v4);
    let cert = Cert::new(&[host]);
    let mut agent = start(&ns, PQ_RUSTLS);
    for (groups, allowed) in [("X25519MLKEM768", true), ("X25519", false)] {
        let port = free_port();
        let mut cmd = Command::new(&server);
        cmd.arg(host.to_string())
            .arg(port.to_string())
            .arg(cert.cert_path())
            .arg(cert.key_path());
        let srv = RustlsServer::start(cmd, groups);
        let (out, _) = rustls_client(
            &client,
            "X25519MLKEM768,X25519",
            host,
            port,
            &cert,
            Some(&ns),
        );
        assert_eq!(
            out.success(),
            allowed,
            "{groups}: {out:?}\n{}",
            agent.stderr()
        );
        let got = srv.next_read();
        let e = negotiated(&mut agent, "local", port);
        assert_eq!(e["side"], "server", "{e}");
        assert_eq!(e["library"]["family"], "rustls", "{e}");
        if allowed {
            assert_eq!(got, REQUEST.len());
            assert_eq!(
                (e["tls"]["group"].as_str(), e["verdict"].as_str()),
                (Some("X25519MLKEM768"), Some("allowed")),
                "{e}"
            );
        } else {
            assert_eq!(got, 0, "no application byte reached this host's server");
            assert_eq!(e["tls"]["group"], "x25519", "{e}");
            assert_eq!(e["broken_rule"]["key"], "groups", "{e}");
            assert_eq!(e["verdict"], "blocked", "{e}");
        }
    }
}

#[test]
fn tls12_only_clients_are_dropped_by_a_tls13_rule_and_tls13_passes() {
    require_root();
    let ns = NetNs::new();
    let (local, peer) = (IpAddr::V4(ns.host_v4), IpAddr::V4(ns.peer_v4));
    let cert = Cert::new(&[peer]);
    let port = free_port();
    let server = Server::plain(&ns, peer, port, &cert);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("agent.sock");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, TLS13_ONLY).unwrap();
    let mut args = enforcer_tests::hook_args();
    args.extend(
        [
            "--control-socket",
            socket.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::start(&ns.host_if, &policy, &args);
    let ready = agent.wait_ready(READY);
    let metrics = ready["metrics"]
        .as_str()
        .expect("the metrics address")
        .to_owned();
    let addr = server.addr().to_string();
    let port_s = port.to_string();
    let host_s = peer.to_string();

    // A TLS 1.3 client that stays connected while its flow is looked at.
    let mut long = LongClient::openssl(server.addr());
    assert!(long.send(b"TLS13-OK\n"), "{}", agent.stderr());
    server.wait_received(b"TLS13-OK", EVENT);
    let e = agent.wait_for(
        |v| {
            v["type"] == "negotiated"
                && v["tls"]["version"] == "1.3"
                && v["library"]["family"] == "openssl"
        },
        EVENT,
    );
    let e = checked(e);
    assert_eq!(e["verdict"], "allowed", "{e}");
    let suite = e["tls"]["cipher_suite"]
        .as_str()
        .expect("a suite")
        .to_owned();
    assert!(suite.starts_with("TLS_"), "{e}");
    let group = e["tls"]["group"]
        .as_str()
        .expect("a TLS 1.3 group")
        .to_owned();
    // The flow table, the status summary and the metrics say the same.
    let flows = ctl(&socket, &["flows"]);
    let port_of = e["local"]["port"].as_u64().unwrap();
    let flow = flows["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| {
            f["local"]
                .as_str()
                .is_some_and(|l| l.ends_with(&format!(":{port_of}")))
        })
        .unwrap_or_else(|| panic!("the flow is listed: {flows}"));
    assert_eq!(flow["tls"], e["tls"], "{flow}");
    let status = ctl(&socket, &["status"]);
    assert_eq!(status["negotiated"]["by_version"]["1.3"], 1, "{status}");
    let series = format!(
        "enforcer_negotiated_connections_total{{library=\"openssl\",version=\"1.3\",cipher_suite=\"{suite}\",group=\"{group}\",post_quantum=\"false\"}}"
    );
    assert_eq!(sample(&scrape(&metrics), &series), 1.0, "{series}");
    drop(long);

    let clients: [(&str, Command); 2] = [
        (
            "gnutls",
            cmd(
                "gnutls-cli",
                [
                    "--insecure",
                    "--priority",
                    "NORMAL:-VERS-ALL:+VERS-TLS1.2",
                    "--port",
                    &port_s,
                    &host_s,
                ],
            ),
        ),
        (
            "openssl",
            cmd(
                "openssl",
                [
                    "s_client",
                    "-quiet",
                    "-no_ign_eof",
                    "-tls1_2",
                    "-connect",
                    &addr,
                ],
            ),
        ),
    ];
    for (family, mut c) in clients {
        let marker = format!("{family}-TLS12-MUST-NOT-ARRIVE\n");
        let out = run_with_timeout(&mut c, marker.as_bytes(), CLIENT);
        assert!(!out.success(), "{family}: {out:?}");
        assert!(
            out.elapsed < REFUSED_WITHIN * 2,
            "{family}: refused after {:?}",
            out.elapsed
        );
        let e = agent.wait_for(
            move |v| {
                v["type"] == "negotiated"
                    && v["library"]["family"] == family
                    && v["tls"]["version"] == "1.2"
            },
            EVENT,
        );
        assert_eq!(e["broken_rule"]["key"], "tls_versions", "{e}");
        assert_eq!(e["broken_rule"]["rule"], "host", "{e}");
        assert_eq!(e["verdict"], "blocked", "{e}");
        assert_eq!(e["local"]["addr"], local.to_string(), "{e}");
        assert_eq!(e["socket_aborted"], true, "{e}");
        let received = String::from_utf8_lossy(&server.received()).into_owned();
        assert!(
            !received.contains("MUST-NOT-ARRIVE"),
            "{family}: the peer got {received:?}"
        );
    }
}

/// A 4-tuple's posture goes when its socket closes: a TLS 1.2 connection from the local port a
/// judged TLS 1.3 connection used is judged again, not let through as "judged already". The
/// client (Python's ssl, i.e. OpenSSL) binds the port and closes with a reset, so the port is
/// free again at once (no TIME_WAIT).
#[test]
fn a_reused_4_tuple_has_its_own_server_hello_judged() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let port = free_port();
    let server = Server::plain(&ns, peer, port, &cert);
    let mut agent = start(&ns, TLS13_ONLY);
    let local_port = free_port();
    const CLIENT_PY: &str = r#"
import socket, ssl, struct, sys
host, port, local, version = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
ctx.minimum_version = ctx.maximum_version
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.bind(("0.0.0.0", local))
s.settimeout(5)
s.connect((host, port))
t = ctx.wrap_socket(s)
t.sendall(b"REUSED-" + version.encode() + b"\n")
s.close()
"#;
    let run = |version: &str| {
        run_with_timeout(
            &mut cmd(
                "python3",
                [
                    "-c",
                    CLIENT_PY,
                    &peer.to_string(),
                    &port.to_string(),
                    &local_port.to_string(),
                    version,
                ],
            ),
            b"",
            CLIENT,
        )
    };
    let first = run("1.3");
    assert!(first.success(), "{first:?}\n{}", agent.stderr());
    server.wait_received(b"REUSED-1.3", EVENT);
    let e = checked(agent.wait_for(
        move |v| v["type"] == "negotiated" && v["local"]["port"] == local_port,
        EVENT,
    ));
    assert_eq!(
        (e["tls"]["version"].as_str(), e["verdict"].as_str()),
        (Some("1.3"), Some("allowed")),
        "{e}"
    );
    let second = run("1.2");
    assert!(
        !second.success(),
        "TLS 1.2 on the reused 4-tuple must be refused: {second:?}"
    );
    let e = checked(agent.wait_for(
        move |v| {
            v["type"] == "negotiated"
                && v["local"]["port"] == local_port
                && v["tls"]["version"] == "1.2"
        },
        EVENT,
    ));
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(e["broken_rule"]["key"], "tls_versions", "{e}");
    assert!(!String::from_utf8_lossy(&server.received()).contains("REUSED-1.2"));
}

/// A TLS 1.2 connection's group, from its ServerKeyExchange (read when it is in the packet of
/// the ServerHello: the server's flight as one segment-offload packet, tc ingress on the veth):
/// an OpenSSL client negotiating x25519 meets `groups: [x25519]`; a GnuTLS client offering only
/// secp256r1 breaks it and is dropped before its first application byte.
#[test]
fn tls12_groups_are_read_from_the_server_key_exchange() {
    require_root();
    const X25519_ONLY: &str = "\
mode: enforce
default: deny
groups: [x25519]
libraries:
  - family: openssl
    action: allow
  - family: gnutls
    action: allow
";
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let port = free_port();
    let server = Server::plain(&ns, peer, port, &cert);
    let mut agent = start(&ns, X25519_ONLY);
    let addr = server.addr().to_string();
    let mut openssl = cmd(
        "openssl",
        [
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-tls1_2",
            "-connect",
            &addr,
        ],
    );
    let out = run_with_timeout(&mut openssl, b"TLS12-X25519\n", CLIENT);
    assert!(out.success(), "{out:?}\n{}", agent.stderr());
    server.wait_received(b"TLS12-X25519", EVENT);
    let e = checked(agent.wait_for(
        |v| v["type"] == "negotiated" && v["library"]["family"] == "openssl",
        EVENT,
    ));
    assert_eq!(e["tls"]["version"], "1.2", "{e}");
    assert_eq!(e["tls"]["group"], "x25519", "{e}");
    assert_eq!(e["verdict"], "allowed", "{e}");

    let port_s = port.to_string();
    let host_s = peer.to_string();
    let mut gnutls = cmd(
        "gnutls-cli",
        [
            "--insecure",
            "--priority",
            "NORMAL:-VERS-ALL:+VERS-TLS1.2:-GROUP-ALL:+GROUP-SECP256R1",
            "--port",
            &port_s,
            &host_s,
        ],
    );
    let out = run_with_timeout(&mut gnutls, b"TLS12-P256-MUST-NOT-ARRIVE\n", CLIENT);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.elapsed < REFUSED_WITHIN * 2,
        "refused after {:?}",
        out.elapsed
    );
    let e = checked(agent.wait_for(
        |v| v["type"] == "negotiated" && v["library"]["family"] == "gnutls",
        EVENT,
    ));
    assert_eq!(e["tls"]["version"], "1.2", "{e}");
    assert_eq!(e["tls"]["group"], "secp256r1", "{e}");
    assert_eq!(e["broken_rule"]["key"], "groups", "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    let received = String::from_utf8_lossy(&server.received()).into_owned();
    assert!(
        !received.contains("MUST-NOT-ARRIVE"),
        "the peer got {received:?}"
    );
}
