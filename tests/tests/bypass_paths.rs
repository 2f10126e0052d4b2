//! Paths around the plain TCP handshake, under an OpenSSL-only `default: deny` policy
//! (`content::OPENSSL_ONLY`), with real clients (docs/architecture.md, "TCP Fast Open and
//! MPTCP"): TCP Fast Open, where the ClientHello rides in the SYN, MPTCP, whose socket never
//! calls `tcp_sendmsg` (its bytes leave on a subflow), and QUIC, TLS inside UDP (docs/policy.md,
//! "QUIC"). The peer is `openssl s_server` in a
//! network namespace; the clients run on the host. Each test proves the path was really taken
//! (the server's `TcpExt` / `MPTcpExt` counters), else it would only re-test plain TCP.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cert, Mode, NetNs, Server, cmd,
    content::{OPENSSL_ONLY, REFUSED_WITHIN, free_port, openssl_only_agent},
    quic::{self, QuicServer},
    require_root, run_with_timeout,
    schema::{events_schema, validate_event},
    sh,
};

const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(20);
const PORT: u16 = 9461;
const MPTCP_PORT: u16 = 9463;
const QUIC_PORT: u16 = 9465;

/// One absolute `TcpExt` counter, in `ns` or (None) on the host, without touching nstat's history.
fn tcp_ext(ns: Option<&NetNs>, name: &str) -> u64 {
    let mut c = match ns {
        Some(ns) => ns.exec("nstat", ["-saz", name]),
        None => cmd("nstat", ["-saz", name]),
    };
    let out = sh(&mut c);
    out.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in nstat output: {out:?}"))
}

/// `gnutls-cli --fastopen` to `to`, `input` on its stdin.
fn gnutls(to: std::net::SocketAddr, input: &[u8]) -> enforcer_tests::Outcome {
    let port = to.port().to_string();
    let host = to.ip().to_string();
    let args = ["--insecure", "--fastopen", "--port", &port, &host];
    run_with_timeout(&mut cmd("gnutls-cli", args), input, CLIENT)
}

/// How long gnutls-cli takes to fail on its own (a closed local port): the refusal bound is
/// measured above it.
fn refusal_baseline() -> Duration {
    let closed = free_port().to_string();
    let started = Instant::now();
    let _ = run_with_timeout(
        &mut cmd("gnutls-cli", ["--insecure", "--port", &closed, "127.0.0.1"]),
        b"",
        CLIENT,
    );
    started.elapsed()
}

/// The `connection` event blocking gnutls on a connection to `to`.
fn blocked_gnutls(agent: &mut Agent, to: std::net::SocketAddr) -> serde_json::Value {
    agent.wait_for(
        move |v| {
            v["type"] == "connection"
                && v["library"]["family"] == "gnutls"
                && v["verdict"] == "blocked"
                && v["remote"]["addr"] == to.ip().to_string().as_str()
                && v["remote"]["port"] == to.port()
        },
        EVENT,
    )
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    }
}

/// curl with `--tcp-fastopen` (OpenSSL) completes with its hello in the SYN; gnutls-cli with
/// `--fastopen` is refused within `REFUSED_WITHIN`, its bytes never reach the peer, and the event
/// names gnutls and the 4-tuple. The SYN really carries data: the server counts
/// `TcpExtTCPFastOpenPassive` for curl, and for gnutls-cli before the agent starts.
#[test]
fn tcp_fast_open_hello_in_the_syn_is_judged() {
    require_root();
    let ns = NetNs::new();
    // 0x2 server, 0x400 on every listener without TCP_FASTOPEN, 0x200 no cookie needed.
    sh(&mut ns.exec("sysctl", ["-qw", "net.ipv4.tcp_fastopen=0x603"]));
    let (v4, v6) = (IpAddr::V4(ns.peer_v4), IpAddr::V6(ns.peer_v6));
    let cert = Cert::new(&[v4, v6]);
    let curl_peer = [
        Server::plain(&ns, v4, PORT, &cert),
        Server::plain(&ns, v6, PORT, &cert),
    ];
    let plain = [
        Server::plain(&ns, v4, PORT + 1, &cert),
        Server::plain(&ns, v6, PORT + 1, &cert),
    ];
    // Before the agent: gnutls-cli gets its cookie, then sends its hello in the SYN (the server
    // counts it). Under the agent the SYN is refused, so no counter can show it there.
    for plain in &plain {
        let to = plain.addr();
        for attempt in 0..2 {
            let passive = tcp_ext(Some(&ns), "TcpExtTCPFastOpenPassive");
            let marker = format!("GNUTLS-UNFILTERED-{attempt}\n");
            let out = gnutls(to, marker.as_bytes());
            plain.wait_received(marker.trim().as_bytes(), EVENT);
            if attempt == 1 {
                assert!(
                    tcp_ext(Some(&ns), "TcpExtTCPFastOpenPassive") > passive,
                    "gnutls-cli --fastopen sent no data in its SYN ({out:?})"
                );
            }
        }
    }
    let (mut agent, _control) = openssl_only_agent(&ns);
    for (curl_peer, plain) in curl_peer.iter().zip(&plain) {
        let to = curl_peer.addr();
        let host = url_host(to.ip());
        let url = format!("https://{host}:{}/", to.port());
        let curl = |path: &str| {
            run_with_timeout(
                &mut cmd(
                    "curl",
                    [
                        "-sk",
                        "--tcp-fastopen",
                        "--max-time",
                        "2",
                        &format!("{url}{path}"),
                    ],
                ),
                b"",
                CLIENT,
            )
        };
        // The first connection only fetches a cookie; the second sends its hello in the SYN.
        curl("PRIME");
        curl_peer.wait_received(b"PRIME", EVENT);
        let passive = tcp_ext(Some(&ns), "TcpExtTCPFastOpenPassive");
        let line = format!("TFO-CURL-{}", to.ip());
        let line = line.replace(':', "-");
        let out = curl(&line);
        curl_peer.wait_received(line.as_bytes(), EVENT);
        assert!(
            tcp_ext(Some(&ns), "TcpExtTCPFastOpenPassive") > passive,
            "curl's SYN carried no data: this ran plain TCP ({out:?})"
        );
        let e = agent.wait_for(
            move |v| {
                v["type"] == "connection"
                    && v["comm"] == "curl"
                    && v["remote"]["addr"] == to.ip().to_string().as_str()
                    && v["remote"]["port"] == to.port()
                    && v["verdict"] == "allowed"
            },
            EVENT,
        );
        assert_eq!(e["library"]["family"], "openssl", "{e}");

        // gnutls-cli: its own cookie for the plain server, then a TFO hello that is refused.
        let to = plain.addr();
        let baseline = refusal_baseline();
        let seen = plain.received().len();
        let mut refused = None;
        for attempt in 0..2 {
            let marker = format!("TFO-GNUTLS-{attempt}\n");
            let started = Instant::now();
            let out = gnutls(to, marker.as_bytes());
            let took = started.elapsed();
            assert!(!out.success(), "the denied client must fail: {out:?}");
            assert!(
                took < baseline + REFUSED_WITHIN,
                "{to}: refused after {took:?} (the client alone: {baseline:?})"
            );
            let got = plain.received();
            assert_eq!(
                got.len(),
                seen,
                "application bytes reached the peer: {:?}",
                String::from_utf8_lossy(&got[seen..])
            );
            refused = Some(blocked_gnutls(&mut agent, to));
        }
        let e = refused.expect("an event");
        assert!(e["local"]["port"].as_u64().is_some_and(|p| p > 0), "{e}");
    }
}

/// An allowed client on an MPTCP socket (system libssl): sends one line, waits until the peer
/// acknowledged it, exits.
const MPTCP_CLIENT: &str = r#"
import fcntl, socket, ssl, struct, sys, termios, time
host, port, line = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                  socket.IPPROTO_MPTCP)
s.settimeout(10)
s.connect((host, port))
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="mptcp.example")
t.sendall(line.encode() + b"\n")
deadline = time.monotonic() + 5
while struct.unpack("i", fcntl.ioctl(t.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]:
    if time.monotonic() > deadline:
        sys.exit("the peer never acknowledged the line")
    time.sleep(0.005)
"#;

/// MPTCP from both sides (the server under `mptcpize`): a Python client on an `IPPROTO_MPTCP`
/// socket with the system libssl completes and its event names OpenSSL; `gnutls-cli` under
/// `mptcpize` is refused within `REFUSED_WITHIN` with no byte at the peer, and its event names
/// gnutls. The MPTCP socket's own send path has no TCP hook: the hello is judged on the
/// subflow by the egress classifier, by its random.
#[test]
fn mptcp_connections_are_judged_by_their_hello() {
    require_root();
    if !std::path::Path::new("/proc/sys/net/mptcp/enabled").exists() {
        println!("SKIP: this kernel has no MPTCP (no /proc/sys/net/mptcp)");
        return;
    }
    let ns = NetNs::new();
    sh(&mut ns.exec("sysctl", ["-qw", "net.mptcp.enabled=1"]));
    let host_enabled = std::fs::read_to_string("/proc/sys/net/mptcp/enabled").unwrap_or_default();
    assert_eq!(
        host_enabled.trim(),
        "1",
        "net.mptcp.enabled is off on this host: the test would run plain TCP"
    );
    let (v4, v6) = (IpAddr::V4(ns.peer_v4), IpAddr::V6(ns.peer_v6));
    let cert = Cert::new(&[v4, v6]);
    let mptcp = ["mptcpize", "run"];
    let servers = [
        Server::start_via(&ns, &mptcp, v4, MPTCP_PORT, &cert, Mode::Plain),
        Server::start_via(&ns, &mptcp, v6, MPTCP_PORT, &cert, Mode::Plain),
    ];
    let (mut agent, _control) = openssl_only_agent(&ns);
    for server in &servers {
        let to = server.addr();
        let capable = || tcp_ext(Some(&ns), "MPTcpExtMPCapableSYNRX");
        let before = capable();
        let line = format!("MPTCP-PYTHON-{}", to.ip()).replace(':', "-");
        let out = run_with_timeout(
            &mut cmd(
                "python3",
                [
                    "-c",
                    MPTCP_CLIENT,
                    &to.ip().to_string(),
                    &to.port().to_string(),
                    &line,
                ],
            ),
            b"",
            CLIENT,
        );
        assert!(out.success(), "the allowed MPTCP client failed: {out:?}");
        server.wait_received(line.as_bytes(), EVENT);
        assert!(
            capable() > before,
            "{to}: the Python client's connection was not MPTCP"
        );
        let e = agent.wait_for(
            move |v| {
                v["type"] == "connection"
                    && v["comm"] == "python3"
                    && v["remote"]["addr"] == to.ip().to_string().as_str()
                    && v["remote"]["port"] == to.port()
            },
            EVENT,
        );
        assert_eq!(e["verdict"], "allowed", "{e}");
        assert_eq!(e["library"]["family"], "openssl", "{e}");

        let baseline = refusal_baseline();
        let seen = server.received().len();
        let before = capable();
        let port = to.port().to_string();
        let host = to.ip().to_string();
        let started = Instant::now();
        let out = run_with_timeout(
            &mut cmd(
                "mptcpize",
                ["run", "gnutls-cli", "--insecure", "--port", &port, &host],
            ),
            b"MPTCP-GNUTLS\n",
            CLIENT,
        );
        let took = started.elapsed();
        let e = blocked_gnutls(&mut agent, to);
        assert_eq!(e["comm"], "gnutls-cli", "{e}");
        assert!(!out.success(), "the denied client must fail: {out:?}");
        assert!(
            took < baseline + REFUSED_WITHIN,
            "{to}: refused after {took:?} (the client alone: {baseline:?}); event {e}; agent: {}",
            agent.stderr()
        );
        assert!(
            capable() > before,
            "{to}: gnutls-cli's connection was not MPTCP"
        );
        let got = server.received();
        assert_eq!(
            got.len(),
            seen,
            "application bytes reached the peer: {:?}",
            String::from_utf8_lossy(&got[seen..])
        );
    }
}

/// `quic` events of `agent` for `addr` as the remote (`send`) or local (`recv`) end.
fn quic_event(
    agent: &mut Agent,
    dir: &'static str,
    end: std::net::SocketAddr,
) -> serde_json::Value {
    let side = if dir == "send" { "remote" } else { "local" };
    agent.wait_for(
        move |v| {
            v["type"] == "quic"
                && v["direction"] == dir
                && v[side]["addr"] == end.ip().to_string().as_str()
                && v[side]["port"] == end.port()
        },
        EVENT,
    )
}

/// QUIC with real peers (aioquic), both directions, IPv4 and IPv6. Under the OpenSSL-only
/// policy (`default: deny`, so `quic: deny`) no handshake completes: a host client's Initials
/// are dropped at tc egress, a namespace client's to a server on the host at ingress (tc on the veth); the
/// servers see nothing and each event names the 4-tuple, the direction and version 1. With
/// `quic: audit` the same clients complete and are reported.
#[test]
fn quic_initials_are_judged_by_the_quic_policy() {
    require_root();
    let ns = NetNs::new();
    let (v4, v6) = (IpAddr::V4(ns.peer_v4), IpAddr::V6(ns.peer_v6));
    let (h4, h6) = (IpAddr::V4(ns.host_v4), IpAddr::V6(ns.host_v6));
    let cert = Cert::new(&[v4, v6, h4, h6]);
    let in_ns = ["ip", "netns", "exec", ns.name.as_str()];
    let sock = |ip| std::net::SocketAddr::new(ip, QUIC_PORT);
    let remote = [
        QuicServer::start(&in_ns, sock(v4), &cert),
        QuicServer::start(&in_ns, sock(v6), &cert),
    ];
    let local = [
        QuicServer::start(&[], sock(h4), &cert),
        QuicServer::start(&[], sock(h6), &cert),
    ];
    // Without the agent every pair completes: the peers work, and the paths are QUIC.
    let runs: [(&[&str], &QuicServer); 4] = [
        (&[], &remote[0]),
        (&[], &remote[1]),
        (&in_ns, &local[0]),
        (&in_ns, &local[1]),
    ];
    for (via, server) in runs {
        let out = quic::client(via, server.addr(), "QUIC-UNFILTERED");
        assert!(out.success(), "{}: {out:?}", server.addr());
        server.wait_printed("line QUIC-UNFILTERED", EVENT);
    }
    let handshakes = |s: &QuicServer| s.printed().matches("handshake").count();
    {
        let (mut agent, _control) = openssl_only_agent(&ns);
        for (via, server) in runs {
            let before = handshakes(server);
            let out = quic::client(via, server.addr(), "QUIC-DENIED");
            assert!(
                !out.success(),
                "{}: a denied QUIC client completed: {out:?}",
                server.addr()
            );
            assert_eq!(
                handshakes(server),
                before,
                "{}: {}",
                server.addr(),
                server.printed()
            );
            let dir = if via.is_empty() { "send" } else { "recv" };
            let e = quic_event(&mut agent, dir, server.addr());
            validate_event(&events_schema(), &e).unwrap_or_else(|why| panic!("{why}"));
            assert_eq!(e["verdict"], "blocked", "{e}");
            assert_eq!(e["version"], "1", "{e}");
        }
    }
    let args = enforcer_tests::hook_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let policy = format!("{OPENSSL_ONLY}quic: audit\n");
    let mut agent = Agent::with_policy(&ns.host_if, &policy, &args);
    agent.wait_ready(Duration::from_secs(60));
    for (via, server) in runs {
        let out = quic::client(via, server.addr(), "QUIC-AUDITED");
        assert!(
            out.success(),
            "{}: an audited QUIC client failed: {out:?}",
            server.addr()
        );
        server.wait_printed("line QUIC-AUDITED", EVENT);
        let dir = if via.is_empty() { "send" } else { "recv" };
        let e = quic_event(&mut agent, dir, server.addr());
        validate_event(&events_schema(), &e).unwrap_or_else(|why| panic!("{why}"));
        assert_eq!(e["verdict"], "audited", "{e}");
    }
}
