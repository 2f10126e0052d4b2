//! Helpers for the operations tests: the operator commands, a metrics scrape, a TLS client
//! kept open, a pin directory that is always cleaned up.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{cmd, enforcer_bin};

/// `enforcer <args> --socket <socket> --json`; panics unless it succeeds. Returns the answer.
pub fn ctl(socket: &Path, args: &[&str]) -> Value {
    let out = Command::new(enforcer_bin())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .output()
        .expect("run enforcer");
    assert!(
        out.status.success(),
        "enforcer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "enforcer {args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// GET /metrics from `addr`: the exposition text.
pub fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "metrics: {head}");
    assert!(
        head.contains("text/plain; version=0.0.4"),
        "metrics content type: {head}"
    );
    body.to_string()
}

/// The value of the sample `name{labels}` (exactly as written) in `text`, 0 if absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A policy that denies unattributed TLS and allows GnuTLS only to `*.internal.example`.
pub const SCOPED_ENFORCE: &str = "\
mode: enforce
default: deny
unattributed_tls: deny
libraries:
  - family: openssl
    action: allow
  - family: gnutls
    server_names: [\"*.internal.example\"]
    action: allow
";

/// `gnutls-cli` to `peer` with `name` as its server name (SNI), `input` on its stdin; given 15 s.
pub fn gnutls_named(peer: SocketAddr, name: &str, input: &[u8]) -> crate::Outcome {
    let sni = format!("--sni-hostname={name}");
    let (port, host) = (peer.port().to_string(), peer.ip().to_string());
    crate::run_with_timeout(
        &mut cmd("gnutls-cli", ["--insecure", &sni, "--port", &port, &host]),
        input,
        Duration::from_secs(15),
    )
}

/// A TLS client whose stdin stays open (so its connection stays up), killed on Drop.
pub struct LongClient {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl LongClient {
    pub fn openssl(addr: SocketAddr) -> LongClient {
        Self::spawn(cmd(
            "openssl",
            ["s_client", "-quiet", "-connect", &addr.to_string()],
        ))
    }

    pub fn gnutls(addr: SocketAddr) -> LongClient {
        Self::spawn(cmd(
            "gnutls-cli",
            [
                "--insecure",
                "--port",
                &addr.port().to_string(),
                &addr.ip().to_string(),
            ],
        ))
    }

    fn spawn(mut c: Command) -> LongClient {
        crate::tie_to_parent(&mut c, libc::SIGKILL, false);
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
        let stdin = child.stdin.take();
        LongClient { child, stdin }
    }

    /// Sends a line; false if the client is gone (its connection was aborted).
    pub fn send(&mut self, line: &[u8]) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        stdin.write_all(line).and_then(|()| stdin.flush()).is_ok()
    }

    /// Waits up to `timeout` for the client to exit on its own.
    pub fn exited_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LongClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pin directory under /sys/fs/bpf for one test; Drop runs `enforcer detach --pin` (with the
/// given interfaces), so a failing test leaves nothing pinned or attached.
pub struct PinGuard {
    pub dir: PathBuf,
    pub ifaces: Vec<String>,
}

impl PinGuard {
    pub fn new(ifaces: &[&str]) -> PinGuard {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/enforcer-test-{}-{}",
            std::process::id(),
            crate::next_id()
        ));
        PinGuard {
            dir,
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// `enforcer detach --pin DIR --iface ...`: its output.
    pub fn detach(&self) -> std::process::Output {
        let mut c = Command::new(enforcer_bin());
        c.arg("detach").arg("--pin").arg(&self.dir);
        for iface in &self.ifaces {
            c.args(["--iface", iface]);
        }
        c.output().expect("run enforcer detach")
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = self.detach();
        }
    }
}
