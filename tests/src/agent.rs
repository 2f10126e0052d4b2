//! `Agent`: a running `enforcer attach --events json`, its events read on a thread.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{NetNs, server::Capture};

/// `$ENFORCER_BIN`, else `<workspace>/target/debug/enforcer`; panics if it does not exist.
pub fn enforcer_bin() -> PathBuf {
    let bin = std::env::var_os("ENFORCER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace().join("target/debug/enforcer"));
    assert!(
        bin.is_file(),
        "enforcer binary {} not found: build it (`cargo build -p enforcer`) or set ENFORCER_BIN \
         (`cargo xtask test` does both)",
        bin.display()
    );
    bin
}

/// `--kernel-hook` for an agent: `ENFORCER_TEST_KERNEL_HOOK` (the VM matrix sets it), else auto.
pub fn hook_args() -> Vec<String> {
    let form = std::env::var("ENFORCER_TEST_KERNEL_HOOK").unwrap_or_else(|_| "auto".into());
    vec!["--kernel-hook".into(), form]
}

/// How long a clean exit may take. With `uprobe_multi` (6.6+) about a second; on older kernels
/// the kernel unregisters perf-event uprobes one grace period (about 0.15 s) per probe, and
/// other tests' library copies add probes.
const EXIT_BUDGET: Duration = Duration::from_secs(60);

/// The agent process. Drop: SIGTERM, up to `EXIT_BUDGET` to exit, then SIGKILL.
pub struct Agent {
    child: Option<Child>,
    rx: mpsc::Receiver<Value>,
    /// Every stdout line so far, in order (lines that are not JSON as strings).
    events: Vec<Value>,
    /// `matched[i]`: `events[i]` was already returned by `wait_for`.
    matched: Vec<bool>,
    stderr: Capture,
    _policy_dir: Option<tempfile::TempDir>,
    _host: crate::HostLock,
}

impl Agent {
    /// `enforcer attach --iface <iface> --policy <policy> --events json <extra...>`, with
    /// `--abort-namespaces own` unless `extra` says otherwise: the suite's TLS peers run in
    /// network namespaces of this host standing in for remote hosts, and a denied library of a
    /// peer (an `openssl s_server` under a policy that denies OpenSSL) must not have its socket
    /// aborted, as a remote peer's could not be. Tests of other namespaces' sockets
    /// (tests/tests/containers.rs) pass `--abort-namespaces all`, the agent's default.
    pub fn start(iface: &str, policy: &Path, extra: &[&str]) -> Agent {
        let mut cmd = Command::new(enforcer_bin());
        cmd.args(["attach", "--iface", iface, "--policy"])
            .arg(policy);
        cmd.args(["--events", "json"]).args(extra);
        if !extra.contains(&"--abort-namespaces") {
            cmd.args(["--abort-namespaces", "own"]);
        }
        Self::spawn(cmd)
    }

    /// Like [`Agent::start`] with the policy given as YAML text (written to a temp file).
    pub fn with_policy(iface: &str, policy_yaml: &str, extra: &[&str]) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("enforcer-policy-")
            .tempdir()
            .expect("temp dir");
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, policy_yaml).expect("cannot write the policy");
        let mut agent = Self::start(iface, &file, extra);
        agent._policy_dir = Some(dir);
        agent
    }

    /// [`Agent::with_policy`] on the host end of `ns`, with [`hook_args`] and then `extra`;
    /// returns once the agent is ready (within `ready`), with its `ready` event.
    pub fn ready_with_policy(
        ns: &NetNs,
        policy_yaml: &str,
        extra: &[&str],
        ready: Duration,
    ) -> (Agent, Value) {
        let mut args = hook_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut agent = Self::with_policy(&ns.host_if, policy_yaml, &args);
        let event = agent.wait_ready(ready);
        (agent, event)
    }

    /// Runs a prepared command (e.g. with extra env) as the agent: stdout is read as events.
    pub fn spawn(mut cmd: Command) -> Agent {
        let host = crate::host_lock();
        crate::tie_to_parent(&mut cmd, libc::SIGTERM, false);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stderr = Capture::spawn(child.stderr.take().expect("stderr is piped"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Agent {
            child: Some(child),
            rx,
            events: vec![],
            matched: vec![],
            stderr,
            _policy_dir: None,
            _host: host,
        }
    }

    /// Waits for `{"type":"ready",...}`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Value {
        self.wait_for(|v| v["type"] == "ready", timeout)
    }

    /// The first event, in arrival order, that matches `pred` and no earlier `wait_for` returned
    /// (so events that came while waiting for others are not lost). Panics at the deadline, or
    /// when the agent exits first, with the events seen and the agent's stderr.
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut next = 0;
        loop {
            while next < self.events.len() {
                if !self.matched[next] && pred(&self.events[next]) {
                    self.matched[next] = true;
                    return self.events[next].clone();
                }
                next += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => self.push(v),
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("no matching event within {timeout:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    let status = status.map_or("unknown status".into(), |s| s.to_string());
                    // Its last words may still be in the pipe.
                    let _ = self.stderr.wait_for(None, Duration::from_secs(1));
                    self.fail(&format!(
                        "the agent exited ({status}) before a matching event"
                    ))
                }
            }
        }
    }

    /// The `connection` event of process `comm` from `local` to `remote`.
    pub fn wait_connection(
        &mut self,
        comm: &str,
        local: std::net::IpAddr,
        remote: std::net::SocketAddr,
        timeout: Duration,
    ) -> Value {
        let (comm, local) = (comm.to_owned(), local.to_string());
        self.wait_for(
            move |v| {
                v["type"] == "connection"
                    && v["comm"] == comm.as_str()
                    && v["local"]["addr"] == local.as_str()
                    && v["remote"]["addr"] == remote.ip().to_string().as_str()
                    && v["remote"]["port"] == remote.port()
            },
            timeout,
        )
    }

    /// All events received so far.
    pub fn events(&mut self) -> &[Value] {
        while let Ok(v) = self.rx.try_recv() {
            self.push(v);
        }
        &self.events
    }

    /// Whether the agent's stderr (its logs) contains `needle` within `timeout`: log lines and
    /// events travel on different pipes, so a line may arrive after the event it accompanies.
    pub fn stderr_contains(&self, needle: &str, timeout: Duration) -> bool {
        self.stderr
            .wait_for(Some(needle.as_bytes()), timeout)
            .is_ok()
    }

    /// The agent's stderr so far (its logs).
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, up to `EXIT_BUDGET` for a clean exit, then SIGKILL. Returns how it exited.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own, not yet reaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + EXIT_BUDGET;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("agent {} ignored SIGTERM for 5 s; killing it", child.id());
        let _ = child.kill();
        child.wait().ok()
    }

    fn push(&mut self, v: Value) {
        self.events.push(v);
        self.matched.push(false);
    }

    fn fail(&mut self, why: &str) -> ! {
        self.events();
        let events: Vec<String> = self.events.iter().map(Value::to_string).collect();
        let stderr = self.stderr();
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "agent: {why}\n--- {} events seen:\n{}\n--- agent stderr (last {} lines):\n{}",
            events.len(),
            events.join("\n"),
            tail.len(),
            tail.join("\n")
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}
