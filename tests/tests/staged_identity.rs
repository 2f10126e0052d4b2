//! Identity claims a local user can stage (issue 16, item 6): a `path` rule matches the names the
//! host has for a file, not the names a process sees in a mount namespace of its own. An
//! unprivileged user who bind-mounts a copy of a denied library over `/usr/lib/...` inside
//! `unshare -Urm` maps it under an allowed name; the copy is still judged as what it is.

use std::{net::IpAddr, os::unix::fs::PermissionsExt, process::Command, time::Duration};

use enforcer_tests::{Agent, Cert, NetNs, Server, require_root, run_with_timeout};

const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const PORT: u16 = 9452;
const GNUTLS: &str = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30";

/// System libraries allowed by where they live; everything else denied.
const BY_PATH: &str = "\
mode: enforce
default: deny
unattributed_tls: deny
libraries:
  - path: \"/usr/lib/**\"
    action: allow
";

#[test]
fn bind_mounted_copy_under_an_allowed_path_is_judged_as_what_it_is() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let server = Server::plain(&ns, peer, PORT, &cert);
    // A copy of libgnutls outside /usr/lib, readable by the unprivileged user.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("libgnutls.so.30");
    std::fs::copy(std::fs::canonicalize(GNUTLS).unwrap(), &copy).expect("copy libgnutls");
    let args = enforcer_tests::hook_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, BY_PATH, &args);
    agent.wait_ready(READY);

    // nobody, in a user and mount namespace of its own: the copy mounted over the system file,
    // then gnutls-cli, which maps it as /usr/lib/x86_64-linux-gnu/libgnutls.so.30.
    let script = format!(
        "mount --bind {copy} $(readlink -f {GNUTLS}) && \
         exec gnutls-cli --insecure --port {PORT} {peer}",
        copy = copy.display()
    );
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["unshare", "-Urm", "sh", "-c", &script]);
    let out = run_with_timeout(&mut c, b"STAGED-PATH\n", Duration::from_secs(15));
    assert!(
        !out.stderr_str().contains("Operation not permitted"),
        "this kernel lets unprivileged users make user namespaces: {out:?}"
    );
    assert!(!out.success(), "the staged copy must be refused: {out:?}");
    let e = agent.wait_for(
        |v| v["type"] == "connection" && v["library"]["family"] == "gnutls",
        EVENT,
    );
    assert_eq!(e["verdict"], "blocked", "{e}");
    assert_ne!(
        e["library"]["path"],
        std::fs::canonicalize(GNUTLS).unwrap().to_str().unwrap(),
        "the copy, not the system file: {e}"
    );
    assert!(!String::from_utf8_lossy(&server.received()).contains("STAGED-PATH"));
    drop(agent);
}
