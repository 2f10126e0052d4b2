//! Attaches the TLS uprobes of a library: an entry and a return probe on each of its TLS
//! functions, with the library id and call kind as the attach cookie. A uprobe lives on the file
//! (inode), so every process mapping it, now or later, is covered by one attachment.
//!
//! [`Prober`] takes one `uprobe_multi` link per file and direction where the kernel has them
//! (6.6+, see `multi`), else two perf-event uprobes per function through aya (`perf`). The
//! difference is exit time: releasing a perf-event uprobe waits a grace period under a global
//! mutex (0.1 to 0.2 s each, one after the other), a `uprobe_multi` link one grace period for all
//! its functions, and releases from several threads overlap.
//!
//! The links are kept by library ([`Probed`]): a library no process maps any more is released
//! ([`Prober::release`]) and its id's slot reused.

pub mod multi;
mod perf;
mod target_file;

use std::{
    collections::HashMap, ops::DerefMut, os::fd::OwnedFd, sync::Mutex, thread, time::Instant,
};

use aya::Ebpf;
use tracing::{info, warn};

use perf::PerfLink;
pub use perf::UprobeError;

use crate::{
    datapath::{loader, lock},
    libraries::Library,
};

/// Threads that release `uprobe_multi` links at the end.
const RELEASE_THREADS: usize = 32;

/// One library's probes: its id and the file (device, inode) they were identified on. Libraries
/// over capacity share an id (`enforcer_common::policy::OVER_CAPACITY`), not a file.
pub type Probed = (u32, u64, u64);

/// The links of one library (every attachment with its key: the first, then record probes a
/// reload added).
#[derive(Default)]
struct Links {
    multi: Vec<OwnedFd>,
    perf: Vec<PerfLink>,
}

/// Probes libraries, and owns the `uprobe_multi` links until it is dropped or the library is
/// released (perf-event uprobes belong to the `Ebpf` object; their ids are kept here).
pub struct Prober {
    multi: Option<multi::TlsPrograms>,
    links: Mutex<HashMap<Probed, Links>>,
}

impl Prober {
    /// Loads the TLS programs through aya, and their `uprobe_multi` copies if the kernel takes
    /// them (else says why and falls back to perf-event uprobes).
    pub fn new(ebpf: &mut Ebpf) -> Result<Prober, UprobeError> {
        perf::load(ebpf)?;
        let multi = match multi::TlsPrograms::load(ebpf, loader::OBJECT) {
            Ok(programs) => Some(programs),
            Err(err) => {
                warn!("libraries get perf-event uprobes (slow to detach): {err}");
                None
            }
        };
        Ok(Prober {
            multi,
            links: Mutex::new(HashMap::new()),
        })
    }

    /// A prober that owns nothing and attaches with perf-event uprobes only.
    pub fn none() -> Prober {
        Prober {
            multi: None,
            links: Mutex::new(HashMap::new()),
        }
    }

    /// The `uprobe_multi` programs (none for the perf-event fallback): `--pin` pins their links.
    pub fn program_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.multi
            .as_ref()
            .map_or_else(Vec::new, |m| m.fds().to_vec())
    }

    /// `uprobe_multi` (true) or perf-event uprobes (false).
    pub fn uses_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// Probes every target of `lib` with `id` in the cookies; returns how many functions. All or
    /// nothing. `ebpf` is only called for the perf-event fallback (those links belong to the
    /// object).
    pub fn attach<E: DerefMut<Target = Ebpf>>(
        &self,
        id: u32,
        lib: &Library,
        ebpf: impl FnOnce() -> E,
    ) -> anyhow::Result<usize> {
        let key = (id, lib.dev, lib.ino);
        if let Some(programs) = &self.multi {
            match programs.attach(id, lib) {
                Ok(links) => {
                    let mut all = lock(&self.links);
                    all.entry(key).or_default().multi.extend(links);
                    return Ok(lib.probes.len());
                }
                Err(err) => warn!("{err}: trying perf-event uprobes"),
            }
        }
        let links = perf::attach_library(&mut ebpf(), id, lib)?;
        lock(&self.links).entry(key).or_default().perf.extend(links);
        Ok(lib.probes.len())
    }

    /// Detaches every probe of library `key`; returns how many links went (0: none known).
    /// Waits for the kernel's grace periods: call it off the event paths.
    pub fn release<E: DerefMut<Target = Ebpf>>(
        &self,
        key: Probed,
        ebpf: impl FnOnce() -> E,
    ) -> usize {
        let Some(links) = lock(&self.links).remove(&key) else {
            return 0;
        };
        let count = links.multi.len() + links.perf.len();
        drop(links.multi);
        if !links.perf.is_empty() {
            perf::detach(&mut ebpf(), links.perf);
        }
        count
    }
}

impl Drop for Prober {
    /// Each release waits for a grace period, and releases do not exclude each other: from many
    /// threads at once the waits overlap.
    fn drop(&mut self) {
        let started = Instant::now();
        let mut links: Vec<OwnedFd> = std::mem::take(&mut *lock(&self.links))
            .into_values()
            .flat_map(|l| l.multi)
            .collect();
        let count = links.len();
        let per_thread = count.div_ceil(RELEASE_THREADS).max(1);
        thread::scope(|scope| {
            while !links.is_empty() {
                let chunk: Vec<OwnedFd> = links.drain(..per_thread.min(links.len())).collect();
                scope.spawn(move || drop(chunk));
            }
        });
        if count > 0 {
            info!(links = count, elapsed = ?started.elapsed(), "uprobe_multi links released");
        }
    }
}
