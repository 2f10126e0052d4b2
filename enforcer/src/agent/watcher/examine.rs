//! The workers: a file to examine is found through `/proc`, identified against the catalog,
//! and, if it is a TLS library, registered with the datapath (policy, then probes). Each file
//! once: concurrent callers for the same inode wait for the first.

use std::{
    path::Path,
    sync::{Mutex, PoisonError, atomic::Ordering, mpsc},
    time::Instant,
};

use enforcer_common::watch::{self, KnownKey};
use serde_json::json;
use tracing::{debug, error, info, warn};

use super::{Entry, EventFd, Examined, Shared, files, files::Found, lock, monotonic_ns};
use crate::libraries::{self, Identified, Identity, Library, LibraryError};
use crate::policy::Action;

/// A file to examine, for the processes waiting on it.
pub(super) struct Job {
    pub key: KnownKey,
    pub pid: u32,
    pub fd: i32,
    pub kind: u8,
    pub comm: String,
    pub ts_ns: u64,
}

pub(super) struct Done {
    pub key: KnownKey,
    /// `None`: the file could not be reached (its process is gone): not marked known.
    pub result: Option<Examined>,
}

pub(super) fn worker(
    shared: &Shared,
    jobs: &Mutex<mpsc::Receiver<Job>>,
    done: &mpsc::Sender<Done>,
    wake: &EventFd,
) {
    loop {
        let job = match lock(jobs).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let result = files::find(Path::new("/proc"), job.pid, job.kind, job.fd, &job.key.file).map(
            |found| {
                let via = if job.kind == watch::kind::EXEC {
                    "exec"
                } else {
                    "mmap"
                };
                let origin = Origin {
                    via,
                    pid: Some(job.pid),
                    comm: &job.comm,
                    since_ns: Some(job.ts_ns),
                };
                examine(shared, &found, &origin, true)
            },
        );
        let result = result.flatten();
        if result.is_some_and(Examined::is_settled) {
            mark_known(shared, job.key);
        }
        // The file's tables were read and freed: give the pages back.
        crate::agent::memory::trim();
        shared.urgent.fetch_sub(1, Ordering::SeqCst);
        if done
            .send(Done {
                key: job.key,
                result,
            })
            .is_err()
        {
            return;
        }
        wake.signal();
    }
}

pub(super) fn mark_known(shared: &Shared, key: KnownKey) {
    if let Some(known) = lock(&shared.known).as_mut()
        && let Err(err) = known.insert(key, 1, 0)
    {
        warn!(?key, "cannot mark a file as known: {err}");
    }
}

/// Who brought a file to our attention.
pub(super) struct Origin<'a> {
    /// `mmap`, `exec` or `scan`.
    pub via: &'static str,
    pub pid: Option<u32>,
    pub comm: &'a str,
    /// When the hook saw it (`CLOCK_MONOTONIC` ns).
    pub since_ns: Option<u64>,
}

/// Identifies `found` (once per file: concurrent callers for the same file wait for the first)
/// and, if it is a TLS library, probes it. With `probe` off a TLS library is left alone and not
/// recorded (`None`): the first process that maps it will be paused and it is probed then.
pub(super) fn examine(
    shared: &Shared,
    found: &Found,
    origin: &Origin<'_>,
    probe: bool,
) -> Option<Examined> {
    let inode = (found.st_dev, found.st_ino);
    let entry = |state| Entry {
        generation: found.generation,
        ctime: found.ctime,
        state,
    };
    // A probed library whose `ctime` moved on: its probes are settled once it is identified.
    let mut rewritten = false;
    {
        let mut examined = lock(&shared.examined);
        loop {
            match examined.get(&inode) {
                Some(Entry {
                    state: Examined::InProgress,
                    ..
                }) => {
                    examined = shared
                        .examined_cv
                        .wait(examined)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                Some(
                    marked @ Entry {
                        state: Examined::Releasing,
                        ..
                    },
                ) if !marked.is_stale(found.generation, found.ctime) => {
                    // Mapped again before the library sweep released it: kept, still probed.
                    info!(path = %found.path.display(), pid = origin.pid, "library marked for release mapped again: kept");
                    examined.insert(inode, entry(Examined::Library));
                    return Some(Examined::Library);
                }
                Some(done) if !done.is_stale(found.generation, found.ctime) => {
                    return Some(done.state);
                }
                Some(old) => {
                    rewritten = old.is_rewritten_library(found.generation, found.ctime);
                    debug!(path = %found.path.display(), old = ?old, generation = ?found.generation, ctime = ?found.ctime, "inode number reused by a new file, or the file changed: examining it");
                    examined.insert(inode, entry(Examined::InProgress));
                    break;
                }
                None => {
                    examined.insert(inode, entry(Examined::InProgress));
                    break;
                }
            }
        }
    }
    shared.stats.examined.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let catalog = shared.datapath.catalog();
    // Read through the link the process holds, checked to be the inode found; companions are
    // looked for beside the name. A file being rewritten gets two more tries before it is
    // unknown.
    let identify =
        || libraries::identify_at(&found.link, found.path.parent(), Some(inode), &catalog);
    let mut identified = identify();
    for _ in 0..2 {
        if !matches!(identified, Err(LibraryError::Changed { .. })) {
            break;
        }
        identified = identify();
    }
    tracing::trace!(path = %found.path.display(), elapsed = ?started.elapsed(), "identified");
    if rewritten && settle_rewrite(shared, found, origin, &identified) {
        lock(&shared.examined).insert(inode, entry(Examined::Library));
        shared.examined_cv.notify_all();
        return Some(Examined::Library);
    }
    let result = match identified {
        Ok(Some(_)) if !probe => {
            lock(&shared.examined).remove(&inode);
            shared.examined_cv.notify_all();
            return None;
        }
        Ok(Some(identified)) => {
            let lib = Library {
                family: identified.family,
                path: found.path.clone(),
                dev: found.st_dev,
                ino: found.st_ino,
                probes: identified.probes,
                pids: origin.pid.into_iter().collect(),
                mapped_as: vec![found.name.clone()],
                identity: identified.identity,
                companion: identified.companion,
            };
            register(shared, lib, origin);
            Examined::Library
        }
        Ok(None) => Examined::NotTls,
        Err(err) => {
            unknown(shared, found, origin, &err);
            Examined::Unknown
        }
    };
    lock(&shared.examined).insert(inode, entry(result));
    shared.examined_cv.notify_all();
    Some(result)
}

/// A probed library's file whose `ctime` changed, now identified as `identified`. If every
/// library registered on the inode was registered with the same content (same SHA-256; without
/// one, same build id and size), the change was to its metadata (`chmod`, `touch`): its probes
/// stay, `true`. Otherwise the file was rewritten in place: the probes sit at the old content's
/// offsets in code that is not that content any more (the kernel's uprobes are on inode and
/// offset), and attribute whatever runs there to the old library. Each is released at once
/// (probes detached, id purged, slot free: `Datapath::release`), reported (warning,
/// `library_released` with `reason: rewritten`), and `false`: the new content is then
/// registered like any new file, under a new id, with its own verdict.
///
/// At once, not when nobody maps the old content: after an in-place rewrite every mapping of the
/// inode reads the new bytes (the page cache is the file's), so there is no process left that
/// runs the old content the probes describe, except in the pages the probes themselves copied
/// (see docs/architecture.md, "Files rewritten in place").
fn settle_rewrite(
    shared: &Shared,
    found: &Found,
    origin: &Origin<'_>,
    identified: &Result<Option<Identified>, LibraryError>,
) -> bool {
    let registered = shared.datapath.held_at(found.st_dev, found.st_ino);
    let now = match identified {
        Ok(Some(i)) => Some(&i.identity),
        _ => None,
    };
    let same = |lib: &Library| now.is_some_and(|n| same_content(&lib.identity, n));
    if !registered.is_empty() && registered.iter().all(|(_, lib)| same(lib)) {
        debug!(path = %found.path.display(), "probed library's ctime changed, same content: probes kept");
        return true;
    }
    let path = found.path.display().to_string();
    let now_is = match identified {
        Ok(Some(i)) => i.family.name().to_string(),
        Ok(None) => "not TLS".to_string(),
        Err(_) => "unknown".to_string(),
    };
    for (held, lib) in registered {
        let released = shared.datapath.release(&held);
        shared.stats.released.fetch_add(1, Ordering::Relaxed);
        warn!(
            id = held.id,
            family = held.family,
            version = lib.identity.version.as_deref().unwrap_or("unknown"),
            path,
            now = now_is,
            via = origin.via,
            pid = origin.pid,
            comm = origin.comm,
            "probed library rewritten in place: its probes detached and its id released; the new content is examined as a new file"
        );
        super::release::report_released(shared, &held, released.is_some(), "rewritten");
    }
    false
}

/// The same bytes, as far as the identities say.
fn same_content(a: &Identity, b: &Identity) -> bool {
    match (&a.sha256, &b.sha256) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a.size == b.size && a.build_id.is_some() && a.build_id == b.build_id,
        _ => false,
    }
}

/// Reports a file that could not be analysed, as the policy's `unknown_files` says (its TLS, if
/// any, is unattributed: the kernel applies `unattributed_tls` to it).
fn unknown(shared: &Shared, found: &Found, origin: &Origin<'_>, err: &LibraryError) {
    let action = shared.datapath.policy().read().policy.unknown_files;
    let path = found.path.display().to_string();
    let reason = err.to_string();
    match action {
        Action::Allow => info!(
            path, reason, action = %action, via = origin.via, pid = origin.pid,
            comm = origin.comm, "file cannot be analysed: unknown (its TLS is unattributed)"
        ),
        Action::Audit | Action::Deny => warn!(
            path, reason, action = %action, via = origin.via, pid = origin.pid,
            comm = origin.comm, "file cannot be analysed: unknown (its TLS is unattributed)"
        ),
    }
    shared.reporter.lifecycle(json!({
        "type": "unknown_file",
        "path": path,
        "reason": reason,
        "action": action.name(),
        "via": origin.via,
        "pid": origin.pid,
        "comm": origin.comm,
    }));
}

/// Registers a new TLS library with the datapath (policy, table, probes) and reports it.
fn register(shared: &Shared, lib: Library, origin: &Origin<'_>) {
    // A runtime's file (a JVM): nothing to probe; its processes' TLS is judged when they send
    // it (`agent::events::who`).
    if lib.probes.is_empty() {
        debug!(path = %lib.path.display(), family = %lib.family, pid = origin.pid, "runtime mapped: nothing to probe");
        return;
    }
    let version = lib.identity.version.clone();
    let path = lib.path.display().to_string();
    let family = lib.family.clone();
    // A process gone before its uid was read is charged to a uid of its own (never to root).
    let uid = origin
        .pid
        .map(|pid| real_uid(Path::new("/proc"), pid).unwrap_or(u32::MAX));
    let registered = shared.datapath.register(lib.clone(), uid);
    let since_us = origin
        .since_ns
        .map(|t| monotonic_ns().saturating_sub(t) / 1000);
    match registered {
        Ok(r) if r.over_capacity.is_some() => {
            shared.stats.libraries.fetch_add(1, Ordering::Relaxed);
            super::report_over_capacity(
                &shared.datapath,
                &shared.reporter,
                &r,
                &lib,
                origin.via,
                origin.pid,
                origin.comm,
            );
        }
        Ok(r) => {
            shared.stats.libraries.fetch_add(1, Ordering::Relaxed);
            info!(
                id = r.id, family = %family, version = version.as_deref().unwrap_or("unknown"),
                path, functions = r.functions, action = %r.decision.action, via = origin.via,
                pid = origin.pid, comm = origin.comm, "new library probed"
            );
            shared.reporter.lifecycle(json!({
                "type": "library",
                "id": r.id,
                "family": family.name(),
                "version": version,
                "path": path,
                "action": r.decision.action.name(),
                "rule_line": r.decision.rule_line,
                "functions": r.functions,
                "via": origin.via,
                "pid": origin.pid,
                "comm": origin.comm,
                "probed_after_us": since_us,
            }));
        }
        Err(err) => error!(path, "new library not covered: {err}"),
    }
}

/// The real uid of `pid` (`Uid:` in its `status`; the owner of `/proc/<pid>` would say root for
/// a process that made itself non-dumpable).
pub(super) fn real_uid(proc_root: &Path, pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
}
