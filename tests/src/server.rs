//! `Server`: `openssl s_server` inside a namespace, killed on Drop.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Child, ChildStdin, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::{Cert, NetNs};

/// How `s_server` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `-www`: an HTTP status page for any GET (for curl and friends).
    Www,
    /// `-quiet`: echoes nothing; stdout is exactly the bytes the client sent, and
    /// [`Server::send`] writes to the client.
    Plain,
}

/// `ip netns exec <ns> openssl s_server -accept <ip>:<port> ...`, listening when returned.
pub struct Server {
    addr: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Capture,
    stderr: Capture,
}

impl Server {
    pub fn www(ns: &NetNs, ip: IpAddr, port: u16, cert: &Cert) -> Server {
        Self::start(ns, ip, port, cert, Mode::Www, &[])
    }

    pub fn plain(ns: &NetNs, ip: IpAddr, port: u16, cert: &Cert) -> Server {
        Self::start(ns, ip, port, cert, Mode::Plain, &[])
    }

    /// `extra`: more `s_server` options, e.g. `["-tls1_2"]`.
    pub fn start(
        ns: &NetNs,
        ip: IpAddr,
        port: u16,
        cert: &Cert,
        mode: Mode,
        extra: &[&str],
    ) -> Server {
        let addr = SocketAddr::new(ip, port);
        let cmd = ns.exec("openssl", ["s_server", "-accept", &addr.to_string()]);
        Self::spawn(cmd, addr, cert, mode, extra)
    }

    /// As [`Server::start`], with `s_server` run by `wrapper` (e.g. `["mptcpize", "run"]`).
    pub fn start_via(
        ns: &NetNs,
        wrapper: &[&str],
        ip: IpAddr,
        port: u16,
        cert: &Cert,
        mode: Mode,
    ) -> Server {
        let addr = SocketAddr::new(ip, port);
        let (program, args) = wrapper.split_first().expect("a wrapper command");
        let mut cmd = ns.exec(program, args);
        cmd.args(["openssl", "s_server", "-accept", &addr.to_string()]);
        Self::spawn(cmd, addr, cert, mode, &[])
    }

    /// `openssl s_server` in the root namespace (this host is the server), on `ip:port`.
    pub fn on_host(ip: IpAddr, port: u16, cert: &Cert, mode: Mode, extra: &[&str]) -> Server {
        let addr = SocketAddr::new(ip, port);
        let cmd = crate::cmd("openssl", ["s_server", "-accept", &addr.to_string()]);
        Self::spawn(cmd, addr, cert, mode, extra)
    }

    fn spawn(
        mut cmd: std::process::Command,
        addr: SocketAddr,
        cert: &Cert,
        mode: Mode,
        extra: &[&str],
    ) -> Server {
        cmd.arg("-cert")
            .arg(cert.cert_path())
            .arg("-key")
            .arg(cert.key_path());
        cmd.arg(if mode == Mode::Www { "-www" } else { "-quiet" })
            .args(extra);
        crate::tie_to_parent(&mut cmd, libc::SIGKILL, true);
        // Stdin stays open: on EOF s_server would close every connection at once.
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = Capture::spawn(child.stdout.take().expect("stdout is piped"));
        let stderr = Capture::spawn(child.stderr.take().expect("stderr is piped"));
        let stdin = child.stdin.take();
        let mut server = Server {
            addr,
            child,
            stdin,
            stdout,
            stderr,
        };
        server.wait_listening(Duration::from_secs(10));
        server
    }

    fn wait_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "s_server on {} exited ({status}): {}",
                    self.addr,
                    self.stderr.text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "s_server on {} not accepting after {timeout:?}: {}",
                    self.addr,
                    self.stderr.text()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://<ip>:<port>/` (IPv6 in brackets).
    pub fn url(&self) -> String {
        format!("https://{}/", self.addr)
    }

    /// Plain mode: everything clients have sent so far.
    pub fn received(&self) -> Vec<u8> {
        self.stdout.bytes()
    }

    /// Plain mode: waits until the received bytes contain `needle`; returns all received bytes.
    pub fn wait_received(&self, needle: &[u8], timeout: Duration) -> Vec<u8> {
        self.stdout
            .wait_for(Some(needle), timeout)
            .unwrap_or_else(|got| {
                panic!(
                    "s_server on {} did not receive {:?} within {timeout:?}; got {:?}; stderr: {}",
                    self.addr,
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&got),
                    self.stderr.text()
                )
            })
    }

    /// Plain mode: sends `bytes` to the connected client.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .expect("cannot write to s_server");
    }

    /// What s_server wrote to stderr (handshake errors, verify results).
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created with process_group(0).
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Bytes read from a pipe by a thread (and whether it hit EOF), with a condition variable.
#[derive(Clone)]
pub(crate) struct Capture(Arc<(Mutex<Piped>, Condvar)>);

/// The bytes so far and whether the pipe is closed.
type Piped = (Vec<u8>, bool);

impl Capture {
    pub(crate) fn spawn(mut r: impl Read + Send + 'static) -> Capture {
        let cap = Capture(Arc::default());
        let c = cap.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                c.0.0.lock().unwrap().0.extend_from_slice(&buf[..n]);
                c.0.1.notify_all();
            }
            c.0.0.lock().unwrap().1 = true;
            c.0.1.notify_all();
        });
        cap
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.0.0.lock().unwrap().0.clone()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// Ok(all bytes) once they contain `needle` (or, with `None`, once the pipe is closed);
    /// Err(all bytes) at the deadline.
    pub(crate) fn wait_for(
        &self,
        needle: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.0.0.lock().unwrap();
        loop {
            let (buf, closed) = &*state;
            let done = match needle {
                Some(n) => n.is_empty() || buf.windows(n.len()).any(|w| w == n),
                None => *closed,
            };
            if done {
                return Ok(buf.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(buf.clone());
            }
            state = self.0.1.wait_timeout(state, left).unwrap().0;
        }
    }
}
