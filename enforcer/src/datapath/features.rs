//! The kernel features the datapath uses, the first Linux release that has each, and what
//! enforcer does without it: fall back (named), or refuse to start with a message naming the
//! kernel needed. `enforcer check-kernel` prints the list for the running kernel; the agent calls
//! [`require`] before loading anything. docs/kernel-support.md has the same table.
//!
//! Presence is read from the kernel's BTF (`/sys/kernel/btf/vmlinux`), which is exact for what
//! the kernel was built with: the enumerators of `bpf_func_id` (helpers), `bpf_attach_type` and
//! `bpf_map_type`, and the `btf_trace_<name>` typedefs of its raw tracepoints. Whether a hook
//! form really loads and attaches is then tried by `check-kernel` itself.

use crate::datapath::btf::{self, BtfError, KernelNames};

/// How the presence of a feature is read.
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    /// An enumerator in the kernel's BTF (`BPF_FUNC_...`, `BPF_TRACE_...`, `BPF_MAP_TYPE_...`).
    Enumerator(&'static str),
    /// A raw tracepoint (`btf_trace_<name>` in the kernel's BTF).
    RawTracepoint(&'static str),
    /// A file (a PMU under `/sys/bus/event_source/devices`).
    Path(&'static str),
}

/// What enforcer does on a kernel without the feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Without {
    /// The agent refuses to start: nothing it could attach would enforce the policy.
    Refuse,
    /// The agent starts and uses this instead.
    Fallback(&'static str),
}

#[derive(Debug)]
pub struct Feature {
    pub name: &'static str,
    /// The first mainline release that has it.
    pub since: &'static str,
    pub used_for: &'static str,
    pub probe: Probe,
    pub without: Without,
}

/// Every kernel feature the datapath depends on. BTF itself (5.4, `CONFIG_DEBUG_INFO_BTF`) is
/// the precondition of reading this list: without it the agent refuses (`BtfError::NoBtf`).
pub const FEATURES: &[Feature] = &[
    Feature {
        name: "bpf_probe_read_kernel",
        since: "5.5",
        used_for: "reading socket fields and user registers in every kernel hook",
        probe: Probe::Enumerator("BPF_FUNC_probe_read_kernel"),
        without: Without::Refuse,
    },
    Feature {
        name: "bpf_send_signal_thread",
        since: "5.5",
        used_for: "stopping a process that maps an unknown TLS library (watcher, enforce mode)",
        probe: Probe::Enumerator("BPF_FUNC_send_signal_thread"),
        without: Without::Refuse,
    },
    Feature {
        name: "BPF ring buffer",
        since: "5.8",
        used_for: "events from the kernel (verdicts, exec, new libraries)",
        probe: Probe::Enumerator("BPF_MAP_TYPE_RINGBUF"),
        without: Without::Refuse,
    },
    Feature {
        name: "bpf_get_current_task_btf",
        since: "5.11",
        used_for: "the Go goroutine lookup in the kernel TCP hooks (all three forms)",
        probe: Probe::Enumerator("BPF_FUNC_get_current_task_btf"),
        without: Without::Refuse,
    },
    Feature {
        name: "bpf_task_pt_regs",
        since: "5.15",
        used_for: "R14 (Go's goroutine) of the thread in a system call, in the kernel TCP hooks",
        probe: Probe::Enumerator("BPF_FUNC_task_pt_regs"),
        without: Without::Refuse,
    },
    Feature {
        name: "bpf_get_attach_cookie (uprobes)",
        since: "5.15",
        used_for: "library id and call kind in the TLS uprobes (tls_enter/exit, go_enter)",
        probe: Probe::Enumerator("BPF_FUNC_get_attach_cookie"),
        without: Without::Refuse,
    },
    Feature {
        name: "uprobe_multi links",
        since: "6.6",
        used_for: "one link per library file and direction (fast detach)",
        probe: Probe::Enumerator("BPF_TRACE_UPROBE_MULTI"),
        without: Without::Fallback("perf-event uprobes, two per function (slower to detach)"),
    },
    Feature {
        name: "tcx links",
        since: "6.6",
        used_for: "--tc-attach tcx|auto: the classifiers first on their hooks, ahead of other tcx programs",
        probe: Probe::Enumerator("BPF_TCX_EGRESS"),
        without: Without::Fallback("classic tc filters over rtnetlink (--tc-attach netlink)"),
    },
    Feature {
        name: "uprobe PMU",
        since: "4.17",
        used_for: "every TLS uprobe (CONFIG_UPROBE_EVENTS)",
        probe: Probe::Path("/sys/bus/event_source/devices/uprobe"),
        without: Without::Refuse,
    },
    Feature {
        name: "fentry (BPF trampolines)",
        since: "5.5",
        used_for: "TCP hook form fentry",
        probe: Probe::Enumerator("BPF_TRACE_FENTRY"),
        without: Without::Fallback("TCP hook form kprobe, then tracepoint"),
    },
    Feature {
        name: "kprobe PMU",
        since: "4.17",
        used_for: "TCP hook form kprobe (needs CONFIG_KPROBES)",
        probe: Probe::Path("/sys/bus/event_source/devices/kprobe"),
        without: Without::Fallback("TCP hook form fentry or tracepoint"),
    },
    Feature {
        name: "raw tracepoint tcp_sendmsg_locked",
        since: "6.16",
        used_for: "TCP hook form tracepoint, send side, before the data is queued",
        probe: Probe::RawTracepoint("tcp_sendmsg_locked"),
        without: Without::Fallback("sock_send_length (after the send), or another form"),
    },
    Feature {
        name: "raw tracepoint sock_send_length",
        since: "6.3",
        used_for: "TCP hook form tracepoint, send side where tcp_sendmsg_locked is missing",
        probe: Probe::RawTracepoint("sock_send_length"),
        without: Without::Fallback("TCP hook form fentry or kprobe"),
    },
    Feature {
        name: "raw tracepoint sock_recv_length",
        since: "6.3",
        used_for: "TCP hook form tracepoint, receive side",
        probe: Probe::RawTracepoint("sock_recv_length"),
        without: Without::Fallback("raw tracepoint tcp_rcv_space_adjust, or another form"),
    },
    Feature {
        name: "raw tracepoint inet_sock_set_state",
        since: "4.16",
        used_for: "forgetting closed connections (FLOWS, the blocklist)",
        probe: Probe::RawTracepoint("inet_sock_set_state"),
        without: Without::Refuse,
    },
    Feature {
        name: "raw tracepoint sched_process_exec",
        since: "4.17",
        used_for: "the new-library watcher (exec)",
        probe: Probe::RawTracepoint("sched_process_exec"),
        without: Without::Refuse,
    },
    Feature {
        name: "raw tracepoint sched_process_exit",
        since: "4.17",
        used_for: "forgetting the TLS calls of a thread that exits inside one",
        probe: Probe::RawTracepoint("sched_process_exit"),
        without: Without::Refuse,
    },
    Feature {
        name: "bpf_tail_call",
        since: "4.2",
        used_for: "the packet programs' ServerHello readers (crypto posture), each a program of its own",
        probe: Probe::Enumerator("BPF_FUNC_tail_call"),
        without: Without::Refuse,
    },
];

/// One feature on the running kernel.
#[derive(Debug)]
pub struct Status {
    pub feature: &'static Feature,
    pub present: bool,
}

impl Status {
    /// `<name>: yes|no (Linux <since>+; <used for>)`, and what happens without it.
    pub fn line(&self) -> String {
        let f = self.feature;
        let what = match (self.present, f.without) {
            (true, _) => String::new(),
            (false, Without::Refuse) => " -> enforcer refuses to start".to_string(),
            (false, Without::Fallback(instead)) => format!(" -> fallback: {instead}"),
        };
        let yes = if self.present { "yes" } else { "no" };
        format!(
            "feature {}: {yes} (Linux {}+; {}){what}",
            f.name, f.since, f.used_for
        )
    }
}

/// Every feature of [`FEATURES`] on the running kernel.
pub fn probe() -> Result<Vec<Status>, BtfError> {
    Ok(probe_with(&btf::kernel_names()?, |p| {
        std::path::Path::new(p).exists()
    }))
}

pub fn probe_with(names: &KernelNames, exists: impl Fn(&str) -> bool) -> Vec<Status> {
    FEATURES
        .iter()
        .map(|feature| Status {
            feature,
            present: match feature.probe {
                Probe::Enumerator(e) => names.enumerators.contains(e),
                Probe::RawTracepoint(t) => names.raw_tracepoints.contains(t),
                Probe::Path(p) => exists(p),
            },
        })
        .collect()
}

/// The refusal for `statuses`, if a feature enforcer cannot do without is missing.
pub fn refusal(statuses: &[Status], release: &str) -> Option<String> {
    let missing: Vec<&Feature> = statuses
        .iter()
        .filter(|s| !s.present && s.feature.without == Without::Refuse)
        .map(|s| s.feature)
        .collect();
    if missing.is_empty() {
        return None;
    }
    let needed = missing
        .iter()
        .map(|f| f.since)
        .max_by(|a, b| version(a).cmp(&version(b)))
        .unwrap_or("?");
    let list: Vec<String> = missing
        .iter()
        .map(|f| format!("{} (Linux {}+, for {})", f.name, f.since, f.used_for))
        .collect();
    Some(format!(
        "kernel {release} lacks {}; enforcer needs Linux {needed} or newer \
         (`enforcer check-kernel` lists every feature; docs/kernel-support.md)",
        list.join(", ")
    ))
}

/// Refuses, with [`refusal`]'s message, on a kernel that lacks a feature without fallback.
pub fn require() -> anyhow::Result<()> {
    let statuses = probe()?;
    match refusal(&statuses, &release()) {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}

/// `uname -r`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// "5.15" → (5, 15); anything unparsable sorts first.
fn version(v: &str) -> (u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(enumerators: &[&str], tps: &[&str]) -> KernelNames {
        KernelNames {
            enumerators: enumerators.iter().map(|s| s.to_string()).collect(),
            raw_tracepoints: tps.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Everything a 5.15+ kernel needs to start, without the optional features.
    const NEEDED: &[&str] = &[
        "BPF_FUNC_probe_read_kernel",
        "BPF_FUNC_send_signal_thread",
        "BPF_MAP_TYPE_RINGBUF",
        "BPF_FUNC_get_current_task_btf",
        "BPF_FUNC_task_pt_regs",
        "BPF_FUNC_get_attach_cookie",
        "BPF_FUNC_tail_call",
    ];
    const TPS: &[&str] = &[
        "inet_sock_set_state",
        "sched_process_exec",
        "sched_process_exit",
    ];

    #[test]
    fn starts_with_fallbacks_when_only_optional_features_are_missing() {
        let s = probe_with(&names(NEEDED, TPS), |_| true);
        assert_eq!(refusal(&s, "6.1.0"), None);
        let multi = s.iter().find(|s| s.feature.name == "uprobe_multi links");
        let line = multi.unwrap().line();
        assert!(line.contains(": no (Linux 6.6+") && line.contains("fallback: perf-event"));
    }

    /// docs/kernel-support.md's feature table has a row per feature, with its release and its
    /// refusal or fallback.
    #[test]
    fn the_docs_table_lists_every_feature() {
        let doc = include_str!("../../../docs/kernel-support.md");
        for f in FEATURES {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| {} | ", f.name)))
                .unwrap_or_else(|| panic!("docs/kernel-support.md has no row for {}", f.name));
            assert!(row.contains(&format!("| {} |", f.since)), "{row}");
            let without = match f.without {
                Without::Refuse => "| refuse |",
                Without::Fallback(_) => "| fallback: ",
            };
            assert!(row.contains(without), "{row}");
        }
    }

    #[test]
    fn refuses_a_5_10_kernel_naming_the_kernel_needed() {
        // 5.10 has ring buffers and probe_read_kernel, not the 5.11 and 5.15 helpers.
        let s = probe_with(
            &names(
                &[
                    "BPF_FUNC_probe_read_kernel",
                    "BPF_FUNC_send_signal_thread",
                    "BPF_MAP_TYPE_RINGBUF",
                ],
                TPS,
            ),
            |_| true,
        );
        let why = refusal(&s, "5.10.0-46-cloud-amd64").unwrap();
        assert!(why.starts_with("kernel 5.10.0-46-cloud-amd64 lacks bpf_get_current_task_btf"));
        assert!(why.contains("bpf_get_attach_cookie (uprobes) (Linux 5.15+"));
        assert!(why.contains("enforcer needs Linux 5.15 or newer"), "{why}");
    }
}
