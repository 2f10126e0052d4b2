//! Child processes of the bench: killed with it, their output read line by line; the TLS
//! server and the clients that print one JSON result.

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A child process (and its process group) killed when this guard drops; it also dies with
/// the bench (`PR_SET_PDEATHSIG`).
pub struct Proc {
    pub child: Child,
}

pub fn spawn(mut cmd: Command, name: &str) -> Result<Proc> {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {name}: {cmd:?}"))?;
    Ok(Proc { child })
}

impl Proc {
    /// SIGTERM to the group, up to 3 s, then SIGKILL.
    pub fn stop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        if let Ok(Some(_)) = self.child.try_wait() {
            // SAFETY: our own process group; ESRCH is fine.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            return;
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a child's stdout lines on a thread: waits for a line, hands over the rest.
pub struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    pub fn new(r: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// Waits for a line containing `needle`; lines before it are dropped.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no line containing {needle:?} within {timeout:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the process ended before printing {needle:?}")
                }
            }
        }
    }

    /// Every line received so far.
    pub fn drain(&self) -> Vec<String> {
        self.rx.try_iter().collect()
    }
}

/// `tlsperf server|count ADDR PORT CERT KEY`, optionally inside a namespace; returns when
/// it listens, with its stdout lines and the port (PORT 0: one the kernel picked, so that
/// concurrent bench runs, e.g. a CI run's `--quick`, never collide). Tries three times (a port may still be held for a moment
/// by a server of an earlier block).
pub fn tls_server(
    tlsperf: &Path,
    netns: Option<&str>,
    mode: &str,
    addr: &str,
    port: u16,
    cert: &enforcer_tests::Cert,
) -> Result<(Proc, Lines, u16)> {
    let mut last = None;
    for _ in 0..3 {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(tlsperf);
                c
            }
            None => Command::new(tlsperf),
        };
        cmd.args([mode, addr, &port.to_string()])
            .arg(cert.cert_path())
            .arg(cert.key_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut p = spawn(cmd, "tlsperf server")?;
        let lines = Lines::new(p.child.stdout.take().expect("piped"));
        let errors = Lines::new(p.child.stderr.take().expect("piped"));
        match lines.wait_for("listening", Duration::from_secs(10)) {
            Ok(l) => {
                let bound = l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(port);
                return Ok((p, lines, bound));
            }
            Err(e) => {
                thread::sleep(Duration::from_millis(100));
                last = Some(format!("{e}: {}", errors.drain().join(" / ")));
                drop(p);
                thread::sleep(Duration::from_secs(2));
            }
        }
    }
    bail!(
        "tlsperf {mode} on {addr}:{port}: {}",
        last.unwrap_or_default()
    )
}

/// Runs a client to completion (killed at `timeout`); its stdout parsed as one JSON line.
pub fn run_json(cmd: &mut Command, timeout: Duration) -> Result<serde_json::Value> {
    let out = enforcer_tests::run_with_timeout(cmd, b"", timeout);
    if !out.success() {
        bail!(
            "{cmd:?} failed ({}{}): {}",
            out.status,
            if out.timed_out { ", timed out" } else { "" },
            out.stderr_str().trim()
        );
    }
    let text = out.stdout_str();
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("{cmd:?} printed {text:?}"))
}

/// Runs a client to completion (killed at `timeout`); its whole stdout parsed as one JSON
/// document (iperf3 -J).
pub fn run_json_doc(cmd: &mut Command, timeout: Duration) -> Result<serde_json::Value> {
    let out = enforcer_tests::run_with_timeout(cmd, b"", timeout);
    if !out.success() {
        bail!(
            "{cmd:?} failed ({}{}): {} {}",
            out.status,
            if out.timed_out { ", timed out" } else { "" },
            out.stderr_str().trim(),
            out.stdout_str().chars().take(400).collect::<String>()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("{cmd:?}: stdout is not JSON"))
}
