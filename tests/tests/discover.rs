//! `enforcer discover` on the system OpenSSL with `curl` as the workload: it names `SSL_write`,
//! `SSL_read` and the handshake entry, its profile passes `enforcer policy check`, and an agent
//! running with that profile attributes curl's connection to the discovered family. Also: an
//! interrupted scan kills its workload and leaves no probe of its programs behind.
//!
//! Both hold the host lock: an agent of another test run (in enforce mode) would abort the
//! workload's connections, and its watcher would pause the workload.

use std::{
    io::Read,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cert, NetNs, Server, cmd, enforcer_bin, host_lock, require_root, run_with_timeout,
};

const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
const DISCOVER: Duration = Duration::from_secs(40);
const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const FAMILY: &str = "discovered-test-ossl";

/// The lines of `report` between the `<role> candidates:` header and the next blank line.
fn candidates<'a>(report: &'a str, role: &str) -> Vec<&'a str> {
    let header = format!("{role} candidates:");
    report
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

fn names(lines: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn discovers_openssl_and_the_profile_attributes_its_connections() {
    require_root();
    let _host = host_lock();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::www(&ns, peer, 8443, &cert);
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");

    let started = Instant::now();
    let out = run_with_timeout(
        Command::new(enforcer_bin())
            .args(["discover", "--lib", LIBSSL, "--id", FAMILY, "--policy-out"])
            .arg(&policy)
            .args(["--", "curl", "-sk", "--max-time", "10", &server.url()]),
        b"",
        DISCOVER,
    );
    let report = out.stdout_str();
    assert!(
        out.success(),
        "discover failed: {}\n{report}",
        out.stderr_str()
    );
    let took = started.elapsed();
    let (handshake, write, read) = (
        names(&candidates(&report, "handshake")),
        names(&candidates(&report, "write")),
        names(&candidates(&report, "read")),
    );
    assert!(
        handshake
            .iter()
            .any(|n| n == "SSL_connect" || n == "SSL_do_handshake"),
        "no handshake entry in {handshake:?}:\n{report}"
    );
    assert!(
        write
            .iter()
            .any(|n| n == "SSL_write" || n == "SSL_write_ex"),
        "no SSL_write in {write:?}:\n{report}"
    );
    assert!(
        read.iter().any(|n| n == "SSL_read" || n == "SSL_read_ex"),
        "no SSL_read in {read:?}:\n{report}"
    );
    assert!(
        report.contains("took "),
        "it says how long it took:\n{report}"
    );
    assert!(
        out.stderr_str().contains("chunk 1 of"),
        "progress: {}",
        out.stderr_str()
    );
    eprintln!("discover took {took:?}");

    // The generated policy is accepted as is.
    let check = run_with_timeout(
        cmd(enforcer_bin().to_str().unwrap(), ["policy", "check"]).arg(&policy),
        b"",
        Duration::from_secs(10),
    );
    assert!(check.success(), "policy check: {}", check.stderr_str());
    assert!(
        check.stdout_str().contains(FAMILY),
        "{}",
        check.stdout_str()
    );

    // An agent with it attributes curl's connection to the discovered family: the policy's
    // catalog families are tried before the built-in `openssl`, which identifies the same file.
    let mut agent = Agent::start(&ns.host_if, &policy, &[]);
    agent.wait_ready(READY);
    let curl = run_with_timeout(
        &mut cmd("curl", ["-sk", "--max-time", "10", &server.url()]),
        b"",
        Duration::from_secs(15),
    );
    assert!(curl.success(), "curl: {}", curl.stderr_str());
    let remote: SocketAddr = server.addr();
    let event = agent.wait_for(
        |v| {
            v["type"] == "connection"
                && v["comm"] == "curl"
                && v["remote"]["addr"] == remote.ip().to_string().as_str()
                && v["remote"]["port"] == remote.port()
        },
        EVENT,
    );
    assert_eq!(event["library"]["family"], FAMILY, "{event}");
    assert_eq!(event["library"]["path"], LIBSSL, "{event}");
    assert_eq!(
        event["local"]["addr"],
        ns.host_v4.to_string().as_str(),
        "{event}"
    );
    assert!(event["local"]["port"].as_u64().unwrap_or(0) > 0, "{event}");
    assert_eq!(event["verdict"], "allowed", "{event}");
}

#[test]
fn interrupted_scan_kills_its_workload_and_leaves_no_probe() {
    require_root();
    let _host = host_lock();
    // A workload that outlives the test unless it is killed; its argument makes it findable.
    let marker = format!("{}.25", 4000 + std::process::id() % 1000);
    let mut child = Command::new(enforcer_bin())
        .args([
            "discover", "--lib", LIBSSL, "--chunk", "64", "--", "sleep", &marker,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("enforcer runs");
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    // Mid-scan: the first chunk is probed and its workload runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sleep_running(&marker) || discover_programs().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the scan never reached its workload"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let stopped = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "no exit after SIGINT"
        );
        thread::sleep(Duration::from_millis(10));
    };
    let text = reader.join().unwrap();
    assert!(!status.success(), "an interrupted scan is not a success");
    assert!(text.contains("interrupted by signal 2"), "{text}");
    assert!(!sleep_running(&marker), "the workload survived");
    // Links and perf events hold their programs: none left means no probe left. The kernel
    // frees them shortly after the process's fds are closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = discover_programs();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still loaded: {left:?}\n{text}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a `sleep <marker>` process exists.
fn sleep_running(marker: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        cmdline == format!("sleep\0{marker}\0").as_bytes()
    })
}

/// Names of loaded BPF programs that are discovery uprobes (`discover_enter`, `discover_exit`).
fn discover_programs() -> Vec<String> {
    bpf::program_names()
        .into_iter()
        .filter(|n| n.starts_with("discover_e"))
        .collect()
}

/// Enumerating loaded programs with `bpf(2)` (no bpftool needed).
mod bpf {
    use std::{mem::size_of, os::fd::FromRawFd};

    const BPF_PROG_GET_NEXT_ID: i64 = 11;
    const BPF_PROG_GET_FD_BY_ID: i64 = 13;
    const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;

    fn sys(cmd: i64, attr: &mut [u64; 16]) -> i64 {
        // SAFETY: attr is a zeroed, large enough bpf_attr for these commands.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                size_of::<[u64; 16]>(),
            )
        }
    }

    pub fn program_names() -> Vec<String> {
        let mut names = Vec::new();
        let mut id: u32 = 0;
        for _ in 0..100_000 {
            let mut attr = [0u64; 16];
            attr[0] = u64::from(id); // start_id
            if sys(BPF_PROG_GET_NEXT_ID, &mut attr) != 0 {
                break;
            }
            id = (attr[0] >> 32) as u32; // next_id
            let mut attr = [0u64; 16];
            attr[0] = u64::from(id); // prog_id
            let fd = sys(BPF_PROG_GET_FD_BY_ID, &mut attr);
            if fd < 0 {
                continue; // gone meanwhile
            }
            // SAFETY: a fresh fd from the kernel, closed on drop.
            let _owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
            // struct bpf_prog_info: name[16] at byte 64.
            let mut info = [0u8; 256];
            let mut attr = [0u64; 16];
            attr[0] = fd as u64 | ((info.len() as u64) << 32); // bpf_fd, info_len
            attr[1] = info.as_mut_ptr() as u64;
            if sys(BPF_OBJ_GET_INFO_BY_FD, &mut attr) != 0 {
                continue;
            }
            let name = &info[64..80];
            let end = name.iter().position(|b| *b == 0).unwrap_or(16);
            names.push(String::from_utf8_lossy(&name[..end]).into_owned());
        }
        names
    }
}

#[test]
fn libssl_is_where_the_test_expects_it() {
    assert!(
        Path::new(LIBSSL).exists(),
        "{LIBSSL} missing: install libssl3"
    );
}
