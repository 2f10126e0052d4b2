//! The event thread: reads the kernel's `NEW_FILES` ring, hands unknown files to the workers,
//! and keeps the books of paused processes (which files each waits for, pause budgets) until it
//! resumes them.

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Instant,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use enforcer_common::watch::{self, KnownKey, NewFileEvent, WatchConfig};
use serde_json::json;
use tracing::{debug, warn};

use super::{
    EventFd, Examined, PAUSE_BUDGET, Shared, TICK,
    examine::{Done, Job, mark_known},
    kernel, monotonic_ns,
    resume::{Pidfd, Resumer},
};

/// A file some paused processes wait for.
pub(super) enum FileState {
    Pending { waiters: Vec<Waiter> },
    Done,
}

pub(super) struct Waiter {
    pid: u32,
    since: Instant,
}

/// A process we paused.
pub(super) struct Proc {
    pidfd: Option<Pidfd>,
    comm: String,
    /// Files it waits for.
    pending: u32,
    /// When the first of its current stops happened (`CLOCK_MONOTONIC` ns).
    first_stop_ns: u64,
    /// When we last sent it `SIGCONT` (`CLOCK_MONOTONIC` ns, taken after the signal).
    last_cont_ns: u64,
}

pub(super) struct EventLoop {
    pub(super) shared: Arc<Shared>,
    pub(super) ring: RingBuf<MapData>,
    pub(super) paused: BpfHashMap<MapData, u32, u64>,
    pub(super) config_map: Array<MapData, WatchConfig>,
    /// By file *and* `ctime`: a file rewritten in place is another entry, examined anew.
    pub(super) files: HashMap<KnownKey, FileState>,
    pub(super) procs: HashMap<u32, Proc>,
    pub(super) jobs: Option<mpsc::Sender<Job>>,
    pub(super) done: mpsc::Receiver<Done>,
    pub(super) workers: Vec<JoinHandle<()>>,
    pub(super) resumer: Option<Resumer>,
    pub(super) wake: Arc<EventFd>,
    pub(super) stop: Arc<AtomicBool>,
}

impl EventLoop {
    /// Until `stop`. Whatever happens here (even a panic), dropping the loop turns the hooks off
    /// and resumes everyone (`Drop`).
    pub fn run(mut self) {
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
        self.forget_released();
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

    /// Files the library sweep marked for release are examined again at their next event (a
    /// `Done` file would be marked known and its process resumed unexamined).
    fn forget_released(&mut self) {
        let inodes: std::collections::HashSet<u64> = {
            let mut forget = super::lock(&self.shared.forget);
            if forget.is_empty() {
                return;
            }
            forget.drain(..).collect()
        };
        self.files.retain(|key, state| {
            !(matches!(state, FileState::Done) && inodes.contains(&key.file.ino))
        });
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
            // An unknown file stays pending-free but not done: its next event is examined again.
            if done.result.is_some_and(Examined::is_settled) {
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
        kernel::detach(&mut self.shared.datapath.ebpf());
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
        self.resume_unaccounted();
        if let Some(resumer) = self.resumer.take() {
            resumer.finish();
        }
    }
}

impl EventLoop {
    /// At shutdown: every process still listed in `PAUSED`, which a resume takes out, was
    /// stopped by a hook whose event this loop never handled (or listed by one that had not
    /// stopped it yet). Resumed too, so the agent leaves behind no process it may have stopped.
    fn resume_unaccounted(&mut self) {
        let listed: Vec<u32> = self
            .paused
            .keys()
            .take(super::resume::MAX_KEYS)
            .filter_map(Result::ok)
            .collect();
        for pid in listed {
            if let Some(pidfd) = Pidfd::open(pid) {
                pidfd.signal(libc::SIGCONT);
            }
            let _ = self.paused.remove(&pid);
            warn!(
                pid,
                "resumed at shutdown a process listed as paused that no event named"
            );
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
