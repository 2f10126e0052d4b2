//! deploy/: each file parsed and validated; the unit verified by `systemd-analyze verify`. The
//! image is built and run by tests/tests/deploy_image.rs.

use std::path::PathBuf;

use enforcer_tests::{cmd, enforcer_bin, workspace};
use serde::Deserialize as _;
use serde_yaml::Value;

fn deploy(path: &str) -> PathBuf {
    workspace().join("deploy").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// `systemd-analyze verify` on the unit, with its `ExecStart` pointed at the binary built here
/// (verify checks that the executable exists). Any diagnostic fails the test.
#[test]
fn systemd_unit_verifies() {
    let unit = read("enforcer.service");
    for needle in [
        "ExecStart=/usr/local/bin/enforcer attach",
        "--pin /sys/fs/bpf/enforcer",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(needle), "enforcer.service lacks {needle:?}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("enforcer.service");
    let bin = enforcer_bin();
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/enforcer", &bin.display().to_string()),
    )
    .expect("write the unit copy");
    let out = cmd("systemd-analyze", ["verify"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian package systemd; `cargo xtask setup` installs it)");
    let diagnostics = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && diagnostics.trim().is_empty(),
        "systemd-analyze verify: {}\n{diagnostics}",
        out.status
    );
    // The command line the unit runs must parse.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/enforcer "))
        .expect("ExecStart line");
    check_agent_args(&exec.split_whitespace().collect::<Vec<_>>());
}

/// The agent's command line parser accepts `args`: a usage error exits 2, before anything else.
/// Run with an interface that does not exist, so that the agent stops (exit 1: no such policy
/// file, or no such interface) before it touches the kernel.
fn check_agent_args(args: &[&str]) {
    let mut c = cmd(enforcer_bin().to_str().expect("utf-8 path"), args);
    c.args(["--iface", "enforcer-no-such-if0"]);
    let out = c.output().expect("run enforcer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the agent rejected {args:?}: {stderr}"
    );
    assert!(
        !stderr.contains("Usage:"),
        "usage error for {args:?}: {stderr}"
    );
}

/// `enforcer policy check FILE` accepts the file (`what` names it in the failure).
fn assert_policy_valid(file: &std::path::Path, what: &str) {
    let out = cmd(enforcer_bin().to_str().expect("utf-8"), ["policy", "check"])
        .arg(file)
        .output()
        .expect("run enforcer policy check");
    assert!(
        out.status.success(),
        "{what} {} is invalid: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Containerfile's instructions as (instruction, rest of the line); continuation lines
/// (`&& ...`) are left out.
fn containerfile() -> Vec<(String, String)> {
    read("Containerfile")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .map(|l| {
            let (op, rest) = l.split_once(' ').unwrap_or((l, ""));
            (op.to_string(), rest.to_string())
        })
        .collect()
}

/// The `CMD` of the Containerfile (exec form).
fn container_cmd(instructions: &[(String, String)]) -> Vec<String> {
    let cmd_line = instructions.iter().find(|(o, _)| o == "CMD").expect("CMD");
    serde_json::from_str(&cmd_line.1).expect("CMD in exec (JSON) form")
}

#[test]
fn containerfile_has_a_build_and_a_runtime_stage() {
    let instructions = containerfile();
    let known = [
        "FROM",
        "RUN",
        "WORKDIR",
        "COPY",
        "ENTRYPOINT",
        "CMD",
        "ENV",
        "ARG",
        "LABEL",
    ];
    for (op, _) in &instructions {
        assert!(known.contains(&op.as_str()), "unknown instruction {op}");
    }
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|(o, _)| o == "FROM")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(froms.len(), 2, "a build and a runtime stage: {froms:?}");
    assert!(
        froms[0].ends_with("AS build"),
        "first stage is named build: {}",
        froms[0]
    );
    assert!(
        instructions
            .iter()
            .any(|(o, r)| o == "RUN" && r.contains("cargo build --release -p enforcer")),
        "the build stage builds the agent"
    );
    assert!(
        instructions.iter().any(|(o, r)| o == "COPY"
            && r.starts_with("--from=build")
            && r.ends_with("/usr/local/bin/enforcer")),
        "the runtime stage copies the binary from the build stage"
    );
    let entry = instructions
        .iter()
        .find(|(o, _)| o == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    let entry: Vec<String> =
        serde_json::from_str(&entry.1).expect("ENTRYPOINT in exec (JSON) form");
    assert_eq!(entry, ["/usr/local/bin/enforcer"]);
    let args = container_cmd(&instructions);
    check_agent_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The image's default command runs with the policy file it names: a `COPY` of the runtime stage
/// (from the repository, not from the build stage) puts a file there, and that file is a valid
/// policy. (Kubernetes mounts its ConfigMap over `/etc/enforcer`; a plain `podman run` does not.)
#[test]
fn containerfile_default_command_names_a_policy_the_image_holds() {
    let instructions = containerfile();
    let args = container_cmd(&instructions);
    let policy = args
        .windows(2)
        .find(|w| w[0] == "--policy")
        .map(|w| w[1].clone())
        .expect("CMD names --policy");
    let runtime = instructions
        .iter()
        .rposition(|(o, _)| o == "FROM")
        .expect("a runtime stage");
    let source = instructions[runtime..]
        .iter()
        .filter(|(o, r)| o == "COPY" && !r.starts_with("--from"))
        .find_map(|(_, r)| {
            let (src, dst) = r.split_once(' ').expect("COPY SRC DST");
            let in_repo = workspace().join(src.trim_end_matches('/'));
            match dst.strip_suffix('/') {
                // A directory: the file is SRC/<rest of the path>.
                Some(dir) => policy
                    .strip_prefix(&format!("{dir}/"))
                    .map(|rest| in_repo.join(rest)),
                None => (dst == policy).then_some(in_repo),
            }
        })
        .unwrap_or_else(|| panic!("no COPY of the runtime stage puts a file at {policy}"));
    assert!(
        source.is_file(),
        "{policy} would come from {}, which is not a file of the repository",
        source.display()
    );
    assert_policy_valid(&source, "the image's policy");
}

#[test]
fn daemonset_is_privileged_on_the_host_with_bpffs() {
    let text = read("kubernetes/daemonset.yaml");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("valid YAML document"))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "DaemonSet"]);
    let ds = &docs[2];
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"], ds["spec"]["template"]["metadata"]["labels"],
        "the selector must match the pod labels"
    );
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true), "hostNetwork");
    assert_eq!(spec["hostPID"].as_bool(), Some(true), "hostPID");
    let container = &spec["containers"][0];
    assert_eq!(
        container["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    let mounts: Vec<(&str, &str)> = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or(""),
                m["mountPath"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let volumes = spec["volumes"].as_sequence().expect("volumes");
    for (name, path) in &mounts {
        let volume = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("mount {name} has no volume"));
        if let Some(host) = volume["hostPath"]["path"].as_str() {
            assert_eq!(
                host, *path,
                "hostPath {name} is mounted where the host has it"
            );
        }
    }
    for needed in [
        "/sys/fs/bpf",
        "/sys/kernel/tracing",
        "/sys/kernel/btf",
        "/etc/enforcer",
    ] {
        assert!(
            mounts.iter().any(|(_, p)| *p == needed),
            "no mount at {needed}: {mounts:?}"
        );
    }
    let bpffs = container["volumeMounts"]
        .as_sequence()
        .and_then(|m| {
            m.iter()
                .find(|m| m["mountPath"].as_str() == Some("/sys/fs/bpf"))
        })
        .expect("bpffs mount");
    assert_eq!(
        bpffs["mountPropagation"].as_str(),
        Some("Bidirectional"),
        "pins must reach the host's bpffs to outlive the pod"
    );
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // Named interfaces (never the default route's by guess) and metrics on the node's loopback.
    let values = |flag: &str| -> Vec<&str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1])
            .collect()
    };
    let ifaces = values("--iface");
    assert!(
        !ifaces.is_empty() && ifaces.iter().all(|i| !i.is_empty() && !i.starts_with('-')),
        "the DaemonSet names its interfaces: {args:?}"
    );
    let metrics = values("--metrics");
    assert!(
        metrics.len() == 1 && metrics[0].starts_with("127.0.0.1:"),
        "metrics bound to the node's loopback: {metrics:?}"
    );
    // Checked without its interfaces: they are the nodes', not this machine's.
    let without_ifaces: Vec<&str> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| **a != "--iface" && (*i == 0 || args[i - 1] != "--iface"))
        .map(|(_, a)| *a)
        .collect();
    check_agent_args(&without_ifaces);
    let policy = args
        .windows(2)
        .find(|w| w[0] == "--policy")
        .map(|w| w[1])
        .expect("--policy");
    let key = policy
        .strip_prefix("/etc/enforcer/")
        .expect("policy under /etc/enforcer");
    let embedded = docs[1]["data"][key]
        .as_str()
        .expect("ConfigMap holds the policy file");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(key);
    std::fs::write(&file, embedded).expect("write policy");
    assert_policy_valid(&file, "the ConfigMap's policy");
}
