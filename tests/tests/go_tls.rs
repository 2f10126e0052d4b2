//! Go's `crypto/tls`, compiled into a program: a Go HTTPS client built here from Debian's
//! `golang-go` (offline, standard library only) is attributed to the family `go` with its Go
//! version, stripped (`-ldflags=-s -w`) or not, and allowed or dropped as the policy says. The
//! client is built after the agent started, so the watcher finds it at `exec` and probes it
//! (entry after the stack check, a uprobe on every `RET`) before it runs.

use std::{net::IpAddr, process::Command, time::Duration};

use enforcer_tests::programs::{build_go, go_version};
use enforcer_tests::{Agent, Cert, NetNs, Server, require_root, run_with_timeout};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
const PORT: u16 = 8453;

struct Setup {
    server: Server,
    _cert: Cert,
    ns: NetNs,
    local: IpAddr,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    require_root();
    let ns = NetNs::new();
    let (local, peer) = (IpAddr::V4(ns.host_v4), IpAddr::V4(ns.peer_v4));
    let cert = Cert::new(&[peer]);
    let server = Server::www(&ns, peer, PORT, &cert);
    let dir = tempfile::Builder::new()
        .prefix("enforcer-go-")
        .tempdir()
        .expect("temp dir");
    Setup {
        server,
        _cert: cert,
        ns,
        local,
        dir,
    }
}

fn agent(ns: &NetNs, go_action: &str) -> Agent {
    let policy = format!(
        "mode: enforce\ndefault: deny\nlibraries:\n  - family: go\n    action: {go_action}\n  - family: openssl\n    action: allow\n"
    );
    let mut agent = Agent::with_policy(&ns.host_if, &policy, &[]);
    agent.wait_ready(READY);
    agent
}

fn connection(agent: &mut Agent, comm: &str, local: IpAddr, server: &Server) -> Value {
    agent.wait_connection(comm, local, server.addr(), EVENT)
}

#[test]
fn go_client_allowed_and_attributed_stripped_or_not() {
    let s = setup();
    let mut agent = agent(&s.ns, "allow");
    let version = go_version();
    for (name, ldflags) in [("go-plain", ""), ("go-stripped", "-s -w")] {
        let exe = build_go(s.dir.path(), name, ldflags);
        let out = run_with_timeout(
            Command::new(&exe).arg(s.server.addr().to_string()),
            b"",
            CLIENT,
        );
        assert!(
            out.success() && out.stdout_str().contains("s_server"),
            "{name} must complete: {out:?}\n{}",
            agent.stderr()
        );
        let event = connection(&mut agent, name, s.local, &s.server);
        assert_eq!(event["verdict"], "allowed", "{name}: {event}");
        assert_eq!(event["library"]["family"], "go", "{name}: {event}");
        assert_eq!(
            event["library"]["version"],
            version.as_str(),
            "{name}: {event}"
        );
        assert_eq!(
            event["library"]["path"],
            exe.to_str().unwrap(),
            "{name}: {event}"
        );
    }
}

#[test]
fn go_client_denied_fails_fast() {
    let s = setup();
    let mut agent = agent(&s.ns, "deny");
    let exe = build_go(s.dir.path(), "go-denied", "-s -w");
    let out = run_with_timeout(
        Command::new(&exe).arg(s.server.addr().to_string()),
        b"",
        CLIENT,
    );
    assert!(
        !out.success(),
        "the denied Go client must fail: {}\n{}\nevents: {:?}",
        out.stderr_str(),
        agent.stderr(),
        agent.events()
    );
    assert!(
        out.elapsed < Duration::from_secs(2),
        "the denied Go client took {:?} to fail: {out:?}",
        out.elapsed
    );
    let event = connection(&mut agent, "go-denied", s.local, &s.server);
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert_eq!(event["library"]["family"], "go", "{event}");
    assert_eq!(event["call"], "handshake", "{event}");
}

/// A Go client whose file gets the inode number of a deleted program the watcher examined (not
/// TLS) is still probed and blocked. ext4 hands the number of a file just deleted to the next
/// file created in the directory, and the watcher once remembered "not TLS" by (device, inode)
/// alone: a program built while the agent ran, on the number of some deleted program, ran
/// unprobed (found while investigating a flake of this file, whose cause was another: two
/// agents of one test binary at once, see `enforcer_tests::host_lock`).
#[test]
fn go_client_on_a_reused_inode_number_is_probed() {
    use std::os::unix::fs::MetadataExt;
    let s = setup();
    let built = build_go(s.dir.path(), "go-built", "-s -w");
    let mut agent = agent(&s.ns, "deny");
    let exe = s.dir.path().join("go-reused");
    let mut reused = false;
    for i in 0..20 {
        // A program the watcher pauses and examines (a copy of `true`: not TLS), then deleted.
        let decoy = s.dir.path().join(format!("decoy-{i}"));
        // coreutils' (the VM image has it at this path too: xtask/src/vm/image.rs).
        std::fs::copy("/usr/bin/true", &decoy).expect("copy /usr/bin/true");
        let out = run_with_timeout(&mut Command::new(&decoy), b"", CLIENT);
        assert!(out.success(), "{decoy:?}: {out:?}");
        let ino = std::fs::metadata(&decoy).unwrap().ino();
        std::fs::remove_file(&decoy).unwrap();
        std::fs::copy(&built, &exe).expect("copy the Go client");
        if std::fs::metadata(&exe).unwrap().ino() == ino {
            reused = true;
            break;
        }
        std::fs::remove_file(&exe).unwrap();
    }
    if !reused {
        eprintln!(
            "skipped: the filesystem of {} did not reuse a deleted file's inode number in 20 tries \
             (tmpfs never does), so the case cannot be set up here",
            s.dir.path().display()
        );
        return;
    }
    let out = run_with_timeout(
        Command::new(&exe).arg(s.server.addr().to_string()),
        b"",
        CLIENT,
    );
    assert!(
        !out.success() && out.elapsed < Duration::from_secs(2),
        "the denied Go client on a reused inode number must fail fast: {out:?} {}\n{}\nevents: {:?}",
        out.stderr_str(),
        agent.stderr(),
        agent.events()
    );
    let event = connection(&mut agent, "go-reused", s.local, &s.server);
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert_eq!(event["library"]["family"], "go", "{event}");
}
