//! `NetNs`: a network namespace joined to the root namespace by a veth pair.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
};

use crate::{cmd, next_id, sh};

/// `ip netns add` + a veth pair: `host_if` in the root namespace, `peer_if` inside the
/// namespace. IPv4 /30 from 10.200.0.0/16 and IPv6 fd00:200:<n>::1,2/64 (`nodad`), all up.
/// Drop deletes the veth and the namespace.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub peer_if: String,
    pub host_v4: Ipv4Addr,
    pub peer_v4: Ipv4Addr,
    pub host_v6: Ipv6Addr,
    pub peer_v6: Ipv6Addr,
}

impl NetNs {
    pub fn new() -> NetNs {
        crate::require_root();
        remove_dead_runs_namespaces();
        let (pid, n) = (std::process::id(), next_id());
        let slot = free_slot(pid.wrapping_mul(37).wrapping_add(n.wrapping_mul(101)));
        let base = 10 << 24 | 200 << 16 | slot << 2;
        let ns = NetNs {
            name: format!("enforcer-{pid}-{n}"),
            host_if: format!("eh{pid}-{n}"),
            peer_if: format!("ep{pid}-{n}"),
            host_v4: Ipv4Addr::from(base + 1),
            peer_v4: Ipv4Addr::from(base + 2),
            host_v6: Ipv6Addr::new(0xfd00, 0x200, slot as u16, 0, 0, 0, 0, 1),
            peer_v6: Ipv6Addr::new(0xfd00, 0x200, slot as u16, 0, 0, 0, 0, 2),
        };
        assert!(
            ns.host_if.len() <= 15,
            "interface name {} too long",
            ns.host_if
        );
        // From here on `ns` exists, so a failing step still tears down what was made.
        let (name, host, peer) = (&ns.name, &ns.host_if, &ns.peer_if);
        sh(&mut cmd("ip", ["netns", "add", name]));
        sh(cmd(
            "ip",
            ["link", "add", host, "type", "veth", "peer", "name", peer],
        )
        .args(["netns", name]));
        let (h4, p4) = (format!("{}/30", ns.host_v4), format!("{}/30", ns.peer_v4));
        let (h6, p6) = (format!("{}/64", ns.host_v6), format!("{}/64", ns.peer_v6));
        sh(&mut cmd("ip", ["addr", "add", &h4, "dev", host]));
        sh(&mut cmd(
            "ip",
            ["-6", "addr", "add", &h6, "dev", host, "nodad"],
        ));
        sh(&mut cmd("ip", ["link", "set", host, "up"]));
        sh(&mut cmd(
            "ip",
            ["-n", name, "addr", "add", &p4, "dev", peer],
        ));
        sh(&mut cmd(
            "ip",
            ["-n", name, "-6", "addr", "add", &p6, "dev", peer, "nodad"],
        ));
        sh(&mut cmd("ip", ["-n", name, "link", "set", peer, "up"]));
        sh(&mut cmd("ip", ["-n", name, "link", "set", "lo", "up"]));
        ns
    }

    /// `ip netns exec <name> <program> <args>`: a command to run inside the namespace.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = cmd("ip", ["netns", "exec", &self.name, program]);
        c.args(args);
        c
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the host end removes the pair at once; `ip netns del` alone would leave the
        // veth until the namespace's last process exits.
        let quiet = |c: &mut Command| c.output().map(|o| o.status.success()).unwrap_or(false);
        if link_exists(&self.host_if) {
            quiet(&mut cmd("ip", ["link", "del", &self.host_if]));
        }
        if netns_exists(&self.name) && !quiet(&mut cmd("ip", ["netns", "del", &self.name])) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// Namespaces (and their veths, with any filters on them) that a test process killed before its
/// `Drop` ran left behind: `enforcer-<pid>-<n>` whose `<pid>` is not a live process. Once per
/// test process. A pid reused by another process keeps its namespaces: only the dead are swept.
fn remove_dead_runs_namespaces() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let list = sh(&mut cmd("ip", ["netns", "list"]));
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some((pid, n)) = name
                .strip_prefix("enforcer-")
                .and_then(|rest| rest.split_once('-'))
            else {
                continue;
            };
            if pid.parse::<u32>().is_err() || std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                continue;
            }
            let host_if = format!("eh{pid}-{n}");
            if link_exists(&host_if) {
                let _ = cmd("ip", ["link", "del", &host_if]).output();
            }
            let _ = cmd("ip", ["netns", "del", name]).output();
            eprintln!("removed {name}, left by a test process that is gone");
        }
    });
}

/// Whether `ip netns list` shows `name`.
pub fn netns_exists(name: &str) -> bool {
    let out = sh(&mut cmd("ip", ["netns", "list"]));
    out.lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Whether a link called `name` exists in the root namespace.
pub fn link_exists(name: &str) -> bool {
    cmd("ip", ["link", "show", "dev", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A /30 slot of 10.200.0.0/16 (1..16384) whose addresses no root-namespace link has yet.
fn free_slot(seed: u32) -> u32 {
    let used = sh(&mut cmd("ip", ["-o", "addr", "show"]));
    (0..16384)
        .map(|k| seed.wrapping_add(k) % 16383 + 1)
        .find(|&s| {
            let base = 10 << 24 | 200 << 16 | s << 2;
            let v4 = format!(" {}/", Ipv4Addr::from(base + 1));
            let v6 = format!(" fd00:200:{:x}::", s);
            !used.contains(&v4) && !used.contains(&v6)
        })
        .expect("no free /30 left in 10.200.0.0/16")
}
