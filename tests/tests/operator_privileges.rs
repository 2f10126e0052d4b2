//! `enforcer attach` without the capabilities it needs: one message that names each missing one
//! and what it is for, a non-zero exit, and nothing attached to the interface.

use std::{fs, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use enforcer_tests::{NetNs, cmd, enforcer_bin, require_root, run_with_timeout, sh};

const CAPABILITIES: [&str; 6] = [
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_NET_ADMIN",
    "CAP_SYS_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_KILL",
];

#[test]
fn unprivileged_attach_names_the_missing_capabilities_and_attaches_nothing() {
    require_root();
    let ns = NetNs::new();
    // A copy `nobody` can run and a directory it may write its control socket into.
    let dir = tempfile::tempdir().expect("a temporary directory");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let bin = dir.path().join("enforcer");
    fs::copy(enforcer_bin(), &bin).expect("copy the enforcer binary");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = dir.path().join("agent.sock");

    let mut attach = cmd(
        "setpriv",
        ["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"],
    );
    attach
        .arg(&bin)
        .args(["attach", "--iface", &ns.host_if, "--control-socket"])
        .arg(&socket);
    let out = run_with_timeout(&mut attach, b"", Duration::from_secs(60));
    let stderr = out.stderr_str();
    assert!(!out.timed_out, "attach did not exit:\n{stderr}");
    assert!(
        !out.status.success(),
        "attach as nobody succeeded:\n{stderr}"
    );

    // One message: one `error:` line, then the capabilities with what each is for.
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error message:\n{stderr}");
    assert!(
        errors[0].contains("needs capabilities"),
        "the message says what is missing:\n{stderr}"
    );
    for cap in CAPABILITIES {
        assert_eq!(
            errors[0].matches(cap).count(),
            1,
            "{cap} named once in the summary:\n{stderr}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.trim_start().starts_with(cap) && l.trim().len() > cap.len() + 5),
            "{cap} has a line saying what it is for:\n{stderr}"
        );
    }
    for noise in ["Operation not permitted", "failed to create map", "hint:"] {
        assert!(!stderr.contains(noise), "no `{noise}`:\n{stderr}");
    }
    assert_nothing_attached(&ns.host_if, &socket);
}

fn assert_nothing_attached(iface: &str, socket: &Path) {
    let link = sh(&mut cmd("ip", ["-d", "link", "show", "dev", iface]));
    assert!(!link.contains("xdp"), "an XDP program on {iface}:\n{link}");
    for dir in ["ingress", "egress"] {
        let filters = sh(&mut cmd("tc", ["filter", "show", "dev", iface, dir]));
        assert!(
            filters.trim().is_empty(),
            "a tc {dir} filter on {iface}:\n{filters}"
        );
    }
    assert!(!socket.exists(), "a control socket was bound");
}
