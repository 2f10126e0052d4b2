//! `negotiated` events: what a connection negotiated (TLS version, cipher suite, key-exchange
//! group), read from its ServerHello by the packet programs (`enforcer-ebpf/src/posture.rs`),
//! and how the policy's `tls_versions` / `groups` / `cipher_suites` judged it. A connection that
//! broke a rule in enforce mode was dropped at the ServerHello; its socket is aborted here.
//! Each is also counted by (library family, version, suite, group) for `/metrics`, `enforcer
//! status` and `enforcer cbom`.

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::{
    event::UNATTRIBUTED,
    flow::{direction, verdict},
    iana,
    posture::{NegotiatedEvent, Posture, broken, field, rule},
};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{Reporter, endpoints, sockaddr, verdict_name};
use crate::datapath::sock_destroy;

/// What one kind of connection negotiated, as counted: (library id, version, suite, group),
/// each `None` when not known (`UNATTRIBUTED`: no library) .
pub type PostureKey = (u32, Option<u16>, Option<u16>, Option<u16>);
/// Connections by what they negotiated.
pub type PostureCounts = BTreeMap<PostureKey, PostureSeen>;

/// Processes named per [`PostureKey`], at most (the count goes on past them).
pub const MAX_PROCESSES: usize = 32;

/// How often one kind of connection was seen, and by which processes (command names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PostureSeen {
    pub connections: u64,
    pub processes: BTreeSet<String>,
    /// (command name, cgroup v2 path) of the processes, read when their event came (the
    /// process may be gone by the time of a CBOM), at most [`MAX_PROCESSES`].
    pub cgroups: BTreeSet<(String, String)>,
}

/// `1.3`, `0x7f1c`; `None` when not read.
pub fn version_name(posture: &Posture) -> Option<String> {
    posture
        .has(field::VERSION)
        .then(|| name(iana::VERSIONS, posture.version))
}

fn name(table: &'static [(u16, &'static str)], code: u16) -> String {
    iana::named(table, code).to_string()
}

/// The `tls` object of events and `enforcer flows`: `version`, `cipher_suite`, `group` (null
/// when the ServerHello did not give it), `post_quantum`, `hello_retry`.
pub fn tls_json(posture: &Posture) -> Value {
    let group = posture.has(field::GROUP).then_some(posture.group);
    json!({
        "version": version_name(posture),
        "cipher_suite": posture.has(field::SUITE).then(|| name(iana::CIPHER_SUITES, posture.suite)),
        "group": group.map(|g| name(iana::GROUPS, g)),
        "post_quantum": group.map(iana::is_post_quantum),
        "hello_retry": posture.retried != 0,
    })
}

/// `tls_versions`, `groups`, `cipher_suites`: the policy key a `broken::*` names.
fn broken_key(b: u8) -> Option<&'static str> {
    match b {
        broken::VERSION => Some("tls_versions"),
        broken::GROUP => Some("groups"),
        broken::SUITE => Some("cipher_suites"),
        broken::JA4 => Some("ja4"),
        _ => None,
    }
}

/// `enforcer status`'s `negotiated`: connections whose ServerHello was read since start, by
/// version, and how many used a post-quantum group.
pub fn summary(counts: &PostureCounts) -> Value {
    let mut total = 0u64;
    let mut post_quantum = 0u64;
    let mut by_version: BTreeMap<String, u64> = BTreeMap::new();
    for ((_, version, _, group), seen) in counts {
        total += seen.connections;
        if group.is_some_and(iana::is_post_quantum) {
            post_quantum += seen.connections;
        }
        let name = version.map_or_else(|| "unread".to_owned(), |v| name(iana::VERSIONS, v));
        *by_version.entry(name).or_default() += seen.connections;
    }
    json!({ "connections": total, "by_version": by_version, "post_quantum": post_quantum })
}

impl Reporter {
    pub(super) fn handle_negotiated(&self, event: &NegotiatedEvent) {
        let dropped = event.verdict == verdict::BLOCKED || event.verdict == verdict::BLOCKLIST_FULL;
        // The owner's network namespace is where its socket is (a container's).
        let owner = self.recent_owner(&event.flow);
        let aborted = dropped.then(|| {
            let pid = owner.as_ref().map(|o| o.pid);
            self.aborts.abort(&event.flow, pid)
        });
        let lib = (event.lib_id != UNATTRIBUTED)
            .then(|| self.library(event.lib_id))
            .flatten();
        let family = lib
            .as_ref()
            .map_or("unattributed", |l| l.family.name())
            .to_owned();
        let posture = &event.posture;
        let read = |f: u8, v: u16| posture.has(f).then_some(v);
        // Read before the lock: a /proc read when the owner's connection event gave none.
        let cgroup = owner.as_ref().and_then(|o| {
            o.cgroup
                .clone()
                .or_else(|| crate::containers::cgroup_of(o.pid))
        });
        {
            let mut postures = self
                .postures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let seen = postures
                .entry((
                    event.lib_id,
                    read(field::VERSION, posture.version),
                    read(field::SUITE, posture.suite),
                    read(field::GROUP, posture.group),
                ))
                .or_default();
            seen.connections += 1;
            if let Some(o) = &owner
                && seen.processes.len() < MAX_PROCESSES
            {
                seen.processes.insert(o.comm.clone());
            }
            if let (Some(o), Some(cgroup)) = (&owner, cgroup)
                && seen.cgroups.len() < MAX_PROCESSES
            {
                seen.cgroups.insert((o.comm.clone(), cgroup));
            }
        }
        let (local, remote) = endpoints(&event.flow);
        let seen = self.ja4s.before(&event.flow, event.header.ts_ns);
        // Audit mode: the kernel did not wait for the JA4 verdict; judged here the same way.
        let mut event = *event;
        if event.ja4_pending != 0
            && event.broken == broken::NONE
            && let Some(gate) = &self.ja4_gate
            && let Some(whose) = gate.audit(event.lib_id, seen.as_ref().map(Option::as_deref))
        {
            event.broken = broken::JA4;
            event.rule = whose;
            event.verdict = verdict::WOULD_BLOCK;
        }
        let ja4 = seen.flatten();
        let verdict = verdict_name(event.verdict);
        let key = broken_key(event.broken);
        let whose = match event.rule {
            rule::LIBRARY => "library",
            _ => "host",
        };
        let record = || {
            json!({
                "type": "negotiated",
                "time": humantime::format_rfc3339_millis(self.wall_clock(event.header.ts_ns)).to_string(),
                "pid": owner.as_ref().map(|o| o.pid),
                "comm": owner.as_ref().map(|o| o.comm.clone()),
                "library": lib.as_ref().map(|l| json!({
                    "id": event.lib_id,
                    "family": l.family.name(),
                    "path": l.path,
                    "version": l.version,
                })),
                "local": { "addr": local.0.to_string(), "port": local.1 },
                "remote": { "addr": remote.0.to_string(), "port": remote.1 },
                "side": if event.direction == direction::RECV { "client" } else { "server" },
                "tls": tls_json(posture),
                "ja4": ja4,
                "broken_rule": key.map(|k| json!({ "key": k, "rule": whose })),
                "verdict": verdict,
                "socket_aborted": aborted.as_ref().map(|r| r.is_ok()),
            })
        };
        if self.writes_json() {
            let lane = match dropped {
                true => super::output::Lane::Records,
                false => super::output::Lane::Hellos,
            };
            self.output.push(record().to_string(), lane);
        }
        if key.is_some() {
            self.violations
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(record());
        }
        if self.format == super::EventFormat::Text {
            let tls = tls_json(posture);
            let show = |k: &str| tls[k].as_str().unwrap_or("unread").to_owned();
            let (version, suite, group) = (show("version"), show("cipher_suite"), show("group"));
            let (local, remote) = (sockaddr(local), sockaddr(remote));
            match key {
                None => info!(
                    library = family,
                    local, remote, version, suite, group, "TLS negotiated"
                ),
                Some(key) => warn!(
                    library = family,
                    local,
                    remote,
                    version,
                    suite,
                    group,
                    rule = whose,
                    key,
                    verdict,
                    "TLS posture violation: what the connection negotiated breaks the policy's {key}"
                ),
            }
        }
        if let Some(Err(err)) = aborted
            && !matches!(err, sock_destroy::SockDestroyError::NotFound { .. })
        {
            warn!(%err, "posture violation: could not abort the local socket; its packets are still dropped");
        }
    }

    /// Library id → family name, of the libraries known now.
    pub fn library_families(&self) -> std::collections::HashMap<u32, String> {
        self.libs
            .snapshot()
            .into_iter()
            .map(|(id, info)| (id, info.family.name().to_owned()))
            .collect()
    }

    /// Connections by what they negotiated, since start.
    pub fn posture_counts(&self) -> PostureCounts {
        self.postures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
