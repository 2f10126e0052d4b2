//! The kernel's side of rules scoped to who is talking (`enforcer_common::who`): `WHO_CONFIG`
//! (switch, generation, the struct offsets the send hook reads the executable with), `WHO_LIBS`
//! (which libraries such a rule may decide), and for the agent's gate (`agent::events::who`)
//! `SENDERS` (read) and `WHO_CACHE` (written).

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData},
};
use enforcer_common::{
    event::UNATTRIBUTED,
    flow::FlowKey,
    who::{SENDERS, Sender, WHO_CACHE, WHO_CONFIG, WHO_LIBS, WhoConfig, WhoKey},
};
use tracing::warn;

use super::btf::{self, FieldSpec};
use super::maps::{LiveMapError, absent_ok, err, map_data};
use crate::policy::Policy;

/// The members the send hook reads, in `WhoConfig`'s order.
const FIELDS: [FieldSpec; 7] = [
    spec("task_struct", "mm", 8),
    spec("mm_struct", "exe_file", 8),
    spec("file", "f_inode", 8),
    spec("inode", "i_ino", 8),
    spec("inode", "i_sb", 8),
    spec("inode", "i_generation", 4),
    spec("super_block", "s_dev", 4),
];

const fn spec(strukt: &'static str, field: &'static str, size: u64) -> FieldSpec {
    FieldSpec {
        strukt,
        field,
        size,
    }
}

/// The offsets for the running kernel, `enabled` off.
fn offsets() -> Result<WhoConfig, btf::BtfError> {
    let o = btf::field_offsets(&FIELDS)?;
    Ok(WhoConfig {
        enabled: 0,
        task_mm: o[0],
        mm_exe_file: o[1],
        file_inode: o[2],
        inode_ino: o[3],
        inode_sb: o[4],
        inode_generation: o[5],
        sb_dev: o[6],
        generation: 0,
    })
}

pub struct WhoMaps {
    config: Array<MapData, WhoConfig>,
    libs: HashMap<MapData, u32, u8>,
    /// `Err`: the running kernel's BTF lacks a member; the rules then never match (said when a
    /// policy has them).
    offsets: Result<WhoConfig, String>,
    generation: u64,
}

impl WhoMaps {
    pub fn open(ebpf: &Ebpf) -> Result<WhoMaps, LiveMapError> {
        let offsets = offsets().map_err(|e| e.to_string());
        Ok(WhoMaps {
            config: Array::try_from(Map::Array(map_data(ebpf, WHO_CONFIG)?))
                .map_err(err(WHO_CONFIG))?,
            libs: HashMap::try_from(Map::HashMap(map_data(ebpf, WHO_LIBS)?))
                .map_err(err(WHO_LIBS))?,
            offsets,
            // Per run (the cache is not pinned), but never 0, and not an earlier run's.
            generation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1),
        })
    }

    /// Whether a rule scoped to who is talking may decide library `lib_id` (or, for
    /// `UNATTRIBUTED`, unattributed TLS). Written before the library's action, so the kernel
    /// holds its hellos from the first one.
    pub fn set_library(&mut self, lib_id: u32, may_decide: bool) -> Result<(), LiveMapError> {
        match may_decide {
            true => self.libs.insert(lib_id, 1, 0).map_err(err(WHO_LIBS)),
            false => absent_ok(self.libs.remove(&lib_id)).map_err(err(WHO_LIBS)),
        }
    }

    /// The switch, a new generation (answers about the previous policy are not used again) and
    /// unattributed TLS's entry, for `policy`. Called after its libraries were written.
    pub fn write_policy(&mut self, policy: &Policy) -> Result<(), LiveMapError> {
        self.set_library(UNATTRIBUTED, policy.who_may_decide(None))?;
        self.generation = self.generation.wrapping_add(2);
        let config = match (&self.offsets, policy.has_who_rules()) {
            (Ok(o), true) => WhoConfig {
                enabled: 1,
                generation: self.generation,
                ..*o
            },
            (Err(e), true) => {
                warn!(
                    "rules scoped to who is talking cannot be judged on this kernel (its BTF: {e}); every hello is judged without them"
                );
                WhoConfig {
                    generation: self.generation,
                    ..WhoConfig::default()
                }
            }
            _ => WhoConfig {
                generation: self.generation,
                ..WhoConfig::default()
            },
        };
        self.config.set(0, config, 0).map_err(err(WHO_CONFIG))
    }
}

/// What the agent's gate needs: the senders the kernel recorded, the cache it answers into,
/// and the config (for the generation in force).
pub struct WhoGateMaps {
    senders: HashMap<MapData, FlowKey, Sender>,
    cache: HashMap<MapData, WhoKey, u8>,
    config: Array<MapData, WhoConfig>,
}

impl WhoGateMaps {
    pub fn open(ebpf: &Ebpf) -> Result<WhoGateMaps, LiveMapError> {
        Ok(WhoGateMaps {
            senders: HashMap::try_from(Map::LruHashMap(map_data(ebpf, SENDERS)?))
                .map_err(err(SENDERS))?,
            cache: HashMap::try_from(Map::LruHashMap(map_data(ebpf, WHO_CACHE)?))
                .map_err(err(WHO_CACHE))?,
            config: Array::try_from(Map::Array(map_data(ebpf, WHO_CONFIG)?))
                .map_err(err(WHO_CONFIG))?,
        })
    }

    /// The process that last sent on `flow`, as the kernel recorded it.
    pub fn sender(&self, flow: &FlowKey) -> Option<Sender> {
        self.senders.get(flow, 0).ok()
    }

    /// The generation of the policy in force in the kernel.
    pub fn generation(&self) -> u64 {
        self.config.get(&0, 0).map_or(0, |c| c.generation)
    }

    /// Answers for `key` (`who_action::*`).
    pub fn answer(&mut self, key: &WhoKey, action: u8) -> Result<(), LiveMapError> {
        self.cache.insert(key, action, 0).map_err(err(WHO_CACHE))
    }
}
