//! Typed handles on the maps that hold the policy in the kernel, opened once: `LIB_ACTIONS`,
//! `MODE`, `HELLO_POLICY`, `SCOPED_LIBS`, `SERVER_NAME_RULES`, and `RANDOM_LIBS` (which
//! libraries' hellos must carry a random they made) with `LIB_CODE` (where a library's code lies
//! around its session function): facts of their probes, kept beside their action because they
//! are written and forgotten together. Only the
//! [`Datapath`](super::Datapath) writes them: at start-up, for each library it registers, and on
//! a policy reload.

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, Map, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use enforcer_common::{
    hello, ja4_key, maps,
    policy::{HelloPolicy, ServerNameKey},
    posture::{self as kernel_posture, HOST_RULE, PostureRule},
};

use super::maps::{LiveMapError, absent_ok, err, map_data};
use super::who_maps::WhoMaps;
use crate::policy::{Action, NameScope, Policy, posture::Posture};

/// Capacity of `LIB_ACTIONS`: walks of its keys stop there.
const LIB_ACTIONS_MAX: usize = 4096;

pub struct PolicyMaps {
    actions: HashMap<MapData, u32, u8>,
    mode: Array<MapData, u32>,
    hello_policy: Array<MapData, HelloPolicy>,
    scoped_libs: HashMap<MapData, u32, u8>,
    name_rules: LpmTrie<MapData, ServerNameKey, u8>,
    name_rules_max: u32,
    random_libs: HashMap<MapData, u32, u8>,
    lib_code: HashMap<MapData, u32, hello::CodeSpan>,
    /// `HOST_RULE` and library id → crypto-posture requirements; and whether any is there.
    posture_rules: HashMap<MapData, u32, PostureRule>,
    posture_enabled: Array<MapData, u32>,
    /// The generation of the JA4 cache's verdicts (`enforcer_common::ja4_key`).
    ja4_generation: Array<MapData, u64>,
    /// `WHO_CONFIG` and `WHO_LIBS`: rules scoped to who is talking.
    who: WhoMaps,
}

impl PolicyMaps {
    pub fn open(ebpf: &Ebpf) -> Result<PolicyMaps, LiveMapError> {
        let data = |name| map_data(ebpf, name);
        let rules_data = data(maps::SERVER_NAME_RULES)?;
        let name_rules_max = rules_data
            .info()
            .map_err(err(maps::SERVER_NAME_RULES))?
            .max_entries();
        Ok(PolicyMaps {
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
            random_libs: HashMap::try_from(Map::HashMap(data(hello::RANDOM_LIBS)?))
                .map_err(err(hello::RANDOM_LIBS))?,
            lib_code: HashMap::try_from(Map::HashMap(data(hello::LIB_CODE)?))
                .map_err(err(hello::LIB_CODE))?,
            posture_rules: HashMap::try_from(Map::HashMap(data(kernel_posture::POSTURE_RULES)?))
                .map_err(err(kernel_posture::POSTURE_RULES))?,
            posture_enabled: Array::try_from(Map::Array(data(kernel_posture::POSTURE_ENABLED)?))
                .map_err(err(kernel_posture::POSTURE_ENABLED))?,
            ja4_generation: Array::try_from(Map::Array(data(ja4_key::JA4_GENERATION)?))
                .map_err(err(ja4_key::JA4_GENERATION))?,
            who: WhoMaps::open(ebpf)?,
        })
    }

    /// From now on, a hello on a flow a thread of `lib_id` attributed must carry a random that
    /// `lib_id` made. Written once its random source is probed, never before (a hello made
    /// meanwhile would find no random and be unattributed).
    pub fn bind_hellos(&mut self, lib_id: u32) -> Result<(), LiveMapError> {
        self.random_libs
            .insert(lib_id, 1, 0)
            .map_err(err(hello::RANDOM_LIBS))
    }

    /// Where `lib_id`'s code lies around its session function: written before its probes
    /// attach, so its first session already tells its random source who its callers are.
    pub fn set_code(&mut self, lib_id: u32, span: hello::CodeSpan) -> Result<(), LiveMapError> {
        self.lib_code
            .insert(lib_id, span, 0)
            .map_err(err(hello::LIB_CODE))
    }

    pub fn set_mode(&mut self, mode: u32) -> Result<(), LiveMapError> {
        self.mode.set(0, mode, 0).map_err(err(maps::MODE))
    }

    /// Library ids with an action (with pinned maps, earlier runs' too).
    pub fn action_ids(&self) -> Vec<u32> {
        self.actions
            .keys()
            .take(LIB_ACTIONS_MAX)
            .filter_map(Result::ok)
            .collect()
    }

    pub fn hello_policy(&self) -> HelloPolicy {
        self.hello_policy.get(&0, 0).unwrap_or_default()
    }

    pub fn set_hello_policy(&mut self, value: HelloPolicy) -> Result<(), LiveMapError> {
        self.hello_policy
            .set(0, value, 0)
            .map_err(err(maps::HELLO_POLICY))
    }

    /// Writes one library's action and server-name scope, while its connections may go on.
    ///
    /// The kernel reads these maps per packet, between any two of the writes below, so their
    /// order is chosen such that every connection is judged by the old policy or by the new one,
    /// never allowed where both would deny it (a library registered just now has no old policy:
    /// its maps are written before it is probed, so its first connection finds them complete):
    /// - A flow of a library in `SCOPED_LIBS` waits for its ClientHello; there its name is looked
    ///   up in `SERVER_NAME_RULES` (longest pattern of that library), with `LIB_ACTIONS` for
    ///   names no pattern matches and the `SCOPED_LIBS` value for a ClientHello without a name.
    ///   A library not in `SCOPED_LIBS` is judged at attribution by `LIB_ACTIONS`.
    /// - Scoped after the write: the new patterns go in first (overwriting kept ones), then
    ///   `SCOPED_LIBS` and `LIB_ACTIONS`, then the stale patterns go out. Meanwhile the trie holds
    ///   old ∪ new patterns: a name whose longest match is a new pattern gets the new policy's
    ///   action; one whose longest match is a stale pattern gets the old one's (it was the
    ///   longest match in the old trie too); a name matching neither gets `LIB_ACTIONS`, old or
    ///   new, each right for its policy. A library that was unscoped only becomes scoped once
    ///   its patterns are in, so it is never judged by name against a partial trie.
    /// - Unscoped after the write: `LIB_ACTIONS` first, then out of `SCOPED_LIBS` (new flows are
    ///   judged at attribution by the new action), then the patterns go out. A flow attributed
    ///   just before and still waiting for its ClientHello is judged by an old pattern or the new
    ///   action, or, without a name, denied (the kernel's answer for a waiting flow whose library
    ///   is no longer listed: stricter than either policy, never looser).
    ///
    /// The library's posture requirements (`POSTURE_RULES`) go in first: its connections are
    /// judged by them from their first ServerHello on. So does whether a rule scoped to who is
    /// talking may decide it (`who`, `WHO_LIBS`): its hellos are then held for the sender's
    /// verdict, which is of the new policy (its generation is written last, `write_who`), or
    /// the library's action, old or new, when none is there in time.
    pub fn write_library(
        &mut self,
        lib_id: u32,
        action: Action,
        scope: Option<&NameScope>,
        posture: Option<&Posture>,
        who: bool,
    ) -> Result<(), LiveMapError> {
        self.write_posture(lib_id, posture)?;
        self.who.set_library(lib_id, who)?;
        let Some(scope) = scope else {
            self.set_action(lib_id, action)?;
            absent_ok(self.scoped_libs.remove(&lib_id)).map_err(err(maps::SCOPED_LIBS))?;
            return self.remove_name_rules(lib_id, &[]);
        };
        let mut wanted = Vec::with_capacity(scope.patterns.len());
        for (pattern, pattern_action, _) in &scope.patterns {
            let (bits, data) = pattern.kernel_key(lib_id);
            let key = Key::new(bits, data);
            self.name_rules
                .insert(&key, pattern_action.code(), 0)
                .map_err(err(maps::SERVER_NAME_RULES))?;
            wanted.push(key);
        }
        self.scoped_libs
            .insert(lib_id, scope.nameless.code(), 0)
            .map_err(err(maps::SCOPED_LIBS))?;
        self.set_action(lib_id, action)?;
        self.remove_name_rules(lib_id, &wanted)
    }

    /// Takes library `lib_id` out of every policy map (it could not be probed after all).
    /// The `LIB_ACTIONS` entry of the libraries over capacity (`capacity::OVER_CAPACITY`): the
    /// policy's `default`, unscoped.
    pub fn write_over_capacity(&mut self, default: Action) -> Result<(), LiveMapError> {
        self.set_action(enforcer_common::policy::OVER_CAPACITY, default)
    }

    pub fn forget_library(&mut self, lib_id: u32) -> Result<(), LiveMapError> {
        absent_ok(self.actions.remove(&lib_id)).map_err(err(maps::LIB_ACTIONS))?;
        absent_ok(self.scoped_libs.remove(&lib_id)).map_err(err(maps::SCOPED_LIBS))?;
        absent_ok(self.random_libs.remove(&lib_id)).map_err(err(hello::RANDOM_LIBS))?;
        absent_ok(self.lib_code.remove(&lib_id)).map_err(err(hello::LIB_CODE))?;
        self.who.set_library(lib_id, false)?;
        self.write_posture(lib_id, None)?;
        self.remove_name_rules(lib_id, &[])
    }

    /// The host-wide posture requirements, whether the kernel judges ServerHellos at all (the
    /// policy has a posture key anywhere), and the JA4 cache's generation. Written after the
    /// libraries' on a reload, so a newly enabled judge never sees a library's rule missing.
    pub fn write_host_posture(&mut self, policy: &Policy) -> Result<(), LiveMapError> {
        self.write_posture(HOST_RULE, Some(&policy.posture))?;
        self.posture_enabled
            .set(0, policy.has_posture_rules() as u32, 0)
            .map_err(err(kernel_posture::POSTURE_ENABLED))?;
        self.ja4_generation
            .set(0, policy.ja4_generation(), 0)
            .map_err(err(ja4_key::JA4_GENERATION))
    }

    /// Rules scoped to who is talking: on or off, a new generation, and unattributed TLS's
    /// entry. Written after the libraries' on a reload.
    pub fn write_who(&mut self, policy: &Policy) -> Result<(), LiveMapError> {
        self.who.write_policy(policy)
    }

    /// Stops the kernel's JA4 cache lookups while a new policy's rules are written (their
    /// pattern bits would not be the cached verdicts'); `write_host_posture` turns them on again.
    pub fn pause_ja4_cache(&mut self) -> Result<(), LiveMapError> {
        self.ja4_generation
            .set(0, 0, 0)
            .map_err(err(ja4_key::JA4_GENERATION))
    }

    fn write_posture(&mut self, key: u32, posture: Option<&Posture>) -> Result<(), LiveMapError> {
        match posture.filter(|p| !p.is_empty()) {
            Some(p) => self
                .posture_rules
                .insert(key, p.kernel_rule(), 0)
                .map_err(err(kernel_posture::POSTURE_RULES)),
            None => absent_ok(self.posture_rules.remove(&key))
                .map_err(err(kernel_posture::POSTURE_RULES)),
        }
    }

    fn set_action(&mut self, lib_id: u32, action: Action) -> Result<(), LiveMapError> {
        self.actions
            .insert(lib_id, action.code(), 0)
            .map_err(err(maps::LIB_ACTIONS))
    }

    /// Removes the patterns `lib_id` has in `SERVER_NAME_RULES` except those in `keep` (read
    /// back from the trie, so keys an earlier policy or run wrote are found too; bounded by the
    /// trie's capacity).
    fn remove_name_rules(
        &mut self,
        lib_id: u32,
        keep: &[Key<ServerNameKey>],
    ) -> Result<(), LiveMapError> {
        let stale: Vec<Key<ServerNameKey>> = self
            .name_rules
            .keys()
            .take(self.name_rules_max as usize)
            .filter_map(Result::ok)
            .filter(|k| k.data().lib_id_be == lib_id.to_be())
            .filter(|k| !keep.iter().any(|w| same_key(w, k)))
            .collect();
        for key in stale {
            absent_ok(self.name_rules.remove(&key)).map_err(err(maps::SERVER_NAME_RULES))?;
        }
        Ok(())
    }
}

/// The trie compares the first `prefix_len` bits only: bytes past them do not tell keys apart.
fn same_key(a: &Key<ServerNameKey>, b: &Key<ServerNameKey>) -> bool {
    let (da, db) = (a.data(), b.data());
    let used = (a.prefix_len().saturating_sub(32) / 8) as usize;
    let used = used.min(da.name.len());
    a.prefix_len() == b.prefix_len()
        && da.lib_id_be == db.lib_id_be
        && da.name[..used] == db.name[..used]
}

/// The `HELLO_POLICY` value for `policy`, and the action applied to unattributed TLS: whether any
/// rule is scoped by server name, and whether the kernel hook attributes sends only after their
/// packets left (`late_attribution`: the `sock_send_length` fallback). With late attribution an
/// unattributed ClientHello may belong to a probed library whose hook has not run yet, so `deny`
/// is lowered to `audit` (reported, never blocked) rather than blocking an allowed library; the
/// caller warns.
pub fn hello_value(policy: &Policy, late_attribution: bool) -> (HelloPolicy, Action) {
    let unattributed = match (policy.unattributed_tls, late_attribution) {
        (Action::Deny, true) => Action::Audit,
        (action, _) => action,
    };
    let value = HelloPolicy {
        unattributed: unattributed.code(),
        // Rules scoped to who is talking also keep flows of probed libraries waiting for their
        // hello (`verdict.rs`): a pending flow must not slip past it either.
        scoped: policy.libraries.iter().any(|r| r.is_scoped()) as u8,
        late_attribution: late_attribution as u8,
        quic: policy.quic.code(),
    };
    (value, unattributed)
}

#[cfg(test)]
mod tests {
    use enforcer_common::policy::MAX_NAME;

    use super::*;

    fn key(lib_id: u32, bits: u32, name: &[u8]) -> Key<ServerNameKey> {
        let mut data = ServerNameKey {
            lib_id_be: lib_id.to_be(),
            name: [0; MAX_NAME],
        };
        data.name[..name.len()].copy_from_slice(name);
        Key::new(bits, data)
    }

    #[test]
    fn keys_differ_only_within_their_prefix() {
        let a = key(1, 32 + 16, b"ab");
        assert!(
            same_key(&a, &key(1, 32 + 16, b"abzz")),
            "bytes past the prefix"
        );
        assert!(!same_key(&a, &key(1, 32 + 16, b"ax")));
        assert!(!same_key(&a, &key(2, 32 + 16, b"ab")), "another library");
        assert!(!same_key(&a, &key(1, 32 + 8, b"ab")), "another length");
    }

    #[test]
    fn late_attribution_lowers_unattributed_deny_to_audit() {
        let mut policy = crate::policy::embedded_default();
        policy.unattributed_tls = Action::Deny;
        let (value, applied) = hello_value(&policy, true);
        assert_eq!(applied, Action::Audit);
        assert_eq!(value.unattributed, Action::Audit.code());
        assert_eq!(value.late_attribution, 1);
        assert_eq!(hello_value(&policy, false).1, Action::Deny);
    }
}
