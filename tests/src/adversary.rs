//! What `tests/tests/adversary.rs` plays the attacker with: commands run as an unprivileged
//! user (uid 65534, no capabilities, no new privileges), process groups killed on Drop, and the
//! agent's resident size.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::cmd;

/// The unprivileged user the attacks run as (`nobody` on Debian).
pub const NOBODY: &str = "65534";

/// `program args` as uid/gid 65534 with no supplementary groups, no capabilities (inheritable,
/// ambient or bounding) and `no_new_privs`.
pub fn unprivileged<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = cmd(
        "setpriv",
        [
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
            program,
        ],
    );
    c.args(args);
    c
}

/// A process group that dies with the test (SIGKILL to the group on Drop).
pub struct Group {
    child: Child,
    /// Files the group uses, removed after it is killed.
    _dir: Option<tempfile::TempDir>,
}

impl Group {
    /// Spawns `cmd` in a process group of its own, stdout piped, and waits up to `timeout` for
    /// a stdout line starting with `ready` (panics with what it printed otherwise).
    pub fn spawn_until(mut cmd: Command, ready: &str, timeout: Duration) -> Group {
        crate::tie_to_parent(&mut cmd, libc::SIGKILL, true);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(ready) => break,
                Ok(line) => seen.push(line),
                Err(_) => panic!("{cmd:?} did not print {ready:?} within {timeout:?}: {seen:?}"),
            }
        }
        Group { child, _dir: None }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `connect()` that first binds an IP socket to `lo` (`SO_BINDTODEVICE`), for `LD_PRELOAD`.
const BIND_TO_LO: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>
int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real)
        real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    if (addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6))
        setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3);
    return real(fd, addr, len);
}
"#;

/// `n` GnuTLS clients held open by an unprivileged user in a user and network namespace of its
/// own, against a listener on its loopback that accepts and never answers: each sends its
/// ClientHello (the kernel hook sees the denied library and blocks the 4-tuple), and the agent
/// cannot abort their sockets. It does reach other network namespaces (it looks the socket up
/// in its owner's), but not a socket bound to a device (`SO_BINDTODEVICE`, which root in a
/// namespace of its own may set): the sock_diag lookup is made for interface 0 and misses it.
/// The clients bind theirs to `lo` through an `LD_PRELOAD`ed `connect()` (built here with gcc).
/// Returns once all `n` are connected.
pub fn hold_denied_in_own_netns(n: usize) -> Group {
    let dir = tempfile::Builder::new()
        .prefix("enforcer-adversary-")
        .tempdir()
        .expect("temp dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let (source, shim) = (dir.path().join("bind_lo.c"), dir.path().join("bind_lo.so"));
    std::fs::write(&source, BIND_TO_LO).expect("write the shim");
    crate::sh(
        cmd("gcc", ["-shared", "-fPIC", "-O2", "-o"])
            .arg(&shim)
            .arg(&source)
            .arg("-ldl"),
    );
    let shim = shim.display();
    let script = format!(
        "ip link set lo up || exit 1
         socat TCP-LISTEN:4433,bind=127.0.0.1,fork,reuseaddr SYSTEM:'sleep 600' &
         for i in $(seq 50); do ss -Htln | grep -q 127.0.0.1:4433 && break; sleep 0.1; done
         for i in $(seq {n}); do
           (sleep 600 | LD_PRELOAD={shim} gnutls-cli --insecure --port 4433 127.0.0.1 \
              >/dev/null 2>&1) &
         done
         for i in $(seq 100); do
           [ \"$(ss -Htn state established dst 127.0.0.1:4433 | wc -l)\" -ge {n} ] && break
           sleep 0.1
         done
         echo ready
         wait"
    );
    let cmd = unprivileged(
        "unshare",
        ["--user", "--map-root-user", "--net", "sh", "-c", &script],
    );
    let mut group = Group::spawn_until(cmd, "ready", Duration::from_secs(30));
    group._dir = Some(dir);
    group
}

/// Resident set size of process `pid` in KiB (`VmRSS`), 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
