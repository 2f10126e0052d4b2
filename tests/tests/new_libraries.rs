//! New library files are instrumented as they appear (issue 4, point 5): a process that starts
//! after the agent and loads a libssl file the agent has never seen (a fresh copy in a temp
//! dir, loaded through `LD_LIBRARY_PATH`) has its *first* TLS connection attributed to that
//! copy, and the policy applies to it (a path rule denies copies in one directory).
//!
//! The client is a small C program built here against the system OpenSSL (`gcc`, `libssl-dev`):
//! it prints which libssl the dynamic loader gave it, connects at once, and does one TLS
//! exchange. The measurement: 100 such processes, each with its own fresh copy, started at the
//! same moment: 100 of 100 must be attributed to their own copy from the handshake on.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent,
    libssl_copies::{Site, build_client, copy_path, field, fresh_copy},
    run_with_timeout,
};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(20);
const CLIENT: Duration = Duration::from_secs(30);
const PORT: u16 = 8443;
const PROCESSES: usize = 100;
/// All 100 processes, from the first start to the last exit.
const BURST_BOUND: Duration = Duration::from_secs(90);
/// How long the measurement waits for other sessions' agents to exit.
const OTHER_AGENTS_WAIT: Duration = Duration::from_secs(180);

fn start_agent(site: &Site, policy: &str) -> Agent {
    site.watching_agent(policy, &[], READY).0
}

fn is_connection_of(v: &Value, local_port: u16) -> bool {
    v["type"] == "connection" && v["comm"] == "tls_client" && v["local"]["port"] == local_port
}

/// A copy loaded by a process started after the agent: attributed from its first TLS call,
/// allowed or blocked by the path rule; and once the calls returned, the thread's plain TCP is
/// not attributed (the return probes of the new library work).
#[test]
fn fresh_libssl_copy_is_attributed_from_the_first_connection() {
    let site = Site::new(PORT);
    let (libssl, peer) = (&site.libssl, site.peer);
    let tmp = fs::canonicalize(std::env::temp_dir()).expect("temp dir");
    let policy = format!(
        "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n  \
         - path: \"{}/enforcer-newlib-deny-*/**\"\n    action: deny\n",
        tmp.display()
    );
    let mut agent = start_agent(&site, &policy);
    let work = tempfile::Builder::new()
        .prefix("enforcer-newlib-client-")
        .tempdir()
        .expect("temp dir");
    let client = build_client(work.path());
    let (addr, port) = (peer.to_string(), PORT.to_string());

    // Allowed: a copy in a directory no rule names (it is OpenSSL by its symbols).
    let ok = fresh_copy("enforcer-newlib-ok-", libssl);
    let mut run = Command::new(&client);
    run.args([&addr, &port, "plain"])
        .env("LD_LIBRARY_PATH", ok.path());
    let out = run_with_timeout(&mut run, b"", CLIENT);
    let stdout = out.stdout_str();
    assert!(out.success(), "client with the fresh copy failed: {out:?}");
    let loaded = field(&stdout, "libssl").expect("client names its libssl");
    assert_eq!(
        fs::canonicalize(&loaded).unwrap().display().to_string(),
        copy_path(&ok),
        "the loader must have used the copy"
    );
    let tls_port: u16 = field(&stdout, "tls_local_port").unwrap().parse().unwrap();
    let event = agent.wait_for(|v| is_connection_of(v, tls_port), EVENT);
    assert_eq!(event["library"]["path"], copy_path(&ok), "{event}");
    assert_eq!(event["library"]["family"], "openssl", "{event}");
    assert_eq!(event["verdict"], "allowed", "{event}");
    assert_eq!(
        event["call"], "handshake",
        "the first TLS call (the handshake) must already be attributed: {event}"
    );
    let record = agent.wait_for(
        |v| v["type"] == "library" && v["path"] == copy_path(&ok).as_str(),
        EVENT,
    );
    assert_eq!(record["via"], "mmap", "{record}");
    assert_eq!(record["action"], "allow", "{record}");
    // The plain connection came after every TLS call had returned.
    let plain_port: u16 = field(&stdout, "plain_local_port").unwrap().parse().unwrap();
    thread::sleep(Duration::from_millis(500));
    let wrong: Vec<&Value> = agent
        .events()
        .iter()
        .filter(|v| v["type"] == "connection" && v["local"]["port"] == plain_port)
        .collect();
    assert!(
        wrong.is_empty(),
        "plain TCP after the TLS calls returned was attributed: {wrong:?}"
    );

    // Denied by path: blocked from the first connection, in a process that started after the
    // agent, with a file the agent had never seen.
    let deny = fresh_copy("enforcer-newlib-deny-", libssl);
    let mut run = Command::new(&client);
    run.args([&addr, &port]).env("LD_LIBRARY_PATH", deny.path());
    let out = run_with_timeout(&mut run, b"", CLIENT);
    assert!(
        !out.success(),
        "the denied copy's connection must fail: {out:?}"
    );
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?} to fail: {out:?}",
        out.elapsed
    );
    let tls_port: u16 = field(&out.stdout_str(), "tls_local_port")
        .expect("connected before the handshake")
        .parse()
        .unwrap();
    let event = agent.wait_for(|v| is_connection_of(v, tls_port), EVENT);
    assert_eq!(event["library"]["path"], copy_path(&deny), "{event}");
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert_eq!(event["call"], "handshake", "{event}");
    drop(site.www);
}

/// Kills the remaining clients (their process groups) on drop.
struct Clients(Vec<Child>);

impl Drop for Clients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: signalling the process group we created for this child.
            unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// The measurement: 100 processes started at once, each loading its own fresh copy and
/// connecting at once. Every one is attributed to its own copy from its handshake on, no pause
/// runs out of budget, and every client completes.
#[test]
fn hundred_processes_with_fresh_copies_all_attributed() {
    let site = Site::new(PORT);
    let (libssl, peer) = (&site.libssl, site.peer);
    let mut agent = start_agent(
        &site,
        "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n",
    );
    let work = tempfile::Builder::new()
        .prefix("enforcer-newlib-client-")
        .tempdir()
        .expect("temp dir");
    let client = build_client(work.path());
    let copies: Vec<tempfile::TempDir> = (0..PROCESSES)
        .map(|_| fresh_copy("enforcer-newlib-many-", libssl))
        .collect();
    let (addr, port) = (peer.to_string(), PORT.to_string());
    // Another agent on the host (another session's tests or benchmarks) would pause and resume
    // our clients on its own schedule: whichever agent resumes first lets the process run, and
    // ours may not have probed its copy yet. The measurement needs the host to itself.
    let others = other_agents_gone(agent.pid(), OTHER_AGENTS_WAIT);

    let started = Instant::now();
    let mut clients = Clients(Vec::new());
    let mut copy_of = HashMap::new();
    for dir in &copies {
        let child = Command::new(&client)
            .args([&addr, &port])
            .env("LD_LIBRARY_PATH", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start client");
        copy_of.insert(child.id(), copy_path(dir));
        clients.0.push(child);
    }
    let mut failed = Vec::new();
    for child in std::mem::take(&mut clients.0) {
        let pid = child.id();
        let deadline = BURST_BOUND.saturating_sub(started.elapsed());
        let out = wait_output(child, deadline);
        match out {
            Some(out) if out.status.success() => {}
            other => failed.push((pid, other)),
        }
    }
    let burst = started.elapsed();
    assert!(failed.is_empty(), "clients failed: {failed:?}");
    assert!(burst < BURST_BOUND, "100 clients took {burst:?}");

    // Each process's first connection event names its own copy and comes from the handshake.
    let deadline = Instant::now() + EVENT;
    let mut first: BTreeMap<u32, Value> = BTreeMap::new();
    loop {
        for v in agent.events() {
            let pid = v["pid"].as_u64().unwrap_or(0) as u32;
            if v["type"] == "connection" && copy_of.contains_key(&pid) {
                first.entry(pid).or_insert_with(|| v.clone());
            }
        }
        if first.len() == PROCESSES || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let attributed: Vec<u32> = first
        .iter()
        .filter(|(pid, v)| {
            v["library"]["path"] == copy_of[pid].as_str() && v["call"] == "handshake"
        })
        .map(|(pid, _)| *pid)
        .collect();
    let wrong: Vec<&Value> = first
        .iter()
        .filter(|(pid, _)| !attributed.contains(pid))
        .map(|(_, v)| v)
        .collect();

    // Pauses: how long each process was held, from the hook's stop to our SIGCONT.
    let mut paused_us: HashMap<u32, u64> = HashMap::new();
    let mut over_budget = Vec::new();
    for v in agent.events() {
        let pid = v["pid"].as_u64().unwrap_or(0) as u32;
        if v["type"] == "resumed" && copy_of.contains_key(&pid) {
            *paused_us.entry(pid).or_default() += v["paused_us"].as_u64().unwrap_or(0);
            if v["why"] != "examined" && v["why"] != "known" {
                over_budget.push(v.clone());
            }
        }
    }
    let mut pauses: Vec<u64> = paused_us.values().copied().collect();
    pauses.sort_unstable();
    let pct = |p: usize| pauses.get((pauses.len() * p / 100).min(pauses.len().saturating_sub(1)));
    eprintln!(
        "new libraries: {} of {PROCESSES} processes attributed to their own fresh copy from the \
         first connection; burst {burst:?}; pause per process: median {:?} us, p90 {:?} us, max \
         {:?} us ({} processes paused)",
        attributed.len(),
        pct(50),
        pct(90),
        pauses.last(),
        pauses.len(),
    );
    assert_eq!(
        attributed.len(),
        PROCESSES,
        "attributed {} of {PROCESSES}; wrong or missing first events: {wrong:?}; pids without \
         any event: {:?}; other agents running during the burst: {others:?}",
        attributed.len(),
        copy_of
            .keys()
            .filter(|p| !first.contains_key(p))
            .collect::<Vec<_>>()
    );
    assert!(
        over_budget.is_empty(),
        "processes resumed before their file was probed: {over_budget:?}"
    );
    let paused: HashSet<u32> = paused_us.keys().copied().collect();
    assert_eq!(
        paused.len(),
        PROCESSES,
        "every process was paused for its new file"
    );
    drop(site.www);
}

/// Waits up to `timeout` until no `enforcer attach` other than `ours` runs on the host; returns
/// the command lines of those still running.
fn other_agents_gone(ours: u32, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut told = false;
    loop {
        let others = other_agents(ours);
        if others.is_empty() || Instant::now() > deadline {
            return others;
        }
        if !told {
            eprintln!("waiting (up to {timeout:?}) for other agents to exit: {others:?}");
            told = true;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

fn other_agents(ours: u32) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            if pid == ours || process_state(pid) == Some('Z') {
                return None;
            }
            // An agent's helper is a fork of it (same command line), not another agent.
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            if comm.trim() == "enforcer-resume" {
                return None;
            }
            let raw = fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_agent = args.first().is_some_and(|a| a.ends_with("enforcer"))
                && args.get(1).is_some_and(|a| a == "attach");
            is_agent.then(|| format!("{pid}: {}", args.join(" ")))
        })
        .collect()
}

/// Waits for `child` to exit within `timeout`, then collects its output.
fn wait_output(mut child: Child, timeout: Duration) -> Option<std::process::Output> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                // SAFETY: signalling the process group we created for this child.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// The agent dies (SIGKILL) while a process is paused for a new file: the helper it left
/// behind resumes the process once the agent is gone.
#[test]
fn paused_process_is_resumed_when_the_agent_dies() {
    let site = Site::new(PORT);
    let (libssl, peer) = (&site.libssl, site.peer);
    // `unattributed_tls: allow`: the killed agent's tc filter stays until the next agent
    // replaces it (netlink objects do not die with a process), and the client's copy of libssl
    // is never probed, so with `default: deny` its ClientHello would be dropped as unattributed.
    let agent = start_agent(
        &site,
        "mode: enforce\ndefault: deny\nunattributed_tls: allow\nlibraries:\n  - family: openssl\n    action: allow\n",
    );
    let work = tempfile::Builder::new()
        .prefix("enforcer-newlib-client-")
        .tempdir()
        .expect("temp dir");
    let client = build_client(work.path());
    let copy = fresh_copy("enforcer-newlib-orphan-", libssl);

    // Freeze the agent: the hooks still stop the client, nobody answers.
    let agent_pid = agent.pid() as libc::pid_t;
    // SAFETY: signalling our own agent child.
    unsafe { libc::kill(agent_pid, libc::SIGSTOP) };
    let child = Command::new(&client)
        .args([&peer.to_string(), &PORT.to_string()])
        .env("LD_LIBRARY_PATH", copy.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start client");
    let pid = child.id();
    let mut clients = Clients(vec![child]);
    let stopped = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(50));
        process_state(pid) == Some('T')
    });
    // SAFETY: as above.
    unsafe { libc::kill(agent_pid, libc::SIGKILL) };
    assert!(
        stopped,
        "the client was not paused (state {:?})",
        process_state(pid)
    );

    let child = clients.0.pop().expect("one client");
    // The helper resumes it as soon as the agent starts dying (not minutes later, when the
    // kernel has released all of the agent's uprobes).
    let out = wait_output(child, Duration::from_secs(30))
        .expect("the paused client was not resumed within 30 s of the agent's death");
    assert!(
        out.status.success(),
        "client failed after resuming: {out:?}"
    );
    drop(agent);
    drop(site.www);
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `T` stopped, ...).
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}
