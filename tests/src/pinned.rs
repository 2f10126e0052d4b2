//! The set-up and checks the `--pin` tests share (`tests/pinning.rs`, `tests/pinning_tcx.rs`): a
//! namespace with a TLS server and a pin directory, gnutls-cli refusals, our filters on an
//! interface.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde_json::Value;

use crate::{
    Agent, Cert, HostLock, NetNs, Server, cmd, host_lock, ops::PinGuard, require_root,
    run_with_timeout, sh,
};

/// The policy of the pinned agents: OpenSSL allowed, everything else denied.
pub const POLICY: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
/// How long an agent may take to be ready.
pub const READY: Duration = Duration::from_secs(60);
/// How long an event may take.
pub const EVENT: Duration = Duration::from_secs(10);
/// The TLS server's port.
pub const PORT: u16 = 9446;

/// A namespace with a TLS server, a pin directory (detached on drop) and a control socket path.
pub struct Setup {
    // Fields drop in this order (and destructured locals in the reverse): the control socket,
    // the pin directory (detached while the namespace exists), the server, the namespace, and
    // last the host lock, held across the agents' restarts: the pinned state enforces while
    // no agent runs, and another test run's agent must not start in between.
    pub socket: PathBuf,
    pub _sockdir: tempfile::TempDir,
    pub pin: PinGuard,
    pub server: Server,
    pub _cert: Cert,
    pub peer: IpAddr,
    pub ns: NetNs,
    pub _host: HostLock,
}

impl Setup {
    pub fn new() -> Setup {
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

impl Default for Setup {
    fn default() -> Setup {
        Setup::new()
    }
}

/// gnutls-cli to `server`: must fail without its marker reaching the peer; within 2 s when an
/// agent runs (it aborts the socket), else when the client gives up on its dropped packets.
pub fn gnutls_refused(server: &Server, peer: IpAddr, marker: &str, agent_running: bool) {
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
pub fn xdp_programs(iface: &str) -> Vec<u64> {
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

pub fn our_tc_filters(iface: &str) -> usize {
    sh(&mut cmd("tc", ["filter", "show", "dev", iface, "egress"]))
        .lines()
        .filter(|l| l.contains("enforcer_egress"))
        .count()
}

/// Our ingress attachments on `iface`: (XDP programs, tc ingress filters).
pub fn ingress_attachments(iface: &str) -> (usize, usize) {
    let tc = sh(&mut cmd("tc", ["filter", "show", "dev", iface, "ingress"]))
        .lines()
        .filter(|l| l.contains("enforcer_ingress"))
        .count();
    (xdp_programs(iface).len(), tc)
}

/// (XDP, tc) attachments of one ingress form, as [`ingress_attachments`] counts them.
/// This run's event of a blocked gnutls-cli connection, its library named (not the downtime
/// connection's: its event waited in the pinned ring with the first run's library id).
pub fn gnutls_blocked_by_name(agent: &mut Agent) {
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
pub fn stop_cleanly(agent: &mut Agent) {
    let status = agent.stop().expect("agent was running");
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        agent.stderr()
    );
}

/// A pinned agent (`--pin pin`, control socket `socket`) under `policy` on `ns`'s host end,
/// with the hook form of this run and then `extra` (`--ingress ...`, `--tc-attach ...`), ready.
/// The hook form is given (the VM matrix sets it per cell): the pinning tests count the hook's
/// links by its programs' names, so an agent left on `auto` would be counted as having none.
pub fn start(
    ns: &crate::NetNs,
    policy: &str,
    pin: &std::path::Path,
    socket: &std::path::Path,
    extra: &[&str],
) -> Agent {
    let mut args = crate::hook_args();
    args.extend(["--pin", pin.to_str().expect("utf-8")].map(String::from));
    args.extend(["--control-socket", socket.to_str().expect("utf-8")].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, policy, &args);
    agent.wait_ready(READY);
    agent
}
