//! The agent under measurement (`enforcer attach` with a policy, events read as JSON), what it
//! uses, and the other sessions' agents a measurement block waits out.

use std::{
    fs,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::progress::say;

/// `enforcer attach` with a policy, `--events json`, stdout read as events.
pub struct Agent {
    pub inner: enforcer_tests::Agent,
    /// Spawn to the ready line.
    pub startup: Duration,
    pub ready: serde_json::Value,
    _policy: tempfile::NamedTempFile,
}

pub const ENFORCE_OPENSSL_ONLY: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
pub const AUDIT_OPENSSL_ONLY: &str =
    "mode: audit\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";

impl Agent {
    /// `enforcer attach` on `ifaces` with `policy`, and `extra` arguments (e.g. `--ingress xdp`).
    pub fn start_with(bin: &Path, ifaces: &[&str], policy: &str, extra: &[&str]) -> Result<Agent> {
        let mut file = tempfile::Builder::new()
            .prefix("enforcer-bench-policy-")
            .suffix(".yaml")
            .tempfile()?;
        std::io::Write::write_all(&mut file, policy.as_bytes())?;
        let mut cmd = Command::new(bin);
        cmd.arg("attach");
        for i in ifaces {
            cmd.args(["--iface", i]);
        }
        cmd.arg("--policy")
            .arg(file.path())
            .args(["--events", "json"])
            .args(extra);
        let started = Instant::now();
        let mut inner = enforcer_tests::Agent::spawn(cmd);
        let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.wait_ready(Duration::from_secs(120))
        }))
        .map_err(|_| {
            let pid = inner.pid();
            let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
            let state = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|x| x.1.trim_start().chars().take(1).collect::<String>())
                })
                .unwrap_or_default();
            anyhow::anyhow!(
                "the agent did not get ready (see its log above); it was in state {state:?}, \
                 waiting in the kernel in {wchan:?}"
            )
        })?;
        Ok(Agent {
            startup: started.elapsed(),
            inner,
            ready,
            _policy: file,
        })
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// Connection events received so far.
    pub fn connections(&mut self) -> Vec<serde_json::Value> {
        self.inner
            .events()
            .iter()
            .filter(|v| v["type"] == "connection")
            .cloned()
            .collect()
    }

    /// SIGTERM, then waits (up to `max`) until the process has exited: its kernel-side teardown
    /// (closing the uprobe, tracepoint and XDP links) is done when it turns zombie. Returns the
    /// time from the signal to that point (None if `max` passed) and the kernel function the
    /// process waited in most often meanwhile (`/proc/PID/wchan`, sampled every 50 ms).
    pub fn stop_timed(mut self, max: Duration) -> (Option<Duration>, String) {
        let pid = self.pid();
        let t = Instant::now();
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let mut waits: std::collections::BTreeMap<String, u32> = Default::default();
        // The group leader turns zombie as soon as the main thread is done, while the last
        // thread may still be closing the descriptors: wait for every thread.
        let exited = || -> bool {
            let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
                return true;
            };
            tasks.flatten().all(|t| {
                let state = fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(')').map(|x| x.1.trim_start().chars().next()))
                    .flatten();
                matches!(state, None | Some('Z') | Some('X'))
            })
        };
        let done = loop {
            if exited() {
                break Some(t.elapsed());
            }
            if t.elapsed() > max {
                break None;
            }
            if let Ok(w) = fs::read_to_string(format!("/proc/{pid}/wchan"))
                && !w.is_empty()
                && w != "0"
            {
                *waits.entry(w).or_default() += 1;
            }
            thread::sleep(Duration::from_millis(50));
        };
        let top = waits
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(w, _)| w)
            .unwrap_or_default();
        self.inner.stop();
        (done, top)
    }

    /// Waits until no new event arrived for `quiet` (at most `max`); returns the event count.
    pub fn settle(&mut self, quiet: Duration, max: Duration) -> usize {
        let deadline = Instant::now() + max;
        let mut n = self.inner.events().len();
        let mut last_change = Instant::now();
        while Instant::now() < deadline && last_change.elapsed() < quiet {
            thread::sleep(Duration::from_millis(50));
            let m = self.inner.events().len();
            if m != n {
                n = m;
                last_change = Instant::now();
            }
        }
        n
    }
}

/// (user + system CPU seconds, VmHWM bytes, VmRSS bytes) of a process.
pub fn proc_usage(pid: u32) -> Result<(f64, u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3; utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|x| x.1)
        .context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((ticks / hz, kb("VmHWM:"), kb("VmRSS:")))
}

/// Waits until `pid` used less than 5 % of a core over two consecutive 250 ms windows, at
/// most `max`; returns how long it waited.
pub fn wait_idle(pid: u32, max: Duration) -> Duration {
    let t = Instant::now();
    let window = Duration::from_millis(250);
    let mut quiet = 0;
    let Ok((mut last, _, _)) = proc_usage(pid) else {
        return t.elapsed();
    };
    while quiet < 2 && t.elapsed() < max {
        thread::sleep(window);
        let Ok((cpu, _, _)) = proc_usage(pid) else {
            break;
        };
        quiet = if (cpu - last) / window.as_secs_f64() < 0.05 {
            quiet + 1
        } else {
            0
        };
        last = cpu;
    }
    t.elapsed()
}

/// Pids of `enforcer` processes other than `ours` (other sessions' tests on a shared host).
pub fn foreign_agents(ours: &[u32]) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "enforcer")
        })
        .collect()
}

/// Measurement blocks that started while another session's enforcer was running (it could not
/// be waited out); reset per figure by the orchestrator.
pub static NOISY_BLOCKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Before a measurement block: waits up to `max` for other sessions' `enforcer` processes to
/// go (their uprobes on the same libssl would slow the baseline and every row alike). Counts
/// the block as noisy if they are still there.
pub fn quiesce(max: Duration) {
    let me = std::process::id();
    let foreign = || -> usize {
        foreign_agents(&[])
            .into_iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix("PPid:"))
                            .and_then(|p| p.trim().parse::<u32>().ok())
                    })
                    .is_some_and(|p| p != me)
            })
            .count()
    };
    let deadline = Instant::now() + max;
    let mut told = false;
    while foreign() > 0 {
        if Instant::now() > deadline {
            NOISY_BLOCKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        if !told {
            say!("bench: waiting (up to {max:?}) for other sessions' enforcer processes to exit");
            told = true;
        }
        thread::sleep(Duration::from_millis(500));
    }
}
