//! The library sweep: libraries no process maps any more give their id's slot back, so a flood
//! of short-lived libraries cannot fill the maps keyed by library id (issue 16, item 4).
//!
//! A **census** reads `/proc/<pid>/maps` of every process, at most [`PIDS_PER_PASS`] per pass
//! (one pass every `--library-sweep` seconds), and notes which probed libraries (their file's or
//! their companion's inode number) some process maps executable. When a census is complete:
//!
//! 1. A library mapped by nobody is **marked**: its `examined` entry becomes `Releasing`, the
//!    event thread forgets the file (`Shared::forget`), and its keys leave `KNOWN_FILES`. From
//!    then on a process that maps it is paused and the file examined; examining a `Releasing`
//!    file takes it back (`Library` again, nothing released).
//! 2. At the end of the next census (begun a pass after the mark, so an `mmap` that passed the
//!    hook before the mark has completed and is seen), a library still marked and mapped by
//!    nobody is **released**: its entry becomes `InProgress` (a process mapping it meanwhile
//!    waits, paused), `Datapath::release` detaches its probes and purges its id from every map,
//!    then the entry goes and the waiter examines and registers the file anew.
//!
//! A library mapped at the second census is kept (and unmarked). The work of a pass is bounded by
//! [`PIDS_PER_PASS`] processes, and a census releases at most [`RELEASES_PER_CENSUS`] libraries
//! (the others stay marked for the next); a release costs the links of one library.

use std::{
    collections::HashSet,
    fs,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use enforcer_common::watch::KnownKey;
use serde_json::json;
use tracing::{debug, info, warn};

use super::{Examined, Shared, lock};
use crate::{
    agent::events::Reporter,
    datapath::{Datapath, Registered, capacity::Held},
    libraries::{Library, procfs},
};

/// Processes whose maps one pass reads.
pub const PIDS_PER_PASS: usize = 512;
/// Libraries one census releases (each detach waits for the kernel: a grace period per
/// `uprobe_multi` link, per probe with perf-event uprobes); the others stay marked for the next.
pub const RELEASES_PER_CENSUS: usize = 64;
/// Keys of `KNOWN_FILES` walked to find a marked file's (its capacity).
const KNOWN_FILES_MAX: usize = 65536;

/// A census under way.
struct Census {
    pids: Vec<u32>,
    next: usize,
    /// The libraries probed when it began (those registered later wait for the next one).
    eligible: Vec<Held>,
    inodes: HashSet<u64>,
    mapped: HashSet<u64>,
}

/// The sweep's state between passes.
#[derive(Default)]
pub(super) struct LibrarySweep {
    census: Option<Census>,
    /// Marked at the last complete census: (id, device, inode).
    marked: HashSet<(u32, u64, u64)>,
}

/// Runs the library sweep until `stop`: a pass every `every`.
pub(super) fn run(shared: &Shared, stop: &AtomicBool, every: Duration) {
    let mut sweep = LibrarySweep::default();
    let step = Duration::from_millis(100).min(every);
    loop {
        let mut waited = Duration::ZERO;
        while waited < every {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            thread::sleep(step);
            waited += step;
        }
        sweep.pass(shared, Path::new("/proc"));
    }
}

impl LibrarySweep {
    /// One pass: up to [`PIDS_PER_PASS`] processes of the census; at its end, marks and releases.
    pub(super) fn pass(&mut self, shared: &Shared, proc_root: &Path) {
        let census = self
            .census
            .get_or_insert_with(|| Census::begin(&shared.datapath, proc_root));
        let end = (census.next + PIDS_PER_PASS).min(census.pids.len());
        for &pid in &census.pids[census.next..end] {
            let Ok(maps) = fs::read(proc_root.join(pid.to_string()).join("maps")) else {
                continue; // gone
            };
            for m in procfs::parse_maps(pid, &maps) {
                if census.inodes.contains(&m.inode) {
                    census.mapped.insert(m.inode);
                }
            }
        }
        census.next = end;
        if census.next < census.pids.len() {
            return;
        }
        if let Some(census) = self.census.take() {
            self.finish(shared, census);
        }
    }

    fn finish(&mut self, shared: &Shared, census: Census) {
        let mut to_mark = Vec::new();
        let mut deferred = HashSet::new();
        let mut released = 0;
        for held in census.eligible {
            let key = (held.id, held.dev, held.ino);
            // Released since the census began (its file was rewritten in place, and its new
            // content registered under another id): not this census's to mark or release.
            if !shared.datapath.holds(&held) {
                continue;
            }
            let in_use = held.inodes.iter().any(|i| census.mapped.contains(i));
            match (in_use, self.marked.contains(&key)) {
                (true, true) => unmark(shared, &held),
                (true, false) => {}
                (false, true) if released < RELEASES_PER_CENSUS => {
                    release(shared, &held);
                    released += 1;
                }
                (false, true) => {
                    deferred.insert(key);
                }
                (false, false) => to_mark.push(held),
            }
        }
        // What this census marked, and what it had no time to release (still `Releasing`): a
        // released or taken-back library starts over.
        self.marked = mark(shared, &to_mark);
        self.marked.extend(deferred);
    }
}

impl Census {
    fn begin(datapath: &Datapath, proc_root: &Path) -> Census {
        let eligible = datapath.held();
        let inodes = eligible
            .iter()
            .flat_map(|h| h.inodes.iter().copied())
            .collect();
        let pids = fs::read_dir(proc_root)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .collect()
            })
            .unwrap_or_default();
        Census {
            pids,
            next: 0,
            eligible,
            inodes,
            mapped: HashSet::new(),
        }
    }
}

/// Step 1: `Releasing`, forgotten by the event thread, out of `KNOWN_FILES` (in that order: a
/// hook's event about the file comes after it left `KNOWN_FILES`, by then the event thread has
/// the file to forget).
fn mark(shared: &Shared, held: &[Held]) -> HashSet<(u32, u64, u64)> {
    let mut marked = HashSet::new();
    let mut inodes = HashSet::new();
    {
        let mut examined = lock(&shared.examined);
        for h in held {
            if let Some(entry) = examined.get_mut(&(h.dev, h.ino))
                && entry.state == Examined::Library
            {
                info!(
                    id = h.id,
                    path = h.path,
                    "library mapped by no process: marked for release"
                );
                entry.state = Examined::Releasing;
                marked.insert((h.id, h.dev, h.ino));
                inodes.insert(h.ino);
            }
        }
    }
    if inodes.is_empty() {
        return marked;
    }
    lock(&shared.forget).extend(inodes.iter().copied());
    let removed = forget_known(shared, &inodes);
    debug!(
        libraries = inodes.len(),
        known_keys = removed,
        "KNOWN_FILES keys of marked libraries removed"
    );
    marked
}

/// A marked library mapped again before its release: `Library` again (if examining it has not
/// taken it back already). Its `KNOWN_FILES` key comes back at its next mapping (one pause).
fn unmark(shared: &Shared, held: &Held) {
    if let Some(entry) = lock(&shared.examined).get_mut(&(held.dev, held.ino))
        && entry.state == Examined::Releasing
    {
        entry.state = Examined::Library;
    }
}

/// Step 2: released, unless examining the file took it back since the mark.
fn release(shared: &Shared, held: &Held) {
    let key = (held.dev, held.ino);
    {
        let mut examined = lock(&shared.examined);
        match examined.get_mut(&key) {
            Some(entry) if entry.state == Examined::Releasing => {
                entry.state = Examined::InProgress;
            }
            _ => return,
        }
    }
    let released = shared.datapath.release(held);
    lock(&shared.examined).remove(&key);
    shared.examined_cv.notify_all();
    shared.stats.released.fetch_add(1, Ordering::Relaxed);
    let over_capacity = held.id == crate::datapath::capacity::OVER_CAPACITY;
    info!(
        id = held.id,
        family = held.family,
        path = held.path,
        over_capacity,
        "library mapped by no process: released (probes detached, id's slot free)"
    );
    report_released(shared, held, released.is_some(), "unmapped");
}

/// The `library_released` event of `held`: `found` whether the datapath still held it,
/// `reason` `unmapped` (the sweep) or `rewritten` (its file changed, `examine.rs`).
pub(super) fn report_released(shared: &Shared, held: &Held, found: bool, reason: &str) {
    shared.reporter.lifecycle(json!({
        "type": "library_released",
        "id": held.id,
        "family": held.family,
        "path": held.path,
        "over_capacity": held.id == crate::datapath::capacity::OVER_CAPACITY,
        "found": found,
        "reason": reason,
    }));
}

/// Removes every `KNOWN_FILES` key with one of `inodes` (the kernel's device encoding, the
/// generation and the `ctime` are not recomputed: every key of the inode number goes, a few
/// extra pauses at most). Bounded by the map's capacity. Returns how many went.
fn forget_known(shared: &Shared, inodes: &HashSet<u64>) -> usize {
    let mut guard = lock(&shared.known);
    let Some(known) = guard.as_mut() else {
        return 0;
    };
    let keys: Vec<KnownKey> = known
        .keys()
        .take(KNOWN_FILES_MAX)
        .filter_map(Result::ok)
        .filter(|k| inodes.contains(&k.file.ino))
        .collect();
    let mut removed = 0;
    for key in keys {
        match known.remove(&key) {
            Ok(()) => removed += 1,
            Err(err) => warn!(
                ?key,
                "cannot take a released file out of KNOWN_FILES: {err}"
            ),
        }
    }
    removed
}

/// Reports a library probed under `OVER_CAPACITY`: a warning and a `capacity` event naming the
/// map and the file.
pub fn report_over_capacity(
    datapath: &Datapath,
    reporter: &Reporter,
    r: &Registered,
    lib: &Library,
    via: &str,
    pid: Option<u32>,
    comm: &str,
) {
    let Some(full) = r.over_capacity else {
        return;
    };
    let capacity = datapath.capacity();
    let path = lib.path.display().to_string();
    warn!(
        map = full.map(), reason = full.reason(), path, family = %lib.family,
        limit = capacity.max, held = capacity.held(), action = %r.decision.action, via, pid,
        comm, "no library id free: probed under the shared over-capacity id, judged by the policy's default"
    );
    reporter.lifecycle(json!({
        "type": "capacity",
        "map": full.map(),
        "level": "full",
        "reason": full.reason(),
        "path": path,
        "family": lib.family.name(),
        "entries": capacity.held(),
        "max_entries": capacity.max,
        "action": r.decision.action.name(),
        "functions": r.functions,
        "via": via,
        "pid": pid,
        "comm": comm,
    }));
}
