//! How many libraries hold an id, what happens past the limit, and giving an id's slot back.
//!
//! Every registered library holds one entry in `LIB_ACTIONS` (and, depending on the policy, in
//! `SCOPED_LIBS`, `SERVER_NAME_RULES`, `RANDOM_LIBS`, `LIB_CODE`, `WHO_LIBS`, `POSTURE_RULES`),
//! all sized for [`LIB_ACTIONS_ENTRIES`]. An unprivileged user can create as many distinct
//! libraries as they like, so the table has a limit (`--max-libraries`, at most the map less
//! the slot [`OVER_CAPACITY`] holds) and two answers to it:
//!
//! - **Release**: a library no process maps any more is released ([`Datapath::release`]): its
//!   probes detached, its entries out of every map above and out of the table. The watcher's
//!   library sweep decides when (`agent::watcher::release`); a process that maps the file again
//!   is paused and the file registered anew. Id *numbers* are not handed out twice: flows in
//!   `FLOWS` still carry the old number, which must not name another library; the slot is what
//!   is reused.
//! - **Full means closed**: a library that finds no free slot is probed all the same, under the
//!   shared id [`OVER_CAPACITY`], whose `LIB_ACTIONS` entry is the policy's `default` (written at
//!   start and on every reload). Under `default: deny` in enforce mode its connections are
//!   blocked whatever rule would have matched it; it is reported (a `capacity` event, a warning,
//!   `enforcer_libraries_over_capacity_total`). Left unprobed, its TLS would be unattributed and
//!   judged by `unattributed_tls`, which may be `allow`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use enforcer_common::maps;
pub use enforcer_common::policy::OVER_CAPACITY;
use tracing::warn;

use super::{Datapath, RegisterError, Registered, lock, table::LibInfo};
use crate::{libraries::Library, policy::Decision};

/// Capacity of `LIB_ACTIONS` and the other maps keyed by library id.
pub const LIB_ACTIONS_ENTRIES: u32 = 4096;
/// `--max-libraries` default and ceiling: every slot but the one [`OVER_CAPACITY`] holds.
pub const DEFAULT_MAX_LIBRARIES: u32 = LIB_ACTIONS_ENTRIES - 1;

/// Why a library got no id of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// `--max-libraries` libraries hold ids already.
    Limit,
    /// A map had no room (an earlier run's pinned entries, a scope with many patterns).
    Map(&'static str),
    /// Id numbers ran out (about four billion registrations).
    Ids,
}

impl Full {
    /// The map the library did not fit in.
    pub fn map(self) -> &'static str {
        match self {
            Full::Map(name) => name,
            Full::Limit | Full::Ids => maps::LIB_ACTIONS,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Full::Limit => "limit",
            Full::Map(_) => "map_full",
            Full::Ids => "ids_exhausted",
        }
    }
}

/// The slots and what became of the libraries that wanted one; shared with the metrics.
#[derive(Debug, Default)]
pub struct Capacity {
    /// `--max-libraries`.
    pub max: usize,
    held: AtomicUsize,
    /// Libraries probed under [`OVER_CAPACITY`], since start.
    pub over_capacity: AtomicU64,
    /// Libraries released (no process mapped them), since start.
    pub released: AtomicU64,
}

impl Capacity {
    pub fn new(max: u32) -> Capacity {
        Capacity {
            max: max.clamp(1, DEFAULT_MAX_LIBRARIES) as usize,
            ..Capacity::default()
        }
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        let _ = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// A file: (device, inode).
type FileId = (u64, u64);

/// Libraries probed under [`OVER_CAPACITY`], by file.
#[derive(Debug, Default)]
pub struct OverCapacity(Mutex<HashMap<FileId, Arc<Library>>>);

/// A probed library as the library sweep sees it.
#[derive(Clone, Debug)]
pub struct Held {
    /// Its own id, or [`OVER_CAPACITY`].
    pub id: u32,
    pub dev: u64,
    pub ino: u64,
    /// Inode numbers that keep it: its file's and its companion's (a process mapping either
    /// runs its probed code).
    pub inodes: Vec<u64>,
    pub path: String,
    pub family: String,
}

impl Held {
    fn of(id: u32, lib: &Library) -> Held {
        Held {
            id,
            dev: lib.dev,
            ino: lib.ino,
            inodes: std::iter::once(lib.ino)
                .chain(lib.companion.as_ref().map(|c| c.ino))
                .collect(),
            path: lib.path.display().to_string(),
            family: lib.family.name().to_string(),
        }
    }
}

impl Datapath {
    /// Takes a slot for a new library; `Err` says why there is none.
    pub(super) fn take_slot(&self) -> Result<u32, Full> {
        if !self.capacity.take() {
            return Err(Full::Limit);
        }
        match self.ids.next() {
            Some(id) => Ok(id),
            None => {
                self.capacity.give_back();
                Err(Full::Ids)
            }
        }
    }

    /// Gives back the slot of a library that left the maps.
    pub(super) fn give_slot(&self) {
        self.capacity.give_back();
    }

    /// Probes `lib` under [`OVER_CAPACITY`] (judged by the policy's `default`). All of its
    /// record calls are probed: `default` may deny.
    pub(super) fn register_over_capacity(
        &self,
        lib: Library,
        full: Full,
    ) -> Result<Registered, RegisterError> {
        self.capacity.over_capacity.fetch_add(1, Ordering::Relaxed);
        let decision = Decision {
            action: self.read().policy.default,
            rule_line: None,
        };
        let key = (lib.dev, lib.ino);
        lock(&self.over.0).insert(key, Arc::new(lib.clone()));
        match self.prober.attach(OVER_CAPACITY, &lib, || lock(&self.ebpf)) {
            Ok(functions) => Ok(Registered {
                id: OVER_CAPACITY,
                decision,
                functions,
                over_capacity: Some(full),
            }),
            Err(source) => {
                lock(&self.over.0).remove(&key);
                Err(RegisterError::Probe {
                    id: OVER_CAPACITY,
                    source,
                })
            }
        }
    }

    /// Every probed library: those with an id of their own and those over capacity.
    pub fn held(&self) -> Vec<Held> {
        let mut all: Vec<Held> = self
            .libraries
            .snapshot()
            .into_iter()
            .map(|(id, info)| Held::of(id, &info.library))
            .collect();
        all.extend(
            lock(&self.over.0)
                .values()
                .map(|lib| Held::of(OVER_CAPACITY, lib)),
        );
        all
    }

    /// Releases a library no process maps any more: its probes detached first (no event names
    /// it after that), then its entries out of every map keyed by its id and out of the table,
    /// and its slot given back. Flows already judged keep their verdict (blocklist entries
    /// stay). Returns the library's table entry, `None` if it was not held. Waits for the
    /// kernel's grace periods: not for the event paths.
    pub fn release(&self, held: &Held) -> Option<LibInfo> {
        let links = self
            .prober
            .release((held.id, held.dev, held.ino), || lock(&self.ebpf));
        if held.id == OVER_CAPACITY {
            let gone = lock(&self.over.0).remove(&(held.dev, held.ino));
            return gone.map(|lib| {
                self.capacity.released.fetch_add(1, Ordering::Relaxed);
                LibInfo::of(&lib)
            });
        }
        // Under the read lock: a reload does not write this library again after it.
        let _in_force = self.read();
        let info = self.libraries.get(held.id)?;
        self.libraries.remove(held.id);
        self.forget(held.id);
        self.give_slot();
        self.capacity.released.fetch_add(1, Ordering::Relaxed);
        if links == 0 {
            warn!(
                id = held.id,
                path = held.path,
                "released a library that had no probes on record"
            );
        }
        Some(info)
    }

    /// The slot counters (metrics, status).
    pub fn capacity(&self) -> Arc<Capacity> {
        self.capacity.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_limit_and_come_back() {
        let c = Capacity::new(2);
        assert!(c.take() && c.take());
        assert!(!c.take(), "a third slot past --max-libraries 2");
        assert_eq!(c.held(), 2);
        c.give_back();
        assert!(c.take());
        for _ in 0..5 {
            c.give_back();
        }
        assert_eq!(c.held(), 0, "giving back never goes below zero");
    }

    #[test]
    fn the_limit_keeps_the_over_capacity_slot() {
        assert_eq!(Capacity::new(u32::MAX).max, 4095);
        assert_eq!(Capacity::new(0).max, 1);
        assert_eq!(Full::Limit.map(), "LIB_ACTIONS");
        assert_eq!(Full::Map("SERVER_NAME_RULES").map(), "SERVER_NAME_RULES");
        assert_eq!(Full::Ids.reason(), "ids_exhausted");
    }
}
