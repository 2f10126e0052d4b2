//! Operating a running agent: policy reload (file change, SIGHUP, `enforcer reload`) with
//! re-evaluation of established flows and rejection of a bad policy; `enforcer status`, `flows`,
//! `block`, `unblock`; events appended to a file and checked against docs/events.schema.json;
//! Prometheus metrics; a full blocklist reported as an event and a metric; a reload that changes
//! server-name scopes and `unattributed_tls`.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use enforcer_tests::{
    Agent, Cert, NetNs, Server, cmd,
    ops::{LongClient, ctl, gnutls_named, sample, scrape},
    require_root, run_with_timeout,
    schema::{events_schema, validate_event},
    static_client::build_static_client,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const GNUTLS_ALLOWED: &str = "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n  - family: gnutls\n    action: allow\n";
const GNUTLS_DENIED: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
/// `alow` is not an action: rejected with the line and key.
const BAD: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: gnutls\n    action: alow\n";

fn write_policy(path: &Path, text: &str) {
    // Replace by rename, as editors and ConfigMap updates do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write policy");
    std::fs::rename(&tmp, path).expect("rename policy");
}

fn gnutls_once(peer: SocketAddr, input: &[u8]) -> enforcer_tests::Outcome {
    run_with_timeout(
        &mut cmd(
            "gnutls-cli",
            [
                "--insecure",
                "--port",
                &peer.port().to_string(),
                &peer.ip().to_string(),
            ],
        ),
        input,
        Duration::from_secs(15),
    )
}

fn flow_of<'a>(flows: &'a Value, family: &str, remote: SocketAddr) -> Option<&'a Value> {
    flows["flows"]
        .as_array()?
        .iter()
        .find(|f| f["library"]["family"] == family && f["remote"] == remote.to_string().as_str())
}

#[test]
fn reload_operator_commands_events_file_and_metrics() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    // s_server serves one connection at a time: one server per long-lived client.
    let long_gnutls = Server::plain(&ns, peer, 9447, &cert);
    let long_openssl = Server::plain(&ns, peer, 9448, &cert);
    let www = Server::www(&ns, peer, 9449, &cert);
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    let socket = dir.path().join("agent.sock");
    let events_file = dir.path().join("events.jsonl");
    write_policy(&policy, GNUTLS_ALLOWED);
    let mut agent = Agent::start(
        &ns.host_if,
        &policy,
        &[
            "--control-socket",
            socket.to_str().expect("utf-8"),
            "--events-file",
            events_file.to_str().expect("utf-8"),
            "--metrics",
            "127.0.0.1:0",
            "--reevaluate-established",
        ],
    );
    let ready = agent.wait_ready(READY);
    let metrics = ready["metrics"]
        .as_str()
        .expect("ready names the metrics address")
        .to_string();

    // status: what is attached and how.
    let status = ctl(&socket, &["status"]);
    assert_eq!(status["mode"], "enforce", "{status}");
    assert_eq!(status["interfaces"][0], ns.host_if.as_str(), "{status}");
    assert_eq!(status["kernel_hook"], ready["kernel_hook"], "{status}");
    assert!(status["libraries"].as_u64() >= Some(2), "{status}");

    // An established GnuTLS connection, allowed.
    let mut gnutls = LongClient::gnutls(long_gnutls.addr());
    assert!(gnutls.send(b"gnutls-before\n"));
    long_gnutls.wait_received(b"gnutls-before", EVENT);
    let event = agent.wait_for(
        |v| v["type"] == "connection" && v["comm"] == "gnutls-cli",
        EVENT,
    );
    assert_eq!(event["verdict"], "allowed", "{event}");
    let flows = ctl(&socket, &["flows"]);
    let flow = flow_of(&flows, "gnutls", long_gnutls.addr())
        .unwrap_or_else(|| panic!("no gnutls flow: {flows}"));
    assert_eq!(flow["verdict"], "allowed", "{flow}");
    let before = scrape(&metrics);
    let series = "enforcer_connections_total{library=\"gnutls\",verdict=\"blocked\"}";
    assert_eq!(sample(&before, series), 0.0, "{before}");
    // Its ClientHello went through the egress classifier: the ClientHello counters of STATS
    // reach `status` and `/metrics` like the others.
    let counters = &ctl(&socket, &["status"])["counters"];
    assert!(counters["client_hellos"].as_u64() >= Some(1), "{counters}");
    assert_eq!(counters["client_hello_drops"], 0, "{counters}");
    assert!(
        sample(&before, "enforcer_client_hellos_total") >= 1.0,
        "{before}"
    );

    // The file changes: GnuTLS denied. New connections and (--reevaluate-established) the open
    // one are blocked; the open one's socket is aborted.
    write_policy(&policy, GNUTLS_DENIED);
    let reload = agent.wait_for(|v| v["type"] == "reload", EVENT);
    assert_eq!(reload["ok"], true, "{reload}");
    assert!(reload["newly_blocked"].as_u64() >= Some(1), "{reload}");
    assert!(
        gnutls.exited_within(Duration::from_secs(2)),
        "the established GnuTLS connection must be aborted"
    );
    let out = gnutls_once(long_gnutls.addr(), b"GNUTLS-AFTER-RELOAD\n");
    assert!(
        !out.success() && out.elapsed < Duration::from_secs(2),
        "{out:?}"
    );
    let event = agent.wait_for(
        |v| v["type"] == "connection" && v["comm"] == "gnutls-cli",
        EVENT,
    );
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert!(!String::from_utf8_lossy(&long_gnutls.received()).contains("GNUTLS-AFTER-RELOAD"));
    let after = scrape(&metrics);
    assert!(
        sample(&after, series) >= 1.0,
        "blocked connections must count: {after}"
    );
    assert_eq!(
        sample(&after, "enforcer_policy_reloads_total{result=\"ok\"}"),
        1.0,
        "{after}"
    );
    assert!(
        sample(&after, "enforcer_libraries_probed") >= 2.0,
        "{after}"
    );

    // A bad policy: rejected with the file's line and key, the policy in force stays.
    write_policy(&policy, BAD);
    let rejected = agent.wait_for(|v| v["type"] == "reload", EVENT);
    assert_eq!(rejected["ok"], false, "{rejected}");
    let error = rejected["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("policy.yaml:5:") && error.contains("alow"),
        "the error must say where: {error}"
    );
    assert!(
        agent.stderr_contains("policy reload rejected", EVENT),
        "logged too"
    );
    let out = gnutls_once(www.addr(), b"GET / HTTP/1.0\r\n\r\n");
    assert!(!out.success(), "GnuTLS stays denied: {out:?}");
    let status = ctl(&socket, &["status"]);
    assert_eq!(status["mode"], "enforce", "{status}");
    let metrics_text = scrape(&metrics);
    assert_eq!(
        sample(
            &metrics_text,
            "enforcer_policy_reloads_total{result=\"rejected\"}"
        ),
        1.0
    );

    // Fixed again, then SIGHUP and `enforcer reload` reload the same file.
    write_policy(&policy, GNUTLS_DENIED);
    assert_eq!(agent.wait_for(|v| v["type"] == "reload", EVENT)["ok"], true);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGHUP) };
    let hup = agent.wait_for(|v| v["type"] == "reload", EVENT);
    assert_eq!(
        (hup["ok"].clone(), hup["actions_changed"].clone()),
        (Value::Bool(true), 0.into())
    );
    let answer = ctl(&socket, &["reload"]);
    assert_eq!(answer["reload"]["ok"], true, "{answer}");

    // block: an established OpenSSL connection is cut by the operator.
    let mut openssl = LongClient::openssl(long_openssl.addr());
    assert!(openssl.send(b"openssl-before\n"));
    long_openssl.wait_received(b"openssl-before", EVENT);
    agent.wait_for(
        |v| v["type"] == "connection" && v["comm"] == "openssl",
        EVENT,
    );
    let flows = ctl(&socket, &["flows"]);
    let flow = flow_of(&flows, "openssl", long_openssl.addr())
        .unwrap_or_else(|| panic!("no openssl flow: {flows}"))
        .clone();
    assert_eq!(flow["verdict"], "allowed", "{flow}");
    let local = flow["local"].as_str().expect("local").to_string();
    let remote = flow["remote"].as_str().expect("remote").to_string();
    let answer = ctl(&socket, &["block", &local, &remote]);
    assert_eq!(answer["socket_aborted"], true, "{answer}");
    assert!(
        openssl.exited_within(Duration::from_secs(2)),
        "the blocked connection must end"
    );
    agent.wait_for(|v| v["type"] == "operator" && v["action"] == "block", EVENT);

    // unblock: a blocklist entry no socket closes (so only the operator removes it).
    let (a, b) = ("10.254.2.1:40002", "10.254.2.2:443");
    ctl(&socket, &["block", a, b]);
    assert_eq!(ctl(&socket, &["status"])["maps"]["blocklist"], 1);
    let answer = ctl(&socket, &["unblock", a, b]);
    assert_eq!(answer["was_blocked"], true, "{answer}");
    assert_eq!(ctl(&socket, &["status"])["maps"]["blocklist"], 0);

    // Every record, on stdout and in the file, matches the documented schema; the file has
    // them all, in order, each on its own line.
    let stdout: Vec<Value> = agent.events().to_vec();
    let status = agent.stop().expect("running");
    assert!(status.success(), "{status:?}");
    let schema = events_schema();
    let text = std::fs::read_to_string(&events_file).expect("events file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for record in stdout.iter().chain(&lines) {
        if let Err(why) = validate_event(&schema, record) {
            panic!("event does not match docs/events.schema.json: {why}");
        }
    }
    let kinds = |records: &[Value]| -> Vec<String> {
        records
            .iter()
            .filter_map(|r| r["type"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(
        kinds(&lines),
        kinds(&stdout),
        "the file holds what stdout got"
    );
    for kind in ["ready", "connection", "reload", "operator"] {
        assert!(
            kinds(&lines).iter().any(|k| k == kind),
            "no {kind} record in the file"
        );
    }
}

/// A blocklist of two entries: filling it is reported (high), a denied flow that does not fit
/// is reported (`blocklist-full` verdict, `capacity` event with level `full`, metric).
#[test]
fn full_blocklist_is_reported() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::plain(&ns, peer, 9450, &cert);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("agent.sock");
    let mut agent = Agent::with_policy(
        &ns.host_if,
        GNUTLS_DENIED,
        &[
            "--control-socket",
            socket.to_str().expect("utf-8"),
            "--metrics",
            "127.0.0.1:0",
            "--blocklist-max",
            "2",
            "--flows-max",
            "1024",
        ],
    );
    let ready = agent.wait_ready(READY);
    let metrics = ready["metrics"]
        .as_str()
        .expect("metrics address")
        .to_string();
    let status = ctl(&socket, &["status"]);
    assert_eq!(status["maps"]["blocklist_max"], 2, "{status}");
    assert_eq!(status["maps"]["flows_max"], 1024, "{status}");
    ctl(&socket, &["block", "10.254.3.1:1", "10.254.3.2:443"]);
    ctl(&socket, &["block", "10.254.3.1:2", "10.254.3.2:443"]);
    let high = agent.wait_for(|v| v["type"] == "capacity" && v["level"] == "high", EVENT);
    assert_eq!(
        (high["entries"].clone(), high["max_entries"].clone()),
        (2.into(), 2.into())
    );

    let _ = gnutls_once(server.addr(), b"hello\n");
    let event = agent.wait_for(
        |v| v["type"] == "connection" && v["comm"] == "gnutls-cli",
        EVENT,
    );
    assert_eq!(event["verdict"], "blocklist-full", "{event}");
    let full = agent.wait_for(|v| v["type"] == "capacity" && v["level"] == "full", EVENT);
    assert!(full["failed_inserts"].as_u64() >= Some(1), "{full}");
    assert!(
        agent.stderr_contains("BLOCKLIST full", EVENT),
        "a warning is logged: {}",
        agent.stderr()
    );
    let text = scrape(&metrics);
    assert!(
        sample(&text, "enforcer_blocklist_insert_failures_total") >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "enforcer_map_max_entries{map=\"BLOCKLIST\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "enforcer_map_entries{map=\"BLOCKLIST\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "enforcer_connections_total{library=\"gnutls\",verdict=\"blocklist-full\"}"
        ),
        1.0,
        "{text}"
    );
}

/// Before: unattributed TLS audited; GnuTLS allowed only to `*.internal.example`.
const SCOPE_INTERNAL: &str = "\
mode: enforce
default: deny
unattributed_tls: audit
libraries:
  - family: gnutls
    server_names: [\"*.internal.example\"]
    action: allow
";
/// After: unattributed TLS denied; GnuTLS allowed only to `*.other.example`.
const SCOPE_OTHER: &str = "\
mode: enforce
default: deny
unattributed_tls: deny
libraries:
  - family: gnutls
    server_names: [\"*.other.example\"]
    action: allow
";
const SCOPE_PORT: u16 = 9451;

fn static_once(bin: &Path, peer: SocketAddr, name: &str, line: &str) -> enforcer_tests::Outcome {
    let (host, port) = (peer.ip().to_string(), peer.port().to_string());
    let mut c = std::process::Command::new(bin);
    c.args([host.as_str(), port.as_str(), name, line]);
    run_with_timeout(&mut c, b"", Duration::from_secs(15))
}

/// The verdict of the `client_hello` event for `name`.
fn hello_verdict(agent: &mut Agent, name: &str) -> Value {
    let name = name.to_owned();
    let e = agent.wait_for(
        move |v| v["type"] == "client_hello" && v["server_name"] == name.as_str(),
        EVENT,
    );
    e["verdict"].clone()
}

/// A reload changes a probed library's server-name scope and `unattributed_tls`: new
/// connections are judged by the new ones at once.
#[test]
fn reload_changes_server_name_scopes_and_unattributed_tls() {
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let hidden = build_static_client(dir.path());
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::plain(&ns, peer, SCOPE_PORT, &cert);
    let policy = dir.path().join("policy.yaml");
    write_policy(&policy, SCOPE_INTERNAL);
    let socket = dir.path().join("agent.sock");
    let mut agent = Agent::start(
        &ns.host_if,
        &policy,
        &["--control-socket", socket.to_str().expect("utf-8")],
    );
    agent.wait_ready(READY);
    // The late hook form lowers `unattributed_tls: deny` to audit (docs/policy.md).
    let status = ctl(&socket, &["status"]);
    let late = status["kernel_hook_targets"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t == "sock_send_length"));

    // Before: db.other.example is outside GnuTLS's scope; the hidden client is only audited.
    let out = gnutls_named(server.addr(), "db.other.example", b"OTHER-BEFORE\n");
    assert!(
        !out.success(),
        "outside the scope before the reload: {out:?}"
    );
    assert_eq!(hello_verdict(&mut agent, "db.other.example"), "blocked");
    let out = static_once(&hidden, server.addr(), "hidden.example", "HIDDEN-BEFORE\n");
    assert!(
        out.stdout_str().contains("handshake=ok"),
        "audited: {out:?}"
    );
    assert_eq!(hello_verdict(&mut agent, "hidden.example"), "audited");

    write_policy(&policy, SCOPE_OTHER);
    let reload = agent.wait_for(|v| v["type"] == "reload", EVENT);
    assert_eq!(reload["ok"], true, "{reload}");
    assert!(reload["scopes_changed"].as_u64() >= Some(1), "{reload}");
    let applied = if late { "audit" } else { "deny" };
    assert_eq!(reload["unattributed_tls"], applied, "{reload}");

    // After: db.other.example completes, db.internal.example is refused at its ClientHello.
    let line = b"OTHER-AFTER\n";
    let out = gnutls_named(server.addr(), "db.other.example", line);
    server.wait_received(line, EVENT);
    assert_eq!(
        hello_verdict(&mut agent, "db.other.example"),
        "allowed",
        "{out:?}"
    );
    let out = gnutls_named(server.addr(), "db.internal.example", b"INTERNAL-AFTER\n");
    assert!(
        !out.success() && out.elapsed < Duration::from_secs(2),
        "db.internal.example is out of the new scope: {out:?}"
    );
    assert_eq!(hello_verdict(&mut agent, "db.internal.example"), "blocked");
    assert!(!String::from_utf8_lossy(&server.received()).contains("INTERNAL-AFTER"));

    // unattributed_tls: deny now blocks the hidden client (on the late hook form: audited).
    let out = static_once(&hidden, server.addr(), "hidden2.example", "HIDDEN-AFTER\n");
    if late {
        assert_eq!(hello_verdict(&mut agent, "hidden2.example"), "audited");
        return;
    }
    assert!(
        !out.stdout_str().contains("handshake=ok") && out.elapsed < Duration::from_secs(2),
        "unattributed TLS is denied after the reload: {out:?}"
    );
    assert_eq!(hello_verdict(&mut agent, "hidden2.example"), "blocked");
    assert!(!String::from_utf8_lossy(&server.received()).contains("HIDDEN-AFTER"));
}

/// An allowed OpenSSL binds its hellos to its randoms, so its record calls get no probes (no cost
/// per record). A connection the agent never saw the handshake of (it was open before the agent
/// started) is then unknown to the kernel; a reload that denies OpenSSL probes the record calls,
/// and that connection is cut at its next `SSL_write`.
#[test]
fn reload_that_denies_an_allowed_library_cuts_its_unseen_connections_at_the_next_record() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::plain(&ns, peer, 9450, &cert);
    let mut client = LongClient::openssl(server.addr());
    assert!(client.send(b"before-the-agent\n"));
    server.wait_received(b"before-the-agent", EVENT);

    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    let socket = dir.path().join("agent.sock");
    write_policy(&policy, GNUTLS_DENIED); // OpenSSL allowed
    let mut agent = Agent::start(
        &ns.host_if,
        &policy,
        &["--control-socket", socket.to_str().expect("utf-8")],
    );
    agent.wait_ready(READY);
    assert!(client.send(b"while-allowed\n"));
    server.wait_received(b"while-allowed", EVENT);

    write_policy(
        &policy,
        "mode: enforce\ndefault: deny\nlibraries:\n  - family: gnutls\n    action: allow\n",
    );
    let reload = agent.wait_for(|v| v["type"] == "reload", EVENT);
    assert_eq!(reload["ok"], true, "{reload}");
    assert!(
        reload["record_probes_added"].as_u64() >= Some(1),
        "OpenSSL's record calls are probed once it is denied: {reload}"
    );
    let sent = std::time::Instant::now();
    client.send(b"after-the-reload\n");
    let event = agent.wait_for(
        |v| {
            v["type"] == "connection"
                && v["library"]["family"] == "openssl"
                && v["remote"]["port"] == 9450
        },
        EVENT,
    );
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert_eq!(event["call"], "write", "{event}");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "blocked {:?} after the write",
        sent.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&server.received()).contains("after-the-reload"),
        "the record after the reload must not reach the server"
    );
    drop(agent);
}
