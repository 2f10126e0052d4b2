//! End to end, on this kernel: rules scoped to who is talking (docs/policy.md, "Scoped rules").
//! Under `unattributed_tls: deny`, an `executables` exception lets one binary's unattributed TLS
//! out while a byte-identical copy at another path is refused; a `cgroups` rule matches a client
//! started in a transient cgroup; a `users` rule one run as another user (setpriv); audit mode
//! reports what enforce mode would do; `policy explain` names the rule each running process
//! hits.
//!
//! The unattributed client is the static, stripped OpenSSL client (`static_client`); its peer
//! `openssl s_server` in a network namespace; the agent watches the host end of the veth pair.

use std::{
    net::{IpAddr, TcpListener},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cert, NetNs, Server, cmd, content::Background, enforcer_bin, require_root,
    run_with_timeout, static_client::build_static_client,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
/// The brief's bound on a refusal: from the client's start to its failure.
const REFUSED_WITHIN: Duration = Duration::from_millis(100);
const PORT: u16 = 9447;

struct Peer {
    server: Server,
    _cert: Cert,
    ns: NetNs,
    peer: IpAddr,
    dir: tempfile::TempDir,
    /// The static client where the policy's exception names it, and a byte-identical copy.
    allowed: PathBuf,
    copy: PathBuf,
}

fn peer() -> Peer {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("enforcer-scoped-")
        .tempdir()
        .expect("temp dir");
    // Reachable by the unprivileged user of the `users` test.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let built = build_static_client(dir.path());
    let place = |sub: &str| {
        let at = dir.path().join(sub);
        std::fs::create_dir_all(at.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&built, &at).expect("copy the client");
        at
    };
    let allowed = place("appliance/bin/agent");
    let copy = place("elsewhere/agent");
    assert_eq!(
        std::fs::read(&allowed).expect("read"),
        std::fs::read(&copy).expect("read"),
        "the copy is byte-identical"
    );
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::plain(&ns, peer, PORT, &cert);
    Peer {
        server,
        _cert: cert,
        ns,
        peer,
        dir,
        allowed,
        copy,
    }
}

fn start_agent(ns: &NetNs, policy: &str) -> Agent {
    Agent::ready_with_policy(ns, policy, &[], READY).0
}

/// Runs the client once with arguments it refuses (it exits at once): the agent's watcher
/// examines a new executable at its first exec, which is not what a refusal's latency measures.
fn prime(bin: &Path) {
    let _ = Command::new(bin).stdout(Stdio::null()).status();
}

fn client(bin: &Path, peer: IpAddr, line: &str) -> Command {
    let mut c = Command::new(bin);
    c.args([
        peer.to_string(),
        PORT.to_string(),
        "scoped.example".into(),
        line.into(),
    ]);
    c
}

/// The `client_hello` event whose sender's executable is `exe` (or whose pid is `pid`).
fn hello_of(agent: &mut Agent, exe: Option<&Path>, pid: Option<u32>) -> Value {
    let exe = exe.map(|e| e.display().to_string());
    agent.wait_for(
        move |v| {
            v["type"] == "client_hello"
                && v["remote"]["port"] == PORT
                && exe
                    .as_ref()
                    .is_none_or(|e| v["sender"]["executable"] == e.as_str())
                && pid.is_none_or(|p| v["pid"] == p)
        },
        EVENT,
    )
}

fn assert_refused(out: &enforcer_tests::Outcome, agent: &Agent, what: &str) {
    assert!(
        !out.success() && !out.stdout_str().contains("handshake=ok"),
        "{what} must be refused: {out:?}\n{}",
        agent.stderr()
    );
}

#[test]
fn an_executables_exception_lets_exactly_one_binary_out() {
    let p = peer();
    let policy = format!(
        "mode: enforce\ndefault: deny\nunattributed_tls: deny\nlibraries:\n  - family: openssl\n    action: allow\n  - executables: [{}]\n    action: allow\n",
        p.allowed.display()
    );
    let mut agent = start_agent(&p.ns, &policy);
    prime(&p.allowed);
    prime(&p.copy);

    // The named binary: its first hello waits for the agent's verdict on it, then completes.
    let line = "APPLIANCE-MAY-TALK\n";
    let out = run_with_timeout(&mut client(&p.allowed, p.peer, line), b"", CLIENT);
    assert!(
        out.success() && out.stdout_str().contains("handshake=ok"),
        "the excepted binary must connect: {out:?}\n{}",
        agent.stderr()
    );
    p.server.wait_received(line.as_bytes(), EVENT);
    let e = hello_of(&mut agent, Some(&p.allowed), None);
    assert_eq!(e["attributed"], false, "{e}");
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["sender"]["rule_line"], 7, "{e}");
    eprintln!(
        "excepted binary: {:?} (its first hello held for the verdict)",
        out.elapsed
    );

    // Again: the verdict is cached in the kernel for this executable, nothing waits.
    let out = run_with_timeout(&mut client(&p.allowed, p.peer, line), b"", CLIENT);
    assert!(out.success(), "second run: {out:?}");
    eprintln!("excepted binary, cached verdict: {:?}", out.elapsed);

    // The byte-identical copy at another path: refused, at once, its socket aborted.
    for round in ["first", "cached"] {
        let started = Instant::now();
        let out = run_with_timeout(
            &mut client(&p.copy, p.peer, "COPY-MUST-NOT-ARRIVE\n"),
            b"",
            CLIENT,
        );
        let took = started.elapsed();
        assert_refused(&out, &agent, "the copy");
        assert!(
            took < REFUSED_WITHIN,
            "the copy ({round} verdict) was refused only after {took:?}"
        );
        let e = hello_of(&mut agent, Some(&p.copy), None);
        assert_eq!(e["attributed"], false, "{e}");
        assert_eq!(e["verdict"], "blocked", "{e}");
        assert_eq!(e["socket_aborted"], true, "{e}");
        assert_eq!(e["sender"]["rule_line"], Value::Null, "{e}");
        assert_eq!(e["comm"], "agent", "{e}");
        eprintln!("copy refused ({round} verdict) in {took:?}");
    }
    assert!(
        !String::from_utf8_lossy(&p.server.received()).contains("COPY-MUST-NOT-ARRIVE"),
        "the peer received data of the copy"
    );
    drop(agent);
    drop(p.dir);
}

#[test]
fn in_audit_mode_the_scoped_verdict_is_reported_not_enforced() {
    let p = peer();
    let policy = format!(
        "mode: audit\ndefault: deny\nunattributed_tls: deny\nlibraries:\n  - executables: [{}]\n    action: allow\n",
        p.allowed.display()
    );
    let mut agent = start_agent(&p.ns, &policy);
    prime(&p.copy);
    prime(&p.allowed);
    // Nothing is held or refused: the copy completes, reported as what enforce mode would do.
    // The clients hold their connections until their stdin ends: the agent judges a sender
    // while it runs (one gone before its hello was read is reported as matching nothing).
    for (bin, verdict, line) in [
        (&p.copy, "would-block", Value::Null),
        (&p.allowed, "allowed", Value::from(5)),
    ] {
        let text = format!("AUDITED-{}\n", bin.display());
        let mut c = client(bin, p.peer, &text);
        c.arg("hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut running = Background(c.spawn().expect("the client runs"));
        let stdin = running.0.stdin.take().expect("stdin is piped");
        p.server.wait_received(text.as_bytes(), EVENT);
        let e = hello_of(&mut agent, Some(bin), None);
        drop(stdin);
        let status = running.0.wait().expect("the client exits");
        assert!(
            status.success(),
            "audit mode must not refuse {}",
            bin.display()
        );
        assert_eq!(e["verdict"], verdict, "{e}");
        assert_eq!(e["socket_aborted"], Value::Null, "{e}");
        assert_eq!(e["sender"]["rule_line"], line, "{e}");
    }
    drop(agent);
    drop(p.dir);
}

/// A cgroup v2 directory the test made (the host's systemd would make a transient scope, but
/// PID 1 need not be systemd: here it is not). Removed on drop, once empty.
struct TestCgroup {
    dir: PathBuf,
    /// Its path below the cgroup v2 root.
    path: String,
}

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let root = cgroup2_root();
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
        eprintln!(
            "PID 1 is {:?}, not asked for a transient scope: the test made the cgroup v2 directory {} (cgroup v2 mounted at {})",
            init.trim(),
            dir.display(),
            root.display()
        );
        TestCgroup {
            dir,
            path: format!("/{name}"),
        }
    }

    /// `bin ARGS` started inside the cgroup (a shell moves itself in, then execs it).
    fn command(&self, bin: &Path, args: &[String]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.dir)
            .arg(bin)
            .args(args);
        c
    }
}

/// The cgroup v2 mount point, from mountinfo (`/sys/fs/cgroup` on a pure-v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one such as this).
fn cgroup2_root() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let mount_point = fields.split_whitespace().nth(4)?;
            (rest.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("cgroup v2 is mounted")
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The clients have exited; rmdir fails (and says so) only if one is left.
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}

#[test]
fn a_cgroups_rule_matches_a_client_started_in_a_transient_cgroup() {
    let p = peer();
    let cg = TestCgroup::new(&format!("enforcer-scoped-{}", std::process::id()));
    let policy = format!(
        "mode: enforce\ndefault: deny\nunattributed_tls: deny\nlibraries:\n  - cgroups: [\"{}\"]\n    action: allow\n",
        cg.path
    );
    let mut agent = start_agent(&p.ns, &policy);
    prime(&p.copy);
    let args = |line: &str| {
        vec![
            p.peer.to_string(),
            PORT.to_string(),
            "scoped.example".to_owned(),
            line.to_owned(),
        ]
    };
    let line = "INSIDE-THE-CGROUP\n";
    let out = run_with_timeout(&mut cg.command(&p.copy, &args(line)), b"", CLIENT);
    assert!(
        out.success() && out.stdout_str().contains("handshake=ok"),
        "the client in the cgroup must connect: {out:?}\n{}",
        agent.stderr()
    );
    p.server.wait_received(line.as_bytes(), EVENT);
    let e = hello_of(&mut agent, Some(&p.copy), None);
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["sender"]["cgroup"], cg.path.as_str(), "{e}");
    assert_eq!(e["sender"]["rule_line"], 5, "{e}");

    // The same binary outside it: refused.
    let out = run_with_timeout(&mut client(&p.copy, p.peer, "OUTSIDE\n"), b"", CLIENT);
    assert_refused(&out, &agent, "the client outside the cgroup");
    let e = agent.wait_for(
        |v| v["type"] == "client_hello" && v["verdict"] == "blocked",
        EVENT,
    );
    assert_ne!(e["sender"]["cgroup"], cg.path.as_str(), "{e}");
    assert_eq!(e["socket_aborted"], true, "{e}");
    drop(agent);
    drop(cg);
    drop(p.dir);
}

#[test]
fn a_users_rule_matches_a_client_run_as_that_user() {
    let p = peer();
    let policy = "mode: enforce\ndefault: deny\nunattributed_tls: deny\nlibraries:\n  - users: [nobody]\n    action: allow\n";
    let mut agent = start_agent(&p.ns, policy);
    prime(&p.copy);
    let line = "AS-NOBODY\n";
    let out = run_with_timeout(
        &mut cmd(
            "setpriv",
            [
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--",
                &p.copy.display().to_string(),
                &p.peer.to_string(),
                &PORT.to_string(),
                "scoped.example",
                line,
            ],
        ),
        b"",
        CLIENT,
    );
    assert!(
        out.success() && out.stdout_str().contains("handshake=ok"),
        "the client run as nobody must connect: {out:?}\n{}",
        agent.stderr()
    );
    p.server.wait_received(line.as_bytes(), EVENT);
    let e = hello_of(&mut agent, Some(&p.copy), None);
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["sender"]["rule_line"], 5, "{e}");
    let nobody: u32 = enforcer_tests::sh(&mut cmd("id", ["-u", "nobody"]))
        .trim()
        .parse()
        .expect("the uid of nobody");
    assert_eq!(e["sender"]["uid"], nobody, "{e}");

    let out = run_with_timeout(&mut client(&p.copy, p.peer, "AS-ROOT\n"), b"", CLIENT);
    assert_refused(&out, &agent, "the client run as root");
    let e = agent.wait_for(
        |v| v["type"] == "client_hello" && v["verdict"] == "blocked",
        EVENT,
    );
    assert_eq!(e["sender"]["uid"], 0, "{e}");
    drop(agent);
    drop(p.dir);
}

/// A client that waits in its handshake (its peer accepts and never answers), for `explain`.
fn waiting_client(bin: &Path, port: u16) -> Background {
    let child = Command::new(bin)
        .args(["127.0.0.1", &port.to_string(), "scoped.example", "x"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the client runs");
    Background(child)
}

#[test]
fn policy_explain_names_the_rule_each_running_process_hits() {
    let p = peer();
    // The documented example, its appliance binary being ours.
    let policy_file = p.dir.path().join("policy.yaml");
    let example =
        std::fs::read_to_string(enforcer_tests::workspace().join("policies/scoped-appliance.yaml"))
            .expect("policies/scoped-appliance.yaml");
    assert!(example.contains("/opt/appliance/bin/agent"), "{example}");
    std::fs::write(
        &policy_file,
        example.replace("/opt/appliance/bin/agent", &p.allowed.display().to_string()),
    )
    .expect("write the policy");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let allowed = waiting_client(&p.allowed, port);
    let copy = waiting_client(&p.copy, port);
    let _held: Vec<_> = (0..2).map(|_| listener.accept().expect("accept")).collect();

    let run = |json: bool| {
        let mut c = Command::new(enforcer_bin());
        c.args(["policy", "explain"]).arg(&policy_file);
        if json {
            c.arg("--json");
        }
        let out = run_with_timeout(&mut c, b"", Duration::from_secs(120));
        assert!(out.success(), "policy explain: {out:?}");
        out.stdout_str()
    };
    let text = run(false);
    eprintln!("{text}");
    let pid = allowed.0.id();
    let dir = p.dir.path().display().to_string();
    let wanted = [
        format!("  pid {pid} agent ({}, cgroup ", p.allowed.display()),
        format!(
            "    unattributed TLS -> allow: rule at line 9 (executables=[{0}]): executable {0} matches '{0}'",
            p.allowed.display()
        ),
    ];
    for w in &wanted {
        assert!(text.contains(w.as_str()), "explain lacks {w:?}:\n{text}");
    }
    assert!(
        !text.contains(&format!("  pid {} ", copy.0.id())),
        "the copy hits no scoped rule:\n{text}"
    );
    // The documented example is this output (pids, paths and the cgroup made generic).
    let shown = documented_explain();
    let ours: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("running processes:"))
        .map(|l| generic(l, &dir, pid))
        .collect();
    for line in &shown {
        if line.starts_with("  pid ") {
            assert!(
                ours.iter()
                    .any(|o| o.starts_with(line.split(", cgroup").next().unwrap_or(line))),
                "docs/policy.md shows {line:?}, explain prints:\n{}",
                ours.join("\n")
            );
        } else if !line.starts_with("running processes:") {
            assert!(
                ours.contains(line),
                "docs/policy.md shows {line:?}, explain prints:\n{}",
                ours.join("\n")
            );
        }
    }

    let json: Value = serde_json::from_str(&run(true)).expect("explain --json");
    let of = |pid: u32| {
        json["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .find(|p| p["pid"] == pid)
            .cloned()
            .unwrap_or_else(|| panic!("pid {pid} not in {json}"))
    };
    let a = of(pid);
    assert_eq!(a["decisions"][0]["what"], "unattributed TLS", "{a}");
    assert_eq!(a["decisions"][0]["action"], "allow", "{a}");
    assert_eq!(a["decisions"][0]["scoped_rule_line"], 9, "{a}");
    let c = of(copy.0.id());
    assert_eq!(c["executable"], p.copy.display().to_string(), "{c}");
    assert_eq!(c["decisions"][0]["action"], "deny", "{c}");
    assert_eq!(c["decisions"][0]["scoped_rule_line"], Value::Null, "{c}");
    drop(allowed);
    drop(copy);
}

/// `l` with the test's temp dir as `/tmp/scoped` and its pid as `PID`.
fn generic(l: &str, dir: &str, pid: u32) -> String {
    l.replace(dir, "/tmp/scoped")
        .replace(&format!("pid {pid} "), "pid PID ")
}

/// The lines of the block after "`enforcer policy explain /tmp/scoped/policy.yaml` prints, in
/// its processes section:" in docs/policy.md.
fn documented_explain() -> Vec<String> {
    let doc = std::fs::read_to_string(enforcer_tests::workspace().join("docs/policy.md"))
        .expect("docs/policy.md");
    let mut lines = doc
        .lines()
        .skip_while(|l| !l.starts_with("`enforcer policy explain /tmp/scoped/policy.yaml` prints"))
        .skip_while(|l| !l.starts_with("```"))
        .skip(1);
    let mut out = Vec::new();
    for l in lines.by_ref() {
        if l.starts_with("```") {
            break;
        }
        out.push(l.to_owned());
    }
    assert!(!out.is_empty(), "docs/policy.md shows no explain example");
    out
}
