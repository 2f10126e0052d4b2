//! JA4 of real clients, computed from the fields the kernel reads: curl (OpenSSL), gnutls-cli,
//! Python's `ssl`, a Go `crypto/tls` client and the rustls client with aws-lc-rs preferring
//! X25519MLKEM768 (a 1.4 KiB ClientHello) connect from this host to a capture server in the
//! peer namespace, which reads each ClientHello record and answers nothing. The agent's
//! `offered` event (fields read by the egress reader, JA4 made in userspace) must give the JA4
//! that an independent reference implementation here makes from the captured bytes.
//!
//! curl also runs in the peer namespace against a server on this host: the hello read as it
//! arrives (tc ingress) gives the same JA4 as curl's own from this host.
//!
//! Each client runs twice: with the interface's defaults (a hello larger than the MSS leaves as
//! one GSO packet), and with the peer's MSS clamped to 128 and one segment per packet
//! (`gso_max_segs 1`), so every hello here spans two to twelve segments, which the reader
//! reassembles.

use std::{
    io::{BufRead, BufReader},
    net::IpAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use enforcer_tests::programs::build_go;
use enforcer_tests::{Agent, Cert, Mode, NetNs, Server, cmd, require_root, run_with_timeout, sh};
use serde_json::Value;
use sha2::{Digest, Sha256};

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(10);
const PORT: u16 = 8494;

const POLICY: &str = "\
mode: audit
default: allow
unattributed_tls: allow
";

/// Reads one TLS record per connection, prints `CLIENT_PORT HEX`, closes.
const CAPTURE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("listening", flush=True)
while True:
    c, addr = s.accept()
    c.settimeout(5)
    data = b""
    try:
        while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    print(addr[1], data.hex(), flush=True)
    c.close()
"#;

struct Capture {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Capture {
    fn start(ns: &NetNs, ip: IpAddr) -> Capture {
        let mut child = ns
            .exec(
                "python3",
                ["-c", CAPTURE, &ip.to_string(), &PORT.to_string()],
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("the capture server starts");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(EVENT)
            .expect("the capture server listens");
        assert_eq!(first, "listening");
        Capture { child, lines }
    }

    /// The next connection's client port and first record.
    fn next(&self, what: &str) -> (u16, Vec<u8>) {
        let line = self
            .lines
            .recv_timeout(EVENT)
            .unwrap_or_else(|_| panic!("{what}: the capture server saw no ClientHello"));
        let (port, hex) = line.split_once(' ').expect("PORT HEX");
        let bytes = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        (port.parse().expect("a port"), bytes)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reference: JA4 from a ClientHello record, written from FoxIO's specification
/// (technical_details/JA4.md) independently of `enforcer::agent::events::ja4`.
fn reference_ja4(record: &[u8]) -> String {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> &'a [u8] {
            assert!(self.0.len() >= n, "the captured hello is cut short");
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        }
        fn u8(&mut self) -> usize {
            self.take(1)[0] as usize
        }
        fn u16(&mut self) -> usize {
            let b = self.take(2);
            (b[0] as usize) << 8 | b[1] as usize
        }
        fn vec16(&mut self) -> Vec<u16> {
            let n = self.u16();
            self.take(n)
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect()
        }
    }
    let grease = |v: &u16| (v >> 8) == (v & 0xff) && v & 0x0f == 0x0a;
    assert_eq!(record[0], 0x16, "a handshake record");
    let mut c = Cursor(&record[5..]);
    assert_eq!(c.u8(), 1, "a ClientHello");
    c.take(3);
    let legacy = c.u16() as u16;
    c.take(32);
    let sid = c.u8();
    c.take(sid);
    let ciphers: Vec<u16> = c.vec16().into_iter().filter(|v| !grease(v)).collect();
    let comp = c.u8();
    c.take(comp);
    let (mut exts, mut sigs, mut versions) = (vec![], vec![], vec![]);
    let (mut sni, mut alpn) = (false, None::<Vec<u8>>);
    if !c.0.is_empty() {
        let total = c.u16();
        let mut e = Cursor(c.take(total));
        while !e.0.is_empty() {
            let kind = e.u16() as u16;
            let len = e.u16();
            let mut data = Cursor(e.take(len));
            if grease(&kind) {
                continue;
            }
            exts.push(kind);
            match kind {
                0x0000 => sni = true,
                0x0010 => {
                    let n = data.u16();
                    let mut list = Cursor(data.take(n));
                    if !list.0.is_empty() {
                        let n = list.u8();
                        alpn = Some(list.take(n).to_vec());
                    }
                }
                0x000d => sigs = data.vec16().into_iter().filter(|v| !grease(v)).collect(),
                0x002b => {
                    let n = data.u8();
                    versions = data
                        .take(n)
                        .chunks(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .filter(|v| !grease(v))
                        .collect();
                }
                _ => {}
            }
        }
    }
    let version = match versions.iter().max().copied().unwrap_or(legacy) {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        _ => "00",
    };
    let alpn = match alpn.as_deref() {
        None | Some([]) => "00".to_string(),
        Some(v) => {
            let (f, l) = (v[0], v[v.len() - 1]);
            if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() {
                format!("{}{}", f as char, l as char)
            } else {
                let h = hex_of(v);
                format!("{}{}", &h[..1], &h[h.len() - 1..])
            }
        }
    };
    let hash = |s: String| match s.is_empty() {
        true => "000000000000".to_string(),
        false => hex_of(&Sha256::digest(s.as_bytes()))[..12].to_string(),
    };
    let join = |v: &[u16]| {
        v.iter()
            .map(|x| format!("{x:04x}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut sorted_ciphers = ciphers.clone();
    sorted_ciphers.sort();
    let mut sorted_exts: Vec<u16> = exts
        .iter()
        .copied()
        .filter(|e| *e != 0 && *e != 0x10)
        .collect();
    sorted_exts.sort();
    let mut c_part = join(&sorted_exts);
    if !sigs.is_empty() {
        c_part = format!("{c_part}_{}", join(&sigs));
    }
    format!(
        "t{version}{}{:02}{:02}{alpn}_{}_{}",
        if sni { 'd' } else { 'i' },
        ciphers.len().min(99),
        exts.len().min(99),
        hash(join(&sorted_ciphers)),
        hash(c_part)
    )
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// tests/programs/rustls-client with aws-lc-rs and rustls' `prefer-post-quantum` (its key
/// shares: X25519MLKEM768, 1,216 bytes, and X25519), as `dir/rl-pq`. Built like
/// `programs::build_rustls`, into a directory of its own (`target/rustls-client/aws-lc-rs-pq`):
/// the plain build's binary stays as the other tests expect it.
fn build_rustls_post_quantum(dir: &std::path::Path) -> PathBuf {
    let src = enforcer_tests::workspace().join("tests/programs/rustls-client");
    let target = enforcer_tests::workspace().join("target/rustls-client/aws-lc-rs-pq");
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&src)
        .args(["build", "--quiet", "--locked", "--profile", "release"])
        .args(["--features", "aws-lc-rs,rustls/prefer-post-quantum"])
        .arg("--target-dir")
        .arg(&target);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
    ] {
        cargo.env_remove(var);
    }
    sh(&mut cargo);
    let out = dir.join("rl-pq");
    std::fs::copy(target.join("release/rustls-client"), &out).expect("copy rustls-client");
    out
}

struct Client {
    name: &'static str,
    command: Command,
}

fn clients(peer: IpAddr, dir: &std::path::Path, cert: &Cert) -> Vec<Client> {
    let target = format!("{peer}:{PORT}");
    let mut curl = Command::new("curl");
    curl.args(["-sk", "--max-time", "5", &format!("https://{target}/")]);
    let mut gnutls = Command::new("gnutls-cli");
    gnutls.args(["--insecure", "--port", &PORT.to_string(), &peer.to_string()]);
    let mut python = Command::new("python3");
    python.args([
        "-c",
        "import socket,ssl,sys\n\
         c=ssl.create_default_context(); c.check_hostname=False; c.verify_mode=ssl.CERT_NONE\n\
         s=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n\
         c.wrap_socket(s, server_hostname='ja4.example')",
        &peer.to_string(),
        &PORT.to_string(),
    ]);
    let go: PathBuf = build_go(dir, "go-ja4", "");
    let mut go = Command::new(go);
    go.arg(&target);
    let rustls = build_rustls_post_quantum(dir);
    let mut rustls = Command::new(rustls);
    rustls
        .args([
            peer.to_string(),
            PORT.to_string(),
            "GET / HTTP/1.0\r\n\r\n".into(),
        ])
        .arg(cert.cert_path());
    vec![
        Client {
            name: "curl",
            command: curl,
        },
        Client {
            name: "gnutls-cli",
            command: gnutls,
        },
        Client {
            name: "python3",
            command: python,
        },
        Client {
            name: "go",
            command: go,
        },
        Client {
            name: "rustls",
            command: rustls,
        },
    ]
}

/// Runs every client once; returns (client, record length, JA4, event) of each.
fn round(
    agent: &mut Agent,
    capture: &Capture,
    clients: &mut [Client],
    round: &str,
) -> Vec<(String, usize, String, Value)> {
    let mut out = vec![];
    for client in clients.iter_mut() {
        let what = format!("{} ({round})", client.name);
        // The server answers nothing: every client fails its handshake, after its hello.
        let _ = run_with_timeout(&mut client.command, b"", CLIENT);
        let (port, record) = capture.next(&what);
        let want = reference_ja4(&record);
        let event = agent.wait_for(
            |v| v["type"] == "offered" && v["local"]["port"] == port,
            EVENT,
        );
        assert_eq!(event["ja4"], Value::from(want.clone()), "{what}: {event}");
        assert_eq!(event["hello_bytes"], record.len(), "{what}: {event}");
        assert_eq!(event["unread"], serde_json::json!([]), "{what}: {event}");
        out.push((what, record.len(), want, event));
    }
    out
}

#[test]
fn ja4_of_real_clients_from_kernel_fields_equals_the_reference_on_the_captured_hello() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let dir = tempfile::Builder::new()
        .prefix("enforcer-ja4-")
        .tempdir()
        .expect("temp dir");
    let mut agent = Agent::with_policy(&ns.host_if, POLICY, &[]);
    agent.wait_ready(READY);
    // Built after the agent started, like the other tests' programs (the watcher examines them).
    let mut clients = clients(peer, dir.path(), &cert);
    let capture = Capture::start(&ns, peer);
    let whole = round(&mut agent, &capture, &mut clients, "defaults");
    let rustls = whole.iter().find(|r| r.0.starts_with("rustls")).unwrap();
    // 1,448 bytes here (aws-lc-rs 1.19): one MSS of a 1500-byte MTU with timestamps, exactly.
    assert!(
        rustls.1 > 1400,
        "rustls preferring X25519MLKEM768: a 1.4 KiB hello ({} bytes)",
        rustls.1
    );
    let shares = rustls.3["key_share_groups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(shares.iter().any(|g| g == "X25519MLKEM768"), "{}", rustls.3);
    // Arriving: the same curl, in the peer namespace, to a server on this host (tc ingress).
    let host = IpAddr::V4(ns.host_v4);
    let host_cert = Cert::new(&[host]);
    let _server = Server::on_host(host, PORT + 1, &host_cert, Mode::Www, &[]);
    let url = format!("https://{host}:{}/", PORT + 1);
    let served = run_with_timeout(
        &mut ns.exec("curl", ["-sk", "--max-time", "5", &url]),
        b"",
        CLIENT,
    );
    assert!(served.success(), "curl to this host's server: {served:?}");
    let arrived = agent.wait_for(|v| v["type"] == "offered" && v["side"] == "server", EVENT);
    let curl = whole.iter().find(|r| r.0.starts_with("curl")).unwrap();
    assert_eq!(arrived["ja4"], Value::from(curl.2.clone()), "{arrived}");
    // Small segments: the peer's MSS 128 (its route's advmss), one segment per packet here.
    let route = format!("{}/32", ns.host_v4);
    sh(&mut cmd(
        "ip",
        [
            "-n",
            &ns.name,
            "route",
            "add",
            &route,
            "dev",
            &ns.peer_if,
            "advmss",
            "128",
        ],
    ));
    sh(&mut cmd(
        "ip",
        ["link", "set", "dev", &ns.host_if, "gso_max_segs", "1"],
    ));
    let split = round(&mut agent, &capture, &mut clients, "128-byte segments");
    for (a, b) in whole.iter().zip(&split) {
        // No client here varies what JA4 sees from one connection to the next.
        assert_eq!(
            a.2, b.2,
            "{} and {}: the same client, the same JA4",
            a.0, b.0
        );
    }
    for (what, len, ja4, _) in whole.iter().chain(&split) {
        eprintln!("{what}: {len} bytes, {ja4}");
    }
    eprintln!("rustls: {}", rustls.3);
}
