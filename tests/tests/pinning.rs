//! `--pin DIR`: enforcement outlives the agent (SIGKILL and SIGTERM), the next agent takes the
//! pinned state over instead of stacking a second copy, and `enforcer detach --pin` removes it.

use std::{path::Path, time::Duration};

use enforcer_tests::{
    Agent, NetNs, cmd,
    ops::{SCOPED_ENFORCE, ctl, gnutls_named},
    pinned::{
        self, EVENT, POLICY, Setup, gnutls_blocked_by_name, gnutls_refused, ingress_attachments,
        our_tc_filters, stop_cleanly,
    },
    sh,
};
use serde_json::Value;

/// A flow no socket has: only the operator can put it in (and take it out of) the blocklist.
const SYNTHETIC: [&str; 2] = ["10.254.1.1:40001", "10.254.1.2:443"];

/// `ingress`: the `--ingress` form (`auto` is tc on the test's veth).
fn start_with(ns: &NetNs, policy: &str, pin: &Path, socket: &Path, ingress: &str) -> Agent {
    pinned::start(ns, policy, pin, socket, &["--ingress", ingress])
}

fn one_of(ingress: &str) -> (usize, usize) {
    match ingress {
        "xdp" => (1, 0),
        _ => (0, 1),
    }
}

/// Links in the kernel whose program is named `name`.
fn links_of(name: &str) -> usize {
    let progs: Value =
        serde_json::from_str(&sh(&mut cmd("bpftool", ["-j", "prog", "show"]))).expect("JSON");
    let ids: Vec<u64> = progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str() == Some(name))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    let links: Value =
        serde_json::from_str(&sh(&mut cmd("bpftool", ["-j", "link", "show"]))).expect("JSON");
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .count()
}

/// The send and receive programs of the kernel TCP hook form the tests run with
/// (`ENFORCER_TEST_KERNEL_HOOK`, set per form by `cargo xtask vm`; `auto` is tracepoint on the
/// development hosts).
fn tcp_hook_programs() -> [&'static str; 2] {
    match std::env::var("ENFORCER_TEST_KERNEL_HOOK").as_deref() {
        Ok("fentry") => ["fentry_tcp_sendmsg", "fentry_tcp_cleanup_rbuf"],
        Ok("kprobe") => ["kprobe_tcp_sendmsg", "kprobe_tcp_cleanup_rbuf"],
        _ => ["tp_tcp_send", "tp_tcp_recv"],
    }
}

fn pinned_links(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("links")).map_or(0, |d| d.count())
}

/// The entries of the map pinned as `maps/<name>`, as `bpftool -j map dump` prints them.
fn pinned_map(dir: &Path, name: &str) -> Vec<Value> {
    let path = dir.join("maps").join(name);
    assert!(path.exists(), "{} is not pinned", path.display());
    let out = sh(cmd("bpftool", ["-j", "map", "dump", "pinned"]).arg(&path));
    let v: Value = serde_json::from_str(&out).expect("JSON");
    v.as_array().cloned().unwrap_or_default()
}

fn pinned_blocklist_entries(dir: &Path) -> usize {
    pinned_map(dir, "BLOCKLIST").len()
}

#[test]
fn pinned_enforcement_survives_sigkill_and_is_taken_over_xdp() {
    pinned_enforcement_survives_sigkill_and_is_taken_over("xdp");
}

#[test]
fn pinned_enforcement_survives_sigkill_and_is_taken_over_tc_ingress() {
    pinned_enforcement_survives_sigkill_and_is_taken_over("tc");
}

/// `ingress`: the `--ingress` form both agents run with.
fn pinned_enforcement_survives_sigkill_and_is_taken_over(ingress: &str) {
    // Bound in this order so they drop as before: the pin directory first, the host lock last.
    let Setup {
        _host,
        ns,
        peer,
        _cert,
        server,
        pin,
        _sockdir,
        socket,
    } = Setup::new();

    let mut first = start_with(&ns, POLICY, &pin.dir, &socket, ingress);
    assert_eq!(
        ingress_attachments(&ns.host_if),
        one_of(ingress),
        "ingress {ingress}"
    );
    // `enforcer status` names the form: a veth's XDP is native.
    let status = ctl(&socket, &["status"]);
    let form = &status["attached"]["ingress"][&ns.host_if];
    let want = if ingress == "xdp" { "xdp native" } else { "tc" };
    assert_eq!(form, want, "{status}");
    let answer = ctl(&socket, &["block", SYNTHETIC[0], SYNTHETIC[1]]);
    assert_eq!(answer["ok"], true, "{answer}");
    gnutls_refused(&server, peer, "GNUTLS-FIRST-AGENT", true);
    let blocked = first.wait_for(
        |v| v["type"] == "connection" && v["comm"] == "gnutls-cli",
        EVENT,
    );
    assert_eq!(blocked["verdict"], "blocked", "{blocked}");
    let links_before = pinned_links(&pin.dir);
    assert!(links_before > 1, "links pinned: {links_before}");

    // SIGKILL: nothing runs its cleanup. Enforcement must go on without the agent.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGKILL) };
    first.stop();
    assert_eq!(
        ingress_attachments(&ns.host_if),
        one_of(ingress),
        "ingress stays attached"
    );
    assert_eq!(our_tc_filters(&ns.host_if), 1, "the tc filter stays");
    assert!(
        pinned_blocklist_entries(&pin.dir) >= 1,
        "the blocklist keeps the operator's entry"
    );
    // New denied connections are still attributed (pinned uprobes and hook) and dropped.
    gnutls_refused(&server, peer, "GNUTLS-NO-AGENT", false);

    // The next agent takes over: one XDP program, one tc filter, the old kernel hooks released
    // (one link each), the blocklist entry still there.
    let tcp_hooks = tcp_hook_programs();
    let mut second = start_with(&ns, POLICY, &pin.dir, &socket, ingress);
    assert_eq!(
        ingress_attachments(&ns.host_if),
        one_of(ingress),
        "one ingress program"
    );
    assert_eq!(our_tc_filters(&ns.host_if), 1, "one tc filter");
    for hook in ["tp_sock_state", tcp_hooks[0], tcp_hooks[1]] {
        assert_eq!(
            links_of(hook),
            1,
            "links of {hook} after the restart; programs: {}; links: {}",
            sh(&mut cmd("bpftool", ["prog", "show"])),
            sh(&mut cmd("bpftool", ["link", "show"]))
        );
    }
    let flows = ctl(&socket, &["flows"]);
    let synthetic = flows["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .find(|f| f["local"] == SYNTHETIC[0] && f["remote"] == SYNTHETIC[1])
        .unwrap_or_else(|| panic!("the blocked flow is gone after the restart: {flows}"));
    assert_eq!(synthetic["blocked"], true, "{synthetic}");
    // The event of the connection dropped while no agent ran waited in the pinned ring buffer
    // (its library id is the first run's, which this run cannot name).
    let downtime = second.wait_for(
        |v| v["type"] == "connection" && v["comm"] == "gnutls-cli",
        EVENT,
    );
    assert_eq!(downtime["verdict"], "blocked", "{downtime}");
    gnutls_refused(&server, peer, "GNUTLS-SECOND-AGENT", true);
    gnutls_blocked_by_name(&mut second);

    // SIGTERM with --pin persists; detach removes everything.
    stop_cleanly(&mut second);
    assert_eq!(
        ingress_attachments(&ns.host_if),
        one_of(ingress),
        "SIGTERM keeps ingress"
    );
    assert_eq!(
        our_tc_filters(&ns.host_if),
        1,
        "SIGTERM keeps the tc filter"
    );
    let out = pin.detach();
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The link goes when its last fd closes: the agent's helper that resumes paused processes
    // (forked at start, holding copies of its fds) may outlive the agent by a few milliseconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ingress_attachments(&ns.host_if) != (0, 0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        ingress_attachments(&ns.host_if),
        (0, 0),
        "detach removes ingress"
    );
    assert_eq!(
        our_tc_filters(&ns.host_if),
        0,
        "detach removes the tc filter"
    );
    assert!(!pin.dir.exists(), "detach removes the pin directory");
    assert_eq!(links_of("tp_sock_state"), 0, "no close hook left");
}

/// The ClientHello policy (`unattributed_tls`, server-name scopes) is pinned with the other
/// policy maps: it is in the pin directory after the agent exits, still enforced without an
/// agent, and the next agent takes the maps over without keeping the first run's scopes.
#[test]
fn client_hello_policy_is_pinned_and_taken_over() {
    let setup = Setup::new();
    let (ns, server, pin, socket) = (&setup.ns, &setup.server, &setup.pin, &setup.socket);

    let mut first = start_with(ns, SCOPED_ENFORCE, &pin.dir, socket, "auto");
    let status = first.stop().expect("agent was running");
    assert!(status.success(), "clean exit: {}", first.stderr());
    for map in [
        "HELLO_POLICY",
        "SCOPED_LIBS",
        "SERVER_NAME_RULES",
        "HELLOS_SEEN",
    ] {
        assert!(
            pin.dir.join("maps").join(map).exists(),
            "{map} must be pinned"
        );
    }
    // `HelloPolicy::unattributed` (its first byte) is not `allow` (0): deny, or audit on the
    // late hook form.
    let hello_policy = pinned_map(&pin.dir, "HELLO_POLICY");
    let unattributed = hello_policy[0]["value"][0].as_str().unwrap_or_default();
    assert_ne!(unattributed, "0x00", "{hello_policy:?}");
    let scoped = pinned_map(&pin.dir, "SCOPED_LIBS").len();
    assert!(scoped >= 1, "the GnuTLS files are scoped");
    assert!(!pinned_map(&pin.dir, "SERVER_NAME_RULES").is_empty());

    // The next agent reuses the pinned maps; the first run's scopes go once its own are in.
    let mut second = start_with(ns, SCOPED_ENFORCE, &pin.dir, socket, "auto");
    assert_eq!(
        pinned_map(&pin.dir, "SCOPED_LIBS").len(),
        scoped,
        "one scope per probed GnuTLS file, not one per run"
    );
    let out = gnutls_named(server.addr(), "db.other.example", b"OUT-OF-SCOPE-AGENT\n");
    assert!(
        !out.success(),
        "out of scope with the second agent: {out:?}"
    );
    let hello = second.wait_for(
        |v| v["type"] == "client_hello" && v["server_name"] == "db.other.example",
        EVENT,
    );
    assert_eq!(hello["verdict"], "blocked", "{hello}");

    // Without an agent, a name out of GnuTLS's scope is still refused at its ClientHello.
    let status = second.stop().expect("agent was running");
    assert!(status.success(), "clean exit: {}", second.stderr());
    let out = gnutls_named(
        server.addr(),
        "db2.other.example",
        b"OUT-OF-SCOPE-NO-AGENT\n",
    );
    assert!(!out.success(), "out of scope without an agent: {out:?}");
    let received = String::from_utf8_lossy(&server.received()).into_owned();
    assert!(!received.contains("OUT-OF-SCOPE"), "{received}");
}
