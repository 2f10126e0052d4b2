//! The `@@vm` protocol `vm/init` prints on the serial console, parsed into what one boot saw.

use std::collections::BTreeMap;

/// The `@@vm` lines of one boot.
#[derive(Default, Debug, Clone)]
pub struct BootLog {
    pub boot_s: Option<f64>,
    pub release: Option<String>,
    pub module_errors: Vec<(String, String)>,
    pub facts: BTreeMap<String, bool>,
    pub checks: BTreeMap<String, String>,
    /// `check-kernel`'s `refused: ...` line: the agent refuses this kernel (a missing feature
    /// without fallback, `enforcer/src/datapath/features.rs`).
    pub refused: Option<String>,
    /// (form, test) → (exit code, seconds).
    pub tests: BTreeMap<(String, String), (i32, f64)>,
    /// The test started last and never reported (the VM died or was killed during it).
    pub running: Option<(String, String)>,
    pub done: Option<f64>,
    /// Why the VM stopped before `done`, if it did.
    pub stopped: Option<String>,
    /// Log lines per (form, test), for failure excerpts.
    pub output: BTreeMap<(String, String), Vec<String>>,
}

impl BootLog {
    pub fn parse(text: &str) -> BootLog {
        let mut b = BootLog::default();
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            let Some(i) = line.find("@@vm ") else {
                if let Some(key) = &current {
                    b.output
                        .entry(key.clone())
                        .or_default()
                        .push(line.to_string());
                }
                continue;
            };
            let msg = &line[i + 5..];
            let (word, rest) = msg.split_once(' ').unwrap_or((msg, ""));
            let w: Vec<&str> = rest.split_whitespace().collect();
            match word {
                "boot" => {
                    b.boot_s = w.first().and_then(|s| s.parse().ok());
                    b.release = w.get(1).map(|s| s.to_string());
                }
                "module" if w.get(1) != Some(&"ok") => {
                    let name = w.first().unwrap_or(&"?").to_string();
                    b.module_errors
                        .push((name, w.get(2..).unwrap_or_default().join(" ")));
                }
                "fact" if w.len() >= 2 => {
                    b.facts.insert(w[0].to_string(), w[1] == "yes");
                }
                "check" if !w.is_empty() => {
                    let line = rest.trim_start()[w[0].len()..].trim().to_string();
                    b.checks.insert(w[0].to_string(), line);
                }
                "refused" if !w.is_empty() => b.refused = Some(rest.trim().to_string()),
                "test-start" if w.len() >= 2 => {
                    let key = (w[0].to_string(), w[1].to_string());
                    b.running = Some(key.clone());
                    current = Some(key);
                }
                "test" if w.len() >= 4 => {
                    let key = (w[0].to_string(), w[1].to_string());
                    let rc = w[2].parse().unwrap_or(-1);
                    let secs = w[3].parse().unwrap_or(0.0);
                    b.tests.insert(key, (rc, secs));
                    b.running = None;
                    current = None;
                }
                "done" => b.done = w.first().and_then(|s| s.parse().ok()),
                _ => {}
            }
        }
        b
    }

    pub fn fact(&self, name: &str) -> Option<bool> {
        self.facts.get(name).copied()
    }

    /// The last 60 log lines of a test's run.
    pub fn excerpt(&self, form: &str, test: &str) -> Option<String> {
        let lines = self.output.get(&(form.to_string(), test.to_string()))?;
        let start = lines.len().saturating_sub(60);
        Some(lines[start..].join("\n"))
    }
}

/// A serial log with every kind of protocol line, for the tests.
#[cfg(test)]
pub const TEST_LOG: &str = "\
[    0.0] Linux version 6.12\n\
@@vm boot 4.19 6.12.117+deb12-cloud-amd64\n\
@@vm module veth ok\n\
@@vm module cls_bpf failed insmod: can't insert\n\
@@vm fact kprobe_pmu yes\n\
@@vm fact tracepoint:sock_send_length no\n\
@@vm fact tracepoint:tcp_sendmsg_locked no\n\
@@vm check fentry attaches (tcp_sendmsg, tcp_cleanup_rbuf)\n\
@@vm check tracepoint cannot load: tp_tcp_send: verifier\n\
@@vm test-start fentry t1\n\
running 1 test\n\
test t1 ... ok\n\
@@vm test fentry t1 0 13.9\n\
@@vm test-start fentry t2\n\
thread panicked\n\
@@vm test fentry t2 101 3.0\n\
@@vm test-start fentry t3\n\
half a li";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_protocol() {
        let b = BootLog::parse(TEST_LOG);
        assert_eq!(b.boot_s, Some(4.19));
        assert_eq!(b.release.as_deref(), Some("6.12.117+deb12-cloud-amd64"));
        assert_eq!(
            b.module_errors,
            [("cls_bpf".to_string(), "insmod: can't insert".to_string())]
        );
        assert_eq!(b.fact("kprobe_pmu"), Some(true));
        assert_eq!(b.fact("nothing"), None);
        assert_eq!(
            b.checks["fentry"],
            "attaches (tcp_sendmsg, tcp_cleanup_rbuf)"
        );
        assert_eq!(b.checks["tracepoint"], "cannot load: tp_tcp_send: verifier");
        assert_eq!(b.tests[&("fentry".into(), "t1".into())], (0, 13.9));
        assert_eq!(b.tests[&("fentry".into(), "t2".into())], (101, 3.0));
        assert_eq!(b.running, Some(("fentry".into(), "t3".into())));
        assert_eq!(b.done, None);
        assert_eq!(b.excerpt("fentry", "t2").unwrap(), "thread panicked");
    }
}
