//! Owner lookups for unattributed hellos, off the event loops. Naming the process of a hello no
//! probed library made takes a walk of `/proc/*/fd` (up to [`WALK_BUDGET`]); done where the
//! ring is drained, a flood of such hellos would stall the drain and the ring would overflow.
//! So the hello reader queues a lookup (bounded: [`QUEUE`]) and one worker thread walks and
//! then reports the hello; a lookup that finds the queue full is dropped, counted, and its hello
//! reported at once without an owner. The socket abort never waits for a lookup: it happens
//! before the hello is queued.

use std::{
    fs,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread,
    time::{Duration, Instant},
};

use enforcer_common::event::HelloEvent;
use tracing::warn;

use super::Reporter;
use crate::datapath::sock_destroy;

/// Longest a single `/proc` walk may take.
pub const WALK_BUDGET: Duration = Duration::from_millis(100);

/// The outcome of aborting a blocked hello's socket (`None`: not blocked).
pub type Aborted = Option<Result<(), sock_destroy::SockDestroyError>>;

/// Who sent a flow's bytes, and how we know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// `connection-event`, `hello-random` (the process that made the hello's random) or
    /// `socket-inode`.
    pub source: &'static str,
    /// Its cgroup v2 path, read when it was named (it may have exited by the time a later
    /// event of the flow is handled).
    pub cgroup: Option<String>,
    /// The cookie of its network namespace, read when it was named.
    pub netns_cookie: Option<u64>,
}

/// Lookups waiting at most; more are dropped (reported without owner).
pub const QUEUE: usize = 64;

/// A hello waiting for its owner: the socket inode to look for, and what to report.
pub struct Lookup {
    pub inode: u64,
    pub event: Box<HelloEvent>,
    pub aborted: Aborted,
}

/// Lookups done and dropped since start (`enforcer_owner_lookups_total`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LookupCounts {
    pub done: u64,
    pub dropped: u64,
}

#[derive(Default)]
pub struct Counters {
    done: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> LookupCounts {
        LookupCounts {
            done: self.done.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The queue's sending end, shared by the reporter's clones.
pub struct Queue {
    tx: SyncSender<Lookup>,
}

impl Queue {
    /// Starts the worker; it reports through `reporter` (a clone without a queue, so its own
    /// reports never queue again).
    pub fn start(reporter: Reporter, counters: Arc<Counters>) -> std::io::Result<Queue> {
        let (tx, rx) = sync_channel(QUEUE);
        thread::Builder::new()
            .name("owner-lookups".into())
            .spawn(move || work(rx, reporter, counters))?;
        Ok(Queue { tx })
    }

    /// Queues `lookup`, or hands it back when the queue is full.
    pub fn offer(&self, lookup: Lookup) -> Result<(), Lookup> {
        match self.tx.try_send(lookup) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(l) | TrySendError::Disconnected(l)) => Err(l),
        }
    }
}

/// Until every sender is gone.
fn work(rx: Receiver<Lookup>, reporter: Reporter, counters: Arc<Counters>) {
    crate::agent::background_thread();
    while let Ok(lookup) = rx.recv() {
        let owner = owner_of_inode(lookup.inode);
        counters.done.fetch_add(1, Ordering::Relaxed);
        reporter.report_hello(&lookup.event, lookup.aborted, owner);
    }
    warn!("owner lookups stopped");
}

/// The process holding socket `inode`: the first `/proc/<pid>/fd/*` link to `socket:[inode]`
/// found within `WALK_BUDGET`. Newest processes first (highest pid; pids grow until they wrap):
/// a ClientHello comes from a socket opened moments ago, most often by a process started moments
/// ago, and on a busy host the budget may not cover every process.
pub fn owner_of_inode(inode: u64) -> Option<Owner> {
    let target = format!("socket:[{inode}]");
    let deadline = Instant::now() + WALK_BUDGET;
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    pids.sort_unstable_by(|a, b| b.cmp(a));
    for pid in pids {
        if Instant::now() > deadline {
            return None;
        }
        let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
                return Some(Owner {
                    pid,
                    comm: comm.trim_end().to_owned(),
                    source: "socket-inode",
                    cgroup: crate::containers::cgroup_of(pid),
                    netns_cookie: None,
                });
            }
        }
    }
    None
}
