//! End to end, on this kernel: two programs built here that defeat an attribution by the
//! sending thread, judged by the random their library made (docs/architecture.md,
//! "Content-bound attribution"), under an OpenSSL-only policy denying unattributed TLS.
//!
//! - `uring-tls-client`: OpenSSL over memory BIOs whose socket writes are io_uring
//!   `IORING_OP_SEND`s, inline and with `IOSQE_ASYNC` (an io-wq worker thread sends): allowed.
//! - `nested-tls-client`: a GnuTLS client whose push function sends its records from inside an
//!   OpenSSL call (a custom BIO of a throw-away `SSL`), so the innermost probed call of the
//!   sending thread is the allowed library's: refused, with no application byte at the peer.

use std::{net::IpAddr, time::Duration};

use enforcer_tests::{Agent, Cert, NetNs, Server, programs, require_root, run_with_timeout};

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
const PORT: u16 = 9451;

const OPENSSL_ONLY: &str = "\
mode: enforce
default: deny
unattributed_tls: deny
libraries:
  - family: openssl
    action: allow
";

#[test]
fn io_uring_sends_of_allowed_openssl_are_allowed_and_a_nested_denied_library_is_refused() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let uring = programs::build_uring_client(dir.path());
    let nested = programs::build_nested_client(dir.path());
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::plain(&ns, peer, PORT, &cert);
    let args = enforcer_tests::hook_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, OPENSSL_ONLY, &args);
    agent.wait_ready(READY);
    let (host, port) = (peer.to_string(), PORT.to_string());

    for mode in ["inline", "async"] {
        let line = format!("URING-{mode}\n");
        let mut c = std::process::Command::new(&uring);
        c.args([host.as_str(), port.as_str(), line.as_str(), mode]);
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

    let mut c = std::process::Command::new(&nested);
    c.args([host.as_str(), port.as_str(), "NESTED-GNUTLS\n"]);
    let out = run_with_timeout(&mut c, b"", CLIENT);
    assert!(
        !out.success(),
        "the nested GnuTLS client must be refused: {out:?}"
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
    drop(agent);
}
