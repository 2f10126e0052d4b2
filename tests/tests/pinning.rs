//! `--pin DIR`: enforcement outlives the agent (SIGKILL and SIGTERM), the next agent takes the
//! pinned state over instead of stacking a second copy, and `enforcer detach --pin` removes it.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use enforcer_tests::{
    Agent, Cert, HostLock, NetNs, Server, cmd, host_lock,
    ops::{PinGuard, SCOPED_ENFORCE, ctl, gnutls_named},
    require_root, run_with_timeout, sh, tcx,
};
use serde_json::Value;

const POLICY: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const PORT: u16 = 9446;
/// A flow no socket has: only the operator can put it in (and take it out of) the blocklist.
const SYNTHETIC: [&str; 2] = ["10.254.1.1:40001", "10.254.1.2:443"];

/// A namespace with a TLS server, a pin directory (detached on drop) and a control socket path.
struct Setup {
    // Held across the agents' restarts: the pinned state enforces while no agent runs, and
    // another test run's agent must not start in between.
    _host: HostLock,
    ns: NetNs,
    peer: IpAddr,
    _cert: Cert,
    server: Server,
    pin: PinGuard,
    _sockdir: tempfile::TempDir,
    socket: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        require_root();
        let host = host_lock();
        let ns = NetNs::new();
        let peer = IpAddr::V4(ns.peer_v4);
        let cert = Cert::new(&[peer]);
        let server = Server::plain(&ns, peer, PORT, &cert);
        let pin = PinGuard::new(&[&ns.host_if]);
        let sockdir = tempfile::tempdir().expect("temp dir");
        Setup {
            socket: sockdir.path().join("agent.sock"),
            ns,
            peer,
            server,
            pin,
            _sockdir: sockdir,
            _cert: cert,
            _host: host,
        }
    }
}

/// `ingress`: the `--ingress` form (`auto` is tc on the test's veth).
fn start_with(ns: &NetNs, policy: &str, pin: &Path, socket: &Path, ingress: &str) -> Agent {
    let pin = pin.to_str().expect("utf-8");
    let socket = socket.to_str().expect("utf-8");
    // The hook form of this run (the VM matrix sets it per cell): `tcp_hook_programs` names
    // its programs, so an agent left on `auto` would be counted as having no hook links.
    let mut args = enforcer_tests::hook_args();
    args.extend(
        [
            "--pin",
            pin,
            "--control-socket",
            socket,
            "--ingress",
            ingress,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, policy, &args);
    agent.wait_ready(READY);
    agent
}

/// gnutls-cli to `server`: must fail without its marker reaching the peer; within 2 s when an
/// agent runs (it aborts the socket), else when the client gives up on its dropped packets.
fn gnutls_refused(server: &Server, peer: IpAddr, marker: &str, agent_running: bool) {
    let out = run_with_timeout(
        &mut cmd(
            "gnutls-cli",
            ["--insecure", "--port", &PORT.to_string(), &peer.to_string()],
        ),
        format!("{marker}\n").as_bytes(),
        Duration::from_secs(15),
    );
    assert!(!out.success(), "gnutls-cli must fail: {out:?}");
    assert!(
        !agent_running || out.elapsed < Duration::from_secs(2),
        "gnutls-cli took {:?}",
        out.elapsed
    );
    let received = String::from_utf8_lossy(&server.received()).into_owned();
    assert!(!received.contains(marker), "the peer received {marker}");
}

/// XDP program ids attached to `iface` (`ip -j -d link`).
fn xdp_programs(iface: &str) -> Vec<u64> {
    let out = sh(&mut cmd("ip", ["-j", "-d", "link", "show", "dev", iface]));
    let v: Value = serde_json::from_str(&out).expect("ip -j prints JSON");
    let xdp = &v[0]["xdp"];
    let mut ids: Vec<u64> = xdp["prog"]["id"].as_u64().into_iter().collect();
    for p in xdp["attached"].as_array().into_iter().flatten() {
        ids.extend(p["prog"]["id"].as_u64());
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn our_tc_filters(iface: &str) -> usize {
    sh(&mut cmd("tc", ["filter", "show", "dev", iface, "egress"]))
        .lines()
        .filter(|l| l.contains("enforcer_egress"))
        .count()
}

/// Our ingress attachments on `iface`: (XDP programs, tc ingress filters).
fn ingress_attachments(iface: &str) -> (usize, usize) {
    let tc = sh(&mut cmd("tc", ["filter", "show", "dev", iface, "ingress"]))
        .lines()
        .filter(|l| l.contains("enforcer_ingress"))
        .count();
    (xdp_programs(iface).len(), tc)
}

/// (XDP, tc) attachments of one ingress form, as [`ingress_attachments`] counts them.
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

/// This run's event of a blocked gnutls-cli connection, its library named (not the downtime
/// connection's: its event waited in the pinned ring with the first run's library id).
fn gnutls_blocked_by_name(agent: &mut Agent) {
    let event = agent.wait_for(
        |v| {
            v["type"] == "connection"
                && v["comm"] == "gnutls-cli"
                && v["library"]["family"] != "unknown"
        },
        EVENT,
    );
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert_eq!(event["library"]["family"], "gnutls", "{event}");
}

/// SIGTERM, and a clean exit.
fn stop_cleanly(agent: &mut Agent) {
    let status = agent.stop().expect("agent was running");
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        agent.stderr()
    );
}

/// A pinned agent with tc ingress and the classifiers attached as `tc_attach` says.
fn start_tc(ns: &NetNs, pin: &Path, socket: &Path, tc_attach: &str) -> Agent {
    let mut args = enforcer_tests::hook_args();
    args.extend(
        [
            "--pin",
            pin.to_str().expect("utf-8"),
            "--control-socket",
            socket.to_str().expect("utf-8"),
            "--ingress",
            "tc",
            "--tc-attach",
            tc_attach,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, POLICY, &args);
    agent.wait_ready(READY);
    agent
}

/// The set-up of a tcx test, `None` (said why) where the kernel has no tcx hooks.
fn tcx_setup() -> Option<Setup> {
    require_root();
    if !tcx::supported() {
        eprintln!(
            "skipped: this kernel has no tcx hooks (Linux 6.6+), which --tc-attach tcx needs"
        );
        return None;
    }
    Some(Setup::new())
}

/// `--tc-attach tcx --pin`: the classifiers' tcx links are pinned, enforce while no agent runs
/// (SIGKILL), and the next agent swaps its programs into the very links (same link ids, new
/// programs, still one link per hook); no classic filter is added; detach removes them.
#[test]
fn pinned_tcx_links_survive_sigkill_and_are_taken_over_in_place() {
    let Some(Setup {
        _host,
        ns,
        peer,
        _cert,
        server,
        pin,
        _sockdir,
        socket,
    }) = tcx_setup()
    else {
        return;
    };
    let start = || start_tc(&ns, &pin.dir, &socket, "tcx");
    let mut first = start();
    let before = tcx::links_on(&ns.host_if);
    let hooks: Vec<&str> = before.iter().map(|l| l.2).collect();
    assert_eq!(
        hooks,
        ["egress", "ingress"],
        "one tcx link per hook: {before:?}"
    );
    assert!(
        before.iter().all(|l| l.0 != 0),
        "links, not bare programs: {before:?}"
    );
    assert_eq!(our_tc_filters(&ns.host_if), 0, "no classic filter with tcx");
    gnutls_refused(&server, peer, "GNUTLS-TCX-FIRST", true);

    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGKILL) };
    first.stop();
    assert_eq!(
        tcx::links_on(&ns.host_if),
        before,
        "the pinned tcx links stay"
    );
    gnutls_refused(&server, peer, "GNUTLS-TCX-NO-AGENT", false);

    let mut second = start();
    let after = tcx::links_on(&ns.host_if);
    assert_eq!(after.len(), 2, "still one tcx link per hook: {after:?}");
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(
            (old.0, &old.2),
            (new.0, &new.2),
            "the same link, taken over"
        );
        assert_ne!(
            old.1, new.1,
            "the second agent's program in it: {before:?} {after:?}"
        );
    }
    assert_eq!(
        our_tc_filters(&ns.host_if),
        0,
        "no classic filter after the takeover"
    );
    gnutls_refused(&server, peer, "GNUTLS-TCX-SECOND", true);
    gnutls_blocked_by_name(&mut second);

    stop_cleanly(&mut second);
    assert_eq!(
        tcx::links_on(&ns.host_if).len(),
        2,
        "SIGTERM with --pin keeps them"
    );
    let out = pin.detach();
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !tcx::links_on(&ns.host_if).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        tcx::links_on(&ns.host_if),
        [],
        "detach removes the tcx links"
    );
}

/// A pinned run that changes the tc form takes the other form's leftovers away: netlink, then
/// tcx (the classic filters go), then netlink again (the pinned tcx links go); never both forms
/// of our classifier on a hook, and enforcement on throughout.
#[test]
fn a_pinned_run_that_changes_tc_form_removes_the_other_form() {
    let Some(Setup {
        _host,
        ns,
        peer,
        _cert,
        server,
        pin,
        _sockdir,
        socket,
    }) = tcx_setup()
    else {
        return;
    };
    // A netlink run's tc ingress program pin (how `enforcer detach` finds the interface).
    let tcin_pin = pin
        .dir
        .join(format!("links/tcin_{}", tcx::ifindex(&ns.host_if)));
    let forms = |iface: &str| {
        (
            our_tc_filters(iface),
            ingress_attachments(iface).1,
            tcx::links_on(iface).len(),
            tcin_pin.exists(),
        )
    };
    for (run, form, want) in [
        (1, "netlink", (1, 1, 0, true)),
        (2, "tcx", (0, 0, 2, false)),
        (3, "netlink", (1, 1, 0, true)),
    ] {
        let mut agent = start_tc(&ns, &pin.dir, &socket, form);
        assert_eq!(
            forms(&ns.host_if),
            want,
            "run {run} ({form}): (egress filters, ingress filters, tcx links, tc ingress pin)"
        );
        gnutls_refused(&server, peer, &format!("GNUTLS-FORM-{run}"), true);
        let status = agent.stop().expect("agent was running");
        assert!(
            status.success(),
            "clean exit: {status:?}\n{}",
            agent.stderr()
        );
        assert_eq!(
            forms(&ns.host_if),
            want,
            "run {run}: SIGTERM with --pin keeps them"
        );
    }
    let out = pin.detach();
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
