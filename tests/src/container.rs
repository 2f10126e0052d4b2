//! Real containers for the tests: a Docker daemon (started here when none runs), an image made
//! from a Debian root filesystem built with `debootstrap` (no registry is ever asked for an
//! image), and containers whose network namespace is joined to the host by a veth pair.
//!
//! Why Docker: `docker.io`'s `dockerd` starts containers on this machine's kernel (6.18, hybrid
//! cgroups, cgroupfs driver) with `--iptables=false --bridge=none`; the tests make every
//! container's network themselves (`--network none` plus a veth moved into its namespace), so
//! the daemon touches no firewall rule and no bridge of the host. `cargo xtask setup` installs
//! `docker.io` and `debootstrap`.

use std::{
    fs::{self, File},
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use crate::{NetNs, cmd, link_exists, next_id, sh};

/// The Debian suite of the root filesystem (the machine's own).
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What the root holds beyond `minbase`: each container's own TLS libraries and clients, and
/// what the runtime stage of deploy/Containerfile installs (`ca-certificates iproute2 bpftool`).
pub const PACKAGES: &[&str] = &[
    "libssl3",
    "libgnutls30",
    "curl",
    "gnutls-bin",
    "ca-certificates",
    "iproute2",
    "bpftool",
];

/// The root filesystem, built once and kept under `target/container-root/<key>` (the key is a
/// hash of the suite, mirror and package list: a rerun reuses it, a changed list builds anew).
pub fn debian_root() -> PathBuf {
    let mut key = Sha256::new();
    key.update(format!("{SUITE} {MIRROR} minbase {}", PACKAGES.join(",")));
    let key = format!("{SUITE}-{}", &hex(&key.finalize())[..16]);
    let base = crate::workspace().join("target/container-root");
    let root = base.join(&key);
    fs::create_dir_all(&base).expect("create target/container-root");
    let _lock = flock(&base.join(format!("{key}.lock")));
    if root.join(".complete").is_file() {
        return root;
    }
    let partial = base.join(format!("{key}.partial"));
    // A debootstrap that died may have left /proc, /sys or /dev mounted in it: never descend
    // into another filesystem.
    if partial.exists() {
        sh(cmd("rm", ["-rf", "--one-file-system"]).arg(&partial));
    }
    let started = Instant::now();
    let out = cmd(
        "debootstrap",
        [
            "--variant=minbase",
            &format!("--include={}", PACKAGES.join(",")),
            SUITE,
        ],
    )
    .arg(&partial)
    .arg(MIRROR)
    .output()
    .expect("debootstrap (Debian package debootstrap; `cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "debootstrap {SUITE} into {} failed: {}\n{}",
        partial.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(partial.join(".complete"), "").expect("mark the root complete");
    fs::rename(&partial, &root).expect("move the root in place");
    eprintln!(
        "debootstrap {SUITE}: {} in {:.0?}",
        root.display(),
        started.elapsed()
    );
    root
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An exclusive `flock` on `path`, held while the file lives.
fn flock(path: &Path) -> File {
    let file = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", path.display());
    file
}

/// A Docker daemon to talk to: the machine's (`/var/run/docker.sock`) if one answers, else one
/// started here (`--iptables=false --bridge=none`, its state under `target/docker`, so images
/// stay between runs) and stopped on drop. One user at a time per workspace (a lock file).
pub struct Docker {
    host: String,
    daemon: Option<Child>,
    _lock: File,
}

impl Docker {
    pub fn start() -> Docker {
        crate::require_root();
        let state = crate::workspace().join("target/docker");
        fs::create_dir_all(&state).expect("create target/docker");
        let lock = flock(&state.join("lock"));
        let system = "unix:///var/run/docker.sock".to_string();
        if answers(&system) {
            return Docker {
                host: system,
                daemon: None,
                _lock: lock,
            };
        }
        // One daemon per workspace (its state is under that workspace's target/); the socket
        // lives under /run, whose paths stay short enough for a unix socket.
        let workspace = Sha256::digest(crate::workspace().as_os_str().as_encoded_bytes());
        let exec_root = PathBuf::from(format!(
            "/run/enforcer-tests-docker-{}",
            &hex(&workspace)[..8]
        ));
        let sock = exec_root.join("docker.sock");
        let host = format!("unix://{}", sock.display());
        if answers(&host) {
            // One a test process killed before its drop left running.
            return Docker {
                host,
                daemon: None,
                _lock: lock,
            };
        }
        let log = File::create(state.join("dockerd.log")).expect("dockerd log");
        let mut c = Command::new("dockerd");
        c.arg("--host")
            .arg(&host)
            .arg("--data-root")
            .arg(state.join("data"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(exec_root.join("dockerd.pid"))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        crate::tie_to_parent(&mut c, libc::SIGTERM, true);
        let daemon = c
            .spawn()
            .expect("dockerd (Debian package docker.io; `cargo xtask setup` installs it)");
        let mut docker = Docker {
            host,
            daemon: Some(daemon),
            _lock: lock,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers(&docker.host) {
            if let Some(status) = docker
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten())
            {
                let log = fs::read_to_string(state.join("dockerd.log")).unwrap_or_default();
                panic!("dockerd exited ({status}) before it answered:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s (see target/docker/dockerd.log)"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        docker
    }

    /// `docker <args>` against this daemon.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = cmd("docker", ["--host", &self.host]);
        c.args(args);
        c
    }

    /// Whether the daemon has an image called `tag`.
    pub fn has_image(&self, tag: &str) -> bool {
        self.cmd(["image", "inspect", tag])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The image of [`debian_root`], imported once (`docker import`: a root filesystem as a
    /// one-layer image, nothing pulled). Its tag names the root's key.
    pub fn debian_image(&self) -> String {
        let root = debian_root();
        let key = root.file_name().and_then(|n| n.to_str()).expect("key");
        let tag = format!("enforcer-test-root:{key}");
        if self.has_image(&tag) {
            return tag;
        }
        let mut tar = cmd("tar", ["-C"])
            .arg(&root)
            .args(["--exclude=./.complete", "-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let out = self
            .cmd(["import", "-", &tag])
            .stdin(tar.stdout.take().expect("piped"))
            .output()
            .expect("docker import");
        assert!(
            tar.wait().is_ok_and(|s| s.success()),
            "tar of the root failed"
        );
        assert!(
            out.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tag
    }
}

/// Whether a Docker daemon answers at `host`.
fn answers(host: &str) -> bool {
    cmd(
        "docker",
        ["--host", host, "version", "--format", "{{.Server.Version}}"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status()
    .is_ok_and(|s| s.success())
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = daemon.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

/// A running container (`docker run -d --network none <image> sleep`), its network namespace
/// joined to the host by a veth pair routed to `peer`'s namespace. Drop removes both.
pub struct Container<'d> {
    docker: &'d Docker,
    /// The 64-digit id Docker gave it.
    pub id: String,
    /// Its first process, as the host sees it.
    pub pid: u32,
    pub host_if: String,
    pub host_v4: Ipv4Addr,
    pub v4: Ipv4Addr,
}

impl<'d> Container<'d> {
    /// Starts `image` and routes it to the namespace of `peer` through the host (forwarding on
    /// the two host ends only).
    pub fn start(docker: &'d Docker, image: &str, peer: &NetNs) -> Container<'d> {
        let name = format!("enforcer-test-{}-{}", std::process::id(), next_id());
        let out = docker
            .cmd([
                "run",
                "-d",
                "--rm",
                "--network",
                "none",
                "--name",
                &name,
                image,
            ])
            .args(["sleep", "600"])
            .output()
            .expect("docker run");
        assert!(
            out.status.success(),
            "docker run {image} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let pid = sh(&mut docker.cmd(["inspect", "-f", "{{.State.Pid}}", &id]));
        let pid: u32 = pid.trim().parse().expect("container pid");
        // The peer's /30 moved to 10.201/16: free as long as the peer's is.
        let [_, _, c, d] = peer.host_v4.octets();
        let (host_v4, v4) = (
            Ipv4Addr::new(10, 201, c, d),
            Ipv4Addr::new(10, 201, c, d + 1),
        );
        let suffix = name.trim_start_matches("enforcer-test-");
        let container = Container {
            docker,
            id,
            pid,
            host_if: format!("ch{suffix}"),
            host_v4,
            v4,
        };
        assert!(
            container.host_if.len() <= 15,
            "{} too long",
            container.host_if
        );
        let inner = format!("ci{suffix}");
        let (host_if, pid_s) = (&container.host_if, pid.to_string());
        sh(&mut cmd(
            "ip",
            [
                "link", "add", host_if, "type", "veth", "peer", "name", &inner,
            ],
        ));
        sh(&mut cmd("ip", ["link", "set", &inner, "netns", &pid_s]));
        sh(&mut cmd(
            "ip",
            ["addr", "add", &format!("{host_v4}/30"), "dev", host_if],
        ));
        sh(&mut cmd("ip", ["link", "set", host_if, "up"]));
        let inside = |args: &[&str]| {
            sh(cmd("nsenter", ["-t", &pid_s, "-n", "ip"]).args(args));
        };
        inside(&["addr", "add", &format!("{v4}/30"), "dev", &inner]);
        inside(&["link", "set", &inner, "up"]);
        inside(&["link", "set", "lo", "up"]);
        inside(&["route", "add", "default", "via", &host_v4.to_string()]);
        for dev in [host_if.as_str(), peer.host_if.as_str()] {
            sh(&mut cmd(
                "sysctl",
                ["-qw", &format!("net.ipv4.conf.{dev}.forwarding=1")],
            ));
        }
        sh(&mut cmd(
            "ip",
            [
                "-n",
                &peer.name,
                "route",
                "add",
                &format!("{}/30", Ipv4Addr::from(host_v4.to_bits() & !3)),
                "via",
                &peer.host_v4.to_string(),
            ],
        ));
        container
    }

    /// `docker exec <id> sh -c <script>`.
    pub fn exec(&self, script: &str) -> Command {
        self.docker
            .cmd(["exec", "-i", &self.id, "sh", "-c", script])
    }

    /// The cookie of its network namespace, read by a socket made inside it (Python's
    /// `getsockopt(SO_NETNS_COOKIE)`, independent of the agent's code).
    pub fn netns_cookie(&self) -> u64 {
        let script = "import socket; s = socket.socket(); \
                      print(int.from_bytes(s.getsockopt(socket.SOL_SOCKET, 71, 8), 'little'))";
        let out = sh(&mut cmd(
            "nsenter",
            ["-t", &self.pid.to_string(), "-n", "python3", "-c", script],
        ));
        out.trim().parse().expect("a cookie")
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if link_exists(&self.host_if) {
            let _ = cmd("ip", ["link", "del", &self.host_if]).output();
        }
        let _ = self.docker.cmd(["rm", "-f", &self.id]).output();
    }
}
