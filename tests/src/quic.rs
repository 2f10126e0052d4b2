//! Real QUIC peers: aioquic (PyPI, in the virtualenv `cargo xtask setup` makes under
//! `target/venv-quic`), a server that prints each handshake and line it receives, and a client
//! that sends one line and prints the reply. QUIC carries TLS 1.3 inside UDP: no TCP hook and no
//! TLS library probe of this project sees it, which is what the policy's `quic` key is for.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{Cert, Outcome, run_with_timeout, server::Capture};

/// The virtualenv's python; the test fails (never skips) without it.
pub fn python() -> PathBuf {
    let python = crate::workspace().join("target/venv-quic/bin/python3");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it installs aioquic from PyPI there)",
        python.display()
    );
    python
}

/// The virtualenv's python, run by `via` (e.g. `ip netns exec NS`) unless it is empty.
fn python_via(via: &[&str]) -> Command {
    let python = python();
    match via.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(python);
            c
        }
        None => Command::new(python),
    }
}

const SERVER: &str = r#"
import asyncio, sys
from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived

class Peer(QuicConnectionProtocol):
    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            print("handshake", flush=True)
        elif isinstance(event, StreamDataReceived) and event.data:
            print("line", event.data.decode(errors="replace").strip(), flush=True)
            self._quic.send_stream_data(event.stream_id, b"ok\n", end_stream=True)
            self.transmit()

async def main(host, port, cert, key):
    config = QuicConfiguration(is_client=False, alpn_protocols=["enforcer-test"])
    config.load_cert_chain(cert, key)
    await serve(host, port, configuration=config, create_protocol=Peer)
    print("listening", flush=True)
    await asyncio.Future()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
"#;

const CLIENT: &str = r#"
import asyncio, ssl, sys
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

async def main(host, port, line):
    config = QuicConfiguration(is_client=True, alpn_protocols=["enforcer-test"],
                               verify_mode=ssl.CERT_NONE, idle_timeout=2.0)
    async with connect(host, port, configuration=config) as client:
        reader, writer = await client.create_stream()
        writer.write(line.encode() + b"\n")
        writer.write_eof()
        print("reply", (await reader.read()).decode().strip(), flush=True)

try:
    asyncio.run(asyncio.wait_for(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]), 3))
except Exception as e:
    print("failed", type(e).__name__, e, flush=True)
    sys.exit(1)
"#;

/// An aioquic server, killed on Drop.
pub struct QuicServer {
    addr: SocketAddr,
    child: Child,
    stdout: Capture,
    stderr: Capture,
}

impl QuicServer {
    /// Runs the server with `via` (e.g. `ip netns exec NS`, or nothing) on `addr`.
    pub fn start(via: &[&str], addr: SocketAddr, cert: &Cert) -> QuicServer {
        let mut cmd = python_via(via);
        cmd.args([
            "-c",
            SERVER,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .arg(cert.cert_path())
        .arg(cert.key_path());
        crate::tie_to_parent(&mut cmd, libc::SIGKILL, true);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the QUIC server {cmd:?}: {e}"));
        let stdout = Capture::spawn(child.stdout.take().expect("piped"));
        let stderr = Capture::spawn(child.stderr.take().expect("piped"));
        let server = QuicServer {
            addr,
            child,
            stdout,
            stderr,
        };
        if server
            .stdout
            .wait_for(Some(b"listening"), Duration::from_secs(20))
            .is_err()
        {
            panic!(
                "QUIC server on {addr} not listening: {} {}",
                server.stdout.text(),
                server.stderr.text()
            );
        }
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything it printed: `handshake` per completed handshake, `line X` per line read.
    pub fn printed(&self) -> String {
        self.stdout.text()
    }

    /// Waits until it printed `needle`.
    pub fn wait_printed(&self, needle: &str, timeout: Duration) {
        if self
            .stdout
            .wait_for(Some(needle.as_bytes()), timeout)
            .is_err()
        {
            panic!(
                "QUIC server on {} did not print {needle:?} within {timeout:?}: {} {}",
                self.addr,
                self.stdout.text(),
                self.stderr.text()
            );
        }
    }
}

impl Drop for QuicServer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child's own process group.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The client, run with `via` (as for the server), sending `line` to `to`: its stdout says
/// `reply ok` on success, `failed ...` (exit 1) when no handshake completes within 3 s.
pub fn client(via: &[&str], to: SocketAddr, line: &str) -> Outcome {
    let mut cmd = python_via(via);
    cmd.args([
        "-c",
        CLIENT,
        &to.ip().to_string(),
        &to.port().to_string(),
        line,
    ]);
    run_with_timeout(&mut cmd, b"", Duration::from_secs(20))
}
