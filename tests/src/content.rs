//! What the content-bound attribution tests share (`content_attribution.rs`, `content_servers.rs`,
//! `content_programs.rs`): an agent under an OpenSSL-only policy that denies everything else,
//! unattributed TLS included, its counters, and background helper processes.

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use crate::{Agent, NetNs};

/// Every other library, and TLS no probed library made, is denied.
pub const OPENSSL_ONLY: &str = "\
mode: enforce
default: deny
unattributed_tls: deny
libraries:
  - family: openssl
    action: allow
";

/// How soon a refused client must have given up. Measured on 6.18: 11 ms from spawn to exit for
/// gnutls-cli through a 1-byte relay (the relay's socket is aborted, the relay closes the
/// client's), 1 to 3 ms from the forged hello's send to the abort.
pub const REFUSED_WITHIN: Duration = Duration::from_millis(100);

const READY: Duration = Duration::from_secs(60);

/// The agent on `ns`'s host interface, ready, with the hook form of this run
/// (`ENFORCER_TEST_HOOK`), and its control socket.
pub fn openssl_only_agent(ns: &NetNs) -> (Agent, PathBuf) {
    let args = crate::hook_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, OPENSSL_ONLY, &args);
    let ready = agent.wait_ready(READY);
    let socket = ready["control_socket"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no control socket in the ready event: {ready}"));
    (agent, socket)
}

/// One `STATS` counter of the agent behind `socket`, from `enforcer status`.
pub fn status_counter(socket: &std::path::Path, name: &str) -> u64 {
    let status = crate::ops::ctl(socket, &["status"]);
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

/// A background process killed on Drop (a relay, a server).
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on every address right now (for a relay or a server on this host).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Waits until something listens on `addr` (a server started in the background).
pub fn wait_listening(addr: SocketAddr) {
    let started = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the agent behind control socket `control` has its kernel send hook where it
/// attributes only after the send (the tracepoint form on `sock_send_length`: Linux 6.3 to 6.15,
/// `tcp_sendmsg_locked` came in 6.16), from its own `enforcer status`. There the agent applies
/// `unattributed_tls: deny` as `audit` (docs/kernel-support.md): an unattributed hello is
/// reported `audited` and passes, by design.
pub fn late_attribution(control: &std::path::Path) -> bool {
    let status = crate::ops::ctl(control, &["status"]);
    let targets = status["kernel_hook_targets"]
        .as_array()
        .unwrap_or_else(|| panic!("no kernel_hook_targets in {status}"));
    let late = targets.iter().any(|t| t == "sock_send_length");
    if late {
        eprintln!(
            "late attribution (send hook on sock_send_length): unattributed TLS is audited, not \
             refused; checking the report instead of the refusal"
        );
    }
    late
}
