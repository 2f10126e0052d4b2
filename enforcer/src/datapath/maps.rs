//! The agent's own handles on the maps operators look at and change while it runs: the flow
//! table, the blocklist (with its overflow table) and the statistics (the policy maps are in
//! `policy_maps`).
//!
//! They are second file descriptors of the very maps the programs use (opened by map id), so
//! they stay usable after the `Ebpf` object went to the watcher. Every walk is bounded by the
//! map's capacity.

use std::net::SocketAddr;

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
};
use enforcer_common::{
    flow::{FlowKey, FlowState, block, held, verdict},
    maps, stat,
};

#[derive(Debug, thiserror::Error)]
pub enum LiveMapError {
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
}

impl LiveMapError {
    /// The map named, if this is a hash map's "no room" (`E2BIG` on an insert of a new key).
    pub fn full_map(&self) -> Option<&'static str> {
        match self {
            LiveMapError::Map {
                name,
                source: MapError::SyscallError(e),
            } if e.io_error.raw_os_error() == Some(libc::E2BIG) => Some(name),
            _ => None,
        }
    }
}

pub(super) fn err(name: &'static str) -> impl FnOnce(MapError) -> LiveMapError {
    move |source| LiveMapError::Map { name, source }
}

/// Handles on FLOWS, BLOCKLIST, BLOCKLIST_OVERFLOW and STATS.
pub struct LiveMaps {
    flows: HashMap<MapData, FlowKey, FlowState>,
    blocklist: HashMap<MapData, FlowKey, u8>,
    overflow: HashMap<MapData, FlowKey, u8>,
    overflow_in_use: Array<MapData, u32>,
    held: Array<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    /// What each flow negotiated (`posture::POSTURES`).
    postures: HashMap<MapData, FlowKey, enforcer_common::posture::Posture>,
    pub flows_max: u32,
    pub blocklist_max: u32,
    pub overflow_max: u32,
}

/// Counts of the map entries, against capacity.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Fill {
    pub flows: usize,
    pub flows_max: u32,
    pub blocklist: usize,
    pub blocklist_max: u32,
    /// Blocks held in `BLOCKLIST_OVERFLOW` (did not fit, or swept: no local socket).
    pub overflow: usize,
    pub overflow_max: u32,
}

/// A second file descriptor of map `name` of `ebpf` (opened by its id).
/// What the agent's JA4 gate needs (`agent::events::ja4_gate`): `JA4_VERDICTS` and
/// `JA4_CACHE` (written), `POSTURE_RULES` (read).
pub struct Ja4Maps {
    pub verdicts: HashMap<MapData, FlowKey, enforcer_common::posture::Ja4Verdict>,
    pub cache: HashMap<MapData, enforcer_common::ja4_key::Ja4Key, u64>,
    pub rules: HashMap<MapData, u32, enforcer_common::posture::PostureRule>,
}

pub fn ja4_maps(ebpf: &Ebpf) -> Result<Ja4Maps, LiveMapError> {
    use enforcer_common::{
        ja4_key::JA4_CACHE,
        posture::{JA4_VERDICTS, POSTURE_RULES},
    };
    Ok(Ja4Maps {
        verdicts: HashMap::try_from(Map::LruHashMap(map_data(ebpf, JA4_VERDICTS)?))
            .map_err(err(JA4_VERDICTS))?,
        cache: HashMap::try_from(Map::LruHashMap(map_data(ebpf, JA4_CACHE)?))
            .map_err(err(JA4_CACHE))?,
        rules: HashMap::try_from(Map::HashMap(map_data(ebpf, POSTURE_RULES)?))
            .map_err(err(POSTURE_RULES))?,
    })
}

pub(super) fn map_data(ebpf: &Ebpf, name: &'static str) -> Result<MapData, LiveMapError> {
    let map = ebpf.map(name).ok_or(LiveMapError::Missing(name))?;
    let info = match map {
        Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::Array(m)
        | Map::LpmTrie(m) => m.info().map_err(err(name))?,
        _ => return Err(LiveMapError::Missing(name)),
    };
    MapData::from_id(info.id()).map_err(err(name))
}

impl LiveMaps {
    pub fn open(ebpf: &Ebpf) -> Result<LiveMaps, LiveMapError> {
        let data = |name| map_data(ebpf, name);
        let flows_data = data(maps::FLOWS)?;
        let blocklist_data = data(maps::BLOCKLIST)?;
        let flows_max = flows_data.info().map_err(err(maps::FLOWS))?.max_entries();
        let blocklist_max = blocklist_data
            .info()
            .map_err(err(maps::BLOCKLIST))?
            .max_entries();
        let overflow_data = data(maps::BLOCKLIST_OVERFLOW)?;
        let overflow_max = overflow_data
            .info()
            .map_err(err(maps::BLOCKLIST_OVERFLOW))?
            .max_entries();
        Ok(LiveMaps {
            overflow: HashMap::try_from(Map::LruHashMap(overflow_data))
                .map_err(err(maps::BLOCKLIST_OVERFLOW))?,
            overflow_in_use: Array::try_from(Map::Array(data(maps::OVERFLOW_IN_USE)?))
                .map_err(err(maps::OVERFLOW_IN_USE))?,
            overflow_max,
            held: Array::try_from(Map::Array(data(maps::BLOCKLIST_HELD)?))
                .map_err(err(maps::BLOCKLIST_HELD))?,
            flows: HashMap::try_from(Map::LruHashMap(flows_data)).map_err(err(maps::FLOWS))?,
            blocklist: HashMap::try_from(Map::HashMap(blocklist_data))
                .map_err(err(maps::BLOCKLIST))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(data(maps::STATS)?))
                .map_err(err(maps::STATS))?,
            postures: HashMap::try_from(Map::LruHashMap(data(enforcer_common::posture::POSTURES)?))
                .map_err(err(enforcer_common::posture::POSTURES))?,
            flows_max,
            blocklist_max,
        })
    }

    /// Every attributed flow (at most the map's capacity).
    pub fn flows(&self) -> Vec<(FlowKey, FlowState)> {
        self.flows
            .iter()
            .take(self.flows_max as usize)
            .filter_map(Result::ok)
            .collect()
    }

    /// What `flow` negotiated, once its ServerHello was read.
    pub fn posture(&self, flow: &FlowKey) -> Option<enforcer_common::posture::Posture> {
        self.postures.get(flow, 0).ok()
    }

    pub fn blocked(&self) -> Vec<FlowKey> {
        self.blocklist
            .keys()
            .take(self.blocklist_max as usize)
            .filter_map(Result::ok)
            .collect()
    }

    /// `BLOCKLIST` entries with who put them there (`flow::block::*`).
    pub fn blocked_entries(&self) -> Vec<(FlowKey, u8)> {
        self.blocklist
            .iter()
            .take(self.blocklist_max as usize)
            .filter_map(Result::ok)
            .collect()
    }

    /// Entries of `BLOCKLIST_OVERFLOW` now (a walk of at most its capacity).
    pub fn overflowed(&self) -> usize {
        self.overflow
            .keys()
            .take(self.overflow_max as usize)
            .filter(Result::is_ok)
            .count()
    }

    pub fn is_blocked(&self, flow: &FlowKey) -> bool {
        self.blocklist.get(flow, 0).is_ok() || self.overflow.get(flow, 0).is_ok()
    }

    /// Moves a kernel block from `BLOCKLIST` to `BLOCKLIST_OVERFLOW` (the sweep: no local socket
    /// is behind it, so no close will ever remove it). Into the overflow table first, so the
    /// flow is dropped at every moment in between.
    pub fn demote(&mut self, flow: &FlowKey) -> Result<(), LiveMapError> {
        self.overflow_in_use
            .set(0, 1, 0)
            .map_err(err(maps::OVERFLOW_IN_USE))?;
        self.overflow
            .insert(flow, block::KERNEL, 0)
            .map_err(err(maps::BLOCKLIST_OVERFLOW))?;
        absent_ok(self.blocklist.remove(flow)).map_err(err(maps::BLOCKLIST))
    }

    pub fn fill(&self) -> Fill {
        Fill {
            flows: self
                .flows
                .keys()
                .take(self.flows_max as usize)
                .filter(Result::is_ok)
                .count(),
            flows_max: self.flows_max,
            blocklist: self.blocked().len(),
            blocklist_max: self.blocklist_max,
            overflow: self.overflowed(),
            overflow_max: self.overflow_max,
        }
    }

    /// `STATS`, summed over CPUs, indexed by `stat::Stat`.
    pub fn stats(&self) -> [u64; stat::COUNT as usize] {
        let mut out = [0; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.stats.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }

    /// Puts `flow` in the blocklist and marks it blocked in FLOWS (so the kernel hook does not
    /// judge it again). `lib_id`: the library to record when the flow is not attributed yet.
    /// An operator's block: the sweep leaves it where it is.
    pub fn block(&mut self, flow: &FlowKey, lib_id: u32) -> Result<(), LiveMapError> {
        self.block_as(flow, lib_id, block::OPERATOR)
    }

    /// [`block`](Self::block) on the kernel's behalf (`block::KERNEL`: the sweep takes it out
    /// once the socket is gone): a verdict userspace took for the kernel (a rule scoped to who
    /// is talking).
    pub fn block_judged(&mut self, flow: &FlowKey, lib_id: u32) -> Result<(), LiveMapError> {
        self.block_as(flow, lib_id, block::KERNEL)
    }

    fn block_as(&mut self, flow: &FlowKey, lib_id: u32, marker: u8) -> Result<(), LiveMapError> {
        // Before the entry exists: from now on the packet programs always look BLOCKLIST up.
        self.held
            .set(held::USERSPACE, 1, 0)
            .map_err(err(maps::BLOCKLIST_HELD))?;
        self.blocklist
            .insert(flow, marker, 0)
            .map_err(err(maps::BLOCKLIST))?;
        let mut state = self.flows.get(flow, 0).unwrap_or(FlowState {
            lib_id,
            ..FlowState::default()
        });
        state.verdict = verdict::BLOCKED;
        self.flows.insert(flow, state, 0).map_err(err(maps::FLOWS))
    }

    /// Takes `flow` out of the blocklist and marks it allowed in FLOWS (the kernel hook leaves a
    /// flow it knows alone, so the operator's decision stands for this connection). Returns
    /// whether it was blocked.
    pub fn unblock(&mut self, flow: &FlowKey) -> Result<bool, LiveMapError> {
        let was = self.is_blocked(flow);
        absent_ok(self.blocklist.remove(flow)).map_err(err(maps::BLOCKLIST))?;
        absent_ok(self.overflow.remove(flow)).map_err(err(maps::BLOCKLIST_OVERFLOW))?;
        if let Ok(mut state) = self.flows.get(flow, 0) {
            state.verdict = verdict::ALLOWED;
            self.flows
                .insert(flow, state, 0)
                .map_err(err(maps::FLOWS))?;
        }
        Ok(was)
    }

    /// Records a new verdict for a flow in FLOWS (a reload re-evaluating it).
    pub fn set_verdict(&mut self, flow: &FlowKey, value: u8) -> Result<(), LiveMapError> {
        let Ok(mut state) = self.flows.get(flow, 0) else {
            return Ok(());
        };
        state.verdict = value;
        self.flows.insert(flow, state, 0).map_err(err(maps::FLOWS))
    }
}

/// A removal of a key that is not there (aya reports the syscall's ENOENT) is no error.
pub(super) fn absent_ok(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// A flow key from this host's end and the peer's (both IPv4 or both IPv6).
/// IPv4-mapped IPv6 ends (`[::ffff:a.b.c.d]:p`) are IPv4, as `FlowKey` records them.
pub fn flow_key(local: SocketAddr, remote: SocketAddr) -> Option<FlowKey> {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (local, remote) = (canonical(local), canonical(remote));
    let mut key = FlowKey {
        local_port: local.port(),
        remote_port: remote.port(),
        ..FlowKey::default()
    };
    match (local, remote) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) => {
            key.family = enforcer_common::flow::family::V4;
            key.local_addr[..4].copy_from_slice(&l.ip().octets());
            key.remote_addr[..4].copy_from_slice(&r.ip().octets());
        }
        (SocketAddr::V6(l), SocketAddr::V6(r)) => {
            key.family = enforcer_common::flow::family::V6;
            key.local_addr = l.ip().octets();
            key.remote_addr = r.ip().octets();
        }
        _ => return None,
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_keys_match_the_kernel_layout() {
        let key = flow_key(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:443".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(key.family, enforcer_common::flow::family::V4);
        assert_eq!((key.local_port, key.remote_port), (40000, 443));
        assert_eq!(&key.local_addr[..5], &[10, 0, 0, 1, 0]);
        let mapped = flow_key(
            "[::ffff:10.0.0.1]:1".parse().unwrap(),
            "[::ffff:10.0.0.2]:2".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(
            mapped.family,
            enforcer_common::flow::family::V4,
            "v4-mapped is IPv4 on the wire"
        );
        assert!(
            flow_key(
                "10.0.0.1:1".parse().unwrap(),
                "[fd00::1]:2".parse().unwrap()
            )
            .is_none()
        );
    }
}
