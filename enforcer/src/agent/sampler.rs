//! The agent's background reader of the datapath: once a second it reads `STATS` and counts the
//! blocklist, every [`SLOW_EVERY`] seconds it counts `FLOWS` and `BLOCKLIST_OVERFLOW` (and trims
//! the heap), and every `--blocklist-sweep` seconds it sweeps the blocklist (`datapath::sweep`).
//! It runs on a thread of its own with map handles of its own, so `/metrics` and the main loop
//! only read the last [`Snapshot`] (a copy under a short lock): a scrape never walks a map, and
//! a flood that keeps the event readers busy does not slow either down.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use enforcer_common::stat;
use tracing::{info, warn};

use crate::datapath::{
    maps::{Fill, LiveMaps},
    sweep::BlocklistSweep,
};

/// `FLOWS` (up to 65,536 entries) and the overflow table are walked this often, in seconds.
pub const SLOW_EVERY: u64 = 5;
const TICK: Duration = Duration::from_secs(1);

/// What the sampler read last.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    /// `STATS`, summed over CPUs.
    pub stats: [u64; stat::COUNT as usize],
    /// Map fill; `flows` and `overflow` as of the last slow sample.
    pub fill: Fill,
    /// Blocklist entries the sweep moved to the overflow table, since start.
    pub swept: u64,
    /// Sweeps run since start.
    pub sweeps: u64,
}

/// The last snapshot, shared (cheap to clone).
#[derive(Clone, Default)]
pub struct Sampled(Arc<Mutex<Snapshot>>);

impl Sampled {
    pub fn get(&self) -> Snapshot {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The sampler thread; it stops when this drops.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    /// Takes a first sample before returning (so the first scrape has numbers), then samples
    /// on a thread. `sweep_every`: seconds between blocklist sweeps (0: never).
    pub fn start(mut maps: LiveMaps, sweep_every: u64) -> std::io::Result<(Sampler, Sampled)> {
        let sampled = Sampled::default();
        sample(&maps, &sampled, true);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, sampled) = (stop.clone(), sampled.clone());
            thread::Builder::new()
                .name("sampler".into())
                .spawn(move || {
                    crate::agent::background_thread();
                    let mut sweep = BlocklistSweep::default();
                    let mut ticks: u64 = 0;
                    let mut next = Instant::now() + TICK;
                    while !stop.load(Ordering::Relaxed) {
                        // Short sleeps: a stop is noticed within 100 ms.
                        thread::sleep(Duration::from_millis(100));
                        if Instant::now() < next {
                            continue;
                        }
                        next += TICK;
                        ticks += 1;
                        if sweep_every > 0 && ticks.is_multiple_of(sweep_every) {
                            run_sweep(&mut sweep, &mut maps, &sampled);
                        }
                        let slow = ticks.is_multiple_of(SLOW_EVERY);
                        sample(&maps, &sampled, slow);
                        if slow {
                            // A flood churns the heap (records, lookups): give free pages back.
                            crate::agent::memory::trim();
                        }
                    }
                })?
        };
        Ok((
            Sampler {
                stop,
                thread: Some(thread),
            },
            sampled,
        ))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sample(maps: &LiveMaps, sampled: &Sampled, slow: bool) {
    let stats = maps.stats();
    let blocklist = maps.blocked().len();
    let slow = slow.then(|| maps.fill());
    sampled.update(|s| {
        s.stats = stats;
        s.fill.blocklist = blocklist;
        s.fill.blocklist_max = maps.blocklist_max;
        s.fill.flows_max = maps.flows_max;
        s.fill.overflow_max = maps.overflow_max;
        if let Some(fill) = slow {
            s.fill.flows = fill.flows;
            s.fill.overflow = fill.overflow;
        }
    });
}

fn run_sweep(sweep: &mut BlocklistSweep, maps: &mut LiveMaps, sampled: &Sampled) {
    match sweep.run(maps) {
        Ok(swept) => {
            if swept.moved > 0 {
                info!(
                    moved = swept.moved,
                    checked = swept.checked,
                    "blocklist sweep: entries without a local socket moved to the overflow table (still dropped)"
                );
            }
            sampled.update(|s| {
                s.swept += swept.moved as u64;
                s.sweeps += 1;
            });
        }
        Err(err) => warn!("blocklist sweep failed: {err}"),
    }
}
