//! The host layer judges hellos (issue 16, item 3): with `--host-layer cgroup`, the egress
//! judge tc runs on the named interfaces also runs for every local socket, on every interface
//! (loopback here, which no tc program of the agent is on). A hello no probed library made is
//! unattributed TLS there as on the named interfaces, whichever end sends it; an allowed hello
//! still has its fields read (`offered`) and its ServerHello judged (`negotiated`) through the
//! host layer's own readers. On a named interface the same segment then meets tc, which finds
//! it judged: one verdict, one count.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cert, Mode, NetNs, Server, cmd,
    content::{
        Background, OPENSSL_ONLY, REFUSED_WITHIN, free_port, late_attribution,
        status_counter as counter, wait_listening,
    },
    programs, require_root, run_with_timeout,
    schema::{events_schema, validate_event},
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);

/// The agent on the host end of `ns` (the connections below never touch it but the last
/// test's), with the host layer and a control socket in `dir`.
fn agent(ns: &NetNs, dir: &tempfile::TempDir) -> (Agent, std::path::PathBuf) {
    let socket = dir.path().join("agent.sock");
    let (agent, _) = Agent::ready_with_policy(
        ns,
        OPENSSL_ONLY,
        &[
            "--host-layer",
            "cgroup",
            "--control-socket",
            &socket.display().to_string(),
        ],
        READY,
    );
    (agent, socket)
}

/// The `client_hello` event of the hello `hello` (client or server) whose local end is
/// 127.0.0.1:`local_port` (server) or whose remote port is `remote_port` (client).
fn hello_event(agent: &mut Agent, hello: &'static str, port: u16) -> Value {
    let event = agent.wait_for(
        move |v| {
            v["type"] == "client_hello"
                && v["hello"] == hello
                && v["local"]["addr"] == "127.0.0.1"
                && match hello {
                    "server" => v["local"]["port"] == port,
                    _ => v["remote"]["port"] == port,
                }
        },
        EVENT,
    );
    validate_event(&events_schema(), &event).unwrap_or_else(|e| panic!("{e}: {event}"));
    event
}

/// A ClientHello record written by hand on a plain socket (this test's own, no TLS library in
/// it): no probed library made its random, so it is unattributed TLS, and on loopback only the
/// host layer sees it. It is dropped, the socket aborted, and the listener gets no byte. (The
/// kernel path is the same for any sender; `layers.rs` refuses an unprivileged user's GnuTLS
/// on loopback.)
#[test]
fn an_unattributed_client_hello_on_loopback_is_refused_by_the_host_layer() {
    use std::io::{Read, Write};
    require_root();
    let ns = NetNs::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut agent, socket) = agent(&ns, &dir);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen on loopback");
    let port = listener.local_addr().expect("addr").port();
    let received = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut got = vec![];
        let _ = conn.read_to_end(&mut got);
        got
    });
    let mut client = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    client.set_read_timeout(Some(CLIENT)).ok();
    // Record and handshake headers, version, a random, one suite, no extension: the hello of
    // tests/programs/hello-flood. It waits for an answer that never comes.
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 47, 0x01, 0x00, 0x00, 43, 0x03, 0x03];
    hello.extend((0..32u8).map(|i| i.wrapping_mul(37) ^ (port as u8)));
    hello.extend([0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00, 0x00, 0x00]);
    let late = late_attribution(&socket);
    let sent = Instant::now();
    client.write_all(&hello).expect("send the hello");
    if late {
        let event = hello_event(&mut agent, "client", port);
        assert_eq!(event["attributed"], false, "{event}");
        assert_eq!(event["verdict"], "audited", "{event}");
        return;
    }
    let answer = client.read(&mut [0u8; 1]);
    let took = sent.elapsed();
    assert!(
        // Aborted: the agent destroys this very socket (ECONNABORTED).
        answer
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionAborted),
        "the client was not refused: {answer:?}"
    );
    assert!(took < REFUSED_WITHIN, "refused after {took:?}");
    let event = hello_event(&mut agent, "client", port);
    assert_eq!(event["attributed"], false, "{event}");
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert_eq!(event["remote"]["addr"], "127.0.0.1", "{event}");
    let got = received.join().expect("listener thread");
    assert!(got.is_empty(), "the listener received {} bytes", got.len());
    assert!(counter(&socket, "cgroup_drops") >= 1, "{}", agent.stderr());
    assert_eq!(counter(&socket, "tc_drops"), 0);
}

/// A stripped static OpenSSL server (no symbol for enforcer to probe) on loopback: its
/// ServerHello has a random no probed library made, so it is refused, though the client's
/// OpenSSL is allowed.
#[test]
fn a_server_no_probe_sees_is_refused_on_loopback_by_its_server_hello() {
    require_root();
    let ns = NetNs::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let cert = Cert::new(&[lo]);
    let hidden = programs::build_hidden_server(dir.path());
    let port = free_port();
    let mut server = Command::new(&hidden);
    server
        .args(["127.0.0.1", &port.to_string()])
        .arg(cert.cert_path())
        .arg(cert.key_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Background(server.spawn().expect("hidden-tls-server"));
    wait_listening(SocketAddr::new(lo, port));
    let (mut agent, socket) = agent(&ns, &dir);
    // From spawn to exit, against the same client giving up on a closed port: OpenSSL's own
    // start is most of the time (seconds under the VMs' emulation), the refusal the rest.
    let s_client = |to: String| {
        let started = Instant::now();
        let args = ["s_client", "-quiet", "-connect", to.as_str()];
        let out = run_with_timeout(&mut cmd("openssl", args), b"MUST-NOT-ARRIVE\n", CLIENT);
        (out, started.elapsed())
    };
    if late_attribution(&socket) {
        s_client(format!("127.0.0.1:{port}"));
        let event = hello_event(&mut agent, "server", port);
        assert_eq!(event["attributed"], false, "{event}");
        assert_eq!(event["verdict"], "audited", "{event}");
        return;
    }
    let (_, baseline) = s_client(format!("127.0.0.1:{}", free_port()));
    let (out, took) = s_client(format!("127.0.0.1:{port}"));
    assert!(!out.success(), "s_client must fail: {out:?}");
    assert!(
        took < baseline + REFUSED_WITHIN,
        "took {took:?}, against {baseline:?} for a closed port"
    );
    let event = hello_event(&mut agent, "server", port);
    assert_eq!(event["attributed"], false, "{event}");
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert!(counter(&socket, "cgroup_drops") >= 1, "{}", agent.stderr());
}

/// Allowed OpenSSL both ways on loopback: the host layer's ClientHello reader reports what the
/// client offered, its ServerHello reader what the server chose; and through the named
/// interface, where the host layer and tc both see the hello, it is judged once.
#[test]
fn allowed_hellos_are_read_by_the_host_layer_and_judged_once_on_a_named_interface() {
    require_root();
    let ns = NetNs::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let cert = Cert::new(&[lo, IpAddr::V4(ns.peer_v4)]);
    let port = free_port();
    let server = Server::on_host(lo, port, &cert, Mode::Plain, &[]);
    let (mut agent, socket) = agent(&ns, &dir);
    let line = b"allowed over loopback\n";
    s_client_sends(&format!("127.0.0.1:{port}"), line, &server);
    let hello = hello_event(&mut agent, "client", port);
    assert_eq!(hello["verdict"], "allowed", "{hello}");
    let offered = agent.wait_for(
        move |v| v["type"] == "offered" && v["side"] == "client" && v["remote"]["port"] == port,
        EVENT,
    );
    validate_event(&events_schema(), &offered).unwrap_or_else(|e| panic!("{e}: {offered}"));
    let negotiated = agent.wait_for(
        move |v| v["type"] == "negotiated" && v["local"]["port"] == port,
        EVENT,
    );
    validate_event(&events_schema(), &negotiated).unwrap_or_else(|e| panic!("{e}: {negotiated}"));
    assert_eq!(negotiated["verdict"], "allowed", "{negotiated}");
    drop(server);

    // Through the veth, where tc egress judges too.
    let peer = Server::plain(&ns, IpAddr::V4(ns.peer_v4), 9561, &cert);
    let before = counter(&socket, "client_hellos");
    let started = Instant::now();
    s_client_sends(&format!("{}:9561", ns.peer_v4), line, &peer);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let hellos = counter(&socket, "client_hellos") - before;
    assert_eq!(
        hellos,
        1,
        "one ClientHello, judged once: {}",
        agent.stderr()
    );
    assert_eq!(counter(&socket, "tc_drops"), 0);
}

/// OpenSSL's `s_client` to `to` sends `line`, which `server` receives.
fn s_client_sends(to: &str, line: &[u8], server: &Server) {
    let args = ["s_client", "-quiet", "-no_ign_eof", "-connect", to];
    let out = run_with_timeout(&mut cmd("openssl", args), line, CLIENT);
    assert!(out.success(), "s_client must complete: {out:?}");
    server.wait_received(line, EVENT);
}
