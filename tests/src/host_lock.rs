//! One agent per host: an agent aborts blocked sockets host-wide (SOCK_DESTROY) and stops
//! processes that map unknown files, so two agents, or an agent and a test that needs TLS
//! traffic undisturbed, must not overlap. Every `Agent` holds the host lock for its lifetime;
//! other tests that need a quiet host take it with [`host_lock`]. Test binaries run by different
//! `cargo test` invocations (or worktrees) therefore queue instead of interfering.

use std::{
    fs::File,
    os::fd::AsRawFd,
    sync::{Arc, Mutex, Weak},
    thread::{self, ThreadId},
    time::{Duration, Instant},
};

const PATH: &str = "/run/enforcer-tests.lock";

/// Held while alive; clones share the same `flock`.
#[derive(Clone)]
pub struct HostLock(#[allow(dead_code)] Arc<File>);

/// The lock as this process holds it: the file (while any clone lives) and the thread that
/// took it.
struct Held {
    file: Weak<File>,
    owner: Option<ThreadId>,
}

/// Takes the machine-wide test lock; blocks until it is free. Re-entrant within one *thread*
/// (a test that holds it may start an `Agent`, which takes it again), because `flock` on a
/// second open file of the same process would wait for itself. Another thread of this process
/// waits like another process does: the tests of one binary run in parallel threads unless
/// `--test-threads=1`, and two of their agents at once would each pause, probe and judge the
/// other test's programs (a client could then run before its own agent probed it: the
/// `go_tls` flake).
pub fn host_lock() -> HostLock {
    static HELD: Mutex<Held> = Mutex::new(Held {
        file: Weak::new(),
        owner: None,
    });
    let me = thread::current().id();
    let started = Instant::now();
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match held.file.upgrade() {
            Some(file) if held.owner == Some(me) => return HostLock(file),
            // Held by another thread of this process, until its last clone drops: look again
            // every 50 ms.
            Some(_) => {
                drop(held);
                thread::sleep(Duration::from_millis(50));
                held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            }
            None => break,
        }
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PATH)
        .unwrap_or_else(|e| panic!("cannot open the host lock {PATH}: {e}"));
    // SAFETY: valid fd owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        panic!("flock {PATH}: {}", std::io::Error::last_os_error());
    }
    let waited = started.elapsed();
    if waited.as_secs() >= 1 {
        eprintln!("host lock {PATH}: waited {waited:?} for another test's agent");
    }
    let file = Arc::new(file);
    held.file = Arc::downgrade(&file);
    held.owner = Some(me);
    HostLock(file)
}
