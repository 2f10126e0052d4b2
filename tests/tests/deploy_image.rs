//! deploy/Containerfile run, not only parsed (tests/tests/deploy.rs parses it): its runtime stage
//! is built here into an image and run privileged on a test veth, in audit and in enforce mode,
//! and its outcomes are compared with the host binary's on the same traffic.
//!
//! How the image is built without pulling anything (the machine reaches no registry):
//! - the runtime stage's base is a Debian root made by `debootstrap` and `docker import`ed
//!   (`enforcer_tests::container`), holding the packages the stage's `RUN apt-get install` names
//!   (checked: every one of them is in the root), so that `RUN` is left out;
//! - the build stage is not run: it needs a Rust toolchain image. A static `FROM scratch` musl
//!   build is not made either (the musl target is not installed by `cargo xtask setup`, and it
//!   would be a second build of the agent and its eBPF object). The build stage's output is laid
//!   out in the build context as it would be in `/src`: the agent binary under test at
//!   `target/release/enforcer`, and the man pages and completions made by the build stage's own
//!   `RUN` line, run here with that binary. `COPY --from=build /src/X` becomes `COPY X`.
//!
//! Everything else (the policy `COPY`s, `ENTRYPOINT`, `CMD`) is the file's own. The container
//! runs the image's `CMD` with three changes: a pin directory of the test's own (detached on
//! drop), a free metrics port, and `--iface` the test veth.

use std::{
    net::{IpAddr, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

use enforcer_tests::{
    Agent, Cert, NetNs, Server, cmd,
    container::{self, Docker},
    enforcer_bin, hook_args,
    ops::PinGuard,
    require_root, run_with_timeout, sh, workspace,
};
use serde_json::Value;

const OPENSSL_ONLY_ENFORCE: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
const READY: Duration = Duration::from_secs(90);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
const WWW_PORT: u16 = 8443;
const PLAIN_PORT: u16 = 9444;

/// The Containerfile's instructions, continuation lines joined, comments left out, by stage.
fn stages() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(workspace().join("deploy/Containerfile"))
        .expect("deploy/Containerfile");
    let mut instructions: Vec<String> = Vec::new();
    let mut open = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (body, more) = match line.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (line, false),
        };
        match (open, instructions.last_mut()) {
            (true, Some(last)) => {
                last.push(' ');
                last.push_str(body);
            }
            _ => instructions.push(body.to_owned()),
        }
        open = more;
    }
    let mut stages: Vec<Vec<String>> = Vec::new();
    for i in instructions {
        if i.starts_with("FROM ") || stages.is_empty() {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("a stage").push(i);
    }
    assert_eq!(stages.len(), 2, "a build and a runtime stage");
    stages
}

/// The runtime stage rewritten onto `base` (see the module doc), and the build stage's `RUN`
/// that makes the man pages and completions.
fn derived_containerfile(base: &str) -> (String, String) {
    let stages = stages();
    let docs = stages[0]
        .iter()
        .find_map(|i| {
            i.strip_prefix("RUN ")
                .filter(|r| r.contains("enforcer man"))
        })
        .expect("the build stage makes the man pages")
        .to_owned();
    let mut out = format!("FROM {base}\n");
    for i in &stages[1][1..] {
        if let Some(run) = i.strip_prefix("RUN ") {
            let wanted = run
                .split("--no-install-recommends")
                .nth(1)
                .and_then(|r| r.split("&&").next())
                .unwrap_or_else(|| panic!("a RUN of the runtime stage that is no apt-get: {run}"));
            for package in wanted.split_whitespace() {
                assert!(
                    container::PACKAGES.contains(&package),
                    "the runtime stage installs {package}, which the debootstrap root lacks"
                );
            }
            continue;
        }
        let i = i.replace("COPY --from=build /src/", "COPY ");
        assert!(!i.contains("--from="), "a COPY from elsewhere: {i}");
        out.push_str(&i);
        out.push('\n');
    }
    (out, docs)
}

/// The image, built from the derived Containerfile; removed on drop.
struct Image<'d> {
    docker: &'d Docker,
    tag: String,
}

impl<'d> Image<'d> {
    fn build(docker: &'d Docker) -> Image<'d> {
        let base = docker.debian_image();
        let (file, docs) = derived_containerfile(&base);
        let ctx = tempfile::tempdir().expect("build context");
        let release = ctx.path().join("target/release");
        std::fs::create_dir_all(&release).expect("target/release");
        std::fs::copy(enforcer_bin(), release.join("enforcer")).expect("copy the agent");
        sh(cmd("cp", ["-a"])
            .arg(workspace().join("policies"))
            .arg(ctx.path()));
        sh(cmd("sh", ["-ec", &docs]).current_dir(ctx.path()));
        std::fs::write(ctx.path().join("Containerfile"), &file).expect("write Containerfile");
        let tag = format!("enforcer-test-image:{}", std::process::id());
        let out = docker
            .cmd(["build", "--pull=false", "-q", "-t", &tag, "-f"])
            .arg(ctx.path().join("Containerfile"))
            .arg(ctx.path())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("docker build");
        assert!(
            out.status.success(),
            "docker build of\n{file}\nfailed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Image { docker, tag }
    }

    /// The image's `CMD`, as built.
    fn cmd(&self) -> Vec<String> {
        let json =
            sh(&mut self
                .docker
                .cmd(["image", "inspect", "-f", "{{json .Config.Cmd}}", &self.tag]));
        serde_json::from_str(json.trim()).expect("CMD as JSON")
    }
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        let _ = self.docker.cmd(["rmi", "-f", &self.tag]).output();
    }
}

/// What a run saw: per client, whether it completed, and its connection event's verdict and
/// `socket_aborted`.
#[derive(Debug, PartialEq, Eq)]
struct Outcomes {
    curl: (bool, String, Value),
    gnutls: (bool, String, Value),
}

/// curl (OpenSSL) and gnutls-cli from the host to `peer`, through `agent`.
fn drive(agent: &mut Agent, ns: &NetNs, www: &Server, plain: &Server) -> Outcomes {
    let local = IpAddr::V4(ns.host_v4);
    let curl = run_with_timeout(
        &mut cmd("curl", ["-sk", "--max-time", "10", &www.url()]),
        b"",
        CLIENT,
    );
    let event = agent.wait_connection("curl", local, www.addr(), EVENT);
    let curl = (
        curl.success() && curl.stdout_str().contains("s_server"),
        event["verdict"].as_str().unwrap_or("").to_owned(),
        event["socket_aborted"].clone(),
    );
    let port = PLAIN_PORT.to_string();
    let peer = plain.addr().ip().to_string();
    let gnutls = run_with_timeout(
        &mut cmd("gnutls-cli", ["--insecure", "--port", &port, &peer]),
        b"hello from gnutls\n",
        CLIENT,
    );
    let event = agent.wait_connection("gnutls-cli", local, plain.addr(), EVENT);
    let gnutls = (
        gnutls.success(),
        event["verdict"].as_str().unwrap_or("").to_owned(),
        event["socket_aborted"].clone(),
    );
    Outcomes { curl, gnutls }
}

/// The image's `CMD` for this test: its pin directory, a free loopback metrics port, the veth.
fn container_args(image_cmd: &[String], pin: &Path, metrics_port: u16, iface: &str) -> Vec<String> {
    let mut args = image_cmd.to_vec();
    let mut set = |flag: &str, value: String| {
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("the image's CMD has no {flag}: {image_cmd:?}"));
        args[at + 1] = value;
    };
    set("--pin", pin.display().to_string());
    let metrics = image_cmd
        .iter()
        .position(|a| a == "--metrics")
        .map(|at| image_cmd[at + 1].clone())
        .expect("--metrics");
    assert!(
        metrics.starts_with("127.0.0.1:"),
        "the image serves metrics on {metrics}, not on loopback"
    );
    set("--metrics", format!("127.0.0.1:{metrics_port}"));
    args.extend(["--iface".to_owned(), iface.to_owned()]);
    args.extend(hook_args());
    args
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `--privileged`, or where this process's capability bounding set lacks some capability (this
/// machine's has no `CAP_SYS_RESOURCE`, and runc then refuses `--privileged`: "unable to apply
/// caps"), all capabilities but those it lacks, unconfined (seccomp, AppArmor, `/proc` and `/sys`
/// unmasked).
fn privileged() -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapBnd");
    // CAP_SYS_RESOURCE (24): the one capability a root container normally has and this one may not.
    if bounding & (1 << 24) != 0 {
        return vec!["--privileged".into()];
    }
    eprintln!(
        "no CAP_SYS_RESOURCE in the bounding set: --privileged stands for --cap-add ALL without it"
    );
    [
        "--cap-add=ALL",
        "--cap-drop=SYS_RESOURCE",
        "--security-opt=seccomp=unconfined",
        "--security-opt=apparmor=unconfined",
        "--security-opt=systempaths=unconfined",
    ]
    .map(String::from)
    .to_vec()
}

/// The image's agent: `docker run --privileged`, host network and PID namespaces, the mounts
/// of deploy/kubernetes/daemonset.yaml; `policy`: a file mounted over the image's own.
fn run_image<'d>(
    image: &Image<'d>,
    ns: &NetNs,
    pin: &PinGuard,
    policy: Option<&Path>,
    metrics_port: u16,
) -> (Agent, Removed<'d>) {
    // A name of its own per run: the previous run's container (`--rm`) may still be being
    // removed, and `docker run` refuses a name in use.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("enforcer-test-agent-{}-{run}", std::process::id());
    let _ = image.docker.cmd(["rm", "-f", &name]).output();
    let mut c = image.docker.cmd(["run", "--rm", "-i", "--name", &name]);
    c.args(privileged())
        .args(["--network", "host", "--pid", "host"]);
    for (host, inside) in [
        ("/sys/fs/bpf", "/sys/fs/bpf"),
        ("/sys/kernel/tracing", "/sys/kernel/tracing"),
        ("/sys/kernel/btf", "/sys/kernel/btf:ro"),
    ] {
        c.args(["-v", &format!("{host}:{inside}")]);
    }
    if let Some(policy) = policy {
        c.args([
            "-v",
            &format!("{}:/etc/enforcer/policy.yaml:ro", policy.display()),
        ]);
    }
    c.arg(&image.tag);
    c.args(container_args(
        &image.cmd(),
        &pin.dir,
        metrics_port,
        &ns.host_if,
    ));
    // Taken before the agent starts: a failed start still removes what it left.
    let removed = Removed {
        docker: image.docker,
        name,
    };
    let mut agent = Agent::spawn(c);
    agent.wait_ready(READY);
    (agent, removed)
}

/// Removes the agent's container on drop, in case the `docker run` client died without
/// stopping it (a privileged agent must not outlive the test).
struct Removed<'d> {
    docker: &'d Docker,
    name: String,
}

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        let _ = self.docker.cmd(["rm", "-f", &self.name]).output();
    }
}

/// The host binary with the same arguments as the image's agent (its control socket in the
/// directory returned with it).
fn run_host(
    image: &Image,
    ns: &NetNs,
    pin: &PinGuard,
    policy: &Path,
    port: u16,
) -> (Agent, tempfile::TempDir) {
    let mut args = container_args(&image.cmd(), &pin.dir, port, &ns.host_if);
    let at = args.iter().position(|a| a == "--policy").expect("--policy");
    args[at + 1] = policy.display().to_string();
    let sockdir = tempfile::tempdir().expect("control socket dir");
    let at = args
        .iter()
        .position(|a| a == "--control-socket")
        .expect("--control-socket");
    args[at + 1] = sockdir.path().join("agent.sock").display().to_string();
    let mut agent = Agent::spawn(cmd(enforcer_bin().to_str().expect("utf-8"), &args));
    agent.wait_ready(READY);
    (agent, sockdir)
}

#[test]
fn the_image_runs_privileged_on_a_veth_with_the_host_binarys_outcomes() {
    require_root();
    let docker = Docker::start();
    let image = Image::build(&docker);
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let www = Server::www(&ns, peer, WWW_PORT, &cert);
    let plain = Server::plain(&ns, peer, PLAIN_PORT, &cert);
    let dir = tempfile::tempdir().expect("policy dir");
    let enforce = dir.path().join("enforce.yaml");
    std::fs::write(&enforce, OPENSSL_ONLY_ENFORCE).expect("write policy");
    // The image's default policy (audit), for the host binary from the repository.
    let audit: PathBuf = workspace().join("policies/default.yaml");

    for (mode, policy) in [("audit", None), ("enforce", Some(enforce.as_path()))] {
        let port = free_port();
        let pin = PinGuard::new(&[&ns.host_if]);
        let (mut agent, removed) = run_image(&image, &ns, &pin, policy, port);
        // Metrics on the node's loopback, and only there.
        let metrics = format!("http://127.0.0.1:{port}/metrics");
        let out = run_with_timeout(&mut cmd("curl", ["-sf", &metrics]), b"", CLIENT);
        assert!(out.success(), "{mode}: metrics on {metrics}: {out:?}");
        let elsewhere = format!("http://{}:{port}/metrics", ns.host_v4);
        let out = run_with_timeout(&mut cmd("curl", ["-sf", &elsewhere]), b"", CLIENT);
        assert!(!out.success(), "{mode}: metrics answer on {elsewhere}");
        let from_image = drive(&mut agent, &ns, &www, &plain);
        drop(agent);
        drop(removed);
        drop(pin);

        let pin = PinGuard::new(&[&ns.host_if]);
        let policy = policy.unwrap_or(&audit);
        let (mut agent, _sockdir) = run_host(&image, &ns, &pin, policy, free_port());
        let from_host = drive(&mut agent, &ns, &www, &plain);
        drop(agent);
        drop(pin);

        eprintln!("{mode}: image {from_image:?}, host {from_host:?}");
        assert_eq!(
            from_image, from_host,
            "{mode}: the image and the host binary differ"
        );
        let expected = match mode {
            "enforce" => Outcomes {
                curl: (true, "allowed".into(), Value::Null),
                gnutls: (false, "blocked".into(), Value::Bool(true)),
            },
            _ => Outcomes {
                curl: (true, "allowed".into(), Value::Null),
                gnutls: (true, "would-block".into(), Value::Null),
            },
        };
        assert_eq!(from_image, expected, "{mode}");
    }
}
