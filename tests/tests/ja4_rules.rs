//! The `ja4` policy key end to end (docs/policy.md, "Crypto posture"): the JA4 of each
//! connection's ClientHello (made in userspace from the fields the kernel read) against allow
//! and deny lists, judged in the kernel at the ServerHello, which waits for the verdict.
//!
//! The clients' JA4s are learned first, from an audit agent's `offered` events (they depend on
//! the distribution's builds, so they are not written here). Then, in enforce mode:
//! - clients on this host (OpenSSL `s_client`, `gnutls-cli`) to `s_server` in the peer
//!   namespace: a host-wide deny list with GnuTLS's JA4 refuses gnutls-cli before its first
//!   application byte (the ServerHello dropped on ingress, the socket aborted) and lets
//!   s_client through; `enforcer flows` shows the open connection's JA4;
//! - the same deny list with `s_server` on this host and gnutls-cli in the peer namespace: the
//!   ServerHello is dropped as it leaves, the client gets no answer and the server no byte.
//!
//! And in audit mode, a library rule's allow list no client matches reports s_client's
//! connection as `would-block` (`ja4`, `library`) and lets it complete.

use std::{net::IpAddr, process::Command, time::Duration};

use enforcer_tests::{
    Agent, Cert, Mode, NetNs, Server, cmd,
    content::free_port,
    ops::LongClient,
    ops::ctl,
    require_root, run_with_timeout,
    schema::{events_schema, validate_event},
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
/// A refused client fails this fast: its ServerHello is dropped and its socket aborted (the
/// wait for the JA4 verdict included).
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

const LEARN: &str = "\
mode: audit
default: allow
unattributed_tls: allow
";

fn agent(ns: &NetNs, policy: &str, extra: &[&str]) -> Agent {
    let mut args = enforcer_tests::hook_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, policy, &args);
    agent.wait_ready(READY);
    agent
}

/// `e`, checked against docs/events.schema.json (and printed: docs/events.md shows such lines).
fn checked(e: Value) -> Value {
    if let Err(why) = validate_event(&events_schema(), &e) {
        panic!("{why}: {e}");
    }
    println!("event: {e}");
    e
}

fn s_client(server: &Server) -> Command {
    cmd(
        "openssl",
        [
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-connect",
            &server.addr().to_string(),
        ],
    )
}

fn gnutls_cli(addr: std::net::SocketAddr, ns: Option<&NetNs>) -> Command {
    let args = [
        "--insecure".to_owned(),
        "--port".to_owned(),
        addr.port().to_string(),
        addr.ip().to_string(),
    ];
    match ns {
        Some(ns) => ns.exec("gnutls-cli", args),
        None => cmd("gnutls-cli", args),
    }
}

/// Runs `c` with `marker` on stdin and returns the JA4 of the next client `offered` event.
fn learn(agent: &mut Agent, mut c: Command, marker: &str, server: &Server) -> String {
    let out = run_with_timeout(&mut c, marker.as_bytes(), CLIENT);
    assert!(out.success(), "{out:?}");
    println!("{}: {:?} without ja4 rules", marker.trim(), out.elapsed);
    server.wait_received(marker.trim().as_bytes(), EVENT);
    let e = agent.wait_for(|v| v["type"] == "offered" && v["side"] == "client", EVENT);
    e["ja4"]
        .as_str()
        .unwrap_or_else(|| panic!("a JA4 was made: {e}"))
        .to_owned()
}

fn deny_policy(ja4: &str) -> String {
    format!(
        "mode: enforce\n\
         default: deny\n\
         ja4:\n  deny: [\"{ja4}\"]\n\
         libraries:\n  - family: openssl\n    action: allow\n  - family: gnutls\n    action: allow\n"
    )
}

#[test]
fn a_denied_ja4_is_dropped_at_the_server_hello_and_other_clients_pass() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::plain(&ns, peer, free_port(), &cert);
    let (openssl_ja4, gnutls_ja4) = {
        let mut a = agent(&ns, LEARN, &[]);
        let o = learn(&mut a, s_client(&server), "LEARN-OPENSSL\n", &server);
        let g = learn(
            &mut a,
            gnutls_cli(server.addr(), None),
            "LEARN-GNUTLS\n",
            &server,
        );
        (o, g)
    };
    assert_ne!(openssl_ja4, gnutls_ja4, "two stacks, two fingerprints");

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut agent = agent(
        &ns,
        &deny_policy(&gnutls_ja4),
        &["--control-socket", socket.to_str().unwrap()],
    );

    let marker = "GNUTLS-MUST-NOT-ARRIVE\n";
    let out = run_with_timeout(
        &mut gnutls_cli(server.addr(), None),
        marker.as_bytes(),
        CLIENT,
    );
    assert!(!out.success(), "gnutls-cli is refused: {out:?}");
    assert!(
        out.elapsed < REFUSED_WITHIN,
        "refused after {:?}",
        out.elapsed
    );
    let e = checked(agent.wait_for(
        |v| v["type"] == "negotiated" && v["library"]["family"] == "gnutls",
        EVENT,
    ));
    assert_eq!(e["ja4"], gnutls_ja4.as_str(), "{e}");
    assert_eq!(e["broken_rule"]["key"], "ja4", "{e}");
    assert_eq!(e["broken_rule"]["rule"], "host", "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(e["socket_aborted"], true, "{e}");
    assert_eq!(e["side"], "client", "{e}");
    let received = String::from_utf8_lossy(&server.received()).into_owned();
    assert!(
        !received.contains("MUST-NOT-ARRIVE"),
        "the peer got {received:?}"
    );

    let mut long = LongClient::openssl(server.addr());
    assert!(long.send(b"OPENSSL-PASSES\n"), "{}", agent.stderr());
    server.wait_received(b"OPENSSL-PASSES", EVENT);
    let e = checked(agent.wait_for(
        |v| v["type"] == "negotiated" && v["library"]["family"] == "openssl",
        EVENT,
    ));
    assert_eq!(e["ja4"], openssl_ja4.as_str(), "{e}");
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert!(e["broken_rule"].is_null(), "{e}");
    let port = e["local"]["port"].as_u64().unwrap();
    let flows = ctl(&socket, &["flows"]);
    let flow = flows["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| {
            f["local"]
                .as_str()
                .is_some_and(|l| l.ends_with(&format!(":{port}")))
        })
        .unwrap_or_else(|| panic!("the open connection is listed: {flows}"));
    assert_eq!(flow["ja4"], openssl_ja4.as_str(), "{flow}");
    drop(long);
    // What the wait for the verdict costs an allowed client the first time its hello is seen
    // (one TCP resend of the ServerHello when the verdict came after it), and that the next
    // connection with the same hello does not wait: the kernel's JA4 cache has its verdict.
    let held = |socket: &std::path::Path| {
        ctl(socket, &["status"])["counters"]["server_hellos_held"]
            .as_u64()
            .expect("the counter")
    };
    let mut elapsed = vec![];
    for i in 0..3 {
        let marker = format!("OPENSSL-ONE-SHOT-{i}\n");
        let before = held(&socket);
        let out = run_with_timeout(&mut s_client(&server), marker.as_bytes(), CLIENT);
        assert!(out.success(), "{out:?}");
        server.wait_received(marker.trim().as_bytes(), EVENT);
        let e = checked(agent.wait_for(
            |v| v["type"] == "negotiated" && v["library"]["family"] == "openssl",
            EVENT,
        ));
        assert_eq!(e["verdict"], "allowed", "{e}");
        if i > 0 {
            assert_eq!(
                held(&socket),
                before,
                "run {i}: its ServerHello did not wait"
            );
        }
        elapsed.push(out.elapsed);
    }
    println!("allowed s_client, first and cached: {elapsed:?}");
}

#[test]
fn a_server_on_this_host_drops_its_server_hello_to_a_denied_ja4() {
    require_root();
    let ns = NetNs::new();
    let (host, peer) = (IpAddr::V4(ns.host_v4), IpAddr::V4(ns.peer_v4));
    let cert = Cert::new(&[host, peer]);
    // The peer's gnutls-cli's JA4, learned on this host (the same binary and configuration).
    let learning = Server::plain(&ns, peer, free_port(), &cert);
    let gnutls_ja4 = {
        let mut a = agent(&ns, LEARN, &[]);
        learn(
            &mut a,
            gnutls_cli(learning.addr(), None),
            "LEARN\n",
            &learning,
        )
    };
    let server = Server::on_host(host, free_port(), &cert, Mode::Plain, &[]);
    let mut agent = agent(&ns, &deny_policy(&gnutls_ja4), &[]);
    let marker = "TO-HOST-MUST-NOT-ARRIVE\n";
    let out = run_with_timeout(
        &mut gnutls_cli(server.addr(), Some(&ns)),
        marker.as_bytes(),
        CLIENT,
    );
    assert!(!out.success(), "the peer's gnutls-cli is refused: {out:?}");
    let e = checked(agent.wait_for(
        |v| v["type"] == "negotiated" && v["side"] == "server",
        EVENT,
    ));
    assert_eq!(e["ja4"], gnutls_ja4.as_str(), "{e}");
    assert_eq!(
        e["library"]["family"], "openssl",
        "the server's library: {e}"
    );
    assert_eq!(e["broken_rule"]["key"], "ja4", "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    let received = String::from_utf8_lossy(&server.received()).into_owned();
    assert!(
        !received.contains("MUST-NOT-ARRIVE"),
        "this host's server got {received:?}"
    );
}

#[test]
fn audit_mode_reports_a_library_rules_unmet_allow_list_as_would_block() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::plain(&ns, peer, free_port(), &cert);
    const POLICY: &str = "\
mode: audit
default: deny
libraries:
  - family: openssl
    action: allow
    ja4:
      allow: [\"t13d0000h2_*_*\"]
";
    let mut agent = agent(&ns, POLICY, &[]);
    let marker = "AUDITED-PASSES\n";
    let out = run_with_timeout(&mut s_client(&server), marker.as_bytes(), CLIENT);
    assert!(out.success(), "audit mode lets it complete: {out:?}");
    server.wait_received(marker.trim().as_bytes(), EVENT);
    let e = checked(agent.wait_for(
        |v| v["type"] == "negotiated" && v["library"]["family"] == "openssl",
        EVENT,
    ));
    assert!(
        e["ja4"].as_str().is_some_and(|j| j.starts_with("t13")),
        "{e}"
    );
    assert_eq!(e["broken_rule"]["key"], "ja4", "{e}");
    assert_eq!(e["broken_rule"]["rule"], "library", "{e}");
    assert_eq!(e["verdict"], "would-block", "{e}");
}
