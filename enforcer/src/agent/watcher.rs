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
//!    and every `execve`, the file's key (device, inode, generation, and the inode's `ctime`, so
//!    that a file rewritten in place is a new key) is looked up in `KNOWN_FILES`. A known file
//!    costs one hash lookup and nothing else. An unknown one: the process is listed in `PAUSED`,
//!    the thread is sent `SIGSTOP` (it stops on its way out of the syscall, before running
//!    another instruction of its own; the stop takes the whole thread group), and a
//!    `NewFileEvent` goes to userspace.
//! 2. Userspace, event thread: one pidfd per paused process; the file joins the work queue (or
//!    the waiters of a file already being examined).
//! 3. Workers (one per CPU, at most 4): find the file through `/proc/<pid>/fd/<n>` (or
//!    `/proc/<pid>/exe`), identify it against the catalog, and if it is a TLS library register it
//!    with the [`Datapath`] (next library id, its action from the policy, its uprobes). Then the file's key enters
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
//!
//! After the start-up sweep the same thread runs the library sweep ([`release`]): a library no
//! process maps any more is released and its id's slot reused; a process that maps it again is
//! paused and the file registered anew.

mod event_loop;
mod examine;
mod files;
pub mod kernel;
mod release;
mod resume;
mod sweep;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, IterableMap, MapData, RingBuf},
};
use enforcer_common::watch::{self, KnownKey, WatchConfig};
use tracing::{error, info, warn};

use crate::{
    agent::events::Reporter,
    datapath::{Datapath, lock},
    libraries::Library,
};

use event_loop::EventLoop;
use examine::{Done, Job, worker};
pub use release::report_over_capacity;
use resume::Resumer;

/// Longest a process stays paused: past it, it is resumed even if its file is not probed yet.
pub const PAUSE_BUDGET: Duration = Duration::from_secs(10);
/// How often the event thread looks at pause budgets when nothing happens.
const TICK: Duration = Duration::from_millis(100);

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
    /// Every library discovery found (probed or not): already examined.
    pub libraries: &'a [Library],
    /// Prints `library` / `resumed` records.
    pub reporter: Reporter,
    /// Pause processes that map unknown files (else only report and probe them).
    pub pause: bool,
    /// Seconds between library sweep passes (0: libraries are never released).
    pub library_sweep: u64,
}

/// The running watcher. It shares the [`Datapath`] (it registers new files at any time);
/// dropping it (or [`Watcher::stop`]) detaches the hooks and resumes every process still
/// paused.
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
    datapath: Arc<Datapath>,
    known: Mutex<Option<BpfHashMap<MapData, KnownKey, u8>>>,
    /// The hooks read the inode's `ctime` into `KnownKey` (`WatchConfig::change_counter`):
    /// userspace's keys carry it too.
    change_counter: AtomicBool,
    /// (st_dev, st_ino) → what examining the file found; `InProgress` while someone is at it.
    examined: Mutex<HashMap<(u64, u64), Entry>>,
    examined_cv: Condvar,
    reporter: Reporter,
    stats: Stats,
    /// Event-driven jobs queued or running: the start-up sweep waits while there are any.
    urgent: AtomicUsize,
    /// Inode numbers of files the library sweep marked for release: the event thread forgets
    /// them (its `Done` files) before it handles another event.
    forget: Mutex<Vec<u64>>,
}

/// One examined inode. Inode numbers are reused as soon as a file is deleted (ext4 hands the
/// number of a file just deleted to the next file created in the directory), so the generation
/// says whether a new file with an examined number is that file: a program built while the
/// agent runs often gets the number of a deleted file examined as not TLS. Where a generation
/// is unknown (a filesystem without `FS_IOC_GETVERSION`), the number alone decides. A file
/// rewritten in place keeps both: its `ctime` says it changed, and it is then examined again,
/// a probed library too (see [`Entry::is_stale`] and `examine::settle_rewrite`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    generation: Option<u32>,
    /// `ctime` when it was found, before it was examined.
    ctime: Option<(i64, i64)>,
    state: Examined,
}

impl Entry {
    /// True if this entry is about another file than one of `generation` with its number.
    fn is_other_file(&self, generation: Option<u32>) -> bool {
        matches!((self.generation, generation), (Some(a), Some(b)) if a != b)
    }

    /// True if `found` must be examined again: another file with this number, or this file
    /// changed (its `ctime`) since it was found, whatever it was found to be.
    fn is_stale(&self, generation: Option<u32>, ctime: Option<(i64, i64)>) -> bool {
        self.is_other_file(generation) || self.changed(ctime)
    }

    fn changed(&self, ctime: Option<(i64, i64)>) -> bool {
        matches!((self.ctime, ctime), (Some(a), Some(b)) if a != b)
    }

    /// True if this is a probed library, same file, whose `ctime` moved on: rewritten in place
    /// (or its metadata changed). Its probes were placed for the content it had; examining it
    /// again decides whether they stay (same content) or go (`examine::settle_rewrite`).
    fn is_rewritten_library(&self, generation: Option<u32>, ctime: Option<(i64, i64)>) -> bool {
        let probed = matches!(self.state, Examined::Library | Examined::Releasing);
        probed && !self.is_other_file(generation) && self.changed(ctime)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Examined {
    InProgress,
    /// A TLS library (probed or not).
    Library,
    /// A probed library the library sweep found mapped by no process: still probed, out of
    /// `KNOWN_FILES`; examining it again takes it back (`Library`), else it is released.
    Releasing,
    NotTls,
    /// It could not be analysed (unreadable, malformed, over a cap, changed while read): judged
    /// by the policy's `unknown_files`, and never entered into `KNOWN_FILES`, so every process
    /// that maps it is paused while the cached answer is looked up (or the file, if its `ctime`
    /// changed, examined again).
    Unknown,
}

impl Examined {
    /// True if the file may enter `KNOWN_FILES` (never paused for again).
    fn is_settled(self) -> bool {
        matches!(self, Examined::Library | Examined::NotTls)
    }
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
    released: AtomicU64,
}

impl Watcher {
    /// Starts watching. Never fails: if the hooks cannot be set up here (no BTF field, no
    /// syscall tracepoints), the watcher says why in `status`; the agent goes on with the
    /// libraries it probed at start.
    pub fn start(datapath: Arc<Datapath>, setup: Setup<'_>) -> Watcher {
        let mut examined = HashMap::new();
        for lib in setup.libraries {
            let md = std::fs::metadata(&lib.path).ok().filter(|md| {
                use std::os::unix::fs::MetadataExt;
                (md.dev(), md.ino()) == (lib.dev, lib.ino)
            });
            let generation = md
                .as_ref()
                .and_then(|md| files::generation_of(&lib.path, md));
            examined.insert(
                (lib.dev, lib.ino),
                Entry {
                    generation,
                    ctime: md.as_ref().and_then(files::ctime),
                    state: Examined::Library,
                },
            );
        }
        let maps = take_maps(&mut datapath.ebpf());
        let shared = Arc::new(Shared {
            datapath,
            known: Mutex::new(None),
            examined: Mutex::new(examined),
            examined_cv: Condvar::new(),
            reporter: setup.reporter,
            stats: Stats::default(),
            urgent: AtomicUsize::new(0),
            forget: Mutex::new(Vec::new()),
            change_counter: AtomicBool::new(false),
        });
        let mut watcher = Watcher {
            status: Status::Off(String::new()),
            shared: shared.clone(),
            running: None,
        };
        let armed = maps.and_then(|maps| {
            arm(
                &shared,
                maps,
                setup.libraries,
                setup.pause,
                setup.library_sweep,
            )
        });
        match armed {
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

    /// Detaches the hooks, resumes every paused process, and waits for the threads. Idempotent.
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
            libraries_released = s.released.load(Ordering::Relaxed),
            "new-file watcher stopped"
        );
    }
}

impl Drop for Watcher {
    /// Hooks off and paused processes resumed (the datapath goes when its last owner drops it).
    fn drop(&mut self) {
        self.stop();
    }
}

struct Maps {
    ring: RingBuf<MapData>,
    known: BpfHashMap<MapData, KnownKey, u8>,
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
fn arm(
    shared: &Arc<Shared>,
    maps: Maps,
    libs: &[Library],
    pause: bool,
    library_sweep: u64,
) -> Result<Running> {
    let mut config = kernel::config()?;
    let Maps {
        ring,
        mut known,
        paused,
        config: mut config_map,
    } = maps;
    let change_counter = config.change_counter != 0;
    shared
        .change_counter
        .store(change_counter, Ordering::SeqCst);
    for lib in libs {
        if let Some(key) = kernel::key_of_path(&lib.path, change_counter) {
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
    if let Err(err) = kernel::attach(&mut shared.datapath.ebpf()) {
        stop.store(true, Ordering::SeqCst);
        wake.signal();
        let _ = events.join();
        return Err(err.into());
    }
    let sweep = {
        let (shared, stop) = (shared.clone(), stop.clone());
        thread::Builder::new()
            .name("new-files-sweep".into())
            .spawn(move || {
                sweep::sweep(&shared, &stop);
                if library_sweep > 0 {
                    release::run(&shared, &stop, Duration::from_secs(library_sweep));
                }
            })?
    };
    Ok(Running {
        wake,
        stop,
        events,
        sweep,
    })
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
