//! `client_hello` events: one per ClientHello the egress classifier judged (server name,
//! library or none, verdict). The classifier runs where no process context is meaningful, so
//! the process is the one that made the hello's random (recorded with it in the kernel), else
//! joined in userspace: from the `connection` event that attributed the flow's current state
//! (the attribution hook runs in the owner's thread, before the ClientHello leaves), else from
//! the socket's inode (sock_diag) and a bounded walk of `/proc/*/fd`, which the owner-lookup
//! worker does (`owners`), never the ring's reader.
//!
//! A 4-tuple is reused as soon as its local socket is gone (the peer keeps the TIME_WAIT), so
//! the join is by 4-tuple *and* the time the connection event attributed it
//! (`HelloEvent::flow_since_ns`): a hello never takes the process of an earlier connection of
//! the same 4-tuple.

use std::{
    collections::HashMap,
    fs,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use enforcer_common::{
    event::{HelloEvent, UNATTRIBUTED, hello, sni},
    flow::{FlowKey, verdict},
    hello::evidence,
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    Reporter, endpoints,
    owners::{Aborted, Lookup, LookupCounts, Owner, owner_of_inode},
    sockaddr, verdict_name,
};
use crate::datapath::sock_destroy;

/// Flows remembered for the join, at most. Kept in two halves: when the newer one is full, the
/// older half is forgotten (counted in [`Recent::forgotten`]) and the newer takes its place, so
/// the latest `MAX_RECENT / 2` flows are always there. A flow forgotten before its ClientHello
/// costs only the join: its owner is then looked up by socket inode.
pub const MAX_RECENT: usize = 8192;
/// Owner lookups (socket inode, then a `/proc` walk) started per second; more unattributed
/// hellos than this are reported without owner (counted as dropped lookups).
const MAX_WALKS_PER_SECOND: u32 = 20;

/// The join state shared by the reporter's clones.
#[derive(Default)]
pub struct Recent {
    /// Newer and older half (see [`MAX_RECENT`]): the owner named by the flow's latest
    /// connection event, and that event's `ts_ns`.
    owners: HashMap<FlowKey, (Owner, u64)>,
    older: HashMap<FlowKey, (Owner, u64)>,
    /// Owners forgotten to make room, since start.
    forgotten: u64,
    walks: (Option<Instant>, u32),
}

impl Recent {
    /// Remembers the owner a connection event (of kernel time `since_ns`) named for `flow`.
    pub fn remember(&mut self, flow: FlowKey, owner: Owner, since_ns: u64) {
        if self.owners.len() >= MAX_RECENT / 2 && !self.owners.contains_key(&flow) {
            let dropped = std::mem::replace(&mut self.older, std::mem::take(&mut self.owners));
            self.forgotten += dropped.len() as u64;
        }
        self.older.remove(&flow);
        self.owners.insert(flow, (owner, since_ns));
    }

    /// The owner of `flow` named by the connection event of time `since_ns` (the hello's
    /// `flow_since_ns`; 0: the flow had no state, nothing to join).
    fn owner(&self, flow: &FlowKey, since_ns: u64) -> Option<&Owner> {
        let (owner, at) = self.owners.get(flow).or_else(|| self.older.get(flow))?;
        (since_ns != 0 && *at == since_ns).then_some(owner)
    }

    /// The owner the latest connection event named for `flow`, whenever that was.
    pub fn latest(&self, flow: &FlowKey) -> Option<&Owner> {
        self.owners
            .get(flow)
            .or_else(|| self.older.get(flow))
            .map(|(o, _)| o)
    }

    /// Flows remembered now (at most [`MAX_RECENT`]).
    pub fn remembered(&self) -> usize {
        self.owners.len() + self.older.len()
    }

    /// Owners forgotten to make room since start.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// True if another `/proc` walk fits this second's budget.
    fn may_walk(&mut self) -> bool {
        let now = Instant::now();
        match self.walks.0 {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {
                self.walks.1 += 1;
                self.walks.1 <= MAX_WALKS_PER_SECOND
            }
            _ => {
                self.walks = (Some(now), 1);
                true
            }
        }
    }
}

pub fn sni_status(v: u8) -> &'static str {
    match v {
        sni::PRESENT => "present",
        sni::ABSENT => "absent",
        _ => "unreadable",
    }
}

impl Reporter {
    /// Aborts a blocked hello's socket, then reports it: at once, or once the owner-lookup
    /// worker named its process.
    pub(super) fn handle_hello(&self, event: &HelloEvent) {
        // Rules scoped to who is talking: the sender judged (and, for a pending hello, the
        // kernel answered) before anything else, so a held hello waits no longer than this.
        let judged = self.who_gate.as_ref().and_then(|gate| {
            let lib = (event.lib_id != UNATTRIBUTED)
                .then(|| self.library(event.lib_id))
                .flatten();
            gate.judge(event, lib.as_ref().map(|l| l.library.as_ref()))
        });
        let mut resolved = *event;
        if event.verdict == verdict::PENDING_WHO {
            match &judged {
                // Held and let through: reported when the kernel judges it again.
                Some(j) if j.held && !j.refused_now => return,
                Some(j) => resolved.verdict = j.verdict,
                None => {}
            }
        }
        let event = &resolved;
        let unattributed = event.lib_id == UNATTRIBUTED;
        let by_random = event.evidence == evidence::RANDOM && !unattributed;
        // The process that made the random is kernel truth; a connection event is joined only
        // if it attributed this very connection (see the module doc).
        let mut owner = match by_random && event.producer_pid != 0 {
            true => Some(Owner {
                pid: event.producer_pid,
                comm: match super::comm(&event.producer_comm) {
                    c if c.is_empty() => process_comm(event.producer_pid),
                    c => c,
                },
                source: "hello-random",
                cgroup: crate::containers::cgroup_of(event.producer_pid),
                netns_cookie: None,
            }),
            false => self
                .recent_lock()
                .owner(&event.flow, event.flow_since_ns)
                .cloned()
                .or_else(|| {
                    // The sender the kernel recorded, once checked to still be that process.
                    let j = judged.as_ref()?;
                    let pid = j.speaker.pid.filter(|_| j.speaker.exe.is_some())?;
                    Some(Owner {
                        pid,
                        comm: process_comm(pid),
                        source: "sender",
                        cgroup: j.speaker.cgroup.clone(),
                        netns_cookie: None,
                    })
                }),
        };
        // The inode must be read before the socket is destroyed; the walk can come after.
        let inode = match owner.is_none() {
            true if self.recent_lock().may_walk() => sock_destroy::socket_inode(&event.flow),
            true => {
                self.lookups.dropped();
                None
            }
            false => None,
        };
        let blocked = event.verdict == verdict::BLOCKED || event.verdict == verdict::BLOCKLIST_FULL;
        // Opened before the abort: a denied client often exits at once, and its namespace with it.
        let ns = owner
            .as_ref()
            .filter(|o| o.netns_cookie.is_none())
            .and_then(|o| crate::netns::Ns::of_pid(o.pid));
        // In the owner's network namespace: a container's socket is there.
        let holder = owner.as_ref().map_or(event.producer_pid, |o| o.pid);
        let aborted = blocked.then(|| self.aborts.abort(&event.flow, Some(holder)));
        if let (Some(o), Some(ns)) = (owner.as_mut(), ns) {
            o.netns_cookie = self.netns.of(&ns);
        }
        let (Some(inode), None) = (inode, &owner) else {
            return self.report_hello(event, aborted, owner);
        };
        let lookup = Lookup {
            inode,
            event: Box::new(*event),
            aborted,
        };
        let Some(queue) = &self.owners else {
            let owner = owner_of_inode(inode);
            return self.report_hello(&lookup.event, lookup.aborted, owner);
        };
        if let Err(lookup) = queue.offer(lookup) {
            self.lookups.dropped();
            self.report_hello(&lookup.event, lookup.aborted, None);
        }
    }

    /// Owner lookups done and dropped since start.
    pub fn owner_lookups(&self) -> LookupCounts {
        self.lookups.get()
    }

    /// Reports a judged hello (`aborted`: its socket abort, if it was blocked; `owner`: the
    /// process, if known).
    pub(super) fn report_hello(&self, event: &HelloEvent, aborted: Aborted, owner: Option<Owner>) {
        let unattributed = event.lib_id == UNATTRIBUTED;
        let server = event.hello == hello::SERVER;
        let by_random = event.evidence == evidence::RANDOM && !unattributed;
        let name_len = (event.name_len as usize).min(event.name.len());
        let server_name = (event.sni == sni::PRESENT)
            .then(|| String::from_utf8_lossy(&event.name[..name_len]).into_owned());
        let lib = (!unattributed)
            .then(|| self.library(event.lib_id))
            .flatten();
        let (local, remote) = endpoints(&event.flow);
        let verdict_name = verdict_name(event.verdict);
        let time = self.wall_clock(event.header.ts_ns);
        let who = self.who_gate.as_ref().and_then(|g| g.recent(&event.flow));
        // TLS no native library made, judged as the runtime's the sender maps (a JVM).
        let runtime = who
            .as_ref()
            .filter(|_| unattributed)
            .and_then(super::who::Judged::runtime_json);
        let origin = owner.as_ref().map_or_else(Default::default, |o| {
            super::origin::Origin::of(o.pid, o.cgroup.clone(), o.netns_cookie, &self.netns)
        });
        let record = || {
            json!({
                "type": "client_hello",
                "hello": if server { "server" } else { "client" },
                "evidence": match (unattributed, by_random) {
                    (true, _) if runtime.is_some() => json!("runtime"),
                    (true, _) => serde_json::Value::Null,
                    (false, true) => json!("random"),
                    (false, false) => json!("thread"),
                },
                "time": humantime::format_rfc3339_millis(time).to_string(),
                "local": { "addr": local.0.to_string(), "port": local.1 },
                "remote": { "addr": remote.0.to_string(), "port": remote.1 },
                "server_name": server_name,
                "server_name_status": sni_status(event.sni),
                "attributed": !unattributed || runtime.is_some(),
                "library": match (&lib, unattributed) {
                    (_, true) => runtime.clone().unwrap_or(serde_json::Value::Null),
                    (Some(l), false) => super::origin::library_json(event.lib_id, l),
                    (None, false) => json!({ "id": event.lib_id, "family": "unknown", "path": null, "version": null, "container_path": null, "host_path": null }),
                },
                "pid": owner.as_ref().map(|o| o.pid),
                "comm": owner.as_ref().map(|o| o.comm.clone()),
                "owner_source": owner.as_ref().map(|o| o.source),
                "verdict": verdict_name,
                "socket_aborted": aborted.as_ref().map(|r| r.is_ok()),
                "sender": who.as_ref().map(super::who::Judged::json),
                "netns_cookie": origin.netns_cookie,
                "cgroup": origin.cgroup,
                "container": origin.container_json(),
            })
        };
        // JSON to stdout (`--events json`) and to the events file (`--events-file`).
        if self.writes_json() {
            self.output
                .push(record().to_string(), super::output::Lane::Hellos);
        }
        match self.format {
            super::EventFormat::Json => {}
            super::EventFormat::Text => {
                let server_name = server_name.as_deref().unwrap_or(sni_status(event.sni));
                let by_runtime = who.as_ref().and_then(|j| j.runtime.as_ref());
                let family = lib.as_ref().map_or(
                    match by_runtime {
                        Some(r) if unattributed => r.family.name(),
                        _ if unattributed => "none (unattributed)",
                        _ => "unknown",
                    },
                    |l| l.family.name(),
                );
                let pid = owner.as_ref().map(|o| o.pid);
                let comm = owner.as_ref().map_or("unknown", |o| o.comm.as_str());
                let (local, remote) = (sockaddr(local), sockaddr(remote));
                macro_rules! log_hello {
                    ($level:ident, $message:expr) => {
                        $level!(
                            pid,
                            comm,
                            library = family,
                            server_name,
                            container = origin.container_short(),
                            local,
                            remote,
                            verdict = verdict_name,
                            "{}",
                            $message
                        )
                    };
                }
                if unattributed && by_runtime.is_some() && event.verdict == verdict::ALLOWED {
                    log_hello!(info, "TLS ClientHello of the runtime the process maps");
                } else if unattributed && by_runtime.is_some() {
                    log_hello!(warn, "TLS ClientHello of the runtime the process maps");
                } else if unattributed && server {
                    log_hello!(warn, "TLS ServerHello no probed library made");
                } else if unattributed {
                    log_hello!(warn, "TLS ClientHello no probed library made");
                } else if event.verdict != verdict::ALLOWED {
                    log_hello!(warn, "TLS ClientHello judged by server name");
                } else {
                    log_hello!(info, "TLS ClientHello");
                }
            }
        }
        match aborted {
            Some(Err(err @ sock_destroy::SockDestroyError::NotFound { .. })) => {
                tracing::debug!(%err, "blocked ClientHello: no local socket to abort");
            }
            Some(Err(err)) => {
                warn!(%err, "blocked ClientHello: could not abort the local socket; its packets are still dropped");
            }
            None | Some(Ok(())) => {}
        }
    }

    fn recent_lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Shared between clones of the reporter.
pub type RecentTable = std::sync::Arc<Mutex<Recent>>;

/// The command name of process `pid` (`/proc/PID/comm`), empty if it is gone.
pub fn process_comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16) -> FlowKey {
        FlowKey {
            local_port: port,
            ..FlowKey::default()
        }
    }

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: "c".into(),
            source: "connection-event",
            cgroup: None,
            netns_cookie: None,
        }
    }

    #[test]
    fn recent_owners_are_bounded_and_the_newest_half_kept() {
        let mut recent = Recent::default();
        let n = MAX_RECENT as u16 * 2 + 7;
        let at = |port: u16| u64::from(port) + 1;
        for port in 0..n {
            recent.remember(flow(port), owner(u32::from(port)), at(port));
            assert!(recent.remembered() <= MAX_RECENT);
        }
        // Every one of the latest MAX_RECENT / 2 is there; what made room was counted.
        for port in n - MAX_RECENT as u16 / 2..n {
            assert_eq!(
                recent.owner(&flow(port), at(port)).map(|o| o.pid),
                Some(u32::from(port))
            );
        }
        assert_eq!(
            recent.forgotten() + recent.remembered() as u64,
            u64::from(n)
        );
        // Remembering a flow again moves it, it is not held twice.
        let again = n - MAX_RECENT as u16 / 2 - 1;
        if recent.owner(&flow(again), at(again)).is_some() {
            let before = recent.remembered();
            recent.remember(flow(again), owner(1), at(again));
            assert_eq!(recent.remembered(), before);
        }
    }

    /// Measured in figure 7 before this join took the time: a reused client port gave a
    /// hello the process of the 4-tuple's previous connection.
    #[test]
    fn a_reused_4_tuple_never_joins_an_earlier_connections_owner() {
        let mut recent = Recent::default();
        recent.remember(flow(40000), owner(11), 1_000);
        // The next connection of the 4-tuple, whose connection event is not read yet.
        assert!(recent.owner(&flow(40000), 9_000).is_none());
        // A flow with no state before its hello joins nothing.
        assert!(recent.owner(&flow(40000), 0).is_none());
        recent.remember(flow(40000), owner(22), 9_000);
        assert_eq!(recent.owner(&flow(40000), 9_000).map(|o| o.pid), Some(22));
    }
}
