//! The start-up sweep: files mapped right now, and the library and program directories.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use tracing::info;

use super::{
    Examined, Shared,
    examine::{Origin, examine, mark_known},
    files, kernel, lock,
};
use crate::libraries::DiscoverOptions;

/// Program directories swept at start, besides the library directories.
const PROGRAM_DIRS: [&str; 6] = [
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/bin",
    "/sbin",
];

/// Start-up sweep, niced, and out of the way of paused processes (it waits while any file they
/// wait for is being examined):
/// - files mapped right now: TLS libraries among them are probed at once (they may have been
///   mapped between discovery and the hooks, which will not see them again);
/// - the library and program directories: every file that is not a TLS library becomes known,
///   so that a program merely new to this agent is not paused when it starts. TLS libraries
///   there stay unknown and are probed when a process first maps them (probing costs kernel
///   time now and at exit; most of them are never used).
pub(super) fn sweep(shared: &Shared, stop: &AtomicBool) {
    let started = Instant::now();
    // SAFETY: lowers this thread's priority only (Linux: per-thread nice via its tid).
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    let mut dirs = DiscoverOptions::default().library_dirs;
    dirs.extend(PROGRAM_DIRS.iter().map(PathBuf::from));
    let mapped = files::mapped_now(Path::new("/proc"));
    let in_dirs = files::in_dirs(&dirs);
    let total = mapped.len() + in_dirs.len();
    let candidates = mapped
        .into_iter()
        .map(|f| (f, true))
        .chain(in_dirs.into_iter().map(|f| (f, false)));
    let mut fresh = 0;
    for (found, probe) in candidates {
        while shared.urgent.load(Ordering::SeqCst) > 0 && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(2));
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if lock(&shared.examined)
            .get(&(found.st_dev, found.st_ino))
            .is_some_and(|e| !e.is_stale(found.generation, found.ctime))
        {
            continue;
        }
        fresh += 1;
        let origin = Origin {
            via: "scan",
            pid: None,
            comm: "",
            since_ns: None,
        };
        let change_counter = shared.change_counter.load(Ordering::Relaxed);
        // Marked known as it was examined: a key whose `ctime` is not the one found (the file
        // changed since) stays out, and its next mapping is examined.
        if examine(shared, &found, &origin, probe).is_some_and(Examined::is_settled)
            && let Some(key) = kernel::key_of_path(&found.path, change_counter)
            && (!change_counter || key.ctime() == found.ctime.map(|(s, n)| (s, n as u32)))
        {
            mark_known(shared, key);
        }
    }
    crate::agent::memory::trim();
    info!(files = total, examined = fresh, elapsed = ?started.elapsed(), "new-file sweep done");
}
