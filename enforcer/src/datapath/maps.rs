//! The agent's own handles on the maps operators look at and change while it runs: the flow
//! table, the blocklist, the statistics, and the policy maps (a reload rewrites them: library
//! actions, mode, `unattributed_tls` and the server-name scopes).
//!
//! They are second file descriptors of the very maps the programs use (opened by map id), so
//! they stay usable after the `Ebpf` object went to the watcher. Every walk is bounded by the
//! map's capacity.

use std::net::SocketAddr;

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, Map, MapData, MapError, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
};
use enforcer_common::{
    flow::{FlowKey, FlowState, verdict},
    maps,
    policy::{HelloPolicy, ServerNameKey},
    stat,
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

fn err(name: &'static str) -> impl FnOnce(MapError) -> LiveMapError {
    move |source| LiveMapError::Map { name, source }
}

/// Handles on FLOWS, BLOCKLIST, STATS, LIB_ACTIONS, MODE, HELLO_POLICY, SCOPED_LIBS and
/// SERVER_NAME_RULES.
pub struct LiveMaps {
    flows: HashMap<MapData, FlowKey, FlowState>,
    blocklist: HashMap<MapData, FlowKey, u8>,
    stats: PerCpuArray<MapData, u64>,
    actions: HashMap<MapData, u32, u8>,
    mode: Array<MapData, u32>,
    hello_policy: Array<MapData, HelloPolicy>,
    scoped_libs: HashMap<MapData, u32, u8>,
    name_rules: LpmTrie<MapData, ServerNameKey, u8>,
    name_rules_max: u32,
    pub flows_max: u32,
    pub blocklist_max: u32,
}

/// Counts of the map entries, against capacity.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Fill {
    pub flows: usize,
    pub flows_max: u32,
    pub blocklist: usize,
    pub blocklist_max: u32,
}

impl LiveMaps {
    pub fn open(ebpf: &Ebpf) -> Result<LiveMaps, LiveMapError> {
        let data = |name: &'static str| -> Result<MapData, LiveMapError> {
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
        };
        let flows_data = data(maps::FLOWS)?;
        let blocklist_data = data(maps::BLOCKLIST)?;
        let flows_max = flows_data.info().map_err(err(maps::FLOWS))?.max_entries();
        let blocklist_max = blocklist_data
            .info()
            .map_err(err(maps::BLOCKLIST))?
            .max_entries();
        let rules_data = data(maps::SERVER_NAME_RULES)?;
        let name_rules_max = rules_data
            .info()
            .map_err(err(maps::SERVER_NAME_RULES))?
            .max_entries();
        Ok(LiveMaps {
            flows: HashMap::try_from(Map::LruHashMap(flows_data)).map_err(err(maps::FLOWS))?,
            blocklist: HashMap::try_from(Map::HashMap(blocklist_data))
                .map_err(err(maps::BLOCKLIST))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(data(maps::STATS)?))
                .map_err(err(maps::STATS))?,
            actions: HashMap::try_from(Map::HashMap(data(maps::LIB_ACTIONS)?))
                .map_err(err(maps::LIB_ACTIONS))?,
            mode: Array::try_from(Map::Array(data(maps::MODE)?)).map_err(err(maps::MODE))?,
            hello_policy: Array::try_from(Map::Array(data(maps::HELLO_POLICY)?))
                .map_err(err(maps::HELLO_POLICY))?,
            scoped_libs: HashMap::try_from(Map::HashMap(data(maps::SCOPED_LIBS)?))
                .map_err(err(maps::SCOPED_LIBS))?,
            name_rules: LpmTrie::try_from(Map::LpmTrie(rules_data))
                .map_err(err(maps::SERVER_NAME_RULES))?,
            name_rules_max,
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

    pub fn blocked(&self) -> Vec<FlowKey> {
        self.blocklist
            .keys()
            .take(self.blocklist_max as usize)
            .filter_map(Result::ok)
            .collect()
    }

    pub fn is_blocked(&self, flow: &FlowKey) -> bool {
        self.blocklist.get(flow, 0).is_ok()
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
    pub fn block(&mut self, flow: &FlowKey, lib_id: u32) -> Result<(), LiveMapError> {
        self.blocklist
            .insert(flow, 1, 0)
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

    pub fn set_action(&mut self, lib_id: u32, action: u8) -> Result<(), LiveMapError> {
        self.actions
            .insert(lib_id, action, 0)
            .map_err(err(maps::LIB_ACTIONS))
    }

    pub fn set_mode(&mut self, mode: u32) -> Result<(), LiveMapError> {
        self.mode.set(0, mode, 0).map_err(err(maps::MODE))
    }

    /// Library ids with an action (with pinned maps, earlier runs' too). Bounded by the map's
    /// capacity (4096).
    pub fn action_ids(&self) -> Vec<u32> {
        self.actions
            .keys()
            .take(4096)
            .filter_map(Result::ok)
            .collect()
    }

    pub fn remove_action(&mut self, lib_id: u32) {
        let _ = self.actions.remove(&lib_id);
    }

    pub fn hello_policy(&self) -> HelloPolicy {
        self.hello_policy.get(&0, 0).unwrap_or_default()
    }

    pub fn set_hello_policy(&mut self, value: HelloPolicy) -> Result<(), LiveMapError> {
        self.hello_policy
            .set(0, value, 0)
            .map_err(err(maps::HELLO_POLICY))
    }

    /// Makes `lib_id` judged at its ClientHello (`SCOPED_LIBS`), with `nameless` for a
    /// ClientHello without a readable name.
    pub fn set_scoped(&mut self, lib_id: u32, nameless: u8) -> Result<(), LiveMapError> {
        self.scoped_libs
            .insert(lib_id, nameless, 0)
            .map_err(err(maps::SCOPED_LIBS))
    }

    /// `lib_id` is judged at attribution again (by `LIB_ACTIONS`).
    pub fn remove_scoped(&mut self, lib_id: u32) -> Result<(), LiveMapError> {
        absent_ok(self.scoped_libs.remove(&lib_id)).map_err(err(maps::SCOPED_LIBS))
    }

    /// Inserts (or overwrites) one server-name pattern of a library.
    pub fn insert_name_rule(
        &mut self,
        key: &Key<ServerNameKey>,
        action: u8,
    ) -> Result<(), LiveMapError> {
        self.name_rules
            .insert(key, action, 0)
            .map_err(err(maps::SERVER_NAME_RULES))
    }

    /// The patterns `lib_id` has in `SERVER_NAME_RULES` (read back from the trie, so keys an
    /// earlier policy or run wrote are found too). Bounded by the trie's capacity.
    pub fn name_rules_of(&self, lib_id: u32) -> Vec<Key<ServerNameKey>> {
        self.name_rules
            .keys()
            .take(self.name_rules_max as usize)
            .filter_map(Result::ok)
            .filter(|k| k.data().lib_id_be == lib_id.to_be())
            .collect()
    }

    pub fn remove_name_rule(&mut self, key: &Key<ServerNameKey>) -> Result<(), LiveMapError> {
        absent_ok(self.name_rules.remove(key)).map_err(err(maps::SERVER_NAME_RULES))
    }
}

/// A removal of a key that is not there (aya reports the syscall's ENOENT) is no error.
fn absent_ok(result: Result<(), MapError>) -> Result<(), MapError> {
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
