//! Loads the embedded eBPF object with the running kernel's socket offsets, and writes the
//! policy into its maps.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapError},
};
use enforcer_common::{SOCK_OFFSETS_GLOBAL, SockOffsets, discover, maps};

use crate::policy::{Action, Mode};

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
