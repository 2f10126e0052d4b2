//! What the agent leaves on the host: nothing after SIGINT, SIGTERM or a failed attach; a stale
//! tc filter after SIGKILL is cleaned up by the next agent. And the errors a user sees.

use std::{process::Command, time::Duration};

use enforcer_tests::{
    Agent, NetNs, cmd, enforcer_bin, host_lock, require_root, run_with_timeout, sh,
};

const READY: Duration = Duration::from_secs(60);
const POLICY: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";

/// What enforcer may have put on an interface, as `ip` and `tc` report it.
#[derive(Debug, PartialEq)]
struct IfaceState {
    xdp: bool,
    clsact: bool,
    egress_filters: String,
    ingress_filters: String,
}

fn state(iface: &str) -> IfaceState {
    let link = sh(&mut cmd("ip", ["-d", "link", "show", "dev", iface]));
    let qdiscs = sh(&mut cmd("tc", ["qdisc", "show", "dev", iface]));
    let filters = |hook| sh(&mut cmd("tc", ["filter", "show", "dev", iface, hook]));
    IfaceState {
        xdp: link.contains("xdp"),
        clsact: qdiscs.contains("clsact"),
        egress_filters: filters("egress").trim().to_string(),
        ingress_filters: filters("ingress").trim().to_string(),
    }
}

fn clean() -> IfaceState {
    IfaceState {
        xdp: false,
        clsact: false,
        egress_filters: String::new(),
        ingress_filters: String::new(),
    }
}

const OUR_PROGRAMS: [&str; 5] = [
    "enforcer_ingres",
    "enforcer_egress",
    "tls_enter",
    "tls_exit",
    "tp_tcp_send",
];

/// Ids of enforcer's programs loaded in the kernel now, with whether a live process holds them.
fn enforcer_programs() -> Vec<(u64, String, bool)> {
    let out = sh(&mut cmd("bpftool", ["-j", "prog", "show"]));
    let progs: serde_json::Value = serde_json::from_str(&out).expect("bpftool -j prints JSON");
    progs
        .as_array()
        .expect("a list of programs")
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            OUR_PROGRAMS.iter().any(|n| name.starts_with(n)).then(|| {
                let held = p["pids"].as_array().is_some_and(|pids| !pids.is_empty());
                (p["id"].as_u64().unwrap_or(0), name.to_string(), held)
            })
        })
        .collect()
}

/// Programs of ours that appeared after `before` was taken and that no process holds: left
/// behind (attached by netlink or pinned). Programs of other agents running at the same time are
/// held by those agents and do not count. A released `uprobe_multi` link frees its program only
/// after an RCU-tasks-trace grace period, so such programs may linger briefly after the agent is
/// gone: this waits up to `RELEASE_GRACE` for them to go before reporting what is left.
fn orphans_since(before: &[(u64, String, bool)]) -> Vec<(u64, String, bool)> {
    let deadline = std::time::Instant::now() + RELEASE_GRACE;
    loop {
        let left: Vec<_> = enforcer_programs()
            .into_iter()
            .filter(|(id, _, held)| !held && !before.iter().any(|(b, _, _)| b == id))
            .collect();
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// An agent on `ns`'s veth, its ingress in `ingress` (`--ingress`: `auto` is tc on a veth).
fn attached_agent(ns: &NetNs, ingress: &str) -> Agent {
    let mut agent = Agent::with_policy(&ns.host_if, POLICY, &["--ingress", ingress]);
    agent.wait_ready(READY);
    let st = state(&ns.host_if);
    let tc_ingress = st.ingress_filters.contains("enforcer_ingress");
    let want_xdp = ingress == "xdp";
    assert!(
        st.xdp == want_xdp && tc_ingress != want_xdp,
        "ingress not {ingress}: {st:?}"
    );
    assert!(
        st.clsact && st.egress_filters.contains("enforcer_egress"),
        "not attached: {st:?}"
    );
    agent
}

fn exit_leaves_nothing(signal: libc::c_int, ingress: &str) {
    require_root();
    let ns = NetNs::new();
    // Before the snapshot: programs of another test run's agent must not count as ours.
    let _host = host_lock();
    let before = enforcer_programs();
    let mut agent = attached_agent(&ns, ingress);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as libc::pid_t, signal) };
    let status = agent.stop().expect("agent was running");
    assert!(
        status.success(),
        "agent exited with {status:?} on signal {signal}: {}",
        agent.stderr()
    );
    assert_eq!(state(&ns.host_if), clean(), "left behind on {}", ns.host_if);
    let left = orphans_since(&before);
    assert!(left.is_empty(), "programs left loaded: {left:?}");
}

#[test]
fn sigterm_leaves_nothing_attached() {
    exit_leaves_nothing(libc::SIGTERM, "auto");
}

#[test]
fn sigint_leaves_nothing_attached_xdp() {
    exit_leaves_nothing(libc::SIGINT, "xdp");
}

/// A second agent cannot take an interface another agent filters, whatever its ingress form:
/// it must fail, say why, roll back what it had already attached to the first interface, and
/// leave the first agent's filters in place.
#[test]
fn failed_attach_rolls_back() {
    for ingress in ["xdp", "tc"] {
        failed_attach_rolls_back_with(ingress);
    }
}

fn failed_attach_rolls_back_with(ingress: &str) {
    require_root();
    let (a, b) = (NetNs::new(), NetNs::new());
    let _holder = attached_agent(&b, ingress);
    let held = state(&b.host_if);
    let mut second = Command::new(enforcer_bin());
    second.args([
        "attach",
        "--iface",
        &a.host_if,
        "--iface",
        &b.host_if,
        "--events",
        "json",
        "--ingress",
        ingress,
    ]);
    let out = run_with_timeout(&mut second, b"", Duration::from_secs(60));
    assert!(
        !out.success() && !out.timed_out,
        "the second agent must fail: {out:?}"
    );
    assert!(
        out.stderr_str().contains(&b.host_if),
        "the error must name {}: {}",
        b.host_if,
        out.stderr_str()
    );
    assert_eq!(
        state(&a.host_if),
        clean(),
        "rollback left state on {}",
        a.host_if
    );
    assert_eq!(
        state(&b.host_if),
        held,
        "the first agent's filters on {}",
        b.host_if
    );
}

/// After SIGKILL the tc filter (a netlink object) survives; the next agent removes it instead of
/// stacking a second one, and leaves nothing when it exits.
#[test]
fn stale_filter_after_sigkill_is_replaced() {
    require_root();
    let ns = NetNs::new();
    let mut first = attached_agent(&ns, "auto");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGKILL) };
    first.stop();
    let st = state(&ns.host_if);
    assert!(
        !st.xdp,
        "XDP is a BPF link and must go with the process: {st:?}"
    );
    assert!(
        st.egress_filters.contains("enforcer_egress")
            && st.ingress_filters.contains("enforcer_ingress"),
        "expected the stale filters: {st:?}"
    );

    let mut second = attached_agent(&ns, "auto");
    let st = state(&ns.host_if);
    for (filters, name) in [
        (&st.egress_filters, "enforcer_egress"),
        (&st.ingress_filters, "enforcer_ingress"),
    ] {
        let ours = filters.lines().filter(|l| l.contains(name)).count();
        assert_eq!(ours, 1, "filters stacked: {filters}");
    }
    assert!(
        second
            .stderr()
            .contains("removed tc filters left by an earlier agent"),
        "{}",
        second.stderr()
    );
    second.stop();
    // The clsact was created by the first agent, so the second does not own it; the filter is gone.
    let st = state(&ns.host_if);
    assert!(
        st.egress_filters.is_empty() && st.ingress_filters.is_empty(),
        "{st:?}"
    );
}

#[test]
fn missing_interface_is_a_clear_error() {
    require_root();
    let _host = host_lock();
    let before = enforcer_programs();
    let out = run_with_timeout(
        &mut cmd(
            enforcer_bin().to_str().unwrap(),
            ["attach", "--iface", "enf-nosuch0"],
        ),
        b"",
        Duration::from_secs(30),
    );
    assert!(!out.success(), "{out:?}");
    let err = out.stderr_str();
    assert!(
        err.contains("interface 'enf-nosuch0' does not exist") && err.contains("ip link"),
        "{err}"
    );
    let left = orphans_since(&before);
    assert!(left.is_empty(), "programs left by a failed start: {left:?}");
}

#[test]
fn policy_check_names_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "mode: enforce\ndefault: deny\nlibraries:\n  - fmaily: openssl\n    action: allow\n",
    )
    .unwrap();
    let out = run_with_timeout(
        &mut cmd(
            enforcer_bin().to_str().unwrap(),
            ["policy", "check", file.to_str().unwrap()],
        ),
        b"",
        Duration::from_secs(10),
    );
    assert!(!out.success(), "{out:?}");
    let err = out.stderr_str();
    assert!(
        err.contains("bad.yaml:4:") && err.contains("fmaily"),
        "error must name line 4 and the key: {err}"
    );

    let good = enforcer_tests::workspace().join("policies/openssl-only.yaml");
    let out = run_with_timeout(
        &mut cmd(
            enforcer_bin().to_str().unwrap(),
            ["policy", "check", good.to_str().unwrap()],
        ),
        b"",
        Duration::from_secs(10),
    );
    assert!(
        out.success() && out.stdout_str().contains("enforce"),
        "{out:?}"
    );
}

/// Every form either attaches, or says precisely why not. On this kernel family: kprobes are
/// absent (must say CONFIG_KPROBES) and fentry is refused (must say EPERM); where the kernel has
/// them they must attach.
#[test]
fn check_kernel_explains_every_hook_form() {
    require_root();
    let out = run_with_timeout(
        &mut cmd(enforcer_bin().to_str().unwrap(), ["check-kernel"]),
        b"",
        Duration::from_secs(60),
    );
    let text = out.stdout_str();
    assert!(out.success(), "no hook form works? {out:?}");
    let line = |form: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{form}:")))
            .unwrap_or_else(|| panic!("no {form} line: {text}"))
            .to_string()
    };
    assert!(line("tracepoint").contains("attaches"), "{text}");
    let kprobe = line("kprobe");
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert!(
            kprobe.contains("attaches"),
            "the kernel has kprobes: {kprobe}"
        );
    } else {
        assert!(
            kprobe.contains("loads, cannot attach") && kprobe.contains("CONFIG_KPROBES"),
            "{kprobe}"
        );
    }
    let fentry = line("fentry");
    assert!(
        fentry.contains("attaches") || fentry.contains("EPERM") || fentry.contains("BTF"),
        "fentry must attach or say why: {fentry}"
    );
    assert!(line("auto").len() > "auto: ".len());
    // The feature list comes first: every feature with its first release; this kernel (5.15+)
    // has every one enforcer cannot do without, so nothing says it refuses.
    let features: Vec<&str> = text.lines().filter(|l| l.starts_with("feature ")).collect();
    assert!(features.len() >= 10, "{text}");
    assert!(
        features
            .iter()
            .all(|l| l.contains(": yes (Linux ") || l.contains(": no (Linux ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("feature uprobe_multi links: ")),
        "{text}"
    );
    assert!(
        !text.contains("refuses to start") && !text.contains("\nrefused: "),
        "{text}"
    );
}

/// A layer-3 device has no Ethernet header: the agent must refuse it rather than attach programs
/// that would parse garbage and enforce nothing.
#[test]
fn non_ethernet_interface_is_refused() {
    require_root();
    let name = format!("enftun{}", std::process::id() % 100_000);
    sh(&mut cmd(
        "ip",
        ["tuntap", "add", "dev", &name, "mode", "tun"],
    ));
    let out = run_with_timeout(
        &mut cmd(
            enforcer_bin().to_str().unwrap(),
            ["attach", "--iface", &name],
        ),
        b"",
        Duration::from_secs(30),
    );
    let _ = Command::new("ip").args(["link", "del", &name]).status();
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr_str().contains("is not Ethernet"),
        "{}",
        out.stderr_str()
    );
}

/// A killed agent whose ingress was in tc leaves its tc ingress filter; the next agent removes
/// it even when its own ingress is XDP, so no stale program filters beside ours.
#[test]
fn stale_tc_ingress_filter_goes_when_the_next_agent_uses_xdp() {
    require_root();
    let ns = NetNs::new();
    let mut first = attached_agent(&ns, "tc");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGKILL) };
    first.stop();
    let st = state(&ns.host_if);
    assert!(
        st.ingress_filters.contains("enforcer_ingress"),
        "expected the stale filter: {st:?}"
    );
    let second = attached_agent(&ns, "xdp");
    let st = state(&ns.host_if);
    assert!(st.xdp && st.ingress_filters.is_empty(), "{st:?}");
    drop(second);
}

/// The id of the map named `name` among the maps the agent `pid` holds (its fds' fdinfo).
fn agent_map(pid: u32, name: &str) -> u64 {
    let ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("agent fdinfo")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    let found = ids.into_iter().find(|id| {
        let shown = sh(&mut cmd(
            "bpftool",
            ["-j", "map", "show", "id", &id.to_string()],
        ));
        serde_json::from_str::<serde_json::Value>(&shown).is_ok_and(|m| m["name"] == name)
    });
    found.unwrap_or_else(|| panic!("the agent holds no map {name}"))
}

/// The state letter of `/proc/PID/stat` (`T`: stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The agent leaves no process it may have stopped behind: one listed in its `PAUSED` map that
/// no new-file event named (what a hook that ran while the hooks were being detached would
/// leave) is resumed when the agent stops.
#[test]
fn a_process_listed_as_paused_is_resumed_at_exit() {
    require_root();
    let ns = NetNs::new();
    // Started before the agent: an exec under its watcher would be paused and resumed by it,
    // and that resume would end the stop below too.
    let mut sleeper = Command::new("sleep").arg("60").spawn().expect("sleep");
    let pid = sleeper.id();
    let mut agent = Agent::with_policy(&ns.host_if, POLICY, &[]);
    agent.wait_ready(READY);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while proc_state(pid) != Some('T') {
        assert!(std::time::Instant::now() < deadline, "sleep did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let map = agent_map(agent.pid(), "PAUSED").to_string();
    let key: Vec<String> = pid.to_le_bytes().iter().map(|b| b.to_string()).collect();
    let mut update = cmd("bpftool", ["map", "update", "id", &map, "key"]);
    update
        .args(&key)
        .args(["value", "0", "0", "0", "0", "0", "0", "0", "0"]);
    sh(&mut update);
    let status = agent.stop().expect("agent was running");
    assert!(status.success(), "{status:?}: {}", agent.stderr());
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while proc_state(pid) == Some('T') {
        assert!(
            std::time::Instant::now() < deadline,
            "the process listed as paused is still stopped after the agent exited: {}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        agent.stderr().contains("resumed at shutdown"),
        "{}",
        agent.stderr()
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}
