//! OpenSSL linked statically into an executable (a C client linked against Debian's `libssl.a`
//! and `libcrypto.a`) is recognised from the executable's own `.symtab` and attributed like the
//! shared library: family `openssl`, the executable as the library path. A copy whose symbols
//! carry aws-lc-sys's prefix (`aws_lc_0_28_0_SSL_write`) is recognised the same way and
//! enforced: the policy denies it by path, and its connection is dropped. Both programs are built
//! after the agent started, so the watcher examines them at `exec`.

use std::{net::IpAddr, process::Command, time::Duration};

use enforcer_tests::programs::{build_static_openssl, with_aws_lc_prefix};
use enforcer_tests::{Agent, Cert, NetNs, Server, require_root, run_with_timeout};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
const PORT: u16 = 8463;

const POLICY: &str = "\
mode: enforce
default: deny
libraries:
  - family: openssl
    action: allow
  - path: \"/tmp/enforcer-static-*/static-prefixed\"
    action: deny
";

fn connection(agent: &mut Agent, comm: &str, local: IpAddr, server: &Server) -> Value {
    agent.wait_connection(comm, local, server.addr(), EVENT)
}

#[test]
fn static_openssl_attributed_and_prefixed_copy_enforced() {
    require_root();
    let ns = NetNs::new();
    let (local, peer) = (IpAddr::V4(ns.host_v4), IpAddr::V4(ns.peer_v4));
    let cert = Cert::new(&[peer]);
    let server = Server::www(&ns, peer, PORT, &cert);
    let dir = tempfile::Builder::new()
        .prefix("enforcer-static-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let mut agent = Agent::with_policy(&ns.host_if, POLICY, &[]);
    agent.wait_ready(READY);

    let plain = build_static_openssl(dir.path(), "static-openssl");
    let prefixed = with_aws_lc_prefix(&plain, dir.path(), "static-prefixed");
    let run = |exe: &std::path::Path| {
        run_with_timeout(
            Command::new(exe)
                .arg(peer.to_string())
                .arg(PORT.to_string())
                .arg("GET / HTTP/1.0\r\n\r\n"),
            b"",
            CLIENT,
        )
    };

    let out = run(&plain);
    assert!(
        out.success() && out.stdout_str().contains("s_server"),
        "the static client must complete: {out:?}\n{}",
        agent.stderr()
    );
    let event = connection(&mut agent, "static-openssl", local, &server);
    assert_eq!(event["verdict"], "allowed", "{event}");
    assert_eq!(event["library"]["family"], "openssl", "{event}");
    assert_eq!(event["library"]["path"], plain.to_str().unwrap(), "{event}");

    let out = run(&prefixed);
    assert!(!out.success(), "the prefixed copy must be refused: {out:?}");
    assert!(
        out.elapsed < Duration::from_secs(2),
        "the prefixed copy took {:?} to fail",
        out.elapsed
    );
    let event = connection(&mut agent, "static-prefixed", local, &server);
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert_eq!(event["library"]["family"], "openssl", "{event}");
    assert_eq!(
        event["library"]["path"],
        prefixed.to_str().unwrap(),
        "{event}"
    );
}
