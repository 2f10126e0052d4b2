//! End to end, on this kernel: hellos attributed by the random their library made
//! (docs/architecture.md, "Content-bound attribution"), under an OpenSSL-only policy that denies
//! everything else, unattributed TLS included.
//!
//! - Stacks that write the socket outside the TLS call (Python `asyncio` over memory BIOs, Node.js
//!   with its own OpenSSL, a local relay in front of an OpenSSL client) are allowed: their
//!   ClientHello carries a random libssl made inside `SSL_do_handshake`.
//! - A denied library and TLS no probed library made are refused however the bytes travel: through
//!   a relay that writes one byte per segment (`socat -b1`), split by the sender itself, or sent on
//!   a socket an allowed `SSL_do_handshake` touched first (the thread-based attribution alone
//!   would call that flow allowed).
//!
//! The peer is `openssl s_server` in a network namespace; the agent watches the host end of the
//! veth pair; clients and relays run on the host.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cert, NetNs, Outcome, Server, cmd, require_root, run_with_timeout,
    static_client::build_static_client,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(20);
const PORT: u16 = 9447;
/// How soon a refused client must have given up, spawn to exit. Measured on 6.18: 11 ms for
/// gnutls-cli through the 1-byte relay (the relay's socket is aborted, the relay closes the
/// client's); the bound leaves room for a loaded machine.
const REFUSED_WITHIN: Duration = Duration::from_millis(500);

const OPENSSL_ONLY: &str = "\
mode: enforce
default: deny
unattributed_tls: deny
libraries:
  - family: openssl
    action: allow
";

struct Peer {
    server: Server,
    /// The same server's twin on the peer's IPv6 address.
    server6: Server,
    _cert: Cert,
    ns: NetNs,
    peer: IpAddr,
    dir: tempfile::TempDir,
}

fn peer() -> Peer {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let peer6 = IpAddr::V6(ns.peer_v6);
    let cert = Cert::new(&[peer, peer6]);
    let server = Server::plain(&ns, peer, PORT, &cert);
    let server6 = Server::plain(&ns, peer6, PORT, &cert);
    Peer {
        server,
        server6,
        _cert: cert,
        ns,
        peer,
        dir,
    }
}

fn start_agent(ns: &NetNs) -> Agent {
    let args = enforcer_tests::hook_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, OPENSSL_ONLY, &args);
    let ready = agent.wait_ready(READY);
    CONTROL_SOCKET.with(|c| *c.borrow_mut() = ready["control_socket"].as_str().map(Into::into));
    agent
}

thread_local! {
    /// The running agent's control socket (from its `ready` event).
    static CONTROL_SOCKET: std::cell::RefCell<Option<std::path::PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// A background process killed on Drop (a relay).
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port for a relay.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// `socat` listening on 127.0.0.1, relaying each connection to `to` (one byte per write with
/// `-b1`). Returns once it listens.
fn relay(to: SocketAddr, one_byte: bool) -> (Background, u16) {
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork");
    let target = format!("TCP:{to}");
    let mut c = Command::new("socat");
    if one_byte {
        c.args(["-b1"]);
    }
    c.args([&listen, &target]);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = Background(
        c.spawn()
            .expect("socat (Debian package socat; cargo xtask setup)"),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "socat never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// The `connection` event towards `server` for which `also` holds.
fn connection(
    agent: &mut Agent,
    server: SocketAddr,
    also: impl Fn(&Value) -> bool + 'static,
) -> Value {
    agent.wait_for(
        move |v| {
            v["type"] == "connection"
                && v["remote"]["addr"] == server.ip().to_string().as_str()
                && v["remote"]["port"] == server.port()
                && also(v)
        },
        EVENT,
    )
}

/// The `client_hello` event towards the server from local port `local_port`.
fn hello_from(agent: &mut Agent, server: SocketAddr, local_port: u16) -> Value {
    agent.wait_for(
        move |v| {
            v["type"] == "client_hello"
                && v["remote"]["port"] == server.port()
                && v["local"]["port"] == local_port
        },
        EVENT,
    )
}

fn python(script: &str, args: &[&str]) -> Outcome {
    let mut c = cmd("python3", ["-c", script]);
    c.args(args);
    run_with_timeout(&mut c, b"", CLIENT)
}

const ASYNCIO_CLIENT: &str = r#"
import asyncio, ssl, sys
async def main(host, port, line):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="asyncio.example")
    w.write(line.encode())
    await w.drain()
    print("sent from", w.get_extra_info("sockname")[1], flush=True)
    await asyncio.sleep(0.3)
    w.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"#;

const NODE_CLIENT: &str = r#"
const tls = require('tls');
const [host, port, line] = process.argv.slice(1);
const s = tls.connect({ host, port: +port, servername: 'node.example', rejectUnauthorized: false }, () => {
  s.write(line, () => { console.log('sent from', s.localPort); setTimeout(() => s.end(), 300); });
});
s.on('error', (e) => { console.error('error', e.message); process.exit(1); });
"#;

const URLLIB_CLIENT: &str = r#"
import ssl, sys, urllib.request
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    urllib.request.urlopen(sys.argv[1], context=ctx, timeout=3)
except Exception as e:
    print("after the handshake:", type(e).__name__, flush=True)
"#;

/// Every OpenSSL client kind, over IPv4 and IPv6: each completes (the server receives its line)
/// and its connection event names OpenSSL, the process, and the 4-tuple.
#[test]
fn openssl_clients_of_every_kind_are_allowed_by_their_random() {
    let p = peer();
    let mut agent = start_agent(&p.ns);
    for (server, local) in [
        (&p.server, IpAddr::V4(p.ns.host_v4)),
        (&p.server6, IpAddr::V6(p.ns.host_v6)),
    ] {
        let to = server.addr();
        let host = to.ip().to_string();
        let port = to.port().to_string();
        let url_host = match to.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };

        // curl: the thread inside SSL_connect writes the socket (and its random names it too).
        let line = format!("CURL-THROUGH-{host}\n");
        let url = format!("https://{url_host}:{port}/{}", line.trim());
        let _ = run_with_timeout(
            &mut cmd("curl", ["-sk", "--max-time", "3", &url]),
            b"",
            CLIENT,
        );
        server.wait_received(line.trim().as_bytes(), EVENT);
        let e = connection(&mut agent, to, |v| v["comm"] == "curl");
        assert_eq!(e["library"]["family"], "openssl", "{e}");
        assert_eq!(e["verdict"], "allowed", "{e}");
        assert_eq!(e["local"]["addr"], local.to_string(), "{e}");

        // Python urllib: the system libssl over the socket.
        let line = format!("URLLIB-THROUGH-{host}");
        let url = format!("https://{url_host}:{port}/{line}");
        let out = python(URLLIB_CLIENT, &[&url]);
        server.wait_received(line.as_bytes(), EVENT);
        let e = connection(&mut agent, to, |v| v["comm"] == "python3");
        assert_eq!(e["library"]["family"], "openssl", "{e} ({out:?})");
        assert_eq!(e["verdict"], "allowed", "{e}");

        // Python asyncio: the system libssl over memory BIOs; the event loop writes the socket.
        let line = format!("ASYNCIO-THROUGH-{host}\n");
        let out = python(ASYNCIO_CLIENT, &[&host, &port, &line]);
        allowed_by_random(&mut agent, server, &out, &line, "python3");

        // Node.js: its own OpenSSL linked into the node executable; libuv writes the socket.
        let line = format!("NODE-THROUGH-{host}\n");
        let mut c = cmd("node", ["-e", NODE_CLIENT, &host, &port, &line]);
        let out = run_with_timeout(&mut c, b"", CLIENT);
        allowed_by_random(&mut agent, server, &out, &line, "node");
    }
    drop(agent);
    drop(p.dir);
}

/// `out`, a client that printed `sent from PORT`, completed; the server got `line`; its
/// connection event names OpenSSL by the random it made, in process `comm`.
fn allowed_by_random(agent: &mut Agent, server: &Server, out: &Outcome, line: &str, comm: &str) {
    assert!(
        out.success(),
        "{comm} client refused: {out:?}\n{}",
        agent.stderr()
    );
    server.wait_received(line.as_bytes(), EVENT);
    let from = sent_from(out);
    let e = connection(agent, server.addr(), move |v| v["local"]["port"] == from);
    assert_eq!(e["library"]["family"], "openssl", "{e}");
    assert_eq!(e["evidence"], "random", "{e}");
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["comm"], comm, "the process that made the random: {e}");
}

/// The local port a client script printed (`sent from PORT`).
fn sent_from(out: &Outcome) -> u16 {
    out.stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("sent from ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `sent from PORT` line: {out:?}"))
}

#[test]
fn relayed_allowed_client_passes_and_one_byte_relay_cannot_split_a_denied_one() {
    let p = peer();
    let mut agent = start_agent(&p.ns);
    let to = p.server.addr();

    // curl → socat → server: socat's outgoing socket carries libssl's ClientHello.
    let (_relay, port) = relay(to, false);
    let line = "RELAYED-OPENSSL\n";
    let mut c = cmd(
        "openssl",
        [
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ],
    );
    let out = run_with_timeout(&mut c, line.as_bytes(), Duration::from_secs(3));
    p.server.wait_received(line.as_bytes(), EVENT);
    let e = connection(&mut agent, to, |v| v["library"]["family"] == "openssl");
    assert_eq!(e["evidence"], "random", "{e} ({out:?})");
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(
        e["local"]["addr"],
        p.ns.host_v4.to_string(),
        "the relay's socket: {e}"
    );

    // gnutls-cli → socat -b1 → server: 1-byte segments, collected and judged by the random.
    let (_split, port) = relay(to, true);
    let started = Instant::now();
    let out = run_with_timeout(
        &mut cmd(
            "gnutls-cli",
            ["--insecure", "--port", &port.to_string(), "127.0.0.1"],
        ),
        b"GNUTLS-SPLIT\n",
        CLIENT,
    );
    let took = started.elapsed();
    assert!(!out.success(), "the denied client must fail: {out:?}");
    assert!(took < REFUSED_WITHIN, "refused after {took:?}");
    let e = connection(&mut agent, to, |v| v["library"]["family"] == "gnutls");
    assert_eq!(e["evidence"], "random", "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert!(!String::from_utf8_lossy(&p.server.received()).contains("GNUTLS-SPLIT"));

    // An unprobed (static, stripped) OpenSSL client through the same relay: unattributed.
    let client = build_static_client(p.dir.path());
    let mut hidden = Command::new(&client);
    hidden.args([
        "127.0.0.1",
        &port.to_string(),
        "split.example",
        "HIDDEN-SPLIT\n",
    ]);
    let out = run_with_timeout(&mut hidden, b"", CLIENT);
    assert!(!out.success(), "the unattributed client must fail: {out:?}");
    let e = agent.wait_for(
        |v| v["type"] == "client_hello" && v["attributed"] == false && v["remote"]["port"] == PORT,
        EVENT,
    );
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(
        e["server_name_status"], "unreadable",
        "split: the name is not in one segment: {e}"
    );
    assert!(!String::from_utf8_lossy(&p.server.received()).contains("HIDDEN-SPLIT"));
    let status = agent_status_counter("hellos_split");
    assert!(status >= 2, "hellos_split = {status}");
    drop(agent);
    drop(p.dir);
}

/// A crafted ClientHello (random from `os.urandom`: no library made it), sent on a socket an
/// allowed libssl touched first (server-mode `SSL_do_handshake` reading it: the thread-based
/// attribution says "openssl"), and then by a client that splits it into 1-byte writes.
const CRAFTED_HELLOS: &str = r#"
import os, socket, ssl, struct, sys, time
host, port, cert, key, how = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def client_hello(name):
    sni = name.encode()
    ext = struct.pack("!HHHBH", 0, len(sni) + 5, len(sni) + 3, 0, len(sni)) + sni
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs
s = socket.create_connection((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print("from", s.getsockname()[1], flush=True)
if how == "laundered":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls = ctx.wrap_socket(socket.socket(fileno=os.dup(s.fileno())), server_side=True, do_handshake_on_connect=False)
    tls.setblocking(False)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    s.sendall(client_hello("laundered.example"))
else:
    for b in client_hello("split.example"):
        s.send(bytes([b]))
        time.sleep(0.001)
s.settimeout(2)
try:
    print("answer", len(s.recv(100)), flush=True)
except Exception as e:
    print("no answer", type(e).__name__, flush=True)
"#;

#[test]
fn hello_no_library_made_is_refused_after_an_allowed_read_and_when_split() {
    let p = peer();
    let mut agent = start_agent(&p.ns);
    let to = p.server.addr();
    let (host, port) = (p.peer.to_string(), PORT.to_string());
    let cert = Cert::new(&[IpAddr::V4(p.ns.host_v4)]);
    let (cert_path, key_path) = (path_str(cert.cert_path()), path_str(cert.key_path()));
    for how in ["laundered", "split"] {
        let out = python(CRAFTED_HELLOS, &[&host, &port, &cert_path, &key_path, how]);
        let stdout = out.stdout_str();
        let local_port: u16 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("from ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{how}: no local port: {out:?}"));
        assert!(
            !stdout.lines().any(|l| l.starts_with("answer ")),
            "{how}: the server answered a hello no library made: {out:?}"
        );
        let e = hello_from(&mut agent, to, local_port);
        assert_eq!(e["attributed"], false, "{how}: {e}");
        assert_eq!(e["verdict"], "blocked", "{how}: {e}");
    }
    drop(agent);
    drop(p.dir);
}

/// This host as the server: `openssl s_server` that accepts only P-256, and a client in the
/// namespace that offers an X25519 key share first, so the server's first hello is a
/// HelloRetryRequest (a fixed random, made by no library), then a ChangeCipherSpec, then the real
/// ServerHello. The head moves past the first two and finds libssl's random in the third.
#[test]
fn openssl_server_after_a_hello_retry_is_judged_by_its_random() {
    require_root();
    let ns = NetNs::new();
    let host = IpAddr::V4(ns.host_v4);
    let cert = Cert::new(&[host]);
    let server = Server::on_host(
        host,
        PORT,
        &cert,
        enforcer_tests::Mode::Plain,
        &["-groups", "P-256"],
    );
    let mut agent = start_agent(&ns);
    let before = agent_status_counter("hellos_by_random");
    let line = "AFTER-RETRY\n";
    let connect = format!("{host}:{PORT}");
    let mut c = ns.exec(
        "openssl",
        [
            "s_client",
            "-quiet",
            "-groups",
            "X25519:P-256",
            "-connect",
            &connect,
        ],
    );
    let _ = run_with_timeout(&mut c, line.as_bytes(), Duration::from_secs(3));
    server.wait_received(line.as_bytes(), EVENT);
    let e = agent.wait_for(
        |v| {
            v["type"] == "connection"
                && v["library"]["family"] == "openssl"
                && v["local"]["port"] == PORT
        },
        EVENT,
    );
    assert_eq!(e["verdict"], "allowed", "{e}");
    let after = agent_status_counter("hellos_by_random");
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

/// This host as the server with a denied library: `gnutls-serv` refused at its ServerHello (its
/// thread's receive, or the random it made), the client in the namespace fails at once, and
/// nothing it sends reaches the server.
#[test]
fn gnutls_server_is_refused() {
    require_root();
    let ns = NetNs::new();
    let host = IpAddr::V4(ns.host_v4);
    let cert = Cert::new(&[host]);
    let port = free_port().to_string();
    let mut serv = Command::new("gnutls-serv");
    serv.args(["--echo", "--port", &port, "--x509certfile"])
        .arg(cert.cert_path())
        .arg("--x509keyfile")
        .arg(cert.key_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _serv = Background(serv.spawn().expect("gnutls-serv"));
    let started = Instant::now();
    while std::net::TcpStream::connect((ns.host_v4, port.parse::<u16>().unwrap())).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gnutls-serv never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut agent = start_agent(&ns);
    let connect = format!("{host}:{port}");
    let started = Instant::now();
    let mut c = ns.exec("openssl", ["s_client", "-connect", &connect]);
    let out = run_with_timeout(&mut c, b"TO-A-DENIED-SERVER\n", CLIENT);
    let took = started.elapsed();
    assert!(
        !out.success() && out.stdout_str().contains("handshake has read 0 bytes"),
        "the handshake with a denied server must not complete: {out:?}"
    );
    assert!(took < REFUSED_WITHIN, "refused after {took:?}");
    let e = agent.wait_for(
        |v| v["type"] == "connection" && v["library"]["family"] == "gnutls",
        EVENT,
    );
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(
        e["local"]["port"].to_string(),
        port,
        "the server's end: {e}"
    );
    drop(agent);
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

/// One `STATS` counter of the running agent, from `enforcer status`.
fn agent_status_counter(name: &str) -> u64 {
    let socket = CONTROL_SOCKET
        .with(|c| c.borrow().clone())
        .expect("agent ready");
    let status = enforcer_tests::ops::ctl(&socket, &["status"]);
    status["counters"][name].as_u64().unwrap_or(0)
}
