//! What the figures stand on: Debian packages, the compiled load generator, BCC's kernel headers,
//! child processes that die with the bench, the agent, and a description of the machine.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::report::Machine;
use crate::{root, target_dir};

/// Packages the figures use beyond `cargo xtask setup`'s: a C compiler and OpenSSL headers for
/// `bench/tlsperf.c`, iperf3, BCC's tools (sslsniff, the peer reference) and kernel headers for
/// BCC to compile against (see [`bcc_kernel_source`]).
const PACKAGES: &[&str] = &[
    "gcc",
    "libc6-dev",
    "libssl-dev",
    "openssl",
    "gnutls-bin",
    "iperf3",
    "bpfcc-tools",
    "python3-bpfcc",
    "linux-headers-amd64",
];

pub fn ensure_packages() -> Result<()> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(PACKAGES)
        .output()
        .context("cannot run dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !text
                .lines()
                .any(|l| l == format!("{p} install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("bench: installing Debian packages: {}", missing.join(" "));
    for args in [vec!["update"], [&["install", "-y"][..], &missing].concat()] {
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
    }
    Ok(())
}

/// Where the bench keeps what it builds (not committed).
pub fn work_dir() -> PathBuf {
    target_dir().join("bench")
}

/// Compiles `bench/tlsperf.c` against the system OpenSSL.
pub fn build_tlsperf() -> Result<PathBuf> {
    let src = root().join("bench/tlsperf.c");
    let bin = work_dir().join("tlsperf");
    fs::create_dir_all(work_dir())?;
    let fresh = match (fs::metadata(&src), fs::metadata(&bin)) {
        (Ok(s), Ok(b)) => b.modified()? >= s.modified()?,
        _ => false,
    };
    if !fresh {
        let out = Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&bin)
            .arg(&src)
            .args(["-lssl", "-lcrypto", "-lpthread"])
            .output()
            .context("cannot run gcc")?;
        if !out.status.success() {
            bail!(
                "compiling {} failed: {}",
                src.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(bin)
}

/// BCC compiles its programs against kernel headers at run time. This kernel has none
/// (custom build, no `/lib/modules/$(uname -r)`, `CONFIG_IKHEADERS` unset), so BCC is pointed
/// (`BCC_KERNEL_SOURCE`) at Debian's newest `linux-headers-*-amd64` merged with its `-common`
/// half (Debian splits a header tree in two; BCC wants one). The probes BCC tools use (uprobes:
/// `pt_regs` and helper calls) do not depend on the kernel version of the headers.
/// Returns the tree, or why there is none.
pub fn bcc_kernel_source() -> Result<PathBuf> {
    let mut arch: Vec<PathBuf> = fs::read_dir("/usr/src")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-headers-") && n.ends_with("-amd64"))
        })
        .collect();
    arch.sort();
    let Some(arch) = arch.pop() else {
        bail!("no /usr/src/linux-headers-*-amd64 (package linux-headers-amd64)");
    };
    let name = arch.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let common = arch.with_file_name(format!("{}-common", name.trim_end_matches("-amd64")));
    if !common.is_dir() {
        bail!("{} has no {}", arch.display(), common.display());
    }
    let tree = work_dir().join(format!("bcc-kernel-src-{name}"));
    if !tree.join("include/linux/kconfig.h").exists() {
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir_all(&tree)?;
        for src in [&common, &arch] {
            let status = Command::new("cp")
                .arg("-rsf")
                .arg(format!("{}/.", src.display()))
                .arg(&tree)
                .status()?;
            if !status.success() {
                bail!("cannot build the header tree {}", tree.display());
            }
        }
    }
    Ok(tree)
}

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
    pub fn start(bin: &Path, ifaces: &[&str], policy: &str) -> Result<Agent> {
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
            .args(["--events", "json"]);
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

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

pub fn machine(enforcer: &Path) -> Machine {
    let mut fields: Vec<(String, String)> = vec![];
    let mut put = |k: &str, v: String| fields.push((k.to_string(), v));
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let hypervisor = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.contains(" hypervisor"));
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    put("kernel", first_line(Command::new("uname").args(["-srvm"])));
    put(
        "cpu",
        format!(
            "{cpus} × {cpu}{}",
            if hypervisor { " (virtual machine)" } else { "" }
        ),
    );
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.contains("nested_pvm=1") {
        put(
            "virtualisation",
            "KVM guest under PVM (nested_pvm=1): exceptions and syscalls are world switches, \
             see the trap costs below"
                .into(),
        );
    }
    let mem = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(kb) = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    {
        put("memory", format!("{:.1} GiB", kb as f64 / 1048576.0));
    }
    put(
        "os",
        fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .unwrap_or("")
            .trim_matches('"')
            .to_string(),
    );
    put(
        "openssl",
        first_line(Command::new("openssl").arg("version")),
    );
    put(
        "gnutls",
        first_line(Command::new("gnutls-cli").arg("--version")),
    );
    put(
        "enforcer",
        format!(
            "{} ({}), commit {}",
            enforcer.display(),
            first_line(Command::new(enforcer).arg("--version")),
            first_line(Command::new("git").args([
                "-C",
                &root().to_string_lossy(),
                "describe",
                "--always",
                "--dirty"
            ]))
        ),
    );
    Machine { fields }
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
            println!(
                "bench: waiting (up to {max:?}) for other sessions' enforcer processes to exit"
            );
            told = true;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
