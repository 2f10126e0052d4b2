//! Where records go (stdout with `--events json`, and the `--events-file`), written by a thread
//! of their own, so a slow reader of stdout (a log shipper, a full pipe) never holds up a ring's
//! reader: the socket aborts of later events do not wait for earlier lines to be written.
//!
//! Two lanes. Connection and lifecycle records are never dropped and go first; hello records
//! wait in a bounded lane ([`MAX_HELLOS`]) and, when it is full, are dropped and counted
//! ([`Output::dropped`], `enforcer_hello_reports_dropped_total`): a hello flood cannot grow the
//! agent's memory or delay a connection record.

use std::{
    collections::VecDeque,
    fs::File,
    io::Write,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tracing::warn;

/// Hello records waiting at most (about 600 bytes each).
pub const MAX_HELLOS: usize = 1024;

/// Which lane a record takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Connection and lifecycle records: never dropped, written first.
    Records,
    /// Hello records: bounded, dropped when the lane is full.
    Hellos,
}

#[derive(Default)]
struct Queues {
    records: VecDeque<String>,
    hellos: VecDeque<String>,
    /// A line is being written.
    busy: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    /// Signalled when a line is queued, and when the writer goes idle.
    changed: Condvar,
    stdout: bool,
    file: Mutex<Option<File>>,
    dropped: AtomicU64,
}

/// The writer; cheap to share (`Arc`).
pub struct Output {
    shared: Arc<Shared>,
    /// The writer thread runs (else lines are written in place, by whoever pushes them).
    threaded: bool,
}

impl Output {
    /// `stdout`: also print every line on stdout. The writer thread lives as long as the process.
    pub fn start(stdout: bool) -> Output {
        let shared = Arc::new(Shared {
            queues: Mutex::default(),
            changed: Condvar::new(),
            stdout,
            file: Mutex::new(None),
            dropped: AtomicU64::new(0),
        });
        let writer = shared.clone();
        let spawned = thread::Builder::new()
            .name("event-output".into())
            .spawn(move || write_lines(&writer));
        if let Err(err) = &spawned {
            warn!("event output thread not started, writing in place: {err}");
        }
        Output {
            shared,
            threaded: spawned.is_ok(),
        }
    }

    /// Lines are appended to `file` too from now on.
    pub fn set_file(&self, file: File) {
        *lock(&self.shared.file) = Some(file);
    }

    pub fn writes_file(&self) -> bool {
        lock(&self.shared.file).is_some()
    }

    /// Queues one record (a JSON object, without its newline).
    pub fn push(&self, line: String, lane: Lane) {
        if !self.threaded {
            return self.shared.write(&line);
        }
        let mut queues = lock(&self.shared.queues);
        match lane {
            Lane::Records => queues.records.push_back(line),
            Lane::Hellos if queues.hellos.len() >= MAX_HELLOS => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Lane::Hellos => queues.hellos.push_back(line),
        }
        drop(queues);
        self.shared.changed.notify_all();
    }

    /// Hello records dropped because the lane was full, since start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits (up to `timeout`) until every queued line is written: before the agent exits.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut queues = lock(&self.shared.queues);
        while !(queues.records.is_empty() && queues.hellos.is_empty() && !queues.busy) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            queues = self
                .shared
                .changed
                .wait_timeout(queues, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Shared {
    fn write(&self, line: &str) {
        let line = format!("{line}\n");
        if self.stdout {
            let mut out = std::io::stdout().lock();
            // A closed stdout is not a reason to stop enforcing.
            let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
        }
        if let Some(file) = lock(&self.file).as_mut()
            && let Err(err) = file.write_all(line.as_bytes())
        {
            warn!(%err, "writing the events file failed");
        }
    }
}

fn write_lines(shared: &Shared) {
    crate::agent::background_thread();
    loop {
        let line = {
            let mut queues = lock(&shared.queues);
            queues.busy = false;
            loop {
                if let Some(line) = queues
                    .records
                    .pop_front()
                    .or_else(|| queues.hellos.pop_front())
                {
                    queues.busy = true;
                    break line;
                }
                shared.changed.notify_all();
                queues = shared
                    .changed
                    .wait(queues)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        shared.write(&line);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
