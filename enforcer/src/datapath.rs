//! The datapath: the eBPF object in the kernel and our typed handles on it.
//!
//! [`Datapath`] is its one owner: the object, the [`Prober`], the policy maps, the library
//! table with its id allocator, and the policy in force. Start-up, the new-file watcher and
//! policy reloads all go through it ([`Datapath::register`], [`Datapath::apply`]).
//!
//! [`loader`] loads the object, [`maps`] holds the maps the agent reads and writes while it runs
//! and [`policy_maps`] those that hold the policy, [`uprobes`] and [`hooks`] attach the programs
//! that attribute a flow to a library (the TLS uprobes and the kernel TCP hook), [`iface`] and
//! [`tc`] put the blocklist filters on the interfaces (XDP ingress, tc egress), [`pin`] keeps all
//! of it in force past the agent, [`sock_destroy`] aborts a blocked socket, and [`sweep`] moves
//! blocks no local socket will close out of the blocklist into its overflow table. [`btf`] is here,
//! not with the domain modules: it reads the running kernel's `struct sock` layout, which only the
//! eBPF programs consume.

mod apply;
pub mod btf;
pub mod capacity;
pub mod features;
pub mod hooks;
pub mod iface;
pub mod loader;
pub mod maps;
pub mod mptcp_abort;
pub mod offer_readers;
pub mod pin;
pub mod policy_maps;
pub mod posture_readers;
pub mod sock_destroy;
pub mod sweep;
pub mod table;
pub mod tc;
pub mod uprobes;
pub mod who_maps;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use aya::Ebpf;
use enforcer_common::flow::op;
use tracing::warn;

pub use apply::{Summary, verdict_for};
use capacity::{Capacity, Full, OVER_CAPACITY, OverCapacity};
use maps::{LiveMapError, LiveMaps};
use policy_maps::PolicyMaps;
use table::{Ids, LibInfo, Libraries};
use uprobes::Prober;

use crate::{
    catalog::Catalog,
    libraries::Library,
    policy::{Action, Decision, Mode, NameScope, Policy},
};

/// The eBPF object and everything that writes the policy into it. Shared (`Arc`) by the agent's
/// start-up, its main loop and the watcher's worker threads.
///
/// Fields drop in order: the object first (its links detach), the prober last (it releases the
/// `uprobe_multi` links from many threads at once). Locks are taken in the order `in_force`,
/// `libraries`, `policy_maps`, and none of them is held while probing (which may lock `ebpf`).
pub struct Datapath {
    ebpf: Mutex<Ebpf>,
    policy_maps: Mutex<PolicyMaps>,
    maps: Arc<Mutex<LiveMaps>>,
    /// Read-locked by a registration until the library is in the table, write-locked by a
    /// reload while it writes the maps: a library registered during a reload is either listed
    /// (and rewritten by it) or written with the new policy, never with the old one after it.
    in_force: Arc<RwLock<InForce>>,
    libraries: Libraries,
    ids: Ids,
    /// Slots of the maps keyed by library id (`--max-libraries`), and the libraries that found
    /// none (probed under `OVER_CAPACITY`).
    capacity: Arc<Capacity>,
    over: OverCapacity,
    /// Held by a release from its first detach to its table removal, and by a reload while it
    /// adds a library's record probes: a released library gets none after its release.
    releasing: Mutex<()>,
    /// The largest library id an earlier run left in the pinned `LIB_ACTIONS` (0: none).
    earlier_max_id: u32,
    prober: Prober,
}

/// The policy in force and the settings it is applied with.
#[derive(Clone, Debug)]
pub struct InForce {
    pub policy: Policy,
    /// `--dry-run`: the mode is audit whatever the policy says.
    pub dry_run: bool,
    /// The kernel hook attributes sends only after they leave (`sock_send_length`): see
    /// [`policy_maps::hello_value`].
    pub late_attribution: bool,
}

impl InForce {
    pub fn mode(&self) -> Mode {
        self.policy.effective_mode(self.dry_run)
    }
}

/// A read-only view of the policy in force (the operator's `status`, the `ready` record).
#[derive(Clone)]
pub struct PolicyView(Arc<RwLock<InForce>>);

impl PolicyView {
    pub fn read(&self) -> RwLockReadGuard<'_, InForce> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A library registered and probed.
#[derive(Debug)]
pub struct Registered {
    pub id: u32,
    pub decision: Decision,
    /// How many functions got probes.
    pub functions: usize,
    /// No slot was free: probed under `OVER_CAPACITY`, judged by the policy's `default`.
    pub over_capacity: Option<Full>,
}

/// A library that could not be registered; nothing of it is left in the maps or the table.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The policy maps could not be written (the datapath is in trouble, not the library).
    #[error("writing the policy of library {id}: {source}")]
    Maps { id: u32, source: LiveMapError },
    #[error("probing library {id}: {source:#}")]
    Probe { id: u32, source: anyhow::Error },
}

impl Datapath {
    /// Takes over a loaded object: opens its maps, writes `MODE` and the over-capacity entry,
    /// loads the TLS programs. Library ids continue after the largest an earlier run left in
    /// pinned maps. At most `max_libraries.0` libraries hold an id at once, at most
    /// `max_libraries.1` of them charged to one uid other than root (0: half; see [`capacity`]).
    pub fn new(
        mut ebpf: Ebpf,
        libraries: Libraries,
        policy: Policy,
        dry_run: bool,
        max_libraries: (u32, u32),
    ) -> anyhow::Result<Datapath> {
        let mut policy_maps = PolicyMaps::open(&ebpf)?;
        let maps = LiveMaps::open(&ebpf)?;
        let earlier_max_id = policy_maps
            .action_ids()
            .into_iter()
            .filter(|&id| id < OVER_CAPACITY)
            .max()
            .unwrap_or(0);
        let in_force = InForce {
            policy,
            dry_run,
            late_attribution: false,
        };
        policy_maps.set_mode(in_force.mode().code())?;
        policy_maps.write_host_posture(&in_force.policy)?;
        policy_maps.write_who(&in_force.policy)?;
        if let Err(err) = policy_maps.write_over_capacity(in_force.policy.default) {
            warn!(
                "libraries over capacity cannot be judged (their TLS would be unattributed): {err}"
            );
        }
        let prober = Prober::new(&mut ebpf)?;
        Ok(Datapath {
            ebpf: Mutex::new(ebpf),
            policy_maps: Mutex::new(policy_maps),
            maps: Arc::new(Mutex::new(maps)),
            in_force: Arc::new(RwLock::new(in_force)),
            libraries,
            ids: Ids::after(earlier_max_id),
            capacity: Arc::new(Capacity::new(max_libraries.0, max_libraries.1)),
            over: OverCapacity::default(),
            releasing: Mutex::new(()),
            earlier_max_id,
            prober,
        })
    }

    /// The object, for attaching programs and taking maps (hold it briefly: workers probing
    /// with perf-event uprobes wait for it).
    pub fn ebpf(&self) -> MutexGuard<'_, Ebpf> {
        lock(&self.ebpf)
    }

    /// The flow table, blocklist and statistics (the operator, the main loop).
    pub fn maps(&self) -> Arc<Mutex<LiveMaps>> {
        self.maps.clone()
    }

    /// Handles of their own on the same maps, for a background task that walks them (the
    /// metrics sampler, the blocklist sweep) without holding up the shared ones.
    pub fn open_maps(&self) -> Result<LiveMaps, LiveMapError> {
        LiveMaps::open(&self.ebpf())
    }

    pub fn libraries(&self) -> &Libraries {
        &self.libraries
    }

    pub fn policy(&self) -> PolicyView {
        PolicyView(self.in_force.clone())
    }

    /// The catalog files are identified with (the policy's, so it follows reloads).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.read().policy.catalog.clone()
    }

    pub fn earlier_max_id(&self) -> u32 {
        self.earlier_max_id
    }

    /// The ids of the programs whose links `--pin` pins.
    pub fn pinned_program_ids(&self) -> Vec<u32> {
        pin::datapath_programs(&self.ebpf(), &self.prober.program_fds())
    }

    /// Once the kernel hook is attached: whether it attributes late, and `HELLO_POLICY` written
    /// accordingly. Returns the action applied to unattributed TLS.
    pub fn set_late_attribution(&self, late: bool) -> Result<Action, LiveMapError> {
        let mut in_force = self.write();
        in_force.late_attribution = late;
        let (value, unattributed) = policy_maps::hello_value(&in_force.policy, late);
        lock(&self.policy_maps).set_hello_policy(value)?;
        if late && in_force.policy.has_who_rules() {
            warn!(
                "the kernel hook sees a send only after its packets left: rules scoped to who is talking (executables, cgroups, users) never match a flow's first hello, which is judged without them"
            );
        }
        Ok(unattributed)
    }

    /// Gives `lib` the next id, writes its action and server-name scope (before its probes: the
    /// first connection may follow them within microseconds), lists it in the table (so its
    /// first events are reported with it), and probes it. If it cannot be probed, it leaves the
    /// table and the maps again. With no slot free (the limit, or a map full), it is probed
    /// under `OVER_CAPACITY` instead (`Registered::over_capacity` says why).
    ///
    /// A library that binds its hellos to its randoms and that the policy allows, unscoped, gets
    /// no probes on its record calls (`Library::split_record_probes`): its connections are
    /// attributed at the handshake, so a record costs it nothing. A reload that denies or audits
    /// it adds them (`apply`), so its connections the agent never saw a hello of are cut at
    /// their next record.
    ///
    /// `uid`: the user of the process that brought the file in, charged with the slot (`None`:
    /// found at start or by the start-up sweep).
    pub fn register(&self, lib: Library, uid: Option<u32>) -> Result<Registered, RegisterError> {
        let id = match self.take_slot(uid) {
            Ok(id) => id,
            Err(full) => return self.register_over_capacity(lib, full),
        };
        let (decision, probed) = {
            let in_force = self.read();
            let decision = in_force.policy.decide(&lib);
            let scope = in_force.policy.name_scope(&lib);
            let written = {
                let mut policy_maps = lock(&self.policy_maps);
                let code = lib.probes.iter().find_map(|p| p.code);
                let who = in_force
                    .policy
                    .who_may_decide(Some(&crate::policy::subject(&lib)));
                policy_maps
                    .write_library(
                        id,
                        decision.action,
                        scope.as_ref(),
                        in_force.policy.posture_of(&lib),
                        who,
                    )
                    .and_then(|()| code.map_or(Ok(()), |span| policy_maps.set_code(id, span)))
            };
            if let Err(source) = written {
                self.forget(id);
                self.give_slot(id);
                if let Some(map) = source.full_map() {
                    drop(in_force);
                    return self.register_over_capacity(lib, Full::Map(map));
                }
                return Err(RegisterError::Maps { id, source });
            }
            let mut info = LibInfo::of(&lib);
            info.records_deferred = records_unneeded(&lib, decision.action, scope.as_ref());
            let probed = match info.records_deferred {
                true => lib.split_record_probes().0,
                false => lib.clone(),
            };
            self.libraries.insert(id, info);
            (decision, probed)
        };
        match self.prober.attach(id, &probed, || lock(&self.ebpf)) {
            Ok(functions) => {
                if lib.probes.iter().any(|p| op::is_random(p.op))
                    && let Err(err) = lock(&self.policy_maps).bind_hellos(id)
                {
                    // Its flows stay judged by the thread that touched them (as without the
                    // random source): fail-open, but said.
                    warn!(id, path = %lib.path.display(), "hellos not bound to the library's randoms: {err}");
                }
                Ok(Registered {
                    id,
                    decision,
                    functions,
                    over_capacity: None,
                })
            }
            Err(source) => {
                // Under the read lock: a reload does not write this library again after it.
                let _in_force = self.read();
                self.libraries.remove(id);
                self.forget(id);
                self.give_slot(id);
                Err(RegisterError::Probe { id, source })
            }
        }
    }

    /// Removes the policy (action, server-name scope) of an earlier run's libraries that no flow
    /// refers to any more (once this run is attached and the earlier run's links are gone).
    pub fn retire_earlier(&self) {
        let referenced: HashSet<u32> = lock(&self.maps)
            .flows()
            .iter()
            .map(|(_, s)| s.lib_id)
            .collect();
        let mut policy_maps = lock(&self.policy_maps);
        for id in policy_maps.action_ids() {
            if id <= self.earlier_max_id
                && !referenced.contains(&id)
                && let Err(err) = policy_maps.forget_library(id)
            {
                warn!(
                    id,
                    "removing an earlier run's library from the policy maps failed: {err}"
                );
            }
        }
    }

    fn forget(&self, id: u32) {
        if let Err(err) = lock(&self.policy_maps).forget_library(id) {
            warn!(
                id,
                "removing an unprobed library from the policy maps failed: {err}"
            );
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, InForce> {
        self.in_force.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The policy in force, to replace or re-apply it (registrations wait meanwhile).
    fn write(&self) -> RwLockWriteGuard<'_, InForce> {
        self.in_force
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `lib`'s record calls need no probe under `action` and `scope`: it binds its hellos
/// and is allowed whatever the server name.
pub(crate) fn records_unneeded(lib: &Library, action: Action, scope: Option<&NameScope>) -> bool {
    lib.binds_hellos() && action == Action::Allow && scope.is_none()
}

/// Locks `m`; a panic elsewhere while it was held does not make the data unusable here (every
/// holder leaves it consistent between statements), so poisoning is ignored.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
