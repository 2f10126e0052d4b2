//! End to end, on this kernel: what each connection negotiated, read from its ServerHello
//! (docs/architecture.md, "Crypto posture"), reported in `negotiated` events and in
//! `enforcer flows`. Real peers: `openssl s_server` (Debian's OpenSSL 3.0) in a network
//! namespace, curl and `openssl s_client` on the host (ServerHellos read on ingress), and
//! `openssl s_server` on the host with a client in the namespace (read on egress), under the
//! OpenSSL-only policy of the content-bound attribution tests; the policy's `tls_versions` and
//! `groups` enforced at the ServerHello, with OpenSSL peers and with the rustls test peer
//! (`tests/programs/rustls-peer`, aws-lc-rs: X25519MLKEM768).

use std::{
    net::{IpAddr, SocketAddr},
    process::Stdio,
    time::Duration,
};

use enforcer_tests::{
    Agent, Cert, Mode, NetNs, Server, cmd,
    content::{Background, OPENSSL_ONLY, openssl_only_agent},
    ops::ctl,
    require_root, run_with_timeout,
};
use serde_json::Value;

const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(20);
const PORT: u16 = 9461;

/// The `negotiated` event of the flow towards `server` from `local_port` (any port: `None`).
fn negotiated(agent: &mut Agent, server: SocketAddr, local_port: Option<u16>) -> Value {
    agent.wait_for(
        move |v| {
            v["type"] == "negotiated"
                && v["remote"]["addr"] == server.ip().to_string().as_str()
                && v["remote"]["port"] == server.port()
                && local_port.is_none_or(|p| v["local"]["port"] == p)
        },
        EVENT,
    )
}

#[test]
fn curl_negotiates_tls13_and_s_client_tls12_as_the_events_and_flows_say() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::www(&ns, peer, PORT, &cert);
    let to = server.addr();
    let (mut agent, socket) = openssl_only_agent(&ns);

    // curl: TLS 1.3, OpenSSL 3.0's first suite and group on both ends.
    let url = format!("https://{peer}:{PORT}/");
    let out = run_with_timeout(
        &mut cmd("curl", ["-sk", "--max-time", "3", "-o", "/dev/null", &url]),
        b"",
        CLIENT,
    );
    assert!(out.status.success(), "curl: {out:?}");
    let connection = agent.wait_for(
        move |v| v["type"] == "connection" && v["comm"] == "curl" && v["remote"]["port"] == PORT,
        EVENT,
    );
    let port = connection["local"]["port"].as_u64().map(|p| p as u16);
    let e = negotiated(&mut agent, to, port);
    assert_eq!(e["side"], "client", "{e}");
    assert_eq!(e["status"], "negotiated", "{e}");
    assert_eq!(e["tls_version"], "TLS 1.3", "{e}");
    assert_eq!(e["cipher_suite"], "TLS_AES_256_GCM_SHA384", "{e}");
    assert_eq!(e["group"], "x25519", "{e}");
    assert_eq!(e["hello_retry"], false, "{e}");
    assert_eq!(e["library"]["family"], "openssl", "{e}");
    // The owner is joined from the connection event when the agent read that one first (it comes
    // on the other ring): never another process.
    assert!(
        e["comm"] == "curl" || (e["comm"].is_null() && e["pid"].is_null()),
        "the owner joined from the connection event: {e}"
    );

    // A HelloRetryRequest: the client's key share is x25519, the server takes P-384 only.
    let retry = Server::start(&ns, peer, PORT + 1, &cert, Mode::Www, &["-groups", "P-384"]);
    let url = format!("https://{peer}:{}/", PORT + 1);
    let out = run_with_timeout(
        &mut cmd("curl", ["-sk", "--max-time", "3", "-o", "/dev/null", &url]),
        b"",
        CLIENT,
    );
    assert!(out.status.success(), "curl: {out:?}");
    let first = negotiated(&mut agent, retry.addr(), None);
    assert_eq!(first["status"], "hello-retry", "{first}");
    assert_eq!(first["group"], "secp384r1", "{first}");
    let port = first["local"]["port"].as_u64().map(|p| p as u16);
    let real = negotiated(&mut agent, retry.addr(), port);
    assert_eq!(real["status"], "negotiated", "{real}");
    assert_eq!(real["group"], "secp384r1", "{real}");
    assert_eq!(real["hello_retry"], true, "{real}");

    // openssl s_client -tls1_2, kept open: the event and `enforcer flows` say TLS 1.2 and the
    // ECDHE suite for the server's P-256 key; no group (TLS 1.2 sends it in ServerKeyExchange).
    let mut c = cmd(
        "openssl",
        ["s_client", "-quiet", "-tls1_2", "-connect", &to.to_string()],
    );
    c.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _client = Background(c.spawn().expect("openssl s_client"));
    let e = negotiated(&mut agent, to, None);
    assert_eq!(e["status"], "negotiated", "{e}");
    assert_eq!(e["tls_version"], "TLS 1.2", "{e}");
    assert_eq!(
        e["cipher_suite"], "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "{e}"
    );
    assert_eq!(e["group"], Value::Null, "{e}");
    let local = format!("{}:{}", ns.host_v4, e["local"]["port"]);
    let flows = ctl(&socket, &["flows"]);
    let flow = flows["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["local"] == local.as_str())
        .unwrap_or_else(|| panic!("no flow from {local} in {flows}"));
    assert_eq!(flow["tls"]["tls_version"], "TLS 1.2", "{flow}");
    assert_eq!(flow["tls"]["status"], "negotiated", "{flow}");
}

/// This host as the server: `openssl s_server` on the host end of the veth, a client in the
/// namespace. Its ServerHello is read as it leaves (tc egress), after a HelloRetryRequest (the
/// server takes P-256 only, the client's first key share is X25519).
#[test]
fn this_hosts_server_hello_is_read_on_egress() {
    require_root();
    let ns = NetNs::new();
    let host = IpAddr::V4(ns.host_v4);
    let cert = Cert::new(&[host]);
    let port = PORT + 2;
    let server = Server::on_host(host, port, &cert, Mode::Plain, &["-groups", "P-256"]);
    let (mut agent, _socket) = openssl_only_agent(&ns);
    let line = "POSTURE-AS-SERVER\n";
    let connect = format!("{host}:{port}");
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
        move |v| v["type"] == "negotiated" && v["local"]["port"] == port,
        EVENT,
    );
    assert_eq!(e["side"], "server", "{e}");
    assert_eq!(e["status"], "negotiated", "{e}");
    assert_eq!(e["tls_version"], "TLS 1.3", "{e}");
    assert_eq!(e["cipher_suite"], "TLS_AES_256_GCM_SHA384", "{e}");
    assert_eq!(e["group"], "secp256r1", "{e}");
    assert_eq!(e["hello_retry"], true, "{e}");
    assert_eq!(e["library"]["family"], "openssl", "{e}");
}

/// An agent on `ns` under `policy`, ready.
fn agent_with(ns: &NetNs, policy: &str) -> Agent {
    let args = enforcer_tests::hook_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, policy, &args);
    agent.wait_ready(Duration::from_secs(60));
    agent
}

/// `tls_versions: [">=1.3"]` host-wide: curl (TLS 1.3) goes through; `openssl s_client -tls1_2`
/// is dropped at the ServerHello, its socket aborted, and its line never reaches the server.
/// A rule's `groups: [X25519MLKEM768]` then drops curl, whose OpenSSL 3.0 has no ML-KEM.
#[test]
fn connections_breaking_tls_versions_or_groups_are_dropped_at_the_server_hello() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let port = PORT + 3;
    let server = Server::plain(&ns, peer, port, &cert);
    let to = server.addr();
    let policy = format!("{OPENSSL_ONLY}tls_versions: [\">=1.3\"]\n");
    let mut agent = agent_with(&ns, &policy);

    let line = "TLS13-PASSES\n";
    let mut c = cmd(
        "openssl",
        ["s_client", "-quiet", "-connect", &to.to_string()],
    );
    let _ = run_with_timeout(&mut c, line.as_bytes(), Duration::from_secs(3));
    server.wait_received(line.as_bytes(), EVENT);
    let e = negotiated(&mut agent, to, None);
    assert_eq!(e["tls_version"], "TLS 1.3", "{e}");
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["broken"], Value::Null, "{e}");

    let line = "TLS12-NEVER-ARRIVES\n";
    let mut c = cmd(
        "openssl",
        ["s_client", "-quiet", "-tls1_2", "-connect", &to.to_string()],
    );
    let out = run_with_timeout(&mut c, line.as_bytes(), CLIENT);
    assert!(!out.timed_out, "the TLS 1.2 client hung: {out:?}");
    assert!(
        !out.status.success(),
        "the TLS 1.2 client succeeded: {out:?}"
    );
    let e = negotiated(&mut agent, to, None);
    assert_eq!(e["tls_version"], "TLS 1.2", "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(
        e["broken"],
        serde_json::json!({"rule": "host", "key": "tls_versions", "value": "TLS 1.2"}),
        "{e}"
    );
    assert_eq!(e["socket_aborted"], true, "{e}");
    assert!(
        !String::from_utf8_lossy(&server.received()).contains(line.trim()),
        "the server received the blocked client's line"
    );
    drop(agent);

    let policy = OPENSSL_ONLY.replace(
        "    action: allow\n",
        "    action: allow\n    groups: [X25519MLKEM768]\n",
    );
    let mut agent = agent_with(&ns, &policy);
    let url = format!("https://{peer}:{port}/");
    let out = run_with_timeout(
        &mut cmd("curl", ["-sk", "--max-time", "3", "-o", "/dev/null", &url]),
        b"",
        CLIENT,
    );
    assert!(!out.status.success(), "curl got through: {out:?}");
    let e = negotiated(&mut agent, to, None);
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(
        e["broken"],
        serde_json::json!({"rule": "rule", "key": "groups", "value": "x25519"}),
        "{e}"
    );
}

/// The rustls test peer (aws-lc-rs): client and server negotiate X25519MLKEM768 by default,
/// which `groups: [X25519MLKEM768]` allows; the client forced to X25519 is dropped at the
/// ServerHello and its line never reaches the server. rustls is no probed library: its flows
/// are unattributed TLS (allowed here), judged by the host-wide requirements.
#[test]
fn rustls_on_x25519mlkem768_passes_groups_and_forced_x25519_is_dropped() {
    require_root();
    let bin = enforcer_tests::programs::build_rustls_peer();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let to = SocketAddr::new(peer, PORT + 4);
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let bin_s = bin.to_str().expect("utf-8 path");
    let mut s = ns.exec(
        bin_s,
        [
            "server",
            &to.to_string(),
            cert.cert_path().to_str().unwrap(),
            cert.key_path().to_str().unwrap(),
        ],
    );
    s.stdout(out.reopen().expect("reopen"))
        .stderr(Stdio::null());
    let _server = Background(s.spawn().expect("rustls-peer server"));
    let received = || std::fs::read_to_string(out.path()).unwrap_or_default();
    let started = std::time::Instant::now();
    while !received().contains("listening") {
        assert!(
            started.elapsed() < EVENT,
            "the rustls server never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let policy =
        "mode: enforce\ndefault: deny\nunattributed_tls: allow\ngroups: [X25519MLKEM768]\n";
    let mut agent = agent_with(&ns, policy);

    let client = |line: &str, groups: Option<&str>| {
        let mut c = cmd(bin_s, ["client", &to.to_string(), line]);
        c.args(groups);
        run_with_timeout(&mut c, b"", CLIENT)
    };
    let done = client("PQ-PASSES", None);
    assert!(done.status.success(), "{done:?}");
    let e = negotiated(&mut agent, to, None);
    assert_eq!(e["group"], "X25519MLKEM768", "{e}");
    assert_eq!(e["tls_version"], "TLS 1.3", "{e}");
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["library"], Value::Null, "{e}");
    let started = std::time::Instant::now();
    while !received().contains("PQ-PASSES") {
        assert!(
            started.elapsed() < EVENT,
            "the server never got the line: {}",
            received()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let refused = client("CLASSICAL-NEVER-ARRIVES", Some("X25519"));
    assert!(!refused.status.success(), "{refused:?}");
    let e = negotiated(&mut agent, to, None);
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(
        e["broken"],
        serde_json::json!({"rule": "host", "key": "groups", "value": "x25519"}),
        "{e}"
    );
    assert_eq!(e["socket_aborted"], true, "{e}");
    assert!(!received().contains("CLASSICAL"), "{}", received());
}
