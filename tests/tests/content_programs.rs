//! End to end, on this kernel: two programs built here that defeat an attribution by the
//! sending thread, judged by the random their library made (docs/architecture.md,
//! "Content-bound attribution"), under an OpenSSL-only policy denying unattributed TLS.
//!
//! - `uring-tls-client`: OpenSSL over memory BIOs whose socket writes are io_uring
//!   `IORING_OP_SEND`s, inline and with `IOSQE_ASYNC` (an io-wq worker thread sends): allowed.
//! - `nested-tls-client`: a GnuTLS client whose push function sends its records from inside an
//!   OpenSSL call (a custom BIO of a throw-away `SSL`), so the innermost probed call of the
//!   sending thread is the allowed library's: refused, with no application byte at the peer.
//! - `launder-random-client`: OpenSSL's own ClientHello with a random the program asked
//!   libcrypto's `RAND_bytes` for (from inside `SSL_do_handshake`, or after it): the allowed
//!   random source made it, but not for libssl, so the hello is unattributed and refused.

use std::{net::IpAddr, time::Duration};

use enforcer_tests::{
    Cert, NetNs, Server,
    content::{REFUSED_WITHIN, openssl_only_agent},
    programs, require_root, run_with_timeout,
};

const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
const PORT: u16 = 9451;

#[test]
fn io_uring_sends_of_allowed_openssl_are_allowed_and_a_nested_denied_library_is_refused() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let uring = programs::build_uring_client(dir.path());
    let nested = programs::build_nested_client(dir.path());
    let ns = NetNs::new();
    let peers = [IpAddr::V4(ns.peer_v4), IpAddr::V6(ns.peer_v6)];
    let cert = Cert::new(&peers);
    let servers: Vec<Server> = peers
        .iter()
        .map(|&ip| Server::plain(&ns, ip, PORT, &cert))
        .collect();
    let (mut agent, _control) = openssl_only_agent(&ns);
    for server in &servers {
        let (host, port) = (server.addr().ip().to_string(), PORT.to_string());
        uring_and_nested(&mut agent, server, &host, &port, &uring, &nested);
    }
    drop(agent);
}

/// Over one server (`host`): the io_uring client inline and async, allowed by its random; the
/// nested GnuTLS client, refused.
fn uring_and_nested(
    agent: &mut enforcer_tests::Agent,
    server: &Server,
    host: &str,
    port: &str,
    uring: &std::path::Path,
    nested: &std::path::Path,
) {
    for mode in ["inline", "async"] {
        let line = format!("URING-{mode}-{host}\n");
        let mut c = std::process::Command::new(uring);
        c.args([host, port, line.as_str(), mode]);
        let out = run_with_timeout(&mut c, b"", CLIENT);
        assert_ne!(
            out.status.code(),
            Some(5),
            "this kernel has io_uring: {out:?}"
        );
        assert!(
            out.success(),
            "io_uring client ({mode}) refused: {out:?}\n{}",
            agent.stderr()
        );
        server.wait_received(line.as_bytes(), EVENT);
        let from: u16 = out
            .stdout_str()
            .lines()
            .find_map(|l| l.strip_prefix("sent from ")?.trim().parse().ok())
            .expect("the client prints its port");
        let e = agent.wait_for(
            move |v| v["type"] == "connection" && v["local"]["port"] == from,
            EVENT,
        );
        assert_eq!(e["library"]["family"], "openssl", "{mode}: {e}");
        assert_eq!(e["evidence"], "random", "{mode}: {e}");
        assert_eq!(e["verdict"], "allowed", "{mode}: {e}");
        assert_eq!(
            e["comm"], "uring-tls-clien",
            "{mode}: the process (comm is 15 bytes): {e}"
        );
    }

    // The client alone: start, fail to connect to a closed port (exit 2), exit.
    let started = std::time::Instant::now();
    let closed = enforcer_tests::content::free_port().to_string();
    let mut c = std::process::Command::new(nested);
    c.args([host, closed.as_str(), "-"]);
    let _ = run_with_timeout(&mut c, b"", CLIENT);
    let baseline = started.elapsed();
    let started = std::time::Instant::now();
    let mut c = std::process::Command::new(nested);
    c.args([host, port, "NESTED-GNUTLS\n"]);
    let out = run_with_timeout(&mut c, b"", CLIENT);
    let took = started.elapsed();
    assert!(
        !out.success(),
        "the nested GnuTLS client must be refused: {out:?}"
    );
    assert!(
        took < baseline + REFUSED_WITHIN,
        "nested: refused after {took:?} (the client alone: {baseline:?})"
    );
    let from: u16 = out
        .stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("from ")?.trim().parse().ok())
        .expect("the client prints its port");
    let e = agent.wait_for(
        move |v| {
            v["type"] == "connection"
                && v["local"]["port"] == from
                && v["library"]["family"] == "gnutls"
        },
        EVENT,
    );
    assert_eq!(e["evidence"], "random", "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert!(!String::from_utf8_lossy(&server.received()).contains("NESTED-GNUTLS"));
}

/// The forged hello over IPv4 and IPv6, its random asked for inside the allowed call (which also
/// sends it) and after it: no answer from the server, the socket closed within `REFUSED_WITHIN`
/// of the send, and a `client_hello` event, unattributed and blocked, for the 4-tuple.
#[test]
fn random_asked_of_the_allowed_source_by_other_code_is_not_the_library_s() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let launder = programs::build_launder_client(dir.path());
    let ns = NetNs::new();
    let peers = [IpAddr::V4(ns.peer_v4), IpAddr::V6(ns.peer_v6)];
    let cert = Cert::new(&peers);
    let servers: Vec<Server> = peers
        .iter()
        .map(|&ip| Server::plain(&ns, ip, PORT + 1, &cert))
        .collect();
    let (mut agent, _control) = openssl_only_agent(&ns);
    for server in &servers {
        let to = server.addr();
        for mode in ["inside", "outside"] {
            let mut c = std::process::Command::new(&launder);
            c.args([to.ip().to_string(), to.port().to_string(), mode.to_owned()]);
            let out = run_with_timeout(&mut c, b"", CLIENT);
            let stdout = out.stdout_str();
            assert!(
                !stdout.contains("answered"),
                "{mode} {to}: the server answered a laundered hello: {out:?}"
            );
            let closed_ms: u64 = stdout
                .lines()
                .find_map(|l| {
                    l.strip_prefix("closed after ")?
                        .strip_suffix(" ms")?
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| panic!("{mode} {to}: the socket was not closed: {out:?}"));
            assert!(
                u128::from(closed_ms) < REFUSED_WITHIN.as_millis(),
                "{mode} {to}: refused after {closed_ms} ms"
            );
            let from: u16 = stdout
                .lines()
                .find_map(|l| l.strip_prefix("from ")?.trim().parse().ok())
                .expect("the client prints its port");
            let e = agent.wait_for(
                move |v| v["type"] == "client_hello" && v["local"]["port"] == from,
                EVENT,
            );
            assert_eq!(e["attributed"], false, "{mode}: {e}");
            assert_eq!(e["verdict"], "blocked", "{mode}: {e}");
            assert_eq!(
                e["remote"]["addr"],
                to.ip().to_string().as_str(),
                "{mode}: {e}"
            );
            assert_eq!(e["remote"]["port"], to.port(), "{mode}: {e}");
        }
    }
    drop(agent);
}
