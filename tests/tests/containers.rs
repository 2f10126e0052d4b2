//! Containers as first-class: a real Docker container (its own network namespace, its own root
//! filesystem from `debootstrap` with its own libssl3, libgnutls30, curl and gnutls-cli at
//! container paths) talks to an `openssl s_server` in a test namespace, routed through the host;
//! the agent runs on the host, attached to the host end of the server's veth. With an
//! OpenSSL-only policy in enforce mode the container's curl completes and its gnutls-cli is
//! refused within 100 ms, its socket (in the container's namespace) aborted; the events name the
//! container id, its cgroup, its network namespace cookie and both paths of the library.
//!
//! Docker, not podman: `docker.io`'s daemon starts containers on this kernel with cgroupfs and
//! no bridge or firewall rules of its own (see `enforcer_tests::container`); nothing is pulled.
//! Nothing here is skipped: a machine where the container cannot start fails the test, with why.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt,
    time::Duration,
};

use enforcer_tests::{
    Agent, Cert, NetNs, Server,
    container::{Container, Docker},
    hook_args, require_root, run_with_timeout,
    schema::{events_schema, validate_event},
};
use serde_json::Value;

const OPENSSL_ONLY_ENFORCE: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(30);
const WWW_PORT: u16 = 8443;
const PLAIN_PORT: u16 = 9444;

/// What every event of a container's connection must say about where it came from.
fn assert_names_the_container(event: &Value, container: &Container, cookie: u64, file: &str) {
    if let Err(why) = validate_event(&events_schema(), event) {
        panic!("event does not match docs/events.schema.json: {why}");
    }
    assert_eq!(event["container"]["runtime"], "docker", "{event}");
    assert_eq!(event["container"]["id"], container.id.as_str(), "{event}");
    let cgroup = event["cgroup"]
        .as_str()
        .unwrap_or_else(|| panic!("cgroup: {event}"));
    assert!(cgroup.contains(&container.id), "cgroup {cgroup}: {event}");
    assert_eq!(event["netns_cookie"], cookie, "{event}");
    let library = &event["library"];
    let inside = library["container_path"]
        .as_str()
        .unwrap_or_else(|| panic!("container_path: {event}"));
    assert!(
        inside.starts_with("/usr/lib/") && inside.contains(file),
        "container_path {inside}: {event}"
    );
    let host = library["host_path"]
        .as_str()
        .unwrap_or_else(|| panic!("host_path: {event}"));
    assert!(
        !host.starts_with("/proc/") && host != inside,
        "host_path {host} is not a path of the host's own: {event}"
    );
    // Both name the very same file: the one the container's first process sees at `inside`.
    let theirs = std::fs::metadata(format!("/proc/{}/root{inside}", container.pid))
        .unwrap_or_else(|e| panic!("{inside} in the container: {e}"));
    let ours = std::fs::metadata(host).unwrap_or_else(|e| panic!("{host}: {e}"));
    assert_eq!(
        (ours.dev(), ours.ino()),
        (theirs.dev(), theirs.ino()),
        "{host} is not the container's {inside}"
    );
}

#[test]
fn container_curl_allowed_and_gnutls_refused_with_its_socket_aborted() {
    require_root();
    let docker = Docker::start();
    let image = docker.debian_image();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let www = Server::www(&ns, peer, WWW_PORT, &cert);
    let plain = Server::plain(&ns, peer, PLAIN_PORT, &cert);
    let container = Container::start(&docker, &image, &ns);
    let cookie = container.netns_cookie();

    let mut args = hook_args();
    // The agent's default, which the harness turns off for its peers' namespaces.
    args.extend(["--abort-namespaces".into(), "all".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, OPENSSL_ONLY_ENFORCE, &args);
    agent.wait_ready(READY);

    // The container's libraries are new files to the agent: the first process to map each waits
    // until they are probed. Let that be these two, so the timed client below is judged at once.
    let warm = run_with_timeout(
        &mut container.exec("curl --version && gnutls-cli --version"),
        b"",
        CLIENT,
    );
    assert!(warm.success(), "the container's clients run: {warm:?}");

    // OpenSSL (the container's own libssl3): completes, reported as allowed.
    let out = run_with_timeout(
        &mut container.exec(&format!("curl -sk --max-time 10 {}", www.url())),
        b"",
        CLIENT,
    );
    assert!(
        out.success() && out.stdout_str().contains("s_server"),
        "the container's curl must complete: {out:?}\n{}",
        agent.stderr()
    );
    let event = agent.wait_connection("curl", IpAddr::V4(container.v4), www.addr(), EVENT);
    assert_eq!(event["verdict"], "allowed", "{event}");
    assert_eq!(event["library"]["family"], "openssl", "{event}");
    assert_names_the_container(&event, &container, cookie, "libssl.so.3");

    // GnuTLS (the container's own libgnutls30): refused within 100 ms, timed inside the
    // container from the client's start to its exit; not one application byte arrives.
    let script = format!(
        "s=$(date +%s%N); echo GNUTLS-MUST-NOT-ARRIVE | gnutls-cli --insecure --port {PLAIN_PORT} \
         {peer} >/dev/null 2>&1; rc=$?; e=$(date +%s%N); echo \"$rc $(( (e - s) / 1000000 ))\""
    );
    let out = run_with_timeout(&mut container.exec(&script), b"", CLIENT);
    let stdout = out.stdout_str();
    let (rc, ms) = stdout
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("the timing script printed {stdout:?}: {out:?}"));
    assert_ne!(rc, "0", "the container's gnutls-cli must fail: {out:?}");
    let ms: u64 = ms.parse().expect("milliseconds");
    let event = agent.wait_connection(
        "gnutls-cli",
        IpAddr::V4(container.v4),
        SocketAddr::new(peer, PLAIN_PORT),
        EVENT,
    );
    assert_eq!(event["verdict"], "blocked", "{event}");
    assert_eq!(event["library"]["family"], "gnutls", "{event}");
    assert_eq!(
        event["socket_aborted"],
        true,
        "the socket in the container's namespace was not aborted: {event}\n{}",
        agent.stderr()
    );
    assert_names_the_container(&event, &container, cookie, "libgnutls.so.30");
    eprintln!("gnutls-cli refused in {ms} ms: {event}");
    assert!(ms < 100, "gnutls-cli took {ms} ms to be refused: {event}");
    let received = String::from_utf8_lossy(&plain.received()).into_owned();
    assert!(
        !received.contains("GNUTLS-MUST-NOT-ARRIVE"),
        "the peer received GnuTLS data: {received:?}"
    );
    assert!(
        !agent.stderr().contains("could not abort"),
        "an abort failed: {}",
        agent.stderr()
    );
    drop(agent);
}
