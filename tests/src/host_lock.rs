//! One agent per host: an agent aborts blocked sockets host-wide (SOCK_DESTROY) and stops
//! processes that map unknown files, so two agents, or an agent and a test that needs TLS
//! traffic undisturbed, must not overlap. Every `Agent` holds the host lock for its lifetime;
//! other tests that need a quiet host take it with [`host_lock`]. Test binaries run by different
//! `cargo test` invocations (or worktrees) therefore queue instead of interfering.

use std::{
    fs::File,
    os::fd::AsRawFd,
    sync::{Arc, Mutex, Weak},
    time::Instant,
};

const PATH: &str = "/run/enforcer-tests.lock";

/// Held while alive; clones within one process share the same `flock`.
#[derive(Clone)]
pub struct HostLock(#[allow(dead_code)] Arc<File>);

/// Takes (or shares, within this process) the machine-wide test lock; blocks until it is free.
/// Re-entrant within a process, because `flock` on a second open file of the same process would
/// wait for itself.
pub fn host_lock() -> HostLock {
    static HELD: Mutex<Weak<File>> = Mutex::new(Weak::new());
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(file) = held.upgrade() {
        return HostLock(file);
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PATH)
        .unwrap_or_else(|e| panic!("cannot open the host lock {PATH}: {e}"));
    let started = Instant::now();
    // SAFETY: valid fd owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        panic!("flock {PATH}: {}", std::io::Error::last_os_error());
    }
    let waited = started.elapsed();
    if waited.as_secs() >= 1 {
        eprintln!("host lock {PATH}: waited {waited:?} for another test run's agent");
    }
    let file = Arc::new(file);
    *held = Arc::downgrade(&file);
    HostLock(file)
}
