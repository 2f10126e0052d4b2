//! End to end, on this kernel: a policy that allows only OpenSSL lets `curl` and
//! `openssl s_client` through and drops `gnutls-cli` (enforce), or only reports it (audit).
//! Real agent, real uprobes, real XDP and tc on a veth pair, real `openssl s_server` peer in a
//! network namespace, on a port that is not 443, over IPv4 and IPv6.

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{Agent, Cert, NetNs, Server, cmd, require_root, run_with_timeout};
use serde_json::Value;

const OPENSSL_ONLY_ENFORCE: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
const OPENSSL_ONLY_AUDIT: &str =
    "mode: audit\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
const WWW_PORT: u16 = 8443;
const PLAIN_PORT: u16 = 9444;

fn start_agent(ns: &NetNs, policy: &str, extra: &[&str]) -> Agent {
    let mut args: Vec<String> = enforcer_tests::hook_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, policy, &args);
    agent.wait_ready(READY);
    agent
}

/// A connection event of `comm` to `remote`, from `local_ip`.
fn connection(
    agent: &mut Agent,
    comm: &str,
    local_ip: IpAddr,
    remote: std::net::SocketAddr,
) -> Value {
    let (comm, local_ip) = (comm.to_string(), local_ip.to_string());
    agent.wait_for(
        move |v| {
            v["type"] == "connection"
                && v["comm"] == comm.as_str()
                && v["local"]["addr"] == local_ip.as_str()
                && v["remote"]["addr"] == remote.ip().to_string().as_str()
                && v["remote"]["port"] == remote.port()
        },
        EVENT,
    )
}

fn curl(url: &str) -> enforcer_tests::Outcome {
    run_with_timeout(
        &mut cmd("curl", ["-sk", "--max-time", "10", url]),
        b"",
        CLIENT,
    )
}

fn s_client(addr: &str, input: &[u8]) -> enforcer_tests::Outcome {
    run_with_timeout(
        &mut cmd(
            "openssl",
            ["s_client", "-quiet", "-no_ign_eof", "-connect", addr],
        ),
        input,
        CLIENT,
    )
}

fn gnutls_cli(ip: IpAddr, port: u16, input: &[u8]) -> enforcer_tests::Outcome {
    let port = port.to_string();
    let host = ip.to_string();
    run_with_timeout(
        &mut cmd("gnutls-cli", ["--insecure", "--port", &port, &host]),
        input,
        CLIENT,
    )
}

/// A network namespace with a `-www` and a plain `openssl s_server`, over one address family.
/// Field order is drop order: servers before the certificate and the namespace.
struct Peer {
    www: Server,
    plain: Server,
    _cert: Cert,
    ns: NetNs,
    local: IpAddr,
    peer: IpAddr,
}

impl Peer {
    fn new(v6: bool) -> Peer {
        require_root();
        let ns = NetNs::new();
        let (local, peer) = match v6 {
            false => (IpAddr::V4(ns.host_v4), IpAddr::V4(ns.peer_v4)),
            true => (IpAddr::V6(ns.host_v6), IpAddr::V6(ns.peer_v6)),
        };
        let cert = Cert::new(&[peer]);
        let www = Server::www(&ns, peer, WWW_PORT, &cert);
        let plain = Server::plain(&ns, peer, PLAIN_PORT, &cert);
        Peer {
            www,
            plain,
            _cert: cert,
            ns,
            local,
            peer,
        }
    }
}

fn enforce_case(v6: bool) {
    let Peer {
        ns,
        local,
        peer,
        www,
        plain,
        _cert,
    } = Peer::new(v6);
    let mut agent = start_agent(&ns, OPENSSL_ONLY_ENFORCE, &[]);

    // OpenSSL clients complete and are reported as allowed.
    let out = curl(&www.url());
    assert!(
        out.success() && out.stdout_str().contains("s_server"),
        "curl must complete: {out:?}\n{}",
        agent.stderr()
    );
    let event = connection(&mut agent, "curl", local, www.addr());
    assert_eq!(event["verdict"], "allowed", "{event}");
    assert_eq!(event["library"]["family"], "openssl", "{event}");

    let line = b"openssl says hello\n";
    let out = s_client(&plain.addr().to_string(), line);
    assert!(out.success(), "s_client must complete: {out:?}");
    plain.wait_received(line, EVENT);
    assert_eq!(
        connection(&mut agent, "openssl", local, plain.addr())["verdict"],
        "allowed"
    );

    // GnuTLS: refused within 2 s, and not one application byte reaches the peer.
    let marker = b"GNUTLS-MUST-NOT-ARRIVE\n";
    let out = gnutls_cli(peer, PLAIN_PORT, marker);
    assert!(!out.success(), "gnutls-cli must fail: {out:?}");
    assert!(
        out.elapsed < Duration::from_secs(2),
        "gnutls-cli took {:?} to fail: {out:?}",
        out.elapsed
    );
    let event = connection(&mut agent, "gnutls-cli", local, plain.addr());
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert_eq!(event["library"]["family"], "gnutls", "{event}");
    assert_eq!(event["socket_aborted"], true, "{event}");
    let received = String::from_utf8_lossy(&plain.received()).into_owned();
    assert!(
        !received.contains("GNUTLS-MUST-NOT-ARRIVE"),
        "the peer received GnuTLS data: {received:?}"
    );

    // The aborted connection is closed, so its 4-tuple leaves the blocklist (a later connection
    // reusing it is judged afresh, and the map cannot fill up with dead flows).
    wait_blocklist_empty(agent.pid());

    // The block is per connection: OpenSSL still works afterwards.
    assert!(
        curl(&www.url()).success(),
        "curl after the block must complete"
    );
    drop(agent);
}

#[test]
fn enforce_ipv4_openssl_allowed_gnutls_blocked() {
    enforce_case(false);
}

#[test]
fn enforce_ipv6_openssl_allowed_gnutls_blocked() {
    enforce_case(true);
}

/// Entries of the `BLOCKLIST` map the agent `pid` holds, as `bpftool` dumps them (other maps of
/// that name, e.g. pinned by another test run, do not count). The agent's map ids come from its
/// fds' `/proc/PID/fdinfo` (`map_id:`), which every kernel has, unlike bpftool's pid column.
fn blocklist_entries(pid: u32) -> usize {
    let held: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("map_id:"))
                        .and_then(|id| id.trim().parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    let out = enforcer_tests::sh(&mut cmd("bpftool", ["-j", "map", "show"]));
    let maps: Value = serde_json::from_str(&out).expect("bpftool -j prints JSON");
    let Some(id) = maps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == "BLOCKLIST")
        .filter_map(|m| m["id"].as_u64())
        .find(|id| held.contains(id))
    else {
        panic!("agent {pid} holds no BLOCKLIST map (its map ids: {held:?}): {out}");
    };
    let out = enforcer_tests::sh(&mut cmd(
        "bpftool",
        ["-j", "map", "dump", "id", &id.to_string()],
    ));
    let dump: Value = serde_json::from_str(&out).expect("bpftool -j prints JSON");
    dump.as_array().map_or(0, Vec::len)
}

fn wait_blocklist_empty(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocklist_entries(pid) > 0 {
        assert!(
            Instant::now() < deadline,
            "closed blocked flows stay in BLOCKLIST: {} entries",
            blocklist_entries(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a long-running client on drop.
struct Running(std::process::Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn audit_case(v6: bool, policy: &str, extra: &[&str]) {
    let Peer {
        ns,
        local,
        peer,
        www,
        plain,
        _cert,
    } = Peer::new(v6);
    let mut agent = start_agent(&ns, policy, extra);

    // Both libraries complete.
    assert!(
        curl(&www.url()).success(),
        "curl must complete in audit mode"
    );
    assert_eq!(
        connection(&mut agent, "curl", local, www.addr())["verdict"],
        "allowed"
    );
    let out = gnutls_cli(peer, WWW_PORT, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        out.success() && out.stdout_str().contains("s_server"),
        "gnutls-cli must complete in audit mode: {out:?}"
    );

    // A GnuTLS connection held open: its event must carry exactly the 4-tuple the peer sees.
    let started = Instant::now();
    let client = Command::new("gnutls-cli")
        .args([
            "--insecure",
            "--port",
            &PLAIN_PORT.to_string(),
            &peer.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gnutls-cli runs");
    let _client = Running(client);
    let event = connection(&mut agent, "gnutls-cli", local, plain.addr());
    assert_eq!(event["verdict"], "would-block", "{event}");
    assert_eq!(event["library"]["family"], "gnutls", "{event}");
    let local_port = event["local"]["port"].as_u64().expect("local port");
    let seen_by_peer = enforcer_tests::sh(&mut ns.exec("ss", ["-Htn", "state", "established"]));
    let expected = match local {
        IpAddr::V4(a) => format!("{a}:{local_port}"),
        IpAddr::V6(a) => format!("[{a}]:{local_port}"),
    };
    assert!(
        seen_by_peer
            .lines()
            .any(|l| l.contains(&expected) && l.contains(&format!(":{PLAIN_PORT}"))),
        "the peer has no connection from {expected} (event {event}); peer sockets:\n{seen_by_peer}"
    );
    assert!(started.elapsed() < EVENT);
}

#[test]
fn audit_ipv4_reports_gnutls_with_its_4_tuple() {
    audit_case(false, OPENSSL_ONLY_AUDIT, &[]);
}

#[test]
fn dry_run_ipv6_overrides_enforce_policy() {
    audit_case(true, OPENSSL_ONLY_ENFORCE, &["--dry-run"]);
}
