//! Loads the embedded eBPF object with the running kernel's socket offsets, and writes the
//! policy into its maps.

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapError,
        lpm_trie::{Key, LpmTrie},
    },
};
use enforcer_common::{
    discover,
    flow::{SOCK_OFFSETS_GLOBAL, SockOffsets},
    maps,
    policy::{HelloPolicy, ServerNameKey},
};

use crate::libraries::Library;
use crate::policy::{Action, Decision, Mode, Policy};

/// The eBPF object built by `build.rs`.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object failed: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
}

/// Default capacity of `FLOWS` (LRU: the least recently used flow makes room).
pub const DEFAULT_FLOWS_MAX: u32 = 65536;
/// Default capacity of `BLOCKLIST` (never evicts: a full blocklist is reported, fail-open).
pub const DEFAULT_BLOCKLIST_MAX: u32 = 16384;

/// Map sizes and pinning for [`load_with`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub flows_max: u32,
    pub blocklist_max: u32,
    /// Reuse (or create and pin) the maps of [`maps::PINNED`] there.
    pub pin: Option<crate::datapath::pin::PinDir>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flows_max: DEFAULT_FLOWS_MAX,
            blocklist_max: DEFAULT_BLOCKLIST_MAX,
            pin: None,
        }
    }
}

pub fn load(offsets: &SockOffsets) -> Result<Ebpf, LoadError> {
    load_with(offsets, &LoadOptions::default())
}

/// Loads the object with the given map sizes. With a pin directory, the maps of
/// [`maps::PINNED`] are taken from it when an earlier run pinned them (their sizes
/// are then the earlier run's: see [`pinned_size_mismatches`]), else created and pinned.
pub fn load_with(offsets: &SockOffsets, opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    let mut loader = EbpfLoader::new();
    loader
        .override_global(SOCK_OFFSETS_GLOBAL, offsets, true)
        .map_max_entries(maps::FLOWS, opts.flows_max)
        .map_max_entries(maps::BLOCKLIST, opts.blocklist_max)
        // `enforcer discover`'s maps, unused by the agent: one entry each instead of megabytes.
        .map_max_entries(discover::HITS, 1)
        .map_max_entries(discover::STACKS, 1);
    if let Some(dir) = &opts.pin {
        for name in maps::PINNED {
            loader.map_pin_path(name, dir.map_path(name));
        }
    }
    Ok(loader.load(OBJECT)?)
}

/// `(map, asked, actual)` for each sized map whose capacity is not what was asked (a pinned map
/// reused from an earlier run keeps its size).
pub fn pinned_size_mismatches(ebpf: &Ebpf, opts: &LoadOptions) -> Vec<(&'static str, u32, u32)> {
    [
        (maps::FLOWS, opts.flows_max),
        (maps::BLOCKLIST, opts.blocklist_max),
    ]
    .into_iter()
    .filter_map(|(name, asked)| {
        let actual = max_entries(ebpf, name)?;
        (actual != asked).then_some((name, asked, actual))
    })
    .collect()
}

/// The capacity of map `name` as the kernel reports it.
pub fn max_entries(ebpf: &Ebpf, name: &str) -> Option<u32> {
    let info = match ebpf.map(name)? {
        aya::maps::Map::HashMap(m) | aya::maps::Map::LruHashMap(m) => m.info().ok()?,
        _ => return None,
    };
    Some(info.max_entries())
}

pub fn set_mode(ebpf: &mut Ebpf, value: Mode) -> Result<(), LoadError> {
    let name = maps::MODE;
    let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
    let mut array: Array<_, u32> =
        Array::try_from(map).map_err(|source| LoadError::Map { name, source })?;
    array
        .set(0, value.code(), 0)
        .map_err(|source| LoadError::Map { name, source })
}

pub fn set_library_action(ebpf: &mut Ebpf, lib_id: u32, value: Action) -> Result<(), LoadError> {
    let name = maps::LIB_ACTIONS;
    let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
    let mut actions: HashMap<_, u32, u8> =
        HashMap::try_from(map).map_err(|source| LoadError::Map { name, source })?;
    actions
        .insert(lib_id, value.code(), 0)
        .map_err(|source| LoadError::Map { name, source })
}

/// Writes what the policy says about `lib` into the kernel: its action (`LIB_ACTIONS`) and, if
/// rules scope it by server name, its patterns (`SERVER_NAME_RULES`) and its action for a
/// ClientHello without a readable name (`SCOPED_LIBS`). The scope goes in first, so the library
/// is never judged by its unscoped action alone once probed.
pub fn apply_library_policy(
    ebpf: &mut Ebpf,
    policy: &Policy,
    lib: &Library,
) -> Result<Decision, LoadError> {
    let decision = policy.decide(lib);
    if let Some(scope) = policy.name_scope(lib) {
        let name = maps::SERVER_NAME_RULES;
        let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        let mut trie: LpmTrie<_, ServerNameKey, u8> =
            LpmTrie::try_from(map).map_err(|source| LoadError::Map { name, source })?;
        for (pattern, action, _) in &scope.patterns {
            let (bits, data) = pattern.kernel_key(lib.id);
            trie.insert(&Key::new(bits, data), action.code(), 0)
                .map_err(|source| LoadError::Map { name, source })?;
        }
        let name = maps::SCOPED_LIBS;
        let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        let mut scoped: HashMap<_, u32, u8> =
            HashMap::try_from(map).map_err(|source| LoadError::Map { name, source })?;
        scoped
            .insert(lib.id, scope.nameless.code(), 0)
            .map_err(|source| LoadError::Map { name, source })?;
    }
    set_library_action(ebpf, lib.id, decision.action)?;
    Ok(decision)
}

/// Writes `HELLO_POLICY`: the action for unattributed TLS, whether any rule is scoped by server
/// name, and whether the kernel hook attributes sends only after their packets left
/// (`late_attribution`: the `sock_send_length` fallback). With late attribution an unattributed
/// ClientHello may belong to a probed library whose hook has not run yet, so `deny` is lowered
/// to `audit` (reported, never blocked) rather than blocking an allowed library; the caller
/// warns.
pub fn set_hello_policy(
    ebpf: &mut Ebpf,
    policy: &Policy,
    late_attribution: bool,
) -> Result<Action, LoadError> {
    let (value, unattributed) = hello_policy(policy, late_attribution);
    let name = maps::HELLO_POLICY;
    let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
    let mut array: Array<_, HelloPolicy> =
        Array::try_from(map).map_err(|source| LoadError::Map { name, source })?;
    array
        .set(0, value, 0)
        .map_err(|source| LoadError::Map { name, source })?;
    Ok(unattributed)
}

/// The `HELLO_POLICY` value for `policy` (start-up and reload write the same), and the action
/// applied to unattributed TLS (see [`set_hello_policy`]).
pub fn hello_policy(policy: &Policy, late_attribution: bool) -> (HelloPolicy, Action) {
    let unattributed = match (policy.unattributed_tls, late_attribution) {
        (Action::Deny, true) => Action::Audit,
        (action, _) => action,
    };
    let value = HelloPolicy {
        unattributed: unattributed.code(),
        scoped: policy.libraries.iter().any(|r| r.is_scoped()) as u8,
        late_attribution: late_attribution as u8,
        _pad: 0,
    };
    (value, unattributed)
}
