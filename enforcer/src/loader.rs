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
    HelloPolicy, SOCK_OFFSETS_GLOBAL, ServerNameKey, SockOffsets, discover, hello, maps,
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

pub fn load(offsets: &SockOffsets) -> Result<Ebpf, LoadError> {
    Ok(EbpfLoader::new()
        .override_global(SOCK_OFFSETS_GLOBAL, offsets, true)
        // `enforcer discover`'s maps, unused by the agent: one entry each instead of megabytes.
        .map_max_entries(discover::HITS, 1)
        .map_max_entries(discover::STACKS, 1)
        .load(OBJECT)?)
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
        let name = hello::SERVER_NAME_RULES;
        let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        let mut trie: LpmTrie<_, ServerNameKey, u8> =
            LpmTrie::try_from(map).map_err(|source| LoadError::Map { name, source })?;
        for (pattern, action, _) in &scope.patterns {
            let (bits, data) = pattern.kernel_key(lib.id);
            trie.insert(&Key::new(bits, data), action.code(), 0)
                .map_err(|source| LoadError::Map { name, source })?;
        }
        let name = hello::SCOPED_LIBS;
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
    let name = hello::HELLO_POLICY;
    let map = ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
    let mut array: Array<_, HelloPolicy> =
        Array::try_from(map).map_err(|source| LoadError::Map { name, source })?;
    array
        .set(0, value, 0)
        .map_err(|source| LoadError::Map { name, source })?;
    Ok(unattributed)
}
