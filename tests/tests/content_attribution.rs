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
//! The peer is `openssl s_server` in a network namespace, on IPv4 and IPv6; the agent watches
//! the host end of the veth pair; clients and relays run on the host. This host as the server:
//! `content_servers.rs`; clients built here: `content_programs.rs`.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cert, NetNs, Outcome, Server, cmd,
    content::{Background, REFUSED_WITHIN, free_port, openssl_only_agent, status_counter},
    require_root, run_with_timeout,
    static_client::build_static_client,
};
use serde_json::Value;

const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(20);
const PORT: u16 = 9447;

struct Peer {
    server: Server,
    /// The same server's twin on the peer's IPv6 address.
    server6: Server,
    _cert: Cert,
    ns: NetNs,
    dir: tempfile::TempDir,
}

fn peer() -> Peer {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let ns = NetNs::new();
    let (peer, peer6) = (IpAddr::V4(ns.peer_v4), IpAddr::V6(ns.peer_v6));
    let cert = Cert::new(&[peer, peer6]);
    let server = Server::plain(&ns, peer, PORT, &cert);
    let server6 = Server::plain(&ns, peer6, PORT, &cert);
    Peer {
        server,
        server6,
        _cert: cert,
        ns,
        dir,
    }
}

impl Peer {
    /// The IPv4 and the IPv6 server.
    fn servers(&self) -> [&Server; 2] {
        [&self.server, &self.server6]
    }
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
    let (mut agent, _control) = openssl_only_agent(&p.ns);
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

/// An OpenSSL client that binds a fixed local port, writes `line`, prints its pid and resets the
/// connection (`SO_LINGER` 0: no TIME_WAIT on either side), so the next process can reuse the
/// very same 4-tuple at once.
const SAME_PORT_CLIENT: &str = r#"
import fcntl, os, socket, ssl, struct, sys, termios, time
host, port, src, line = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", src))
s.connect((host, port))
t = ctx.wrap_socket(s, server_hostname="reuse.example")
t.sendall(line.encode())
print("pid", os.getpid(), flush=True)
# The close below is a reset (no TIME_WAIT, so the port is free for the next process): first
# wait until the peer has acknowledged every byte (SIOCOUTQ = bytes not yet acknowledged), so
# the line is in its receive queue and the reset cannot overtake it.
deadline = time.monotonic() + 5
while struct.unpack("i", fcntl.ioctl(t.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]:
    if time.monotonic() > deadline:
        sys.exit("the peer never acknowledged the line")
    time.sleep(0.005)
t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
t.close()
"#;

/// One 4-tuple, used by three processes in turn: each one's `client_hello` and `connection`
/// events name that process, never the previous user of the 4-tuple (clients reuse a port as
/// soon as their socket is gone; the agent once joined a hello to the 4-tuple's last owner).
#[test]
fn a_reused_4_tuple_names_each_connections_own_process() {
    let p = peer();
    let (mut agent, _control) = openssl_only_agent(&p.ns);
    for server in p.servers() {
        let to = server.addr();
        let src = free_port();
        for i in 0..3 {
            let line = format!("SAME-PORT-{src}-{i}\n");
            let out = python(
                SAME_PORT_CLIENT,
                &[
                    &to.ip().to_string(),
                    &to.port().to_string(),
                    &src.to_string(),
                    &line,
                ],
            );
            assert!(out.success(), "client {i} from port {src}: {out:?}");
            server.wait_received(line.trim().as_bytes(), EVENT);
            let pid: u64 = out
                .stdout_str()
                .lines()
                .find_map(|l| l.strip_prefix("pid ")?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no pid line: {out:?}"));
            let hello = hello_from(&mut agent, to, src);
            assert_eq!(hello["pid"], pid, "client {i}'s hello: {hello}");
            assert_eq!(hello["comm"], "python3", "{hello}");
            assert_eq!(hello["library"]["family"], "openssl", "{hello}");
            let conn = connection(&mut agent, to, move |v| v["local"]["port"] == src);
            assert_eq!(conn["pid"], pid, "client {i}'s connection: {conn}");
        }
    }
}

/// Relays in front of the clients, over IPv4 and IPv6: an allowed client's ClientHello relayed
/// by socat is libssl's, on the relay's socket; a denied one is refused directly, through the
/// relay, and through a relay that writes one byte per segment, and so is a client no probe sees.
#[test]
fn relayed_allowed_client_passes_and_one_byte_relay_cannot_split_a_denied_one() {
    let p = peer();
    let (mut agent, control) = openssl_only_agent(&p.ns);
    let hidden = build_static_client(p.dir.path());
    for server in p.servers() {
        let to = server.addr();
        let family = if to.is_ipv4() { "v4" } else { "v6" };
        let local = match to.ip() {
            IpAddr::V4(_) => p.ns.host_v4.to_string(),
            IpAddr::V6(_) => p.ns.host_v6.to_string(),
        };

        // openssl s_client → socat → server: socat's outgoing socket carries libssl's hello.
        let (_relay, port) = relay(to, false);
        let line = format!("RELAYED-OPENSSL-{family}\n");
        // The client runs until the server has its line (its stdin stays open: s_client does
        // not close before the relay has forwarded everything), then is killed: no fixed
        // deadline that a slow machine (a TCG VM) could hit mid-handshake.
        let mut client = cmd(
            "openssl",
            [
                "s_client",
                "-quiet",
                "-connect",
                &format!("127.0.0.1:{port}"),
            ],
        );
        let mut client = client
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client runs");
        let mut stdin = client.stdin.take().expect("stdin is piped");
        std::io::Write::write_all(&mut stdin, line.as_bytes()).expect("the client's stdin");
        let client = Background(client);
        server.wait_received(line.as_bytes(), EVENT);
        drop((stdin, client));
        let e = connection(&mut agent, to, |v| v["library"]["family"] == "openssl");
        assert_eq!(e["evidence"], "random", "{e}");
        assert_eq!(e["verdict"], "allowed", "{e}");
        assert_eq!(e["local"]["addr"], local, "the relay's socket: {e}");

        // gnutls-cli directly, through the relay, and through socat -b1 (1-byte segments,
        // collected and judged by the random).
        let (_split, split_port) = relay(to, true);
        let targets = [
            (to.ip().to_string(), to.port(), "direct"),
            ("127.0.0.1".to_owned(), port, "relayed"),
            ("127.0.0.1".to_owned(), split_port, "split"),
        ];
        // The client alone: start, fail to connect to a closed port, exit.
        let started = Instant::now();
        let closed = free_port().to_string();
        let _ = run_with_timeout(
            &mut cmd("gnutls-cli", ["--insecure", "--port", &closed, "127.0.0.1"]),
            b"",
            CLIENT,
        );
        let baseline = started.elapsed();
        for (host, port, how) in targets {
            let marker = format!("GNUTLS-{how}-{family}\n");
            let started = Instant::now();
            let out = run_with_timeout(
                &mut cmd(
                    "gnutls-cli",
                    ["--insecure", "--port", &port.to_string(), &host],
                ),
                marker.as_bytes(),
                CLIENT,
            );
            let took = started.elapsed();
            assert!(
                !out.success(),
                "{how}: the denied client must fail: {out:?}"
            );
            assert!(
                took < baseline + REFUSED_WITHIN,
                "{how} {family}: refused after {took:?} (the client alone: {baseline:?})"
            );
            let e = connection(&mut agent, to, |v| {
                v["library"]["family"] == "gnutls" && v["verdict"] == "blocked"
            });
            if how != "direct" {
                // The relay's socket: no GnuTLS thread touched it, its random names it.
                assert_eq!(e["evidence"], "random", "{how}: {e}");
            }
            assert!(!String::from_utf8_lossy(&server.received()).contains(marker.trim()));
        }

        // An unprobed (static, stripped) OpenSSL client through the 1-byte relay: unattributed.
        let marker = format!("HIDDEN-SPLIT-{family}\n");
        let mut c = Command::new(&hidden);
        c.args([
            "127.0.0.1",
            &split_port.to_string(),
            "split.example",
            &marker,
        ]);
        let started = Instant::now();
        let out = run_with_timeout(&mut c, b"", CLIENT);
        let took = started.elapsed();
        assert!(!out.success(), "the unattributed client must fail: {out:?}");
        assert!(
            took < REFUSED_WITHIN,
            "hidden {family}: refused after {took:?}"
        );
        let e = agent.wait_for(
            move |v| {
                v["type"] == "client_hello"
                    && v["attributed"] == false
                    && v["remote"]["addr"] == to.ip().to_string().as_str()
            },
            EVENT,
        );
        assert_eq!(e["verdict"], "blocked", "{e}");
        assert_eq!(e["local"]["addr"], local, "the relay's socket: {e}");
        assert_eq!(
            e["server_name_status"], "unreadable",
            "split: the name is not in one segment: {e}"
        );
        assert!(!String::from_utf8_lossy(&server.received()).contains(marker.trim()));
    }
    let split = status_counter(&control, "hellos_split");
    assert!(split >= 4, "hellos_split = {split}");
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
    let (mut agent, _control) = openssl_only_agent(&p.ns);
    let cert = Cert::new(&[IpAddr::V4(p.ns.host_v4)]);
    let (cert_path, key_path) = (path_str(cert.cert_path()), path_str(cert.key_path()));
    for server in p.servers() {
        let to = server.addr();
        let (host, port) = (to.ip().to_string(), to.port().to_string());
        for how in ["laundered", "split"] {
            let out = python(CRAFTED_HELLOS, &[&host, &port, &cert_path, &key_path, how]);
            let stdout = out.stdout_str();
            let local_port: u16 = stdout
                .lines()
                .find_map(|l| l.strip_prefix("from ")?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{how}: no local port: {out:?}"));
            assert!(
                !stdout.lines().any(|l| l.starts_with("answer ")),
                "{how} {host}: the server answered a hello no library made: {out:?}"
            );
            let e = hello_from(&mut agent, to, local_port);
            assert_eq!(e["attributed"], false, "{how}: {e}");
            assert_eq!(e["verdict"], "blocked", "{how}: {e}");
            assert_eq!(e["remote"]["addr"], host.as_str(), "{how}: {e}");
        }
    }
    drop(agent);
    drop(p.dir);
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}
