//! The harness itself works: namespaces, certificates, servers, clients, teardown.

use std::{cell::RefCell, net::IpAddr, panic::AssertUnwindSafe, time::Duration};

use enforcer_tests::{
    Cert, NetNs, Server, cmd, link_exists, netns_exists, require_root, run_with_timeout,
};

#[test]
fn namespaces_servers_and_clients() {
    require_root();
    let ns = NetNs::new();
    let (name, host_if) = (ns.name.clone(), ns.host_if.clone());
    let peers = [IpAddr::V4(ns.peer_v4), IpAddr::V6(ns.peer_v6)];
    let cert = Cert::new(&peers);

    // -www: curl from the root namespace reaches the peer over both families.
    for ip in peers {
        let www = Server::www(&ns, ip, 4433, &cert);
        let mut curl = cmd("curl", ["-sk", "--max-time", "5", &www.url()]);
        let out = run_with_timeout(&mut curl, b"", Duration::from_secs(10));
        assert!(out.success(), "curl {} failed: {out:?}", www.url());
        assert!(
            out.stdout_str().contains("s_server"),
            "not the status page: {}",
            out.stdout_str()
        );
    }

    // Plain: s_server's stdout holds exactly what s_client sent.
    for ip in peers {
        let plain = Server::plain(&ns, ip, 4434, &cert);
        let payload = format!("harness payload over {ip}\n\x01\x02 binary tail");
        let addr = plain.addr().to_string();
        let mut client = cmd(
            "openssl",
            ["s_client", "-quiet", "-no_ign_eof", "-connect", &addr],
        );
        let out = run_with_timeout(&mut client, payload.as_bytes(), Duration::from_secs(10));
        assert!(out.success(), "s_client to {addr} failed: {out:?}");
        let got = plain.wait_received(payload.as_bytes(), Duration::from_secs(5));
        assert_eq!(got, payload.as_bytes(), "the server got other bytes too");
    }

    // A client that hangs is killed at the deadline.
    let out = run_with_timeout(&mut cmd("sleep", ["30"]), b"", Duration::from_millis(300));
    assert!(out.timed_out && !out.success());
    assert!(
        out.elapsed < Duration::from_secs(2),
        "not killed in time: {:?}",
        out.elapsed
    );

    drop(cert);
    drop(ns);
    assert!(!netns_exists(&name), "namespace {name} left behind");
    assert!(!link_exists(&host_if), "veth {host_if} left behind");
}

#[test]
fn teardown_on_panic() {
    require_root();
    let names = RefCell::new(None);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let ns = NetNs::new();
        let _server = Server::www(&ns, IpAddr::V4(ns.peer_v4), 4433, &Cert::new(&[]));
        *names.borrow_mut() = Some((ns.name.clone(), ns.host_if.clone()));
        panic!("test body panics with the guards alive");
    }));
    assert!(result.is_err());
    let (name, host_if) = names.take().expect("the namespace was made");
    assert!(
        !netns_exists(&name),
        "namespace {name} left behind after a panic"
    );
    assert!(
        !link_exists(&host_if),
        "veth {host_if} left behind after a panic"
    );
}
