//! Owner lookups for unattributed hellos, off the event loops. Naming the process of a hello no
//! probed library made takes a walk of `/proc/*/fd` (up to `hello::WALK_BUDGET`); done where the
//! ring is drained, a flood of such hellos would stall the drain and the ring would overflow.
//! So the hello reader queues a lookup (bounded: [`QUEUE`]) and one worker thread walks and
//! then reports the hello; a lookup that finds the queue full is dropped, counted, and its hello
//! reported at once without an owner. The socket abort never waits for a lookup: it happens
//! before the hello is queued.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread,
};

use enforcer_common::event::HelloEvent;
use tracing::warn;

use super::{
    Reporter,
    hello::{Aborted, owner_of_inode},
};

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
    while let Ok(lookup) = rx.recv() {
        let owner = owner_of_inode(lookup.inode);
        counters.done.fetch_add(1, Ordering::Relaxed);
        reporter.report_hello(&lookup.event, lookup.aborted, owner);
    }
    warn!("owner lookups stopped");
}
