//! Loads the embedded eBPF object with the running kernel's socket offsets (the policy goes into
//! its maps through [`super::Datapath`]).

use aya::{Ebpf, EbpfLoader};
use enforcer_common::{
    discover,
    flow::{SOCK_OFFSETS_GLOBAL, SockOffsets},
    maps,
};

/// The eBPF object built by `build.rs`.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object failed: {0}")]
    Object(#[from] aya::EbpfError),
    #[error(
        "replacing the pinned FLOW_HEADS of an earlier version (it has no HEAD_BUCKETS) failed: {0}"
    )]
    UncountedHeads(std::io::Error),
    #[error(
        "replacing the pinned STATS of an earlier version (another number of counters) failed: {0}"
    )]
    OtherStats(std::io::Error),
    #[error("marking the pinned blocklist as holding entries (BLOCKLIST_HELD) failed: {0}")]
    Held(aya::maps::MapError),
}

/// Default capacity of `FLOWS` (LRU: the least recently used flow makes room).
pub const DEFAULT_FLOWS_MAX: u32 = 65536;
/// Default capacity of `BLOCKLIST` (never evicts: a full one sends denied flows to the overflow
/// table, still dropped).
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
    // A pinned BLOCKLIST without its BLOCKLIST_HELD or BLOCKLIST_BUCKETS (pinned by a version
    // that had none) may hold entries no count covers: the packet programs must then always
    // look it up.
    let uncounted = opts.pin.as_ref().is_some_and(|dir| {
        dir.has_map(maps::BLOCKLIST)
            && !(dir.has_map(maps::BLOCKLIST_HELD) && dir.has_map(maps::BLOCKLIST_BUCKETS))
    });
    if let Some(dir) = &opts.pin {
        // Likewise a pinned FLOW_HEADS without HEAD_BUCKETS: its heads are not counted, and a
        // segment of an uncounted head would skip it. It is left behind (a new one is pinned):
        // the flows between SYN and hello at this moment become flows without a head, judged by
        // a hello at the start of a segment, like flows older than the agent.
        let heads = enforcer_common::hello::FLOW_HEADS;
        if dir.has_map(heads) && !dir.has_map(enforcer_common::hello::HEAD_BUCKETS) {
            std::fs::remove_file(dir.map_path(heads)).map_err(LoadError::UncountedHeads)?;
        }
        // A pinned STATS with another number of counters (pinned by a version with fewer): the
        // counters start again from zero rather than the new ones going uncounted.
        let stats = dir.map_path(maps::STATS);
        let counters = aya::maps::MapData::from_pin(&stats)
            .ok()
            .and_then(|m| m.info().ok())
            .map(|info| info.max_entries());
        if counters.is_some_and(|n| n != enforcer_common::stat::COUNT) {
            std::fs::remove_file(&stats).map_err(LoadError::OtherStats)?;
        }
        for name in maps::PINNED {
            loader.map_pin_path(name, dir.map_path(name));
        }
    }
    let mut ebpf = loader.load(OBJECT)?;
    if uncounted {
        mark_blocklist_held(&mut ebpf)?;
    }
    Ok(ebpf)
}

/// Sets `BLOCKLIST_HELD[USERSPACE]` (for good: see `enforcer_common::flow::held`).
fn mark_blocklist_held(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let map = ebpf.map_mut(maps::BLOCKLIST_HELD).ok_or(LoadError::Held(
        aya::maps::MapError::InvalidName {
            name: maps::BLOCKLIST_HELD.into(),
        },
    ))?;
    let mut held: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(map).map_err(LoadError::Held)?;
    held.set(enforcer_common::flow::held::USERSPACE, 1, 0)
        .map_err(LoadError::Held)
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
