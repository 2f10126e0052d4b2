//! New library files, instrumented as they appear.
//!
//! Uprobes attach to files (inodes), so every process that maps a file enforcer probed at start
//! is covered. What start-up cannot know is a file that appears later: a vendored `libssl` a
//! freshly started process brings in `/tmp`, a container image unpacked after start, a newly
//! built program with TLS linked in. The watcher covers them, and covers them *before their
//! first TLS call*:
//!
//! 1. Kernel (`enforcer-ebpf/src/exec.rs`): on every executable file mapping (`mmap` with
//!    `PROT_EXEC` and an fd: how the dynamic loader maps each library, at start and on `dlopen`)
//!    and every `execve`, the file's key (device, inode, generation) is looked up in
//!    `KNOWN_FILES`. A known file costs one hash lookup and nothing else. An unknown one: the
//!    process is listed in `PAUSED`, the thread is sent `SIGSTOP` (it stops on its way out of the
//!    syscall, before running another instruction of its own; the stop takes the whole thread
//!    group), and a `NewFileEvent` goes to userspace.
//! 2. Userspace, event thread: one pidfd per paused process; the file joins the work queue (or
//!    the waiters of a file already being examined).
//! 3. Workers (one per CPU, at most 4): find the file through `/proc/<pid>/fd/<n>` (or
//!    `/proc/<pid>/exe`), identify it against the catalog, and if it is a TLS library give it the
//!    next library id, its action from the policy, and its uprobes. Then the file's key enters
//!    `KNOWN_FILES`, TLS library or not, so it never pauses anything again.
//! 4. Event thread: a process is resumed (`SIGCONT` through its pidfd) when every file it waits
//!    for is done, and leaves `PAUSED`.
//!
//! At start the files discovery found are entered into `KNOWN_FILES`, then a background sweep
//! examines every file mapped by a running process and every shared object and executable in the
//! library and program directories, so that a file merely new to this agent (not new to the
//! host) rarely costs a pause.
//!
//! Trade-offs (see docs/architecture.md, "New library files"):
//! - `SIGSTOP` is a job-control stop: a parent waiting with `WUNTRACED` (an interactive shell)
//!   may see its child stop and continue. Only files never seen before cause it, once each.
//! - A process that is ptraced is not paused (its debugger would see the stop); its file is
//!   still probed as soon as possible.
//! - A pause lasts at most [`PAUSE_BUDGET`]; after that the process is resumed whatever the
//!   state of its file (fail-open), and a warning says so.
//! - Our `SIGCONT` also ends a stop someone else requested while we held the process (a
//!   `SIGSTOP` or Ctrl-Z sent during the few milliseconds of the pause is lost).
//! - If the agent dies while processes are paused, a helper process resumes them (see
//!   [`resume::Resumer`]).

mod files;
pub mod kernel;
mod resume;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, IterableMap, MapData, RingBuf},
};
use enforcer_common::watch::{self, FileKey, NewFileEvent, WatchConfig};
use serde_json::json;
use tracing::{debug, error, info, warn};

use crate::{
    agent::events::{LibInfo, Reporter},
    datapath::{loader, uprobes::Prober},
    libraries::{self, DiscoverOptions, Library},
    policy::Policy,
};

use files::Found;
use resume::{Pidfd, Resumer};

/// Longest a process stays paused: past it, it is resumed even if its file is not probed yet.
pub const PAUSE_BUDGET: Duration = Duration::from_secs(10);
/// How often the event thread looks at pause budgets when nothing happens.
const TICK: Duration = Duration::from_millis(100);
/// Program directories swept at start, besides the library directories.
const PROGRAM_DIRS: [&str; 6] = [
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/bin",
    "/sbin",
];

/// What the watcher does; reported in the `ready` record as `new_files`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Unknown files pause the process until they are examined.
    Pause,
    /// Unknown files are examined without pausing anyone (first calls may go unattributed).
    Report,
    /// Not watching: why.
    Off(String),
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Pause => "pause",
            Status::Report => "report",
            Status::Off(_) => "off",
        }
    }
}

/// What the watcher needs from `attach`.
pub struct Setup<'a> {
    pub policy: &'a Policy,
    /// Every library discovery found (probed or not): already examined.
    pub libraries: &'a [Library],
    /// Shares the library table with the event reader; also prints `library` / `resumed` records.
    pub reporter: Reporter,
    /// Pause processes that map unknown files (else only report and probe them).
    pub pause: bool,
    /// Probed the start-up libraries; probes new ones.
    pub prober: Prober,
}

/// The running watcher. It owns the `Ebpf` object from its start on (it attaches uprobes to new
/// files at any time); dropping it (or [`Watcher::stop`]) detaches the hooks, resumes every
/// process still paused, then drops the object (which detaches everything else).
pub struct Watcher {
    pub status: Status,
    shared: Arc<Shared>,
    running: Option<Running>,
}

struct Running {
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    events: JoinHandle<()>,
    sweep: JoinHandle<()>,
}

/// What every thread of the watcher shares.
struct Shared {
    ebpf: Mutex<Ebpf>,
    known: Mutex<Option<BpfHashMap<MapData, FileKey, u8>>>,
    /// (st_dev, st_ino) → what examining the file found; `InProgress` while someone is at it.
    examined: Mutex<HashMap<(u64, u64), Entry>>,
    examined_cv: Condvar,
    next_id: AtomicU32,
    /// Replaced by a policy reload ([`Watcher::set_policy`]).
    policy: std::sync::RwLock<Policy>,
    reporter: Reporter,
    stats: Stats,
    /// Event-driven jobs queued or running: the start-up sweep waits while there are any.
    urgent: AtomicUsize,
    /// Probes new libraries; owns the `uprobe_multi` links of start-up and new libraries.
    prober: Prober,
}

impl Shared {
    fn new(ebpf: Ebpf, policy: Policy, reporter: Reporter, prober: Prober) -> Arc<Shared> {
        Arc::new(Shared {
            ebpf: Mutex::new(ebpf),
            known: Mutex::new(None),
            examined: Mutex::new(HashMap::new()),
            examined_cv: Condvar::new(),
            next_id: AtomicU32::new(1),
            policy: std::sync::RwLock::new(policy),
            reporter,
            stats: Stats::default(),
            urgent: AtomicUsize::new(0),
            prober,
        })
    }
}

impl Shared {
    fn policy(&self) -> Policy {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One examined inode. Inode numbers are reused as soon as a file is deleted (ext4 hands the
/// number of a file just deleted to the next file created in the directory), so the generation
/// says whether a new file with an examined number is that file: a program built while the
/// agent runs often gets the number of a deleted file examined as not TLS. Where a generation
/// is unknown (a filesystem without `FS_IOC_GETVERSION`), the number alone decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    generation: Option<u32>,
    state: Examined,
}

impl Entry {
    /// True if this entry is about another file than one of `generation` with its number.
    fn is_other_file(&self, generation: Option<u32>) -> bool {
        matches!((self.generation, generation), (Some(a), Some(b)) if a != b)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Examined {
    InProgress,
    /// A TLS library, with its id (probed or not).
    Library(u32),
    NotTls,
}

#[derive(Default)]
struct Stats {
    events: AtomicU64,
    examined: AtomicU64,
    libraries: AtomicU64,
    pauses: AtomicU64,
    over_budget: AtomicU64,
    pause_us_total: AtomicU64,
    pause_us_max: AtomicU64,
}

impl Watcher {
    /// Starts watching. Never fails: if the hooks cannot be set up here (no BTF field, no
    /// syscall tracepoints), the watcher only holds `ebpf` and says why in `status`; the agent
    /// goes on with the libraries it probed at start.
    pub fn start(mut ebpf: Ebpf, setup: Setup<'_>) -> Watcher {
        let next_id = setup.libraries.iter().map(|l| l.id).max().unwrap_or(0) + 1;
        let mut examined = HashMap::new();
        for lib in setup.libraries {
            let generation = std::fs::metadata(&lib.path)
                .ok()
                .filter(|md| {
                    use std::os::unix::fs::MetadataExt;
                    (md.dev(), md.ino()) == (lib.dev, lib.ino)
                })
                .and_then(|md| files::generation_of(&lib.path, &md));
            examined.insert(
                (lib.dev, lib.ino),
                Entry {
                    generation,
                    state: Examined::Library(lib.id),
                },
            );
        }
        let maps = take_maps(&mut ebpf);
        let shared = Shared::new(ebpf, setup.policy.clone(), setup.reporter, setup.prober);
        *lock(&shared.examined) = examined;
        shared.next_id.store(next_id, Ordering::Relaxed);
        let mut watcher = Watcher {
            status: Status::Off(String::new()),
            shared: shared.clone(),
            running: None,
        };
        match maps.and_then(|maps| arm(&shared, maps, setup.libraries, setup.pause)) {
            Ok(running) => {
                watcher.status = if setup.pause {
                    Status::Pause
                } else {
                    Status::Report
                };
                watcher.running = Some(running);
            }
            Err(err) => {
                warn!("new library files will not be instrumented: {err:#}");
                watcher.status = Status::Off(format!("{err:#}"));
            }
        }
        watcher
    }

    /// A watcher that watches nothing and only holds `ebpf` and `prober` (the agent is shutting
    /// down before it was ready): dropping it drops both.
    pub fn hold(ebpf: Ebpf, prober: Prober) -> Watcher {
        let reporter = Reporter::new(HashMap::new(), crate::agent::events::EventFormat::Text);
        Watcher {
            status: Status::Off("not started".into()),
            shared: Shared::new(ebpf, crate::policy::embedded_default(), reporter, prober),
            running: None,
        }
    }

    /// Libraries found from now on are decided by `policy` (a reload; the caller rewrites the
    /// actions of the libraries already probed). Returns the id the next library will get.
    pub fn set_policy(&self, policy: Policy) -> u32 {
        *self
            .shared
            .policy
            .write()
            .unwrap_or_else(PoisonError::into_inner) = policy;
        self.shared.next_id.load(Ordering::Relaxed)
    }

    /// Detaches the hooks, resumes every paused process, and waits for the threads. The object
    /// (with every uprobe) stays until the watcher is dropped. Idempotent.
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.store(true, Ordering::SeqCst);
        running.wake.signal();
        if running.events.join().is_err() {
            error!("the new-file event thread panicked");
        }
        // The sweep checks the stop flag between files.
        let _ = running.sweep.join();
        let s = &self.shared.stats;
        let pauses = s.pauses.load(Ordering::Relaxed);
        info!(
            events = s.events.load(Ordering::Relaxed),
            files_examined = s.examined.load(Ordering::Relaxed),
            new_libraries = s.libraries.load(Ordering::Relaxed),
            pauses,
            pauses_over_budget = s.over_budget.load(Ordering::Relaxed),
            mean_pause_us = s.pause_us_total.load(Ordering::Relaxed) / pauses.max(1),
            max_pause_us = s.pause_us_max.load(Ordering::Relaxed),
            "new-file watcher stopped"
        );
    }
}

impl Drop for Watcher {
    /// Hooks off and paused processes resumed; the object and the prober (with every uprobe) go
    /// when the last reference to `shared` does, right after.
    fn drop(&mut self) {
        self.stop();
    }
}

struct Maps {
    ring: RingBuf<MapData>,
    known: BpfHashMap<MapData, FileKey, u8>,
    paused: BpfHashMap<MapData, u32, u64>,
    config: Array<MapData, WatchConfig>,
}

fn take_maps(ebpf: &mut Ebpf) -> Result<Maps> {
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("map {name} is missing from the eBPF object"))
    };
    Ok(Maps {
        ring: RingBuf::try_from(take(watch::NEW_FILES)?)?,
        known: BpfHashMap::try_from(take(watch::KNOWN_FILES)?)?,
        paused: BpfHashMap::try_from(take(watch::PAUSED)?)?,
        config: Array::try_from(take(watch::WATCH_CONFIG)?)?,
    })
}

/// Offsets, known files, helper, hooks, threads: in that order, so that the hooks never pause a
/// process nobody is ready to resume.
fn arm(shared: &Arc<Shared>, maps: Maps, libs: &[Library], pause: bool) -> Result<Running> {
    let mut config = kernel::config()?;
    let Maps {
        ring,
        mut known,
        paused,
        config: mut config_map,
    } = maps;
    for lib in libs {
        if let Some(key) = kernel::key_of_path(&lib.path) {
            let _ = known.insert(key, 1, 0);
        }
    }
    *lock(&shared.known) = Some(known);
    let resumer = Resumer::spawn(paused.map().fd().as_fd())
        .context("starting the helper that resumes paused processes if the agent dies")?;
    config.enabled = 1;
    config.pause = u32::from(pause);
    config_map.set(0, config, 0)?;
    let wake = Arc::new(EventFd::new()?);
    let stop = Arc::new(AtomicBool::new(false));
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let workers = thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    let mut worker_handles = Vec::new();
    for i in 0..workers {
        let (shared, jobs, done, wake) = (
            shared.clone(),
            jobs_rx.clone(),
            done_tx.clone(),
            wake.clone(),
        );
        worker_handles.push(
            thread::Builder::new()
                .name(format!("new-files-{i}"))
                .spawn(move || worker(&shared, &jobs, &done, &wake))?,
        );
    }
    drop(done_tx);
    let event_loop = EventLoop {
        shared: shared.clone(),
        ring,
        paused,
        config_map,
        files: HashMap::new(),
        procs: HashMap::new(),
        jobs: Some(jobs_tx),
        done: done_rx,
        workers: worker_handles,
        resumer: Some(resumer),
        wake: wake.clone(),
        stop: stop.clone(),
    };
    // The event thread runs before the hooks attach: nothing is paused with nobody listening.
    let events = thread::Builder::new()
        .name("new-files".into())
        .spawn(move || event_loop.run())?;
    if let Err(err) = kernel::attach(&mut lock(&shared.ebpf)) {
        stop.store(true, Ordering::SeqCst);
        wake.signal();
        let _ = events.join();
        return Err(err.into());
    }
    let sweep = {
        let (shared, stop) = (shared.clone(), stop.clone());
        thread::Builder::new()
            .name("new-files-sweep".into())
            .spawn(move || sweep(&shared, &stop))?
    };
    Ok(Running {
        wake,
        stop,
        events,
        sweep,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A Linux eventfd: workers and `stop` wake the event thread with it.
struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    fn new() -> std::io::Result<EventFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; the fd returned is ours.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh fd owned by nobody else.
        Ok(EventFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 (non-blocking).
        unsafe { libc::read(self.0.as_raw_fd(), (&raw mut value).cast(), 8) };
    }
}

/// A file to examine, for the processes waiting on it.
struct Job {
    key: FileKey,
    pid: u32,
    fd: i32,
    kind: u8,
    comm: String,
    ts_ns: u64,
}

struct Done {
    key: FileKey,
    /// `None`: the file could not be reached (its process is gone): not marked known.
    result: Option<Examined>,
}

fn worker(
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
        let result =
            files::find(Path::new("/proc"), job.pid, job.kind, job.fd, &job.key).map(|found| {
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
            });
        let result = result.flatten();
        if result.is_some() {
            mark_known(shared, job.key);
        }
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

fn mark_known(shared: &Shared, key: FileKey) {
    if let Some(known) = lock(&shared.known).as_mut()
        && let Err(err) = known.insert(key, 1, 0)
    {
        warn!(?key, "cannot mark a file as known: {err}");
    }
}

/// Who brought a file to our attention.
struct Origin<'a> {
    /// `mmap`, `exec` or `scan`.
    via: &'static str,
    pid: Option<u32>,
    comm: &'a str,
    /// When the hook saw it (`CLOCK_MONOTONIC` ns).
    since_ns: Option<u64>,
}

/// Identifies `found` (once per file: concurrent callers for the same file wait for the first)
/// and, if it is a TLS library, probes it. With `probe` off a TLS library is left alone and not
/// recorded (`None`): the first process that maps it will be paused and it is probed then.
fn examine(shared: &Shared, found: &Found, origin: &Origin<'_>, probe: bool) -> Option<Examined> {
    let inode = (found.st_dev, found.st_ino);
    let entry = |state| Entry {
        generation: found.generation,
        state,
    };
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
                Some(done) if !done.is_other_file(found.generation) => return Some(done.state),
                Some(old) => {
                    debug!(path = %found.path.display(), old = ?old, generation = ?found.generation, "inode number reused by a new file: examining it");
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
    let catalog = shared.policy().catalog.clone();
    let identified = libraries::identify_with(&found.path, &catalog);
    tracing::trace!(path = %found.path.display(), elapsed = ?started.elapsed(), "identified");
    let result = match identified {
        Ok(Some(_)) if !probe => {
            lock(&shared.examined).remove(&inode);
            shared.examined_cv.notify_all();
            return None;
        }
        Ok(Some(identified)) => {
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let lib = Library {
                id,
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
            probe_new_library(shared, &lib, origin);
            Examined::Library(id)
        }
        Ok(None) => Examined::NotTls,
        Err(err) => {
            debug!(path = %found.path.display(), "not identified: {err}");
            Examined::NotTls
        }
    };
    lock(&shared.examined).insert(inode, entry(result));
    shared.examined_cv.notify_all();
    Some(result)
}

fn probe_new_library(shared: &Shared, lib: &Library, origin: &Origin<'_>) {
    let version = lib.identity.version.clone();
    let path = lib.path.display().to_string();
    let (ready, decision) = {
        // The policy stays read-locked until the library is listed: a reload's `set_policy`
        // waits for it, so either the reload finds this library (and rewrites its maps) or the
        // library is written with the new policy, never with the old one after the reload.
        let policy = shared.policy.read().unwrap_or_else(PoisonError::into_inner);
        // Action and scope first: the first connection may follow the probes within
        // microseconds.
        let ready = loader::apply_library_policy(&mut lock(&shared.ebpf), &policy, lib).map(|_| ());
        shared.reporter.add_library(
            lib.id,
            LibInfo {
                path: path.clone(),
                ..LibInfo::of(lib)
            },
        );
        (ready, policy.decide(lib))
    };
    let probed: Result<usize> = match ready {
        Err(err) => Err(err.into()),
        Ok(()) => shared.prober.attach(lib, || lock(&shared.ebpf)),
    };
    let since_us = origin
        .since_ns
        .map(|t| monotonic_ns().saturating_sub(t) / 1000);
    match probed {
        Ok(functions) => {
            shared.stats.libraries.fetch_add(1, Ordering::Relaxed);
            info!(
                id = lib.id, family = %lib.family, version = version.as_deref().unwrap_or("unknown"),
                path, functions, action = %decision.action, via = origin.via, pid = origin.pid,
                comm = origin.comm, "new library probed"
            );
            shared.reporter.lifecycle(json!({
                "type": "library",
                "id": lib.id,
                "family": lib.family.name(),
                "version": version,
                "path": path,
                "action": decision.action.name(),
                "rule_line": decision.rule_line,
                "functions": functions,
                "via": origin.via,
                "pid": origin.pid,
                "comm": origin.comm,
                "probed_after_us": since_us,
            }));
        }
        Err(err) => error!(id = lib.id, path, "new library not covered: {err:#}"),
    }
}

/// Start-up sweep, niced, and out of the way of paused processes (it waits while any file they
/// wait for is being examined):
/// - files mapped right now: TLS libraries among them are probed at once (they may have been
///   mapped between discovery and the hooks, which will not see them again);
/// - the library and program directories: every file that is not a TLS library becomes known,
///   so that a program merely new to this agent is not paused when it starts. TLS libraries
///   there stay unknown and are probed when a process first maps them (probing costs kernel
///   time now and at exit; most of them are never used).
fn sweep(shared: &Shared, stop: &AtomicBool) {
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
            .is_some_and(|e| !e.is_other_file(found.generation))
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
        if examine(shared, &found, &origin, probe).is_some()
            && let Some(key) = kernel::key_of_path(&found.path)
        {
            mark_known(shared, key);
        }
    }
    info!(files = total, examined = fresh, elapsed = ?started.elapsed(), "new-file sweep done");
}

/// A file some paused processes wait for.
enum FileState {
    Pending { waiters: Vec<Waiter> },
    Done,
}

struct Waiter {
    pid: u32,
    since: Instant,
}

/// A process we paused.
struct Proc {
    pidfd: Option<Pidfd>,
    comm: String,
    /// Files it waits for.
    pending: u32,
    /// When the first of its current stops happened (`CLOCK_MONOTONIC` ns).
    first_stop_ns: u64,
    /// When we last sent it `SIGCONT` (`CLOCK_MONOTONIC` ns, taken after the signal).
    last_cont_ns: u64,
}

struct EventLoop {
    shared: Arc<Shared>,
    ring: RingBuf<MapData>,
    paused: BpfHashMap<MapData, u32, u64>,
    config_map: Array<MapData, WatchConfig>,
    files: HashMap<FileKey, FileState>,
    procs: HashMap<u32, Proc>,
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    resumer: Option<Resumer>,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
}

impl EventLoop {
    /// Until `stop`. Whatever happens here (even a panic), dropping the loop turns the hooks off
    /// and resumes everyone (`Drop`).
    fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            self.wait();
            self.drain_ring();
            self.drain_done();
            self.check_budgets();
        }
    }

    fn wait(&self) {
        let mut fds = [
            libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: valid array of pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, TICK.as_millis() as libc::c_int) };
        self.wake.clear();
    }

    fn drain_ring(&mut self) {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<NewFileEvent>() {
                // SAFETY: the hook wrote a whole NewFileEvent (repr(C), any bit pattern valid).
                events.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr() as *const NewFileEvent)
                });
            }
        }
        for event in events {
            self.on_event(&event);
        }
    }

    fn on_event(&mut self, e: &NewFileEvent) {
        self.shared.stats.events.fetch_add(1, Ordering::Relaxed);
        let comm = comm(&e.comm);
        debug!(pid = e.pid, comm, key = ?e.key, kind = e.kind, pause = e.pause, "unknown executable file");
        let state = self.files.get(&e.key);
        let done = matches!(state, Some(FileState::Done));
        if e.pause != watch::pause::STOPPED {
            if e.pause == watch::pause::TRACED || e.pause == watch::pause::FAILED {
                debug!(pid = e.pid, pause = e.pause, "process not paused");
            }
            if state.is_none() {
                self.files
                    .insert(e.key, FileState::Pending { waiters: vec![] });
                self.submit(e, comm);
            }
            if self.procs.get(&e.pid).is_none_or(|p| p.pending == 0) {
                let _ = self.paused.remove(&e.pid);
            }
            return;
        }
        let proc = self.procs.entry(e.pid).or_insert_with(|| Proc {
            pidfd: Pidfd::open(e.pid),
            comm: comm.clone(),
            pending: 0,
            first_stop_ns: e.ts_ns,
            last_cont_ns: 0,
        });
        let Some(pidfd) = &proc.pidfd else {
            // Gone already (killed while stopped): nothing to resume, nothing to find.
            self.procs.remove(&e.pid);
            let _ = self.paused.remove(&e.pid);
            return;
        };
        if proc.pending == 0 {
            proc.first_stop_ns = e.ts_ns;
        }
        // Our last SIGCONT may have landed after this stop was queued and cancelled it.
        if e.ts_ns <= proc.last_cont_ns && !done {
            pidfd.signal(libc::SIGSTOP);
        }
        match self.files.get_mut(&e.key) {
            Some(FileState::Done) => {
                // Known by now (the event raced with KNOWN_FILES, or the LRU evicted it).
                mark_known(&self.shared, e.key);
                if proc.pending == 0 {
                    self.resume(e.pid, "known");
                }
            }
            Some(FileState::Pending { waiters }) => {
                waiters.push(Waiter {
                    pid: e.pid,
                    since: Instant::now(),
                });
                proc.pending += 1;
            }
            None => {
                proc.pending += 1;
                self.files.insert(
                    e.key,
                    FileState::Pending {
                        waiters: vec![Waiter {
                            pid: e.pid,
                            since: Instant::now(),
                        }],
                    },
                );
                self.submit(e, comm);
            }
        }
    }

    fn submit(&self, e: &NewFileEvent, comm: String) {
        let job = Job {
            key: e.key,
            pid: e.pid,
            fd: e.fd,
            kind: e.kind,
            comm,
            ts_ns: e.ts_ns,
        };
        if let Some(jobs) = &self.jobs {
            self.shared.urgent.fetch_add(1, Ordering::SeqCst);
            if jobs.send(job).is_err() {
                self.shared.urgent.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn drain_done(&mut self) {
        while let Ok(done) = self.done.try_recv() {
            let waiters = match self.files.remove(&done.key) {
                Some(FileState::Pending { waiters }) => waiters,
                _ => vec![],
            };
            if done.result.is_some() {
                self.files.insert(done.key, FileState::Done);
            }
            for w in waiters {
                self.release(w.pid, "examined");
            }
        }
    }

    /// One file `pid` waited for is done (or over budget): resume it if it was the last.
    fn release(&mut self, pid: u32, why: &'static str) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.pending = p.pending.saturating_sub(1);
            if p.pending == 0 {
                self.resume(pid, why);
            }
        }
    }

    fn resume(&mut self, pid: u32, why: &'static str) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let alive = p.pidfd.as_ref().is_some_and(|fd| fd.signal(libc::SIGCONT));
        let now = monotonic_ns();
        p.last_cont_ns = now;
        let _ = self.paused.remove(&pid);
        let paused_us = now.saturating_sub(p.first_stop_ns) / 1000;
        let s = &self.shared.stats;
        s.pauses.fetch_add(1, Ordering::Relaxed);
        s.pause_us_total.fetch_add(paused_us, Ordering::Relaxed);
        s.pause_us_max.fetch_max(paused_us, Ordering::Relaxed);
        debug!(pid, comm = p.comm, paused_us, why, alive, "resumed");
        self.shared.reporter.lifecycle(json!({
            "type": "resumed",
            "pid": pid,
            "comm": p.comm,
            "paused_us": paused_us,
            "why": why,
        }));
    }

    fn check_budgets(&mut self) {
        let mut late = Vec::new();
        for (key, state) in &mut self.files {
            if let FileState::Pending { waiters } = state {
                waiters.retain(|w| {
                    let over = w.since.elapsed() >= PAUSE_BUDGET;
                    if over {
                        late.push((*key, w.pid));
                    }
                    !over
                });
            }
        }
        for (key, pid) in late {
            self.shared
                .stats
                .over_budget
                .fetch_add(1, Ordering::Relaxed);
            warn!(pid, ?key, budget = ?PAUSE_BUDGET, "file still not examined: resuming the process anyway (its first TLS calls may go unattributed)");
            self.release(pid, "budget");
        }
        // Forget processes resumed a while ago (their pidfds close).
        let now = monotonic_ns();
        self.procs
            .retain(|_, p| p.pending > 0 || now.saturating_sub(p.last_cont_ns) < 1_000_000_000);
    }

    /// Hooks off and detached, then every event still in the ring handled, then everyone
    /// resumed.
    fn disarm(&mut self) {
        let mut off = self.config_map.get(&0, 0).unwrap_or_default();
        off.enabled = 0;
        let _ = self.config_map.set(0, off, 0);
        // Detaching waits until no hook is running any more.
        kernel::detach(&mut lock(&self.shared.ebpf));
        self.jobs = None;
        self.drain_ring();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
        self.drain_done();
        let pids: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.pending > 0)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pids {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.pending = 0;
            }
            self.resume(pid, "shutdown");
        }
        if let Some(resumer) = self.resumer.take() {
            resumer.finish();
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.disarm();
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}
