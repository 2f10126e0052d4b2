//! End to end, on this kernel: Java's TLS (docs/policy.md, "Java"). JSSE is Java code the JIT
//! compiles, so no native TLS library makes a JVM's ClientHello: under `unattributed_tls: deny`
//! it is refused at once, unless a `family: java` rule allows it, which the agent applies to a
//! process that maps a real libjvm (the event then names the JVM, with its version, as the
//! flow's library). `enforcer libs` lists the JVM with its version.
//!
//! The client (tests/programs/java-tls-client) is compiled here with Debian's
//! `default-jdk-headless` (`cargo xtask setup`); its peer is `openssl s_server` in a network
//! namespace; the agent watches the host end of the veth pair.

use std::{
    io::{BufRead, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use enforcer_tests::{
    Agent, Cert, NetNs, Server, enforcer_bin, require_root, run_with_timeout,
    schema::{events_schema, validate_event},
    workspace,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(30);
/// From just before the JVM's handshake to its failure (the JVM measures it itself: its own
/// start, slow as it is, does not count).
const REFUSED_WITHIN_MS: u64 = 500;
const PORT: u16 = 9451;

const JAVA_ALLOWED: &str = "\
mode: enforce
default: deny
unattributed_tls: deny
libraries:
  - family: openssl
    action: allow
  - family: java
    action: allow
";

const OPENSSL_ONLY: &str = "\
mode: enforce
default: deny
unattributed_tls: deny
libraries:
  - family: openssl
    action: allow
";

/// Under an open host, only Java refused.
const JAVA_DENIED: &str = "\
mode: enforce
default: allow
unattributed_tls: allow
libraries:
  - family: java
    action: deny
";

/// The JDK `javac` belongs to: its home and the version its `release` file states.
fn jdk() -> (PathBuf, String) {
    let javac = std::fs::canonicalize(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("javac"))
            .find(|p| p.is_file())
            .expect("javac is not installed: run `cargo xtask setup` (default-jdk-headless)"),
    )
    .expect("javac resolves");
    let home = javac
        .parent()
        .and_then(Path::parent)
        .expect("javac in HOME/bin")
        .to_path_buf();
    let release = std::fs::read_to_string(home.join("release")).expect("the JDK's release file");
    let version = release
        .lines()
        .find_map(|l| l.strip_prefix("JAVA_VERSION=\""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("JAVA_VERSION in release")
        .to_owned();
    (home, version)
}

/// Compiles the client into target/java-tls-client; returns the class path.
fn build_client(home: &Path) -> PathBuf {
    let out = workspace().join("target/java-tls-client");
    let src = workspace().join("tests/programs/java-tls-client/TlsClient.java");
    let status = Command::new(home.join("bin/javac"))
        .arg("-d")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run javac");
    assert!(status.success(), "javac {} failed", src.display());
    out
}

struct Peer {
    server: Server,
    _cert: Cert,
    ns: NetNs,
    peer: IpAddr,
    java: PathBuf,
    classes: PathBuf,
    version: String,
}

fn peer() -> Peer {
    require_root();
    let (home, version) = jdk();
    let classes = build_client(&home);
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::plain(&ns, peer, PORT, &cert);
    Peer {
        server,
        _cert: cert,
        ns,
        peer,
        java: home.join("bin/java"),
        classes,
        version,
    }
}

fn start_agent(ns: &NetNs, policy: &str) -> Agent {
    Agent::ready_with_policy(ns, policy, &[], READY).0
}

impl Peer {
    fn client(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.java);
        // A client JIT only: the JVM starts faster.
        c.args(["-XX:TieredStopAtLevel=1", "-cp"])
            .arg(&self.classes)
            .arg("TlsClient")
            .args(args);
        c
    }

    fn connect(&self, line: &str) -> enforcer_tests::Outcome {
        let peer = self.peer.to_string();
        let port = PORT.to_string();
        run_with_timeout(
            &mut self.client(&[&peer, &port, "java.example", line]),
            b"",
            CLIENT,
        )
    }

    /// The JVM started once before it is measured: the agent's watcher examines the files a
    /// new executable maps at its first run.
    fn prime(&self) {
        let out = run_with_timeout(&mut self.client(&["wait"]), b"", CLIENT);
        assert!(out.success(), "the JVM must start: {out:?}");
    }
}

/// The `client_hello` event to the peer, checked against docs/events.schema.json.
fn hello(agent: &mut Agent) -> Value {
    let e = agent.wait_for(
        |v| v["type"] == "client_hello" && v["remote"]["port"] == PORT,
        EVENT,
    );
    if let Err(why) = validate_event(&events_schema(), &e) {
        panic!("{why}: {e}");
    }
    println!("event: {e}");
    e
}

fn refused_after_ms(out: &enforcer_tests::Outcome) -> u64 {
    out.stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("refused_after_ms="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the client did not say when it was refused: {out:?}"))
}

#[test]
fn a_family_java_rule_lets_the_jvm_talk_and_names_it() {
    let p = peer();
    let mut agent = start_agent(&p.ns, JAVA_ALLOWED);
    p.prime();
    let line = "JAVA-MAY-TALK\n";
    let out = p.connect(line);
    assert!(
        out.success() && out.stdout_str().contains("handshake=ok"),
        "the JVM must connect under a family: java rule: {out:?}\n{}",
        agent.stderr()
    );
    p.server.wait_received(line.as_bytes(), EVENT);
    let e = hello(&mut agent);
    assert_eq!(e["verdict"], "allowed", "{e}");
    assert_eq!(e["attributed"], true, "{e}");
    assert_eq!(e["evidence"], "runtime", "{e}");
    assert_eq!(e["library"]["family"], "java", "{e}");
    assert_eq!(e["library"]["version"], p.version.as_str(), "{e}");
    assert_eq!(e["library"]["id"], Value::Null, "{e}");
    let path = e["library"]["path"].as_str().expect("the JVM's path");
    assert!(path.ends_with("/libjvm.so"), "{e}");
    assert_eq!(e["sender"]["rule_line"], 7, "{e}");
    assert!(
        e["sender"]["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("the process maps java ")),
        "{e}"
    );
    eprintln!("java allowed: {:?} (JVM start included)", out.elapsed);
}

/// Under `policy`, the (primed) JVM sending `line` is refused within `REFUSED_WITHIN_MS` of its
/// handshake's start, and the peer receives nothing. Returns the `client_hello` event and how
/// many milliseconds the refusal took.
fn refused_under(p: &Peer, policy: &str, line: &str) -> (Value, u64) {
    let mut agent = start_agent(&p.ns, policy);
    p.prime();
    let out = p.connect(line);
    assert!(
        !out.success() && !out.stdout_str().contains("handshake=ok"),
        "the JVM must be refused under this policy:\n{policy}{out:?}\n{}",
        agent.stderr()
    );
    let took = refused_after_ms(&out);
    assert!(
        took < REFUSED_WITHIN_MS,
        "refused only {took} ms after its handshake began"
    );
    let e = hello(&mut agent);
    assert!(
        p.server.received().is_empty(),
        "the peer received application bytes: {:?}",
        String::from_utf8_lossy(&p.server.received())
    );
    (e, took)
}

#[test]
fn without_a_java_rule_the_jvm_is_refused_at_once() {
    let p = peer();
    let (e, took) = refused_under(&p, OPENSSL_ONLY, "JAVA-MUST-NOT-ARRIVE\n");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(e["attributed"], false, "{e}");
    assert_eq!(e["library"], Value::Null, "{e}");
    assert_eq!(e["socket_aborted"], true, "{e}");
    eprintln!("java refused {took} ms after its handshake began");
}

#[test]
fn a_family_java_deny_refuses_the_jvm_on_an_open_host() {
    let p = peer();
    let (e, took) = refused_under(&p, JAVA_DENIED, "JAVA-DENIED\n");
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_eq!(e["evidence"], "runtime", "{e}");
    assert_eq!(e["library"]["family"], "java", "{e}");
    assert_eq!(e["sender"]["rule_line"], 5, "{e}");
    eprintln!("java denied {took} ms after its handshake began");
}

/// A JVM that runs until dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn enforcer_libs_lists_the_jvm_with_its_version() {
    require_root();
    let (home, version) = jdk();
    let classes = build_client(&home);
    let mut child = Command::new(home.join("bin/java"))
        .args(["-cp"])
        .arg(&classes)
        .args(["TlsClient", "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a JVM");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("read");
    let jvm = Running(child);
    assert_eq!(ready.trim(), "ready");
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("java.yaml");
    std::fs::write(&policy, JAVA_ALLOWED).expect("write policy");
    let out = enforcer_tests::sh(
        Command::new(enforcer_bin())
            .args(["libs", "--json", "--policy"])
            .arg(&policy),
    );
    let inventory: Value = serde_json::from_str(&out).expect("libs --json is JSON");
    let libs = inventory["libraries"].as_array().expect("libraries");
    let java: Vec<&Value> = libs.iter().filter(|l| l["family"] == "java").collect();
    let ours = java
        .iter()
        .find(|l| {
            l["pids"]
                .as_array()
                .is_some_and(|p| p.contains(&Value::from(jvm.0.id())))
        })
        .unwrap_or_else(|| panic!("the running JVM is not listed: {java:?}"));
    println!("{ours}");
    assert_eq!(ours["version"], version.as_str(), "{ours}");
    assert!(
        ours["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/libjvm.so"))
    );
    assert_eq!(ours["probes"], serde_json::json!([]), "{ours}");
    assert_eq!(ours["verdict"]["action"], "allow", "{ours}");
    assert_eq!(ours["verdict"]["rule_line"], 7, "{ours}");
    // And for people.
    let text = enforcer_tests::sh(
        Command::new(enforcer_bin())
            .args(["libs", "--policy"])
            .arg(&policy),
    );
    assert!(
        text.lines()
            .any(|l| l.contains("java") && l.contains(version.as_str())),
        "enforcer libs does not show the JVM with its version:\n{text}"
    );
    drop(jvm);
}
