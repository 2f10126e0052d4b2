//! Library ids filled by an adversary (issue 16, item 4): every distinct library holds a slot in
//! the maps keyed by library id. With a small `--max-libraries`, processes that each map a
//! fresh libssl copy fill the slots; the next library is probed under the shared over-capacity
//! id and judged by the policy's `default` (a `capacity` event), so under `default: deny` its
//! process gets no TLS out, although `unattributed_tls: allow` would have let it through had it
//! been left unprobed. When the holders exit, the library sweep releases their libraries
//! (`library_released` events) and a released copy mapped again is registered anew, with a new
//! id, and allowed.
//!
//! The agent runs twice: first to learn how many libraries it registers at start on this host
//! (the limit is set that many plus a few), then with the limit.

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use enforcer_tests::{
    Agent,
    libssl_copies::{Site, build_client, copy_path, field, fresh_copy},
    ops, run_with_timeout,
    schema::{events_schema, validate_event},
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(20);
/// Two censuses one second apart, the release itself, and a loaded machine.
const RELEASE: Duration = Duration::from_secs(30);
const CLIENT: Duration = Duration::from_secs(30);
const PORT: u16 = 8443;
/// Slots above what the agent holds at start.
const ROOM: u64 = 3;
/// Holders started at most while looking for the limit (start-up libraries no process maps are
/// released meanwhile, which makes room for more).
const MAX_HOLDERS: usize = 48;
/// `enforcer_common::policy::OVER_CAPACITY`.
const OVER_CAPACITY: u64 = u32::MAX as u64 - 1;

const POLICY: &str = "mode: enforce\ndefault: deny\nunattributed_tls: allow\nlibraries:\n  \
                      - family: openssl\n    action: allow\n";

fn start_agent(site: &Site, extra: &[&str]) -> (Agent, Value) {
    site.watching_agent(POLICY, extra, READY)
}

/// Every test's start: the [`Site`], and the C client built in a temp dir (returned with it;
/// the client, then the dir, then the site drop).
fn setup() -> (Site, tempfile::TempDir, PathBuf) {
    let site = Site::new(PORT);
    let work = tempfile::Builder::new()
        .prefix("enforcer-capacity-client-")
        .tempdir()
        .expect("temp dir");
    let client = build_client(work.path());
    (site, work, client)
}

/// How many libraries an agent registers at start on this host (a run of its own).
fn libraries_at_start(site: &Site) -> u64 {
    let (mut agent, ready) = start_agent(site, &[]);
    let n = ready["libraries"].as_u64().expect("ready counts libraries");
    agent.stop();
    n
}

/// Opens `dir` to every user (temp dirs are made 0700): an unprivileged process reads the copy
/// or runs the client in it.
fn open_to_all(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Processes that keep a library mapped: `openssl enc` (dynamically linked, unlike a busybox
/// `sleep`) with the copy preloaded, reading a pipe nobody writes to; killed on drop.
struct Holders(Vec<Child>);

impl Holders {
    fn hold(&mut self, copy: &str) {
        self.hold_as(copy, None);
    }

    /// A holder running as `uid` (and that gid), else as root.
    fn hold_as(&mut self, copy: &str, uid: Option<u32>) {
        let mut holder = Command::new("openssl");
        if let Some(uid) = uid {
            holder.uid(uid).gid(uid);
        }
        let child = holder
            .args(["enc", "-base64"])
            .env("LD_PRELOAD", copy)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start a holder");
        self.0.push(child);
    }

    fn kill_all(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The `library` or `capacity` event of the file at `path`.
fn registration(agent: &mut Agent, path: &str) -> Value {
    agent.wait_for(
        |v| (v["type"] == "library" || v["type"] == "capacity") && v["path"] == path,
        EVENT,
    )
}

fn connection_of(agent: &mut Agent, local_port: u16) -> Value {
    agent.wait_for(
        |v| {
            v["type"] == "connection"
                && v["comm"] == "tls_client"
                && v["local"]["port"] == local_port
        },
        EVENT,
    )
}

#[test]
fn library_ids_fill_fail_closed_and_are_reused() {
    let (site, _work, client) = setup();
    let libssl = &site.libssl;
    let (addr, port) = (site.peer.to_string(), PORT.to_string());

    let at_start = libraries_at_start(&site);
    let limit = (at_start + ROOM).to_string();
    let (mut agent, ready) =
        start_agent(&site, &["--max-libraries", &limit, "--library-sweep", "1"]);
    let socket = ready["control_socket"]
        .as_str()
        .expect("control socket")
        .to_owned();

    // Fill: one holder per fresh copy until a copy finds no slot.
    let mut copies = Vec::new();
    let mut holders = Holders(Vec::new());
    let mut own: Vec<(String, u64)> = Vec::new();
    let full = loop {
        assert!(
            copies.len() < MAX_HOLDERS,
            "{MAX_HOLDERS} libraries held and no capacity event (limit {limit})\n{}",
            agent.stderr()
        );
        let copy = fresh_copy("enforcer-capacity-hold-", libssl);
        let path = copy_path(&copy);
        holders.hold(&path);
        copies.push(copy);
        let event = registration(&mut agent, &path);
        if event["type"] == "capacity" {
            break event;
        }
        assert_eq!(event["action"], "allow", "{event}");
        own.push((path, event["id"].as_u64().expect("library id")));
    };
    eprintln!(
        "libraries at start {at_start}, limit {limit}: {} holders got ids, the next one none",
        own.len()
    );
    validate_event(&events_schema(), &full).unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(full["map"], "LIB_ACTIONS", "{full}");
    assert_eq!(full["level"], "full", "{full}");
    assert_eq!(full["reason"], "limit", "{full}");
    assert_eq!(full["action"], "deny", "the policy's default: {full}");
    assert_eq!(
        full["max_entries"].as_u64(),
        Some(at_start + ROOM),
        "{full}"
    );
    assert!(!own.is_empty(), "no holder got an id of its own: {full}");
    let status = ops::ctl(std::path::Path::new(&socket), &["status"]);
    assert_eq!(
        status["library_ids"]["used"].as_u64(),
        Some(at_start + ROOM),
        "{status}"
    );
    assert!(
        status["library_ids"]["over_capacity"].as_u64() >= Some(1),
        "{status}"
    );

    // Full means closed: a process with another new copy (OpenSSL, which a rule allows) is
    // refused, as `default: deny` says; unprobed, `unattributed_tls: allow` would have passed it.
    let over = fresh_copy("enforcer-capacity-over-", libssl);
    let mut run = Command::new(&client);
    run.args([&addr, &port]).env("LD_LIBRARY_PATH", over.path());
    let out = run_with_timeout(&mut run, b"", CLIENT);
    let event = registration(&mut agent, &copy_path(&over));
    assert_eq!(event["type"], "capacity", "{event}");
    assert_eq!(event["comm"], "tls_client", "{event}");
    assert!(
        !out.success(),
        "the over-capacity client got TLS out: {out:?}"
    );
    let tls_port: u16 = field(&out.stdout_str(), "tls_local_port")
        .expect("connected before the handshake")
        .parse()
        .unwrap();
    let conn = connection_of(&mut agent, tls_port);
    assert_eq!(conn["verdict"], "blocked", "{conn}");
    assert_eq!(
        conn["library"]["id"].as_u64(),
        Some(OVER_CAPACITY),
        "{conn}"
    );

    // Reuse: the holders exit, their libraries are released, and a released copy mapped again
    // gets an id of its own (a new number) and is allowed.
    holders.kill_all();
    let (again, old_id) = own[0].clone();
    for (path, id) in &own {
        let released = agent.wait_for(
            |v| v["type"] == "library_released" && v["path"] == path.as_str(),
            RELEASE,
        );
        validate_event(&events_schema(), &released).unwrap_or_else(|why| panic!("{why}"));
        assert_eq!(released["id"].as_u64(), Some(*id), "{released}");
        assert_eq!(released["over_capacity"], false, "{released}");
    }
    // The over-capacity library goes the same way (its probes under the shared id).
    let over_path = full["path"]
        .as_str()
        .expect("capacity names the file")
        .to_owned();
    let released = agent.wait_for(
        |v| v["type"] == "library_released" && v["path"] == over_path.as_str(),
        RELEASE,
    );
    assert_eq!(released["over_capacity"], true, "{released}");
    assert_eq!(released["id"].as_u64(), Some(OVER_CAPACITY), "{released}");
    let dir = std::path::Path::new(&again).parent().expect("copy dir");
    let mut run = Command::new(&client);
    run.args([&addr, &port]).env("LD_LIBRARY_PATH", dir);
    let out = run_with_timeout(&mut run, b"", CLIENT);
    assert!(
        out.success(),
        "the re-registered copy's client failed: {out:?}"
    );
    let event = registration(&mut agent, &again);
    assert_eq!(event["type"], "library", "a slot was free again: {event}");
    let new_id = event["id"].as_u64().expect("id");
    assert_ne!(
        new_id, old_id,
        "id numbers are not handed out twice: {event}"
    );
    let tls_port: u16 = field(&out.stdout_str(), "tls_local_port")
        .unwrap()
        .parse()
        .unwrap();
    let conn = connection_of(&mut agent, tls_port);
    assert_eq!(conn["verdict"], "allowed", "{conn}");
    assert_eq!(conn["library"]["id"].as_u64(), Some(new_id), "{conn}");
    assert_eq!(
        conn["call"], "handshake",
        "probed before its first call: {conn}"
    );
    drop(site.www);
}

/// Waits until one line of the agent's log holds both `a` and `b`.
fn wait_log(agent: &Agent, a: &str, b: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while !agent
        .stderr()
        .lines()
        .any(|l| l.contains(a) && l.contains(b))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with {a:?} and {b:?} within {timeout:?}\n{}",
            agent.stderr()
        );
        // Polled: the log arrives on its own pipe.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The race of a release: a library marked (no process mapped it at a census) is mapped again
/// before the census that would release it. The new process is paused, the file taken back:
/// the library keeps its id and probes, and is not released with the others of that census.
#[test]
fn a_library_mapped_again_before_its_release_is_kept() {
    let (site, _work, client) = setup();
    let (libssl, peer) = (&site.libssl, site.peer);
    let (mut agent, _) = start_agent(&site, &["--library-sweep", "1"]);

    let (kept, sentinel) = (
        fresh_copy("enforcer-capacity-kept-", libssl),
        fresh_copy("enforcer-capacity-sentinel-", libssl),
    );
    let (kept_path, sentinel_path) = (copy_path(&kept), copy_path(&sentinel));
    let mut first = Holders(Vec::new());
    first.hold(&kept_path);
    first.hold(&sentinel_path);
    let id = registration(&mut agent, &kept_path)["id"]
        .as_u64()
        .expect("id");
    registration(&mut agent, &sentinel_path);
    first.kill_all();
    wait_log(&agent, "marked for release", &kept_path, RELEASE);
    wait_log(&agent, "marked for release", &sentinel_path, EVENT);

    // Mapped again after the mark: taken back.
    let mut again = Holders(Vec::new());
    again.hold(&kept_path);
    wait_log(&agent, "mapped again: kept", &kept_path, EVENT);
    // The census that releases the sentinel has seen the holder: the kept copy stays.
    agent.wait_for(
        |v| v["type"] == "library_released" && v["path"] == sentinel_path.as_str(),
        RELEASE,
    );
    let released: Vec<Value> = agent
        .events()
        .iter()
        .filter(|v| v["type"] == "library_released" && v["path"] == kept_path.as_str())
        .cloned()
        .collect();
    assert!(released.is_empty(), "released while mapped: {released:?}");

    // Still probed under its id, from a new process's first call.
    let mut run = Command::new(&client);
    run.args([&peer.to_string(), &PORT.to_string()])
        .env("LD_LIBRARY_PATH", kept.path());
    let out = run_with_timeout(&mut run, b"", CLIENT);
    assert!(out.success(), "client failed: {out:?}");
    let tls_port: u16 = field(&out.stdout_str(), "tls_local_port")
        .unwrap()
        .parse()
        .unwrap();
    let conn = connection_of(&mut agent, tls_port);
    assert_eq!(conn["library"]["id"].as_u64(), Some(id), "{conn}");
    assert_eq!(conn["verdict"], "allowed", "{conn}");
    drop(again);
    drop(site.www);
}

/// One user's flood cannot take every id: a uid other than root holds at most
/// `--max-libraries-per-user` ids. Its next library is over capacity (reason `user_quota`) and its
/// process's TLS refused under `default: deny`, while root's new library still gets an id.
#[test]
fn one_user_cannot_take_every_library_id() {
    const NOBODY: u32 = 65534;
    let (site, work, client) = setup();
    open_to_all(work.path());
    let libssl = &site.libssl;
    let (addr, port) = (site.peer.to_string(), PORT.to_string());
    let limit = (libraries_at_start(&site) + 5).to_string();
    let (mut agent, _) = start_agent(
        &site,
        &[
            "--max-libraries",
            &limit,
            "--max-libraries-per-user",
            "2",
            "--library-sweep",
            "0",
        ],
    );

    let mut copies = Vec::new();
    let mut holders = Holders(Vec::new());
    for n in 0..3 {
        let copy = fresh_copy("enforcer-capacity-user-", libssl);
        open_to_all(copy.path());
        let path = copy_path(&copy);
        holders.hold_as(&path, Some(NOBODY));
        let event = registration(&mut agent, &path);
        match n {
            0 | 1 => assert_eq!(event["type"], "library", "within the quota: {event}"),
            _ => {
                validate_event(&events_schema(), &event).unwrap_or_else(|why| panic!("{why}"));
                assert_eq!(event["type"], "capacity", "over the quota: {event}");
                assert_eq!(event["reason"], "user_quota", "{event}");
                assert_eq!(event["action"], "deny", "{event}");
            }
        }
        copies.push(copy);
    }

    // The user's next TLS client is over its quota: refused.
    let over = fresh_copy("enforcer-capacity-user-over-", libssl);
    open_to_all(over.path());
    let mut run = Command::new(&client);
    run.args([&addr, &port])
        .env("LD_LIBRARY_PATH", over.path())
        .uid(NOBODY)
        .gid(NOBODY);
    let out = run_with_timeout(&mut run, b"", CLIENT);
    let event = registration(&mut agent, &copy_path(&over));
    assert_eq!(event["reason"], "user_quota", "{event}");
    assert!(
        !out.success(),
        "over its quota, the user's client got TLS out: {out:?}"
    );
    let tls_port: u16 = field(&out.stdout_str(), "tls_local_port")
        .expect("connected before the handshake")
        .parse()
        .unwrap();
    let conn = connection_of(&mut agent, tls_port);
    assert_eq!(conn["verdict"], "blocked", "{conn}");

    // Root's new library is not starved by it.
    let mine = fresh_copy("enforcer-capacity-root-", libssl);
    let mut run = Command::new(&client);
    run.args([&addr, &port]).env("LD_LIBRARY_PATH", mine.path());
    let out = run_with_timeout(&mut run, b"", CLIENT);
    let event = registration(&mut agent, &copy_path(&mine));
    assert_eq!(
        event["type"], "library",
        "root's library got an id: {event}"
    );
    assert!(out.success(), "root's client failed: {out:?}");
    drop(holders);
    drop(site.www);
}
