//! Test harness for enforcer's integration tests: real kernels, real tools, no mocks.
//!
//! Everything here panics with a clear message on failure (tests panic, they don't return
//! `Result`), and every resource is an RAII guard torn down on `Drop`, also while a test panics.
//! Traffic only ever goes to addresses of the network namespaces these guards create.

pub mod adversary;
mod agent;
mod cert;
pub mod container;
pub mod content;
pub mod cyclonedx;
pub mod docs;
mod host_lock;
pub mod libssl_copies;
mod netns;
pub mod ops;
pub mod pinned;
mod process;
pub mod programs;
pub mod quic;
pub mod schema;
mod server;
pub mod static_client;
pub mod tcx;

pub use agent::{Agent, enforcer_bin, hook_args};
pub use cert::Cert;
pub use host_lock::{HostLock, host_lock};
pub use netns::{NetNs, link_exists, netns_exists};
pub use process::{Outcome, run_with_timeout};
pub use server::{Mode, Server};

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Panics (does not skip) unless running as root: the tests create network namespaces,
/// veth pairs and load eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "integration tests must run as root (euid is {euid}): they create network namespaces and \
         veth pairs and load eBPF programs; run them with `cargo xtask test` as root"
    );
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// A number unique within this process (combine with the pid for machine-wide names).
pub(crate) fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs `cmd` to completion; panics with its stderr unless it exits 0. Returns stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `Command` with the given program and arguments.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Children die with the thread that spawned them (`PR_SET_PDEATHSIG`: the test's thread), so
/// an aborted test run leaves no servers or agents behind. `group`: also put the child in its own process group.
pub(crate) fn tie_to_parent(c: &mut Command, signal: libc::c_int, group: bool) {
    use std::os::unix::process::CommandExt;
    if group {
        c.process_group(0);
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
