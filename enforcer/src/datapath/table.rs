//! The libraries the datapath knows, by the id their uprobes put in every event, and the one
//! allocator of those ids.
//!
//! [`Libraries`] is shared: the event reporter, the operator and the metrics read it; only the
//! [`Datapath`](super::Datapath) adds and removes entries.

use std::{
    collections::HashMap,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU32, Ordering},
    },
};

use crate::{family::Family, libraries::Library};

/// What is known about a registered library.
#[derive(Clone, Debug)]
pub struct LibInfo {
    pub family: Family,
    pub path: String,
    /// The version the library states about itself, if found.
    pub version: Option<String>,
    /// What the policy matches on (a policy reload decides again from it).
    pub library: Arc<Library>,
    /// Its record calls (`SSL_read`, `SSL_write`, ...) are not probed yet: it binds its hellos
    /// and the policy allows it (`Datapath::register`). A reload that denies or audits it
    /// probes them (`Datapath::apply`).
    pub records_deferred: bool,
    /// Its path inside the mount namespace of the process it was found through, when that is
    /// not the agent's (a container's); and a path the agent reaches it at, stable when one was
    /// found (`libraries::views`).
    pub container_path: Option<String>,
    pub host_path: String,
}

impl LibInfo {
    pub fn of(lib: &Library) -> LibInfo {
        let views = crate::libraries::views::views(lib);
        LibInfo {
            container_path: views.container.map(|p| p.display().to_string()),
            host_path: views.host.display().to_string(),
            family: lib.family.clone(),
            path: lib.path.display().to_string(),
            version: lib.identity.version.clone(),
            library: Arc::new(lib.clone()),
            records_deferred: false,
        }
    }
}

/// The library table: id → library. Cheap to clone (clones share it); read-only outside the
/// datapath.
#[derive(Clone, Default)]
pub struct Libraries(Arc<RwLock<HashMap<u32, LibInfo>>>);

impl Libraries {
    pub fn get(&self, id: u32) -> Option<LibInfo> {
        self.read().get(&id).cloned()
    }

    /// Every library: id → info.
    pub fn snapshot(&self) -> HashMap<u32, LibInfo> {
        self.read().clone()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub(super) fn insert(&self, id: u32, info: LibInfo) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, info);
    }

    pub(super) fn remove(&self, id: u32) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u32, LibInfo>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands out library ids: 1, 2, ... or, over maps an earlier run pinned, after its largest id
/// (its flows keep theirs). A number is never handed out twice (a released library's flows may
/// still carry it); `None` once the numbers below `OVER_CAPACITY` are used up.
#[derive(Debug)]
pub struct Ids(AtomicU32);

impl Ids {
    pub fn after(max_earlier: u32) -> Ids {
        Ids(AtomicU32::new(max_earlier.saturating_add(1)))
    }

    pub fn next(&self) -> Option<u32> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < enforcer_common::policy::OVER_CAPACITY).then_some(n + 1)
            })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_or_after_an_earlier_run() {
        let fresh = Ids::after(0);
        assert_eq!((fresh.next(), fresh.next()), (Some(1), Some(2)));
        let resumed = Ids::after(7);
        assert_eq!((resumed.next(), resumed.next()), (Some(8), Some(9)));
        let over = enforcer_common::policy::OVER_CAPACITY;
        let last = Ids::after(over - 2);
        assert_eq!((last.next(), last.next()), (Some(over - 1), None));
    }

    #[test]
    fn clones_share_the_table() {
        let table = Libraries::default();
        let view = table.clone();
        let lib = Library::bare("openssl", "/usr/lib/libssl.so.3");
        table.insert(3, LibInfo::of(&lib));
        assert_eq!(view.len(), 1);
        assert_eq!(view.get(3).unwrap().family.name(), "openssl");
        table.remove(3);
        assert!(view.is_empty() && view.get(3).is_none());
    }
}
