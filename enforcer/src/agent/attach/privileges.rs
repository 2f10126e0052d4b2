//! The capabilities `enforcer attach` needs, checked before anything touches the kernel: a
//! user without them gets one message naming each missing one and what it is for, instead of
//! the first kernel call's `Operation not permitted`.
//!
//! Each is needed by code the agent runs on every start (or on the first new library):
//! - `CAP_BPF`: creating the maps and loading the programs (`datapath::loader`).
//! - `CAP_PERFMON`: tracing programs (uprobes, kprobes, tracepoints) that read kernel and user
//!   memory, and attaching them through perf events (`datapath::uprobes`, `datapath::hooks`).
//! - `CAP_NET_ADMIN`: XDP and tc on the interfaces (`attach::interfaces`) and sock_diag
//!   `SOCK_DESTROY`, which aborts denied sockets (`datapath::sock_destroy`).
//! - `CAP_SYS_ADMIN`: opening maps and links by id (`BPF_MAP_GET_FD_BY_ID`: the maps of
//!   `uprobe_multi` copies, pinned state) and `/proc/PID/map_files`, which names the file a
//!   process mapped (also when deleted or in another mount namespace).
//! - `CAP_SYS_PTRACE`: every process's `/proc/PID/maps`, `root` and `fd`: which library files
//!   it maps (discovery, the watcher) and which process owns an unattributed ClientHello's
//!   socket.
//! - `CAP_KILL`: pausing (`SIGSTOP`) a process of another user that maps a new TLS library until
//!   its probes are attached, and resuming it (`SIGCONT`).
//!
//! `CAP_SYS_ADMIN` stands in for `CAP_BPF` and `CAP_PERFMON`, as it does in the kernel
//! (`bpf_capable()`, `perfmon_capable()`): container runtimes older than those two capabilities
//! (Docker 20.10, Debian bookworm's `docker.io`) give a privileged container `CAP_SYS_ADMIN` and
//! no `CAP_BPF` (tests/tests/deploy_image.rs runs the image there).

use std::fmt;

/// A capability `attach` needs: its number (`linux/capability.h`), name and what for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub bit: u32,
    pub name: &'static str,
    pub purpose: &'static str,
}

/// Every capability `attach` needs, in the order the message lists them.
pub const NEEDED: [Capability; 6] = [
    Capability {
        bit: 39,
        name: "CAP_BPF",
        purpose: "create the eBPF maps and load the programs",
    },
    Capability {
        bit: 38,
        name: "CAP_PERFMON",
        purpose: "attach the uprobes, kprobes and tracepoints",
    },
    Capability {
        bit: 12,
        name: "CAP_NET_ADMIN",
        purpose: "attach XDP and tc to the interfaces, abort denied sockets",
    },
    Capability {
        bit: 21,
        name: "CAP_SYS_ADMIN",
        purpose: "read /proc/PID/map_files; open eBPF maps and links by id (pinning)",
    },
    Capability {
        bit: 19,
        name: "CAP_SYS_PTRACE",
        purpose: "read every process's /proc/PID/maps, root and fd",
    },
    Capability {
        bit: 5,
        name: "CAP_KILL",
        purpose: "pause a process that loads a new TLS library until it is probed",
    },
];

/// The capabilities `attach` needs and the process lacks.
#[derive(Debug, PartialEq, Eq)]
pub struct MissingCapabilities(pub Vec<Capability>);

impl fmt::Display for MissingCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|c| c.name).collect();
        write!(
            f,
            "enforcer attach needs capabilities this process lacks: {} (run it as root, or \
             grant them, e.g. AmbientCapabilities= in its systemd unit):",
            names.join(", ")
        )?;
        for cap in &self.0 {
            write!(f, "\n  {:<15} {}", cap.name, cap.purpose)?;
        }
        Ok(())
    }
}

impl std::error::Error for MissingCapabilities {}

/// Fails with every missing capability unless the effective set has all of [`NEEDED`].
pub fn require() -> Result<(), MissingCapabilities> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // Unreadable or unparsable: let the kernel calls say what is wrong.
    match effective(&status) {
        Some(set) => missing(set),
        None => Ok(()),
    }
}

/// The `CapEff:` mask of a `/proc/PID/status` text.
fn effective(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// `CAP_SYS_ADMIN`, and the capabilities it also grants (`CAP_PERFMON`, `CAP_BPF`).
const SYS_ADMIN: u32 = 21;
const IMPLIED_BY_SYS_ADMIN: [u32; 2] = [38, 39];

fn missing(effective: u64) -> Result<(), MissingCapabilities> {
    let has = |bit: u32| effective & (1 << bit) != 0;
    let lacking: Vec<Capability> = NEEDED
        .iter()
        .filter(|c| !(has(c.bit) || IMPLIED_BY_SYS_ADMIN.contains(&c.bit) && has(SYS_ADMIN)))
        .copied()
        .collect();
    match lacking.is_empty() {
        true => Ok(()),
        false => Err(MissingCapabilities(lacking)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective("Name: x\n"), None);
    }

    #[test]
    fn root_lacks_nothing_and_nobody_lacks_all() {
        assert_eq!(missing(0x1ff_ffff_ffff), Ok(()));
        let err = missing(0).unwrap_err();
        assert_eq!(err.0, NEEDED);
        let text = err.to_string();
        for cap in NEEDED {
            assert!(
                text.contains(cap.name) && text.contains(cap.purpose),
                "{text}"
            );
        }
    }

    #[test]
    fn names_only_what_is_missing() {
        let all = NEEDED.iter().fold(0u64, |m, c| m | 1 << c.bit);
        let err = missing(all & !(1 << 5) & !(1 << 39)).unwrap_err();
        let names: Vec<&str> = err.0.iter().map(|c| c.name).collect();
        assert_eq!(names, ["CAP_KILL"], "CAP_SYS_ADMIN stands in for CAP_BPF");
        let err = missing(all & !(1 << 39) & !(1 << 38) & !(1 << 21)).unwrap_err();
        let names: Vec<&str> = err.0.iter().map(|c| c.name).collect();
        assert_eq!(names, ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"]);
    }
}
