//! What runs before enforcer's packet programs (issue 16, item 3). Another tool's tcx program
//! (Cilium attaches its classifiers as tcx links, Linux 6.6+) runs before every classic tc
//! filter, and one that passes a packet ends the hook there: our netlink-attached egress filter
//! would never see the hellos. The agent reads what runs before its programs, reports it
//! (`layer` event, `enforcer status`), and with `--tc-attach tcx` goes first itself while
//! letting the other program see every packet it passes (`TCX_NEXT`). With `--host-layer
//! cgroup`, a denied flow's packets are also dropped off the named interfaces (loopback here).

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cert, Mode, NetNs, Server,
    adversary::unprivileged,
    cmd,
    ops::ctl,
    require_root, run_with_timeout,
    schema::{events_schema, validate_event},
    tcx::{self, BpfStats, OtherTcx},
};
use serde_json::Value;

const OPENSSL_ONLY: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
/// The agent reads the layers every 5 s: a change is reported within that and a margin.
const LAYER_SEEN: Duration = Duration::from_secs(7);
const CLIENT: Duration = Duration::from_secs(15);

fn agent(ns: &NetNs, socket: &std::path::Path, extra: &[&str]) -> Agent {
    let mut args: Vec<String> = enforcer_tests::hook_args();
    args.extend(["--control-socket".into(), socket.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, OPENSSL_ONLY, &args);
    agent.wait_ready(READY);
    agent
}

/// The `layer` event of `iface`'s egress hook whose `ahead` satisfies `pred`, and how long it
/// took to come.
fn egress_layer(
    agent: &mut Agent,
    iface: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> (Value, Duration) {
    let start = Instant::now();
    let iface = iface.to_owned();
    let event = agent.wait_for(
        move |v| {
            v["type"] == "layer"
                && v["interface"] == iface.as_str()
                && v["hook"] == "egress"
                && v["ahead"].as_array().is_some_and(|a| pred(a))
        },
        LAYER_SEEN,
    );
    let took = start.elapsed();
    validate_event(&events_schema(), &event).unwrap_or_else(|e| panic!("{e}: {event}"));
    (event, took)
}

fn egress_status(socket: &std::path::Path, iface: &str) -> Value {
    let status = ctl(socket, &["status"]);
    let hooks = status["layers"]["hooks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let found = hooks
        .into_iter()
        .find(|h| h["interface"] == iface && h["hook"] == "egress");
    found.unwrap_or_else(|| panic!("no egress layer of {iface} in {status}"))
}

/// Runs `gnutls` (a GnuTLS client to `server`, port `port`) with a marker line: it must fail
/// within 2 s, be reported blocked, and its marker must not reach the server. The event.
fn refused_gnutls(agent: &mut Agent, mut gnutls: Command, port: u16, server: &Server) -> Value {
    let out = run_with_timeout(&mut gnutls, b"GNUTLS-MUST-NOT-ARRIVE\n", CLIENT);
    assert!(!out.success(), "gnutls-cli must fail: {out:?}");
    assert!(
        out.elapsed < Duration::from_secs(2),
        "took {:?}",
        out.elapsed
    );
    let event = agent.wait_for(
        move |v| {
            v["type"] == "connection" && v["comm"] == "gnutls-cli" && v["remote"]["port"] == port
        },
        EVENT,
    );
    assert_eq!(event["verdict"], "blocked", "{event}");
    let received = String::from_utf8_lossy(&server.received()).into_owned();
    assert!(!received.contains("GNUTLS-MUST-NOT-ARRIVE"), "{received:?}");
    event
}

fn names_other(ahead: &[Value], other: &OtherTcx) -> bool {
    ahead
        .iter()
        .any(|a| a["kind"] == "tcx" && a["name"] == other.name && a["id"] == other.id)
}

#[test]
fn a_tcx_program_ahead_of_the_netlink_filter_is_reported() {
    require_root();
    let ns = NetNs::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("agent.sock");
    let mut agent = agent(&ns, &socket, &[]);
    let layer = egress_status(&socket, &ns.host_if);
    assert_eq!(layer["form"], "tc cls_bpf (netlink)", "{layer}");
    assert_eq!(layer["ahead"], serde_json::json!([]), "{layer}");
    assert_eq!(layer["sees"], "every packet", "{layer}");

    let other = OtherTcx::attach_first(tcx::ifindex(&ns.host_if), "other_tcx").expect("tcx");
    let (event, took) = egress_layer(&mut agent, &ns.host_if, |a| names_other(a, &other));
    let sees = event["sees"].as_str().unwrap_or_default();
    assert!(sees.starts_with("only what tcx other_tcx"), "{event}");
    assert!(took < LAYER_SEEN, "reported after {took:?}");
    let layer = egress_status(&socket, &ns.host_if);
    assert!(
        names_other(layer["ahead"].as_array().expect("ahead"), &other),
        "{layer}"
    );
    let text = run_with_timeout(
        &mut cmd(
            enforcer_tests::enforcer_bin().to_str().expect("utf-8"),
            ["status", "--socket", socket.to_str().expect("utf-8")],
        ),
        b"",
        EVENT,
    );
    assert!(
        text.stdout_str().contains("sees only what tcx other_tcx"),
        "{}",
        text.stdout_str()
    );
    assert!(
        agent.stderr_contains("runs before enforcer's", EVENT),
        "{}",
        agent.stderr()
    );

    // Gone again: reported as well.
    drop(other);
    let (event, _) = egress_layer(&mut agent, &ns.host_if, |a| a.is_empty());
    assert_eq!(event["sees"], "every packet", "{event}");
    drop(agent);
}

#[test]
fn tcx_first_judges_hellos_before_another_tcx_program_and_lets_it_see_the_rest() {
    require_root();
    let ns = NetNs::new();
    let (local, peer) = (IpAddr::V4(ns.host_v4), IpAddr::V4(ns.peer_v4));
    let cert = Cert::new(&[peer]);
    let www = Server::www(&ns, peer, 8443, &cert);
    let plain = Server::plain(&ns, peer, 9444, &cert);
    let ifindex = tcx::ifindex(&ns.host_if);
    let _stats = BpfStats::enable();
    // Passes every packet it sees: behind it, a classic filter would see none.
    let other = OtherTcx::attach_first(ifindex, "other_tcx").expect("tcx");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("agent.sock");
    let mut agent = agent(&ns, &socket, &["--tc-attach", "tcx"]);
    let status = ctl(&socket, &["status"]);
    assert_eq!(status["attached"]["egress"], "tcx (first)", "{status}");
    let layer = egress_status(&socket, &ns.host_if);
    assert_eq!(layer["ahead"], serde_json::json!([]), "{layer}");
    let on_hook = tcx::egress_programs(ifindex);
    assert_eq!(on_hook.len(), 2, "{on_hook:?}");
    assert_eq!(on_hook[1], other.id, "ours first: {on_hook:?}");

    // OpenSSL completes, and the other program still saw its packets.
    let before = other.run_count();
    let out = run_with_timeout(
        &mut cmd("curl", ["-sk", "--max-time", "10", &www.url()]),
        b"",
        CLIENT,
    );
    assert!(
        out.success(),
        "curl must complete: {out:?}\n{}",
        agent.stderr()
    );
    assert!(
        other.run_count() > before,
        "the other tcx program saw no packet after ours"
    );

    // GnuTLS: refused within 2 s, no application byte at the peer, socket aborted.
    let port = plain.addr().port().to_string();
    let gnutls = cmd(
        "gnutls-cli",
        ["--insecure", "--port", &port, &peer.to_string()],
    );
    let event = refused_gnutls(&mut agent, gnutls, plain.addr().port(), &plain);
    assert_eq!(
        event["local"]["addr"],
        local.to_string().as_str(),
        "{event}"
    );
    assert_eq!(event["socket_aborted"], true, "{event}");

    // A program another tool puts first later runs before ours: reported.
    let late = OtherTcx::attach_first(ifindex, "late_tcx").expect("tcx");
    let (event, _) = egress_layer(&mut agent, &ns.host_if, |a| names_other(a, &late));
    assert!(
        !names_other(event["ahead"].as_array().expect("ahead"), &other),
        "{event}"
    );

    // Our links go with the agent; the others stay, in their order.
    agent.stop();
    assert_eq!(tcx::egress_programs(ifindex), vec![late.id, other.id]);
}

#[test]
fn the_host_layer_drops_a_denied_flow_on_loopback() {
    require_root();
    // The agent's interface is a test veth; the connections below never touch it.
    let ns = NetNs::new();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let cert = Cert::new(&[lo]);
    let server = Server::on_host(lo, 9557, &cert, Mode::Plain, &[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("agent.sock");
    let mut agent = agent(&ns, &socket, &["--host-layer", "cgroup"]);
    let status = ctl(&socket, &["status"]);
    let host = &status["layers"]["host"];
    assert!(
        host["form"]
            .as_str()
            .is_some_and(|f| f.starts_with("cgroup_skb")),
        "{status}"
    );
    let drops =
        |socket: &std::path::Path| ctl(socket, &["status"])["counters"]["cgroup_drops"].as_u64();
    assert_eq!(drops(&socket), Some(0), "{status}");

    // OpenSSL over loopback: allowed, and its bytes arrive.
    let line = b"openssl over loopback\n";
    let out = run_with_timeout(
        &mut cmd(
            "openssl",
            [
                "s_client",
                "-quiet",
                "-no_ign_eof",
                "-connect",
                "127.0.0.1:9557",
            ],
        ),
        line,
        CLIENT,
    );
    assert!(out.success(), "s_client must complete: {out:?}");
    server.wait_received(line, EVENT);
    drop(server);

    // GnuTLS over loopback, from an unprivileged user (uid 65534, no capabilities): its first
    // bytes are dropped in the kernel, host-wide.
    let server = Server::on_host(lo, 9558, &cert, Mode::Plain, &[]);
    let gnutls = unprivileged("gnutls-cli", ["--insecure", "--port", "9558", "127.0.0.1"]);
    refused_gnutls(&mut agent, gnutls, 9558, &server);
    assert!(
        drops(&socket) >= Some(1),
        "the host layer dropped nothing: {}",
        agent.stderr()
    );
}
