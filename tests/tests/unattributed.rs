//! End to end, on this kernel: TLS that no probed library claims, and rules scoped by server
//! name, judged by the egress classifier at the ClientHello.
//!
//! The unattributed client is a real OpenSSL client linked *statically* and stripped (built here
//! with gcc from Debian's `libssl.a`): it speaks ordinary TLS, but no shared libssl is mapped and
//! no symbol is left to find, so no uprobe sees its calls. Its peer is `openssl s_server` in a
//! network namespace; the agent watches the host end of the veth pair.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use enforcer_tests::{
    Agent, Cert, NetNs, Server, cmd, ops::SCOPED_ENFORCE, require_root, run_with_timeout,
    static_client::build_static_client,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
const PORT: u16 = 9445;

const UNATTRIBUTED_AUDIT: &str = "\
mode: enforce
default: deny
unattributed_tls: audit
libraries:
  - family: openssl
    action: allow
";

fn start_agent(ns: &NetNs, policy: &str) -> Agent {
    let args = enforcer_tests::hook_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, policy, &args);
    agent.wait_ready(READY);
    agent
}

/// The `client_hello` event for the flow from `local_ip` to `server` whose server name
/// (or `null`) is `name`.
fn hello_event(agent: &mut Agent, server: &Server, name: Option<&str>) -> Value {
    let (ip, port) = (server.addr().ip().to_string(), server.addr().port());
    let name = name.map(str::to_owned);
    agent.wait_for(
        move |v| {
            v["type"] == "client_hello"
                && v["remote"]["addr"] == ip.as_str()
                && v["remote"]["port"] == port
                && match &name {
                    Some(n) => v["server_name"] == n.as_str(),
                    None => v["server_name"].is_null(),
                }
        },
        EVENT,
    )
}

fn run_static(bin: &Path, peer: IpAddr, name: &str, line: &str) -> enforcer_tests::Outcome {
    let port = PORT.to_string();
    let peer = peer.to_string();
    let mut c = Command::new(bin);
    c.args([peer.as_str(), port.as_str(), name, line]);
    run_with_timeout(&mut c, b"", CLIENT)
}

fn gnutls_cli(peer: IpAddr, name: &str, input: &[u8]) -> enforcer_tests::Outcome {
    let (port, host) = (PORT.to_string(), peer.to_string());
    let sni = format!("--sni-hostname={name}");
    run_with_timeout(
        &mut cmd("gnutls-cli", ["--insecure", &sni, "--port", &port, &host]),
        input,
        CLIENT,
    )
}

struct Peer {
    server: Server,
    _cert: Cert,
    ns: NetNs,
    peer: IpAddr,
    local: IpAddr,
    dir: tempfile::TempDir,
    client: PathBuf,
}

fn peer() -> Peer {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let client = build_static_client(dir.path());
    let ns = NetNs::new();
    let (local, peer) = (IpAddr::V4(ns.host_v4), IpAddr::V4(ns.peer_v4));
    let cert = Cert::new(&[peer]);
    let server = Server::plain(&ns, peer, PORT, &cert);
    Peer {
        server,
        _cert: cert,
        ns,
        peer,
        local,
        dir,
        client,
    }
}

#[test]
fn unattributed_tls_denied_and_gnutls_scoped_by_server_name() {
    let p = peer();
    let mut agent = start_agent(&p.ns, SCOPED_ENFORCE);

    // The stripped static client: refused at its ClientHello, and the event says who and where.
    let out = run_static(
        &p.client,
        p.peer,
        "hidden.example",
        "STATIC-MUST-NOT-ARRIVE\n",
    );
    assert!(
        !out.success() && !out.stdout_str().contains("handshake=ok"),
        "the unattributed client must fail: {out:?}\n{}",
        agent.stderr()
    );
    assert!(
        out.elapsed < Duration::from_secs(2),
        "failed only after {:?}",
        out.elapsed
    );
    let e = hello_event(&mut agent, &p.server, Some("hidden.example"));
    assert_eq!(e["attributed"], false, "{e}");
    assert_eq!(e["library"], Value::Null, "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(e["socket_aborted"], true, "{e}");
    assert_eq!(e["local"]["addr"], p.local.to_string(), "{e}");
    assert!(
        e["local"]["port"].as_u64().is_some_and(|port| port > 0),
        "{e}"
    );
    assert_eq!(e["remote"]["port"], PORT, "{e}");
    assert!(
        !String::from_utf8_lossy(&p.server.received()).contains("STATIC-MUST-NOT-ARRIVE"),
        "the peer received data of the unattributed client"
    );

    // OpenSSL through a probed libssl (curl, several times): attributed, never unattributed.
    for i in 0..10 {
        let url = format!("https://www.internal.example:{PORT}/");
        let resolve = format!("www.internal.example:{PORT}:{}", p.peer);
        let out = run_with_timeout(
            &mut cmd(
                "curl",
                [
                    "-sk",
                    "--max-time",
                    "5",
                    "--resolve",
                    &resolve,
                    &url,
                    "-o",
                    "/dev/null",
                ],
            ),
            b"",
            CLIENT,
        );
        assert!(!out.timed_out, "curl #{i} hung: {out:?}");
        let e = hello_event(&mut agent, &p.server, Some("www.internal.example"));
        assert_eq!(
            e["attributed"], true,
            "curl #{i} reported as unattributed: {e}"
        );
        assert_eq!(e["library"]["family"], "openssl", "{e}");
        assert_eq!(e["verdict"], "allowed", "{e}");
        assert_eq!(e["comm"], "curl", "{e}");
    }
    // The attribution hook runs inside tcp_sendmsg, before the ClientHello reaches tc: not one
    // of those ClientHellos may have been taken for unattributed.
    let unattributed = agent
        .events()
        .iter()
        .filter(|v| v["type"] == "client_hello" && v["attributed"] == false)
        .count();
    assert_eq!(unattributed, 1, "only the static client is unattributed");

    // GnuTLS inside its scope completes; outside it is refused at the ClientHello.
    let line = b"GNUTLS-INSIDE\n";
    let out = gnutls_cli(p.peer, "db.internal.example", line);
    p.server.wait_received(line, EVENT);
    let e = hello_event(&mut agent, &p.server, Some("db.internal.example"));
    assert_eq!(e["library"]["family"], "gnutls", "{e}");
    assert_eq!(e["verdict"], "allowed", "{e}: {out:?}");

    let out = gnutls_cli(p.peer, "www.outside.example", b"GNUTLS-OUTSIDE\n");
    assert!(
        !out.success(),
        "gnutls-cli outside its scope must fail: {out:?}"
    );
    assert!(
        out.elapsed < Duration::from_secs(2),
        "failed only after {:?}",
        out.elapsed
    );
    let e = hello_event(&mut agent, &p.server, Some("www.outside.example"));
    assert_eq!(e["library"]["family"], "gnutls", "{e}");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(e["comm"], "gnutls-cli", "{e}");
    assert!(!String::from_utf8_lossy(&p.server.received()).contains("GNUTLS-OUTSIDE"));
    drop(agent);
    drop(p.dir);
}

#[test]
fn unattributed_tls_audit_completes_and_is_reported() {
    let p = peer();
    let mut agent = start_agent(&p.ns, UNATTRIBUTED_AUDIT);
    let line = "STATIC-AUDITED\n";
    // The client holds its connection until its stdin ends: the owner is found through the
    // socket, which must still exist when the (lowered-priority) hello reader gets to it.
    let mut client = Command::new(&p.client)
        .args([
            &p.peer.to_string(),
            &PORT.to_string(),
            "audited.example",
            line,
            "hold",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the static client runs");
    let stdin = client.stdin.take().expect("stdin is piped");
    let client = enforcer_tests::content::Background(client);
    p.server.wait_received(line.as_bytes(), EVENT);
    let e = hello_event(&mut agent, &p.server, Some("audited.example"));
    drop(stdin);
    let mut client = client;
    let status = client.0.wait().expect("the static client exits");
    let mut stdout = String::new();
    std::io::Read::read_to_string(client.0.stdout.as_mut().expect("piped"), &mut stdout)
        .expect("its output");
    assert!(
        status.success() && stdout.contains("handshake=ok"),
        "the unattributed client must complete under audit: {status:?} {stdout}\n{}",
        agent.stderr()
    );
    assert_eq!(e["attributed"], false, "{e}");
    assert_eq!(e["verdict"], "audited", "{e}");
    assert_eq!(e["socket_aborted"], Value::Null, "{e}");
    // The owner, found through the socket's inode in /proc (the classifier cannot know it).
    assert_eq!(e["comm"], "hidden_tls", "{e}");
    assert_eq!(e["owner_source"], "socket-inode", "{e}");
    drop(agent);
    drop(p.dir);
}
