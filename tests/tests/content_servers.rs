//! End to end, on this kernel: this host as the TLS server, judged by the random in the
//! ServerHello it sends (docs/architecture.md, "Content-bound attribution"), under an
//! OpenSSL-only policy that denies everything else, unattributed TLS included. Clients run in a
//! network namespace; the agent watches the host end of the veth pair.
//!
//! - OpenSSL servers are allowed by their random: after a HelloRetryRequest, and driven through
//!   a `BIO_f_ssl` (`s_server -www`), whose handshake runs in no function enforcer probes.
//! - `gnutls-serv` is refused by the random GnuTLS made, and a server no probe sees (OpenSSL
//!   linked statically and stripped) by its unattributed ServerHello.

use std::{
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    Cert, Mode, NetNs, Server,
    content::{
        Background, REFUSED_WITHIN, free_port, late_attribution, openssl_only_agent,
        status_counter, wait_listening,
    },
    programs, require_root, run_with_timeout,
};

const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(20);
const PORT: u16 = 9448;

/// The two addresses of this host on the veth pair.
fn host_addrs(ns: &NetNs) -> [IpAddr; 2] {
    [IpAddr::V4(ns.host_v4), IpAddr::V6(ns.host_v6)]
}

/// `openssl s_server` that accepts only P-256, and a client in the namespace that offers an
/// X25519 key share first, so the server's first hello is a HelloRetryRequest (a fixed random,
/// made by no library), then a ChangeCipherSpec, then the real ServerHello. The head moves past
/// the first two and finds libssl's random in the third.
#[test]
fn openssl_server_after_a_hello_retry_is_judged_by_its_random() {
    require_root();
    let ns = NetNs::new();
    let host = IpAddr::V4(ns.host_v4);
    let cert = Cert::new(&[host]);
    let server = Server::on_host(host, PORT, &cert, Mode::Plain, &["-groups", "P-256"]);
    let (mut agent, control) = openssl_only_agent(&ns);
    let before = status_counter(&control, "hellos_by_random");
    let line = "AFTER-RETRY\n";
    let connect = format!("{host}:{PORT}");
    let mut c = ns.exec(
        "openssl",
        [
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-groups",
            "X25519:P-256",
            "-connect",
            &connect,
        ],
    );
    // The client exits once its line is sent (stdin's end): a slow machine (a TCG VM) gets the
    // whole client bound for the handshake, rather than a kill in the middle of it.
    let _ = run_with_timeout(&mut c, line.as_bytes(), CLIENT);
    server.wait_received(line.as_bytes(), EVENT);
    let e = agent.wait_for(
        |v| {
            v["type"] == "connection"
                && v["library"]["family"] == "openssl"
                && v["local"]["port"] == PORT
        },
        EVENT,
    );
    // The server's thread read the ClientHello inside `SSL_accept` first (`evidence: thread`);
    // the ServerHello's random then confirms the library.
    assert_eq!(e["verdict"], "allowed", "{e}");
    let after = status_counter(&control, "hellos_by_random");
    assert!(
        after > before,
        "the real ServerHello after the retry was not judged by its random ({before} -> {after})"
    );
    assert!(
        !agent
            .events()
            .iter()
            .any(|v| v["type"] == "client_hello" && v["hello"] == "server"),
        "no unattributed ServerHello"
    );
    drop(agent);
}

/// `openssl s_server -www` answers through a `BIO_f_ssl`: libssl runs the handshake from
/// inside `BIO_gets`, in none of the functions enforcer probes, so only the caller of the random
/// source (libssl's code, where `SSL_new` said it lies) tells the random is libssl's. Allowed
/// over IPv4 and IPv6, the connection event naming OpenSSL, the server process and the 4-tuple
/// as the client sees it.
#[test]
fn openssl_server_driven_through_a_bio_is_allowed_by_its_random() {
    require_root();
    let ns = NetNs::new();
    let cert = Cert::new(&host_addrs(&ns));
    let servers: Vec<Server> = host_addrs(&ns)
        .into_iter()
        .map(|ip| Server::on_host(ip, PORT, &cert, Mode::Www, &[]))
        .collect();
    let (mut agent, _control) = openssl_only_agent(&ns);
    for server in &servers {
        let to = server.addr();
        let mut c = ns.exec(
            "openssl",
            ["s_client", "-quiet", "-connect", &to.to_string()],
        );
        let out = run_with_timeout(&mut c, b"GET / HTTP/1.0\r\n\r\n", CLIENT);
        assert!(
            out.stdout_str().contains("HTTP/1.0 200 ok"),
            "the -www server did not answer over {to}: {out:?}\n{}",
            agent.stderr()
        );
        let e = agent.wait_for(
            move |v| {
                v["type"] == "connection"
                    && v["local"]["addr"] == to.ip().to_string().as_str()
                    && v["local"]["port"] == PORT
            },
            EVENT,
        );
        assert_eq!(e["library"]["family"], "openssl", "{e}");
        assert_eq!(e["evidence"], "random", "{e}");
        assert_eq!(e["verdict"], "allowed", "{e}");
        assert_eq!(e["comm"], "openssl", "the server process: {e}");
    }
    assert!(
        !agent
            .events()
            .iter()
            .any(|v| v["type"] == "client_hello" && v["hello"] == "server"),
        "no unattributed ServerHello"
    );
    drop(agent);
}

/// A client in the namespace against a denied server on this host: it fails having read
/// nothing of the server's handshake, within `REFUSED_WITHIN` more than the same client takes to
/// start and give up on a closed port of the same address (`ip netns exec` and OpenSSL's own
/// start-up are most of the time here).
fn refused_client(ns: &NetNs, to: SocketAddr) {
    let closed = SocketAddr::new(to.ip(), free_port());
    let started = Instant::now();
    let mut c = ns.exec("openssl", ["s_client", "-connect", &closed.to_string()]);
    let _ = run_with_timeout(&mut c, b"", CLIENT);
    let baseline = started.elapsed();
    let started = Instant::now();
    let mut c = ns.exec("openssl", ["s_client", "-connect", &to.to_string()]);
    let out = run_with_timeout(&mut c, b"TO-A-DENIED-SERVER\n", CLIENT);
    let took = started.elapsed();
    assert!(
        !out.success() && out.stdout_str().contains("handshake has read 0 bytes"),
        "the handshake with a denied server over {to} must not complete: {out:?}"
    );
    assert!(
        took < baseline + REFUSED_WITHIN,
        "{to}: refused after {took:?} (the client alone: {baseline:?})"
    );
}

/// `gnutls-serv` on this host: refused at its ServerHello by the random GnuTLS made, over IPv4
/// and IPv6; nothing of the handshake reaches the client.
#[test]
fn gnutls_server_is_refused() {
    require_root();
    let ns = NetNs::new();
    let cert = Cert::new(&host_addrs(&ns));
    let port = free_port();
    let mut serv = Command::new("gnutls-serv");
    serv.args(["--echo", "--port", &port.to_string(), "--x509certfile"])
        .arg(cert.cert_path())
        .arg("--x509keyfile")
        .arg(cert.key_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _serv = Background(serv.spawn().expect("gnutls-serv"));
    wait_listening(SocketAddr::new(IpAddr::V4(ns.host_v4), port));
    let (mut agent, _control) = openssl_only_agent(&ns);
    for ip in host_addrs(&ns) {
        let to = SocketAddr::new(ip, port);
        refused_client(&ns, to);
        let e = agent.wait_for(
            move |v| {
                v["type"] == "connection"
                    && v["library"]["family"] == "gnutls"
                    && v["local"]["addr"] == ip.to_string().as_str()
            },
            EVENT,
        );
        // Refused as soon as its thread reads the ClientHello (`evidence: thread`), or at the
        // latest by its ServerHello's random.
        assert_eq!(e["verdict"], "blocked", "{e}");
        assert_eq!(e["local"]["port"], port, "the server's end: {e}");
    }
    drop(agent);
}

/// A server no probe sees (OpenSSL linked statically and stripped): its ServerHello carries a
/// random no probed library made, on a flow no probed call touched, so it is unattributed TLS and
/// refused, over IPv4 and IPv6, with a `client_hello` event (`hello: server`) for the 4-tuple.
#[test]
fn server_no_probe_sees_is_refused_by_its_server_hello() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let hidden = programs::build_hidden_server(dir.path());
    let ns = NetNs::new();
    let cert = Cert::new(&host_addrs(&ns));
    let port = free_port();
    let mut servers = Vec::new();
    for ip in host_addrs(&ns) {
        let mut c = Command::new(&hidden);
        c.arg(ip.to_string())
            .arg(port.to_string())
            .arg(cert.cert_path())
            .arg(cert.key_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        servers.push(Background(c.spawn().expect("hidden-tls-server")));
        wait_listening(SocketAddr::new(ip, port));
    }
    let (mut agent, control) = openssl_only_agent(&ns);
    let late = late_attribution(&control);
    for ip in host_addrs(&ns) {
        let to = SocketAddr::new(ip, port);
        if !late {
            refused_client(&ns, to);
        } else {
            let mut c = ns.exec("openssl", ["s_client", "-connect", &to.to_string()]);
            run_with_timeout(&mut c, b"", CLIENT);
        }
        let e = agent.wait_for(
            move |v| {
                v["type"] == "client_hello"
                    && v["hello"] == "server"
                    && v["local"]["addr"] == ip.to_string().as_str()
            },
            EVENT,
        );
        assert_eq!(e["attributed"], false, "{e}");
        let verdict = if late { "audited" } else { "blocked" };
        assert_eq!(e["verdict"], verdict, "{e}");
        assert_eq!(e["local"]["port"], port, "the server's end: {e}");
        assert_eq!(
            e["remote"]["addr"],
            match ip {
                IpAddr::V4(_) => ns.peer_v4.to_string(),
                IpAddr::V6(_) => ns.peer_v6.to_string(),
            },
            "the client's end: {e}"
        );
    }
    drop(agent);
    drop(servers);
}
