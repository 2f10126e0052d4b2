//! A local adversary against the agent (issue 16), each attack run as an unprivileged user
//! (uid 65534, no capabilities; `enforcer_tests::adversary`), each ending with the denied
//! connection dropped or reported, never let through silently:
//!
//! - Map exhaustion (item 4): the blocklist filled with denied connections the agent cannot
//!   abort (held open in the attacker's own network namespace, bound to a device, which the
//!   sock_diag lookup misses). A denied flow that does not fit
//!   is still dropped and its socket aborted (`blocklist_full_fails_closed`); the sweep moves the
//!   socket-less entries out, so later denied flows fit again (`sweep_frees_the_blocklist`).
//! - Floods (item 5): ClientHellos in bulk from a process no TLS library is in, while a denied
//!   GnuTLS client connects every 100 ms (`hello_flood_does_not_blind_the_agent`). The suite
//!   runs a short flood; `ENFORCER_FLOOD_FULL=1` runs the 20,000 per second for 30 s.
//! - Identity (item 1): an allowed libssl, probed, rewritten in place (same inode, same
//!   generation) with GnuTLS's bytes by the attacker, then used: judged as GnuTLS (denied), never
//!   as the allowed OpenSSL it was (`library_rewritten_in_place_is_judged_as_its_new_content`).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cert, NetNs, Server,
    adversary::{Group, NOBODY, hold_denied_in_own_netns, rss_kib, unprivileged},
    cmd,
    libssl_copies::{build_client, field, system_libssl},
    ops::{ctl, sample, scrape},
    programs::{build_denied_loop_client, build_hello_flood},
    require_root, run_with_timeout,
    schema::{events_schema, validate_event},
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const OPENSSL_ONLY: &str = "mode: enforce\ndefault: deny\nunattributed_tls: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
/// Blocklist capacity in the exhaustion tests: as many held connections fill it.
const SMALL: usize = 8;

/// One GnuTLS connection to `peer`, sending a request; given `timeout`.
fn gnutls(peer: SocketAddr, timeout: Duration) -> enforcer_tests::Outcome {
    let (port, host) = (peer.port().to_string(), peer.ip().to_string());
    run_with_timeout(
        &mut cmd("gnutls-cli", ["--insecure", "--port", &port, &host]),
        b"GET / HTTP/1.0\r\n\r\n",
        timeout,
    )
}

fn status_maps(socket: &std::path::Path) -> Value {
    ctl(socket, &["status"])["maps"].clone()
}

/// Waits until `BLOCKLIST` holds `n` entries (the attacker's held connections).
fn wait_blocklist(socket: &std::path::Path, n: u64) -> Value {
    let deadline = Instant::now() + EVENT;
    loop {
        let maps = status_maps(socket);
        if maps["blocklist"].as_u64() >= Some(n) {
            return maps;
        }
        assert!(
            Instant::now() < deadline,
            "blocklist never reached {n}: {maps}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn agent(ns: &NetNs, socket: &std::path::Path, sweep: &str) -> Agent {
    let max = SMALL.to_string();
    Agent::with_policy(
        &ns.host_if,
        OPENSSL_ONLY,
        &[
            "--control-socket",
            socket.to_str().expect("utf-8"),
            "--metrics",
            "127.0.0.1:0",
            "--blocklist-max",
            &max,
            "--blocklist-sweep",
            sweep,
            // The agent's default: the attacker's own namespace is reached; its device-bound
            // sockets are what the abort cannot find.
            "--abort-namespaces",
            "all",
        ],
    )
}

/// Fills the blocklist from an unprivileged user's own network namespace, with sockets bound to
/// a device, which the agent's socket abort cannot find; then a denied connection on the
/// filtered interface: before, it went out as `blocklist-full`; now it is dropped through the
/// overflow table, its socket aborted, and the event and the counters say so.
#[test]
fn blocklist_full_fails_closed() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let www = Server::www(&ns, peer, 9460, &cert);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("agent.sock");
    let mut agent = agent(&ns, &socket, "0");
    let ready = agent.wait_ready(READY);

    let _held = hold_denied_in_own_netns(SMALL);
    let maps = wait_blocklist(&socket, SMALL as u64);
    assert_eq!(maps["blocklist_max"], SMALL, "{maps}");
    let held = agent.wait_for(
        |v| v["type"] == "connection" && v["remote"]["port"] == 4433,
        EVENT,
    );
    assert_eq!(held["verdict"], "blocked", "{held}");
    assert_eq!(
        held["socket_aborted"], false,
        "out of the agent's reach: {held}"
    );

    let started = Instant::now();
    let out = gnutls(www.addr(), Duration::from_secs(10));
    let took = started.elapsed();
    assert!(
        !out.success(),
        "a denied client got through: {}",
        out.stdout_str()
    );
    assert!(took < Duration::from_secs(2), "refused only after {took:?}");
    let event = agent.wait_for(
        |v| v["type"] == "connection" && v["comm"] == "gnutls-cli" && v["remote"]["port"] == 9460,
        EVENT,
    );
    assert_eq!(event["verdict"], "blocklist-full", "{event}");
    assert_eq!(event["socket_aborted"], true, "{event}");
    assert!(
        !out.stdout_str().contains("Handshake was completed"),
        "the denied client's handshake completed: {}",
        out.stdout_str()
    );
    agent.wait_for(|v| v["type"] == "capacity" && v["level"] == "full", EVENT);
    // The aborted socket closed: its overflow entry went with it (as a blocklist entry does).
    let maps = status_maps(&socket);
    assert_eq!(maps["overflow"], 0, "{maps}");
    let text = scrape(ready["metrics"].as_str().expect("metrics address"));
    assert!(
        sample(&text, "enforcer_blocklist_insert_failures_total") >= 1.0,
        "{text}"
    );
}

/// The same held connections, with a sweep every second: after two sweeps their entries (no
/// socket in the agent's namespace) move to the overflow table, still dropped, and a denied
/// connection on the filtered interface fits in the blocklist again.
#[test]
fn sweep_frees_the_blocklist() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let www = Server::www(&ns, peer, 9461, &cert);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("agent.sock");
    let mut agent = agent(&ns, &socket, "1");
    agent.wait_ready(READY);
    // The operator's block of a 4-tuple without a socket stays where it is.
    ctl(&socket, &["block", "10.254.9.1:1", "10.254.9.2:443"]);

    let _held = hold_denied_in_own_netns(SMALL - 1);
    let swept = agent.wait_for(
        |v| v["type"] == "capacity" && v["level"] == "swept" && v["moved"].as_u64() >= Some(1),
        EVENT,
    );
    validate_event(&events_schema(), &swept).unwrap_or_else(|why| panic!("{why}"));
    let deadline = Instant::now() + EVENT;
    let maps = loop {
        let maps = status_maps(&socket);
        if maps["blocklist"] == 1 && maps["overflow"].as_u64() >= Some(SMALL as u64 - 1) {
            break maps;
        }
        assert!(
            Instant::now() < deadline,
            "not swept: {maps} (after {swept})"
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        maps["blocklist"], 1,
        "only the operator's block is left: {maps}"
    );

    let out = gnutls(www.addr(), Duration::from_secs(10));
    assert!(!out.success(), "a denied client got through");
    let event = agent.wait_for(
        |v| v["type"] == "connection" && v["comm"] == "gnutls-cli" && v["remote"]["port"] == 9461,
        EVENT,
    );
    assert_eq!(
        event["verdict"], "blocked",
        "fits in the blocklist again: {event}"
    );
    assert_eq!(event["socket_aborted"], true, "{event}");
}

/// Rate and length of the flood: the numbers with `ENFORCER_FLOOD_FULL=1`, else a
/// short run that fits the suite.
fn flood_size() -> (u32, u32) {
    match std::env::var("ENFORCER_FLOOD_FULL").as_deref() {
        Ok("1") => (20_000, 30),
        _ => (4_000, 10),
    }
}

/// `count` GnuTLS connections to `peer`, one every 100 ms, from one process: how long each
/// took from the TCP connection being up to the handshake's failure (panics if one completed).
/// The client runs at nice -5: what is measured is the agent's refusal, not how long the flood
/// keeps the client itself from the CPU (its handshake's key generation, its wake-up).
fn denied_loop(client: &std::path::Path, peer: SocketAddr, count: u32) -> Vec<Duration> {
    let (ip, port) = (peer.ip().to_string(), peer.port().to_string());
    let client = client.to_str().expect("utf-8");
    let count_arg = count.to_string();
    let out = run_with_timeout(
        &mut cmd("nice", ["-n", "-5", client, &ip, &port, &count_arg, "100"]),
        b"",
        Duration::from_secs(u64::from(count) / 10 * 6 + 30),
    );
    let text = out.stdout_str();
    assert!(
        text.contains("done"),
        "denied-loop-client: {text} {}",
        out.stderr_str()
    );
    text.lines()
        .filter_map(|l| {
            let (ms, rc) = l.strip_prefix("ms=")?.split_once(" rc=")?;
            assert_ne!(rc, "0", "a denied client completed its handshake");
            Some(Duration::from_secs_f64(ms.parse::<f64>().ok()? / 1000.0))
        })
        .collect()
}

/// Flood processes (each a share of the rate: one process does about 7,000 a second here).
const FLOODERS: u32 = 4;
const FLOOD_PORT: u16 = 20000;
const FLOOD_PORTS: u16 = 16;

/// ClientHellos in bulk from unprivileged processes with no TLS library (unattributed, so each
/// is judged, blocked and reported as a `client_hello`), while a denied GnuTLS client connects
/// every 100 ms. Every denied client is refused within 100 ms, the agent stays under 64 MiB,
/// its metrics answer within a second, and what the hello ring could not hold is counted and
/// reported; no connection event is lost.
#[test]
fn hello_flood_does_not_blind_the_agent() {
    require_root();
    let (rate, seconds) = flood_size();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let www = Server::www(&ns, peer, 9462, &cert);
    let dir = tempfile::Builder::new()
        .prefix("enforcer-flood-")
        .tempdir()
        .expect("temp dir");
    let flood = build_hello_flood(dir.path());
    let client = build_denied_loop_client(dir.path());
    let flood = flood.to_str().expect("utf-8").to_string();
    let (base, ports) = (FLOOD_PORT.to_string(), FLOOD_PORTS.to_string());
    let _sink = Group::spawn_until(
        ns.exec(&flood, ["server", &base, &ports]),
        "listening",
        EVENT,
    );
    let socket = dir.path().join("agent.sock");
    let mut agent = Agent::with_policy(
        &ns.host_if,
        OPENSSL_ONLY,
        &[
            "--control-socket",
            socket.to_str().expect("utf-8"),
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let ready = agent.wait_ready(READY);
    let metrics = ready["metrics"].as_str().expect("metrics").to_string();
    let pid = agent.pid();
    // The same denied client without a flood, for comparison.
    let mut calm = denied_loop(&client, www.addr(), 10);
    calm.sort();

    // The agent's size and its metrics, once a second, on a thread of their own.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, metrics) = (done.clone(), metrics.clone());
        thread::spawn(move || {
            let (mut rss_max, mut scrape_max) = (0u64, Duration::ZERO);
            while !done.load(Ordering::Relaxed) {
                rss_max = rss_max.max(rss_kib(pid));
                let started = Instant::now();
                let text = scrape(&metrics);
                assert!(text.contains("enforcer_drops_total"), "{text}");
                scrape_max = scrape_max.max(started.elapsed());
                thread::sleep(Duration::from_millis(1000));
            }
            (rss_max, scrape_max)
        })
    };

    let peer_ip = ns.peer_v4.to_string();
    let share = (rate / FLOODERS).to_string();
    let secs = seconds.to_string();
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let mut c = unprivileged(&flood, ["client", &peer_ip, &base, &ports, &share, &secs]);
            c.stdin(std::process::Stdio::null());
            thread::spawn(move || {
                let out = c.output().expect("run hello-flood");
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
        })
        .collect();

    // A denied client every 100 ms while the flood runs.
    let mut times = denied_loop(&client, www.addr(), seconds * 10);
    let reports: Vec<String> = flooders
        .into_iter()
        .map(|t| t.join().expect("flooder"))
        .collect();
    done.store(true, Ordering::Relaxed);
    let (rss_max, scrape_max) = watcher.join().expect("watcher");

    let counters = ctl(&socket, &["status"])["counters"].clone();
    let sent: u64 = reports
        .iter()
        .filter_map(|r| r.split_whitespace().find_map(|f| f.strip_prefix("sent=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    times.sort();
    let slowest = *times.last().expect("denied clients ran");
    let pct = |t: &[Duration], p: usize| t[(t.len() - 1) * p / 100];
    let over = times
        .iter()
        .filter(|t| **t >= Duration::from_millis(100))
        .count();
    println!(
        "flood: asked {rate}/s for {seconds} s, sent {sent} hellos ({:.0}/s): {reports:?}; \
         {} denied clients: median {:?}, p90 {:?}, slowest {slowest:?}, {over} at 100 ms or \
         more (without flood: median {:?}, slowest {:?}); agent RSS max {} KiB; slowest scrape \
         {scrape_max:?}; counters {counters}",
        sent as f64 / f64::from(seconds),
        times.len(),
        pct(&times, 50),
        pct(&times, 90),
        pct(&calm, 50),
        pct(&calm, 100),
        rss_max
    );
    assert!(
        sent > u64::from(rate) * u64::from(seconds) / 4,
        "the flood did not run: {reports:?}"
    );
    assert!(
        slowest < Duration::from_millis(100),
        "a denied client took {slowest:?}"
    );
    assert!(rss_max < 64 * 1024, "agent RSS {rss_max} KiB");
    assert!(
        scrape_max < Duration::from_secs(1),
        "a scrape took {scrape_max:?}"
    );
    assert_eq!(
        counters["events_lost"], 0,
        "connection events lost: {counters}"
    );

    // Every denied client was reported as blocked, its socket aborted.
    let blocked = agent
        .events()
        .iter()
        .filter(|v| v["type"] == "connection")
        .filter(|v| {
            v["comm"]
                .as_str()
                .is_some_and(|c| c.starts_with("denied-loop"))
        })
        .filter(|v| v["verdict"] == "blocked" && v["socket_aborted"] == true)
        .count();
    assert_eq!(
        blocked,
        times.len() + calm.len(),
        "connection events for the denied clients"
    );
    // Hellos the ring could not hold are counted, and the agent said so.
    let lost = counters["hello_events_lost"]
        .as_u64()
        .expect("hello_events_lost");
    if lost > 0 {
        let report = agent.wait_for(
            |v| v["type"] == "capacity" && v["map"] == "HELLO_EVENTS" && v["level"] == "lost",
            EVENT,
        );
        validate_event(&events_schema(), &report).unwrap_or_else(|why| panic!("{why}"));
    }
    // Every judged hello is reported or counted lost (the last may still be on their way).
    let judged = counters["unattributed_hellos"]
        .as_u64()
        .expect("unattributed_hellos");
    // Records the output lane could not hold (this test reads stdout slower than they come)
    // count as lost too.
    let deadline = Instant::now() + EVENT;
    let (reported, dropped) = loop {
        let dropped = sample(&scrape(&metrics), "enforcer_hello_reports_dropped_total") as u64;
        let reported = agent
            .events()
            .iter()
            .filter(|v| v["type"] == "client_hello")
            .count() as u64;
        if reported + lost + dropped >= judged || Instant::now() > deadline {
            break (reported, dropped);
        }
        thread::sleep(Duration::from_millis(200));
    };
    let lost = lost + dropped;
    println!(
        "flood: {judged} unattributed hellos judged, {reported} reported, {lost} lost \
         ({dropped} of them dropped by the output)"
    );
    assert!(
        reported + lost >= judged,
        "hellos neither reported nor counted lost"
    );
}

/// GnuTLS's library, what the rewrite puts into the allowed file.
const GNUTLS_SO: &str = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30";
/// OpenSSL allowed, everything else denied; unattributed TLS *allowed*, so that a rewritten
/// file the agent failed to see again (its TLS unattributed) would get through.
const REWRITE_POLICY: &str = "mode: enforce\ndefault: deny\nunattributed_tls: allow\nlibraries:\n  - family: openssl\n    action: allow\n";

/// Issue 16, item 1: the kernel's memory of examined files is keyed by the inode's `ctime`
/// too. The attacker (uid 65534) copies the allowed libssl into a file of its own and uses it
/// (attributed, allowed); then rewrites that same file in place (`cp` opens it `O_TRUNC`: same
/// inode, same generation) with GnuTLS and runs `gnutls-cli` on it. The file is examined again,
/// the old library's probes are released (`library_released`, `rewritten`), the new content is
/// registered as GnuTLS under a new id and its connection blocked, from the handshake.
#[test]
fn library_rewritten_in_place_is_judged_as_its_new_content() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    require_root();
    if !std::path::Path::new(GNUTLS_SO).is_file() {
        panic!("{GNUTLS_SO} missing (libgnutls30; `cargo xtask setup`)");
    }
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let www = Server::www(&ns, peer, 9463, &cert);
    let args = enforcer_tests::hook_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, REWRITE_POLICY, &args);
    let ready = agent.wait_ready(READY);
    assert_eq!(ready["new_files"], "pause", "{ready}\n{}", agent.stderr());

    // The attacker's directory, its client, its copy of the allowed libssl.
    let dir = tempfile::Builder::new()
        .prefix("enforcer-rewrite-")
        .tempdir()
        .expect("temp dir");
    let client = build_client(dir.path());
    let nobody: u32 = NOBODY.parse().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(nobody), Some(nobody)).expect("chown");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let lib = dir.path().join("libssl.so.3");
    let libssl = system_libssl();
    let copy = run_with_timeout(
        &mut unprivileged("cp", [libssl.as_os_str(), lib.as_os_str()]),
        b"",
        EVENT,
    );
    assert!(copy.success(), "{copy:?}");
    let path = std::fs::canonicalize(&lib).unwrap().display().to_string();
    let ino = std::fs::metadata(&lib).unwrap().ino();
    let (addr, port) = (peer.to_string(), www.addr().port().to_string());

    // Used as what it is: OpenSSL, allowed.
    let mut run = unprivileged(client.to_str().unwrap(), [&addr, &port]);
    run.env("LD_LIBRARY_PATH", dir.path());
    let out = run_with_timeout(&mut run, b"", EVENT);
    assert!(out.success(), "the allowed copy's client failed: {out:?}");
    let tls_port: u16 = field(&out.stdout_str(), "tls_local_port")
        .expect("connected")
        .parse()
        .unwrap();
    let first = agent.wait_for(
        |v| v["type"] == "connection" && v["local"]["port"] == tls_port,
        EVENT,
    );
    assert_eq!(first["library"]["path"], path.as_str(), "{first}");
    assert_eq!(first["library"]["family"], "openssl", "{first}");
    assert_eq!(first["verdict"], "allowed", "{first}");
    let old = agent.wait_for(
        |v| v["type"] == "library" && v["path"] == path.as_str(),
        EVENT,
    );

    // Rewritten in place by its owner: same inode, GnuTLS's bytes.
    let rewrite = run_with_timeout(
        &mut unprivileged("cp", [GNUTLS_SO, lib.to_str().unwrap()]),
        b"",
        EVENT,
    );
    assert!(rewrite.success(), "{rewrite:?}");
    assert_eq!(
        std::fs::metadata(&lib).unwrap().ino(),
        ino,
        "rewritten in place"
    );
    // gnutls-cli finds "libgnutls.so.30" here: the rewritten file.
    let gdir = dir.path().join("g");
    std::fs::create_dir(&gdir).unwrap();
    std::os::unix::fs::symlink(&lib, gdir.join("libgnutls.so.30")).unwrap();
    std::fs::set_permissions(&gdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gnutls_cli = || {
        let mut run = unprivileged(
            "gnutls-cli",
            ["--insecure", "--port", port.as_str(), addr.as_str()],
        );
        run.env("LD_LIBRARY_PATH", &gdir);
        run_with_timeout(&mut run, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(20))
    };
    // The first process to map the new content: paused, the file examined again, the old
    // probes released, GnuTLS registered. It may not get as far as TLS: the old probes'
    // breakpoints were placed into its mapping before the pause and their release writes the
    // old library's bytes back there (docs/architecture.md, "Files rewritten in place"). It
    // is refused either way, never run as the allowed OpenSSL.
    let out = gnutls_cli();
    assert!(
        !out.success(),
        "GnuTLS in the allowed library's file must be refused: {out:?}"
    );
    assert!(
        out.elapsed < Duration::from_secs(10),
        "took {:?} to be refused: {out:?}",
        out.elapsed
    );
    let released = agent.wait_for(
        |v| v["type"] == "library_released" && v["path"] == path.as_str(),
        EVENT,
    );
    assert_eq!(released["reason"], "rewritten", "{released}");
    assert_eq!(released["id"], old["id"], "{released}");
    let new = agent.wait_for(
        |v| v["type"] == "library" && v["path"] == path.as_str(),
        EVENT,
    );
    assert_eq!(new["family"], "gnutls", "{new}");
    assert_eq!(new["action"], "deny", "{new}");
    assert_ne!(
        new["id"], old["id"],
        "the new content has an id of its own: {new}"
    );
    // Every later process: the new content, probed as GnuTLS, blocked at the handshake.
    let out = gnutls_cli();
    assert!(!out.success(), "must be refused: {out:?}");
    assert!(
        out.elapsed < Duration::from_secs(10),
        "took {:?} to be refused: {out:?}",
        out.elapsed
    );
    let blocked = agent.wait_for(
        |v| v["type"] == "connection" && v["comm"] == "gnutls-cli",
        EVENT,
    );
    assert_eq!(blocked["library"]["path"], path.as_str(), "{blocked}");
    assert_eq!(blocked["library"]["family"], "gnutls", "{blocked}");
    assert_eq!(blocked["library"]["id"], new["id"], "{blocked}");
    assert_eq!(blocked["verdict"], "blocked", "{blocked}");
    for e in agent.events() {
        if e["comm"] == "gnutls-cli" && e["verdict"].is_string() {
            assert_ne!(
                e["verdict"], "allowed",
                "never allowed as the old content: {e}"
            );
        }
    }
    drop(www);
}
