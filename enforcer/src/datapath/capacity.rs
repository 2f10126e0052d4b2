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
//! - **A share per user**: the slots a uid other than root is charged with (the user of the
//!   process that brought the file in) stop at `--max-libraries-per-user` (default half), past
//!   which its libraries are over capacity too: one user's flood leaves the rest to the others.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
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
    /// The user whose process brought the file in holds `--max-libraries-per-user` ids.
    UserQuota,
}

impl Full {
    /// The map the library did not fit in.
    pub fn map(self) -> &'static str {
        match self {
            Full::Map(name) => name,
            Full::Limit | Full::Ids | Full::UserQuota => maps::LIB_ACTIONS,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Full::Limit => "limit",
            Full::Map(_) => "map_full",
            Full::Ids => "ids_exhausted",
            Full::UserQuota => "user_quota",
        }
    }
}

/// The slots and what became of the libraries that wanted one; shared with the metrics.
#[derive(Debug, Default)]
pub struct Capacity {
    /// `--max-libraries`.
    pub max: usize,
    /// `--max-libraries-per-user`: ids one uid other than root may hold.
    pub per_user: usize,
    slots: Mutex<Slots>,
    /// Libraries probed under [`OVER_CAPACITY`], since start.
    pub over_capacity: AtomicU64,
    /// Libraries released (no process mapped them), since start.
    pub released: AtomicU64,
}

/// Who holds the slots.
#[derive(Debug, Default)]
struct Slots {
    held: usize,
    /// Slots charged to each uid other than root.
    by_user: HashMap<u32, usize>,
    /// id → the uid it is charged to.
    owner: HashMap<u32, u32>,
}

impl Capacity {
    /// `per_user` 0: half of `max` (at least one).
    pub fn new(max: u32, per_user: u32) -> Capacity {
        let max = max.clamp(1, DEFAULT_MAX_LIBRARIES) as usize;
        let per_user = match per_user {
            0 => (max / 2).max(1),
            n => (n as usize).min(max),
        };
        Capacity {
            max,
            per_user,
            ..Capacity::default()
        }
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        lock(&self.slots).held
    }

    /// A slot for a library a process of `uid` brought in (`None`: found at start or by the
    /// start-up sweep; root is not charged, as the host's own services run as root).
    fn take(&self, uid: Option<u32>) -> Result<(), Full> {
        let mut slots = lock(&self.slots);
        if slots.held >= self.max {
            return Err(Full::Limit);
        }
        if let Some(uid) = uid.filter(|&u| u != 0) {
            let count = slots.by_user.entry(uid).or_default();
            if *count >= self.per_user {
                return Err(Full::UserQuota);
            }
            *count += 1;
        }
        slots.held += 1;
        Ok(())
    }

    /// The slot just taken for `uid` is library `id`'s.
    fn bind(&self, id: u32, uid: Option<u32>) {
        if let Some(uid) = uid.filter(|&u| u != 0) {
            lock(&self.slots).owner.insert(id, uid);
        }
    }

    /// Undoes a `take` that got no id.
    fn untake(&self, uid: Option<u32>) {
        let mut slots = lock(&self.slots);
        slots.held = slots.held.saturating_sub(1);
        if let Some(uid) = uid.filter(|&u| u != 0) {
            uncharge(&mut slots.by_user, uid);
        }
    }

    /// Library `id` gave its slot back.
    fn give_back(&self, id: u32) {
        let mut slots = lock(&self.slots);
        slots.held = slots.held.saturating_sub(1);
        if let Some(uid) = slots.owner.remove(&id) {
            uncharge(&mut slots.by_user, uid);
        }
    }
}

fn uncharge(by_user: &mut HashMap<u32, usize>, uid: u32) {
    if let Some(count) = by_user.get_mut(&uid) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            by_user.remove(&uid);
        }
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
    /// Takes a slot for a new library a process of `uid` brought in; `Err` says why there is
    /// none.
    pub(super) fn take_slot(&self, uid: Option<u32>) -> Result<u32, Full> {
        self.capacity.take(uid)?;
        match self.ids.next() {
            Some(id) => {
                self.capacity.bind(id, uid);
                Ok(id)
            }
            None => {
                self.capacity.untake(uid);
                Err(Full::Ids)
            }
        }
    }

    /// Gives back the slot of library `id`, which left the maps.
    pub(super) fn give_slot(&self, id: u32) {
        self.capacity.give_back(id);
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

    /// The libraries probed on the file `(dev, ino)` (its own id or over capacity), each with
    /// what it was registered as: to tell whether a file rewritten in place still holds the
    /// content its probes were placed for.
    pub fn held_at(&self, dev: u64, ino: u64) -> Vec<(Held, Arc<Library>)> {
        let mut at: Vec<(Held, Arc<Library>)> = self
            .libraries
            .snapshot()
            .into_iter()
            .filter(|(_, info)| (info.library.dev, info.library.ino) == (dev, ino))
            .map(|(id, info)| (Held::of(id, &info.library), info.library))
            .collect();
        if let Some(lib) = lock(&self.over.0).get(&(dev, ino)) {
            at.push((Held::of(OVER_CAPACITY, lib), lib.clone()));
        }
        at
    }

    /// True if `held` (from [`Datapath::held`]) is still probed as it was: its id still names
    /// its file (it was not released meanwhile, e.g. because the file was rewritten).
    pub fn holds(&self, held: &Held) -> bool {
        if held.id == OVER_CAPACITY {
            return lock(&self.over.0).contains_key(&(held.dev, held.ino));
        }
        self.libraries
            .get(held.id)
            .is_some_and(|info| (info.library.dev, info.library.ino) == (held.dev, held.ino))
    }

    /// Releases a library no process maps any more: its probes detached first (no event names
    /// it after that), then its entries out of every map keyed by its id and out of the table,
    /// and its slot given back. Flows already judged keep their verdict (blocklist entries
    /// stay). Returns the library's table entry, `None` if it was not held. Waits for the
    /// kernel's grace periods: not for the event paths.
    pub fn release(&self, held: &Held) -> Option<LibInfo> {
        let _releasing = lock(&self.releasing);
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
        self.give_slot(held.id);
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
        let c = Capacity::new(2, 0);
        assert!(c.take(None).is_ok() && c.take(Some(0)).is_ok());
        assert_eq!(
            c.take(None),
            Err(Full::Limit),
            "a third slot past --max-libraries 2"
        );
        assert_eq!(c.held(), 2);
        c.give_back(1);
        assert!(c.take(None).is_ok());
        for id in 0..5 {
            c.give_back(id);
        }
        assert_eq!(c.held(), 0, "giving back never goes below zero");
    }

    #[test]
    fn one_user_holds_at_most_its_quota() {
        let c = Capacity::new(10, 2);
        for id in [1, 2] {
            c.take(Some(1000)).unwrap();
            c.bind(id, Some(1000));
        }
        assert_eq!(c.take(Some(1000)), Err(Full::UserQuota));
        assert!(c.take(Some(1001)).is_ok(), "another user is not starved");
        assert!(
            c.take(Some(0)).is_ok() && c.take(None).is_ok(),
            "root is not charged"
        );
        c.give_back(2);
        assert!(
            c.take(Some(1000)).is_ok(),
            "a released id is the user's again"
        );
        assert_eq!(Capacity::new(4095, 0).per_user, 2047);
        assert_eq!(Capacity::new(3, 9).per_user, 3);
    }

    #[test]
    fn the_limit_keeps_the_over_capacity_slot() {
        assert_eq!(Capacity::new(u32::MAX, 0).max, 4095);
        assert_eq!(Capacity::new(0, 0).max, 1);
        assert_eq!(Full::Limit.map(), "LIB_ACTIONS");
        assert_eq!(Full::Map("SERVER_NAME_RULES").map(), "SERVER_NAME_RULES");
        assert_eq!(Full::Ids.reason(), "ids_exhausted");
    }
}
