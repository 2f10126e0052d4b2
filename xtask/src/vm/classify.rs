//! Each cell of the matrix from what the boot reported: pass, fail, or unsupported when the
//! kernel itself lacks what a hook form needs.

use super::{
    Outcome, Row, TEST_TIMEOUT_S,
    boot_log::BootLog,
    kernel::{self, Kernel},
    short,
};

/// Why the kernel itself cannot have `form`, from its config and what the VM saw; `None` if it
/// should work (then a form that does not attach is enforcer's failure, not the kernel's).
fn kernel_lacks(form: &str, k: &kernel::Config, b: &BootLog) -> Option<String> {
    let no = |fact: &str| b.fact(fact) == Some(false);
    match form {
        "fentry" => {
            for opt in [
                "CONFIG_BPF_JIT",
                "CONFIG_FUNCTION_TRACER",
                "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
            ] {
                if !k.is_y(opt) {
                    return Some(format!("{opt} is not set: no BPF trampolines"));
                }
            }
            if no("btf") {
                return Some("no /sys/kernel/btf/vmlinux".into());
            }
            ["tcp_sendmsg", "tcp_cleanup_rbuf"]
                .iter()
                .find(|f| no(&format!("ftrace:{f}")))
                .map(|f| format!("{f} is not in available_filter_functions"))
        }
        "kprobe" => {
            if !k.is_y("CONFIG_KPROBES") {
                return Some("CONFIG_KPROBES is not set".into());
            }
            if no("kprobe_pmu") {
                return Some("no kprobe PMU (/sys/bus/event_source/devices/kprobe)".into());
            }
            ["tcp_sendmsg", "tcp_cleanup_rbuf"]
                .iter()
                .find(|f| no(&format!("kallsyms:{f}")))
                .map(|f| format!("{f} is not in /proc/kallsyms"))
        }
        "tracepoint" => {
            let has = |t: &str| b.fact(&format!("tracepoint:{t}"));
            let send = [has("tcp_sendmsg_locked"), has("sock_send_length")];
            let recv = [has("sock_recv_length"), has("tcp_rcv_space_adjust")];
            if send.iter().all(|x| *x == Some(false)) {
                Some(
                    "neither tcp:tcp_sendmsg_locked nor sock:sock_send_length exists (send side)"
                        .into(),
                )
            } else if recv.iter().all(|x| *x == Some(false)) {
                Some("neither sock:sock_recv_length nor tcp:tcp_rcv_space_adjust exists (receive side)".into())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The oldest release the agent starts on (`enforcer/src/datapath/features.rs`: the 5.15
/// helpers). A refusal on an older kernel is documented; on this or a newer one it is a bug.
const MIN_KERNEL: (u32, u32) = (5, 15);

/// `5.10.0-46-cloud-amd64` → (5, 10).
fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub fn classify(
    k: &Kernel,
    b: &BootLog,
    error: Option<&str>,
    forms: &[&'static str],
    tests: &[String],
) -> Vec<Row> {
    let mut rows = vec![];
    for &form in forms {
        let check = b.checks.get(form);
        for test in tests {
            let outcome = if let Some(e) = error {
                Outcome::Fail(format!("VM run failed: {e}"))
            } else if let Some(m) = b.module_errors.first() {
                Outcome::Fail(format!("insmod {} failed: {}", m.0, m.1))
            } else if let Some(why) = &b.refused {
                match release_version(&k.release) {
                    _ if b.fact("attach_refuses") != Some(true) => Outcome::Fail(format!(
                        "check-kernel refuses the kernel but `enforcer attach` did not exit \
                         with the refusal (see the log): {}",
                        short(why, 300)
                    )),
                    Some(v) if v < MIN_KERNEL => Outcome::Unsupported(format!(
                        "refused (documented, needs Linux {}.{}+): {}",
                        MIN_KERNEL.0,
                        MIN_KERNEL.1,
                        short(why, 300)
                    )),
                    _ => Outcome::Fail(format!(
                        "check-kernel refuses a kernel of {}.{} or newer: {}",
                        MIN_KERNEL.0,
                        MIN_KERNEL.1,
                        short(why, 400)
                    )),
                }
            } else {
                match check {
                    None => Outcome::Fail(format!(
                        "no check-kernel result: {}",
                        b.stopped.as_deref().unwrap_or("see the log")
                    )),
                    Some(line) if line.starts_with("attaches") => {
                        match b.tests.get(&(form.to_string(), test.clone())) {
                            Some((0, secs)) => Outcome::Pass(*secs),
                            Some((137, secs)) => Outcome::Fail(format!(
                                "killed after {secs} s (per-test limit {TEST_TIMEOUT_S} s)"
                            )),
                            Some((rc, secs)) => {
                                Outcome::Fail(format!("test failed (exit {rc}) after {secs} s"))
                            }
                            None if b.running.as_ref()
                                == Some(&(form.to_string(), test.clone())) =>
                            {
                                Outcome::Fail(format!(
                                    "did not finish: {}",
                                    b.stopped.as_deref().unwrap_or("VM stopped")
                                ))
                            }
                            None => Outcome::Fail(format!(
                                "not run: {}",
                                b.stopped.as_deref().unwrap_or("VM stopped first")
                            )),
                        }
                    }
                    Some(line) => match kernel_lacks(form, &k.config, b) {
                        Some(why) => Outcome::Unsupported(format!(
                            "{why}; check-kernel: {}",
                            short(line, 160)
                        )),
                        None => Outcome::Fail(format!(
                            "the kernel has what {form} needs, but check-kernel says: {}",
                            short(line, 400)
                        )),
                    },
                }
            };
            rows.push(Row {
                kernel: k.series.to_string(),
                form,
                test: test.clone(),
                outcome,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::vm::boot_log::TEST_LOG;

    fn kernel(config: &str) -> Kernel {
        Kernel {
            series: "6.x",
            arch: crate::cross::Arch::X86_64,
            package: "linux-image-test".into(),
            release: "6.x".into(),
            vmlinuz: PathBuf::new(),
            config: kernel::Config::parse(config),
            modules_dir: PathBuf::new(),
            origin: "test".into(),
        }
    }

    #[test]
    fn classifies_cells() {
        let mut b = BootLog::parse(TEST_LOG);
        b.module_errors.clear();
        b.stopped = Some("VM killed".into());
        let k = kernel("CONFIG_KPROBES=y\nCONFIG_BPF_JIT=y\n");
        let tests: Vec<String> = ["t1", "t2", "t3", "t4"].map(String::from).to_vec();
        let rows = classify(&k, &b, None, &["fentry", "kprobe", "tracepoint"], &tests);
        let get = |form: &str, t: &str| {
            rows.iter()
                .find(|r| r.form == form && r.test == t)
                .unwrap()
                .outcome
                .clone()
        };
        assert_eq!(get("fentry", "t1"), Outcome::Pass(13.9));
        assert!(matches!(get("fentry", "t2"), Outcome::Fail(w) if w.contains("exit 101")));
        assert!(matches!(get("fentry", "t3"), Outcome::Fail(w) if w.contains("did not finish")));
        assert!(matches!(get("fentry", "t4"), Outcome::Fail(w) if w.contains("not run")));
        // kprobe: no check line at all (the VM died before).
        assert!(matches!(get("kprobe", "t1"), Outcome::Fail(w) if w.contains("no check-kernel")));
        // tracepoint: does not load, and the kernel has no send tracepoint: unsupported.
        assert!(
            matches!(get("tracepoint", "t1"), Outcome::Unsupported(w) if w.contains("sock_send_length"))
        );

        // The same refusal on a kernel that has the tracepoint is enforcer's failure.
        b.facts.insert("tracepoint:sock_send_length".into(), true);
        let rows = classify(&k, &b, None, &["tracepoint"], &tests);
        assert!(matches!(&rows[0].outcome, Outcome::Fail(w) if w.contains("check-kernel says")));

        // A module that did not load fails every cell.
        let b = BootLog::parse(TEST_LOG);
        let rows = classify(&k, &b, None, &["fentry"], &tests);
        assert!(
            rows.iter()
                .all(|r| matches!(&r.outcome, Outcome::Fail(w) if w.contains("cls_bpf")))
        );
    }

    #[test]
    fn a_refusal_is_documented_below_5_15_and_a_failure_above() {
        let mut b = BootLog::parse(
            "@@vm refused kernel 5.10.0-46 lacks bpf_task_pt_regs\n@@vm fact attach_refuses yes\n",
        );
        assert!(
            b.refused
                .as_deref()
                .is_some_and(|r| r.contains("bpf_task_pt_regs"))
        );
        let mut k = kernel("");
        k.release = "5.10.0-46-cloud-amd64".into();
        let tests = vec!["t1".to_string()];
        let rows = classify(&k, &b, None, &["fentry"], &tests);
        assert!(
            matches!(&rows[0].outcome, Outcome::Unsupported(w) if w.starts_with("refused (documented, needs Linux 5.15+)"))
        );
        k.release = "6.1.0-56-cloud-amd64".into();
        let rows = classify(&k, &b, None, &["fentry"], &tests);
        assert!(matches!(&rows[0].outcome, Outcome::Fail(w) if w.contains("refuses a kernel")));
        // An agent that does not refuse at start as check-kernel says fails the cell.
        b.facts.insert("attach_refuses".into(), false);
        k.release = "5.10.0-46-cloud-amd64".into();
        let rows = classify(&k, &b, None, &["fentry"], &tests);
        assert!(matches!(&rows[0].outcome, Outcome::Fail(w) if w.contains("did not exit")));
        b.refused = None;
        assert_eq!(release_version("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
    }

    #[test]
    fn kernel_support_from_config_and_facts() {
        let b = BootLog::default();
        let none = kernel("");
        assert!(
            kernel_lacks("kprobe", &none.config, &b)
                .unwrap()
                .contains("CONFIG_KPROBES")
        );
        assert!(
            kernel_lacks("fentry", &none.config, &b)
                .unwrap()
                .contains("CONFIG_BPF_JIT")
        );
        assert_eq!(kernel_lacks("tracepoint", &none.config, &b), None);
        let full = kernel(
            "CONFIG_KPROBES=y\nCONFIG_BPF_JIT=y\nCONFIG_FUNCTION_TRACER=y\n\
             CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS=y\n",
        );
        assert_eq!(kernel_lacks("kprobe", &full.config, &b), None);
        assert_eq!(kernel_lacks("fentry", &full.config, &b), None);
    }
}
