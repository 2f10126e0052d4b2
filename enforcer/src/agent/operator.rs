//! The running agent's answers to operator requests (see `control`): status, flows, recent, cbom,
//! block, unblock. Reload requests are handed to the agent's main loop, which applies them.

use std::{
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::Instant,
};

use enforcer_common::{event::UNATTRIBUTED, flow::verdict, hello::evidence, stat};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::{
    agent::{
        control::{Handler, Request},
        events::{self, Reporter, negotiated},
        layers,
    },
    cbom,
    datapath::{
        PolicyView,
        capacity::Capacity,
        maps::{self, LiveMaps},
        sock_destroy,
        table::Libraries,
    },
};

/// Facts fixed at start (the mode and policy change with reloads: see [`PolicyView`]).
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub interfaces: Vec<String>,
    /// Each interface's ingress form: `tc`, `xdp native`, `xdp generic`, `xdp (pinned link)`.
    pub ingress: Vec<(String, &'static str)>,
    /// `tc cls_bpf (netlink)` or `tcx (first)` (`--tc-attach`).
    pub egress: &'static str,
    pub kernel_hook: &'static str,
    pub kernel_hook_targets: Vec<String>,
    pub new_files: &'static str,
    pub pin: Option<String>,
    pub started: Instant,
}

/// A reload request from the socket, answered by the main loop.
pub type ReloadRequest = oneshot::Sender<Value>;

#[derive(Clone)]
pub struct Operator {
    pub info: AgentInfo,
    pub policy: PolicyView,
    pub maps: Arc<Mutex<LiveMaps>>,
    pub libraries: Libraries,
    /// Library id slots (`--max-libraries`).
    pub library_ids: Arc<Capacity>,
    pub reporter: Reporter,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// What runs before our programs on each hook, as last read.
    pub layers: layers::Shared,
}

impl Operator {
    pub fn handler(self) -> Handler {
        Arc::new(move |request| {
            let op = self.clone();
            Box::pin(async move {
                match request {
                    Request::Reload => {
                        let (tx, rx) = oneshot::channel();
                        if op.reload.send(tx).await.is_err() {
                            return json!({"ok": false, "error": "the agent is shutting down"});
                        }
                        rx.await.unwrap_or_else(
                            |_| json!({"ok": false, "error": "the agent is shutting down"}),
                        )
                    }
                    other => tokio::task::spawn_blocking(move || op.answer(other))
                        .await
                        .unwrap_or_else(|e| json!({"ok": false, "error": e.to_string()})),
                }
            })
        })
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, LiveMaps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(&self, request: Request) -> Value {
        match request {
            Request::Status => self.status(),
            Request::Flows => self.flows(),
            Request::Recent => self.recent(),
            Request::Cbom => json!({"ok": true, "cbom": cbom::build(&self.cbom_snapshot())}),
            Request::Block { local, remote } => {
                let Some(flow) = maps::flow_key(local, remote) else {
                    return json!({"ok": false, "error": "local and remote must both be IPv4 or both IPv6"});
                };
                if let Err(err) = self.maps().block(&flow, 0) {
                    return json!({"ok": false, "error": format!("{err} (blocklist full?)")});
                }
                let aborted = sock_destroy::destroy(&flow, None);
                self.reporter.lifecycle(json!({
                    "type": "operator", "action": "block",
                    "local": local.to_string(), "remote": remote.to_string(),
                    "socket_aborted": aborted.is_ok(),
                }));
                json!({"ok": true, "blocked": true, "socket_aborted": aborted.is_ok(),
                       "socket_error": aborted.err().map(|e| e.to_string())})
            }
            Request::Unblock { local, remote } => {
                let Some(flow) = maps::flow_key(local, remote) else {
                    return json!({"ok": false, "error": "local and remote must both be IPv4 or both IPv6"});
                };
                match self.maps().unblock(&flow) {
                    Ok(was) => {
                        self.reporter.lifecycle(json!({
                            "type": "operator", "action": "unblock",
                            "local": local.to_string(), "remote": remote.to_string(),
                            "was_blocked": was,
                        }));
                        json!({"ok": true, "was_blocked": was})
                    }
                    Err(err) => json!({"ok": false, "error": err.to_string()}),
                }
            }
            Request::Reload => json!({"ok": false, "error": "internal: reload not routed"}),
        }
    }

    fn status(&self) -> Value {
        let (stats, fill) = {
            let maps = self.maps();
            (maps.stats(), maps.fill())
        };
        let (mode, policy) = {
            let in_force = self.policy.read();
            (in_force.mode().name(), in_force.policy.source.clone())
        };
        let i = &self.info;
        json!({
            "ok": true,
            "pid": std::process::id(),
            "uptime_s": i.started.elapsed().as_secs(),
            "mode": mode,
            "policy": policy,
            "interfaces": i.interfaces,
            "attached": {
                "ingress": i.ingress.iter().map(|(n, f)| (n.clone(), Value::from(*f))).collect::<serde_json::Map<_, _>>(),
                "egress": i.egress,
            },
            "layers": layers::status(&self.layers),
            "kernel_hook": i.kernel_hook,
            "kernel_hook_targets": i.kernel_hook_targets,
            "libraries": self.libraries.len(),
            "library_ids": {
                "used": self.library_ids.held(),
                "max": self.library_ids.max,
                "per_user": self.library_ids.per_user,
                "over_capacity": self.library_ids.over_capacity.load(Ordering::Relaxed),
                "released": self.library_ids.released.load(Ordering::Relaxed),
            },
            "new_files": i.new_files,
            "pin": i.pin,
            "maps": fill,
            "negotiated": negotiated::summary(&self.reporter.posture_counts()),
            "counters": stat::ALL
                .iter()
                .map(|c| (c.shown().name.to_owned(), Value::from(stats[*c as usize])))
                .collect::<serde_json::Map<_, _>>(),
        })
    }

    /// Connections reported since start by (library family, verdict), and the newest
    /// violations, newest first.
    fn recent(&self) -> Value {
        let connections: Vec<Value> = self
            .reporter
            .connection_counts()
            .into_iter()
            .map(|((library, verdict), count)| {
                json!({"library": library, "verdict": verdict, "count": count})
            })
            .collect();
        let (violations, seen) = self.reporter.recent_violations();
        json!({
            "ok": true,
            "connections": connections,
            "violations": violations,
            "violations_total": seen,
        })
    }

    /// What the CBOM is made of: the libraries probed now, what connections negotiated since
    /// start, facts about this agent and host.
    fn cbom_snapshot(&self) -> cbom::Snapshot {
        let libraries = self
            .libraries
            .snapshot()
            .into_iter()
            .map(|(id, l)| cbom::LibraryFacts {
                id,
                family: l.family.name().to_owned(),
                path: l.path,
                version: l.version,
                sha256: l.library.identity.sha256.clone(),
                build_id: l.library.identity.build_id.clone(),
                mapped_as: l
                    .library
                    .mapped_as
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            })
            .collect();
        let negotiated = self
            .reporter
            .posture_counts()
            .into_iter()
            .map(|((lib, version, suite, group), seen)| cbom::Negotiated {
                library: (lib != UNATTRIBUTED).then_some(lib),
                version,
                suite,
                group,
                connections: seen.connections,
                processes: seen.processes.into_iter().collect(),
                cgroups: seen.cgroups.into_iter().collect(),
            })
            .collect();
        let (mode, policy) = {
            let in_force = self.policy.read();
            (in_force.mode().name(), in_force.policy.source.clone())
        };
        let i = &self.info;
        let proc_text = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_owned())
        };
        let mut serial = [0u8; 16];
        // SAFETY: writes at most 16 bytes into `serial`. A short or failed read leaves zeros
        // (or part of them): the serial number is then less random, never invalid.
        unsafe { libc::getrandom(serial.as_mut_ptr().cast(), serial.len(), 0) };
        cbom::Snapshot {
            time: std::time::SystemTime::now(),
            serial,
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            host: cbom::Host {
                name: proc_text("/proc/sys/kernel/hostname").unwrap_or_default(),
                kernel_release: proc_text("/proc/sys/kernel/osrelease"),
            },
            agent: vec![
                ("pid".into(), std::process::id().to_string()),
                ("mode".into(), mode.to_owned()),
                ("policy".into(), policy),
                ("interfaces".into(), i.interfaces.join(",")),
                ("kernel_hook".into(), i.kernel_hook.to_owned()),
                ("uptime_s".into(), i.started.elapsed().as_secs().to_string()),
            ],
            libraries,
            negotiated,
        }
    }

    fn flows(&self) -> Value {
        let (flows, maps_blocked, postures) = {
            let maps = self.maps();
            let flows = maps.flows();
            let blocked: Vec<bool> = flows.iter().map(|(k, _)| maps.is_blocked(k)).collect();
            let postures: Vec<_> = flows.iter().map(|(k, _)| maps.posture(k)).collect();
            (flows, blocked, postures)
        };
        let libs = self.libraries.snapshot();
        let list: Vec<Value> = flows
            .iter()
            .zip(maps_blocked)
            .zip(postures)
            .map(|(((key, state), blocked), posture)| {
                let (local, remote) = events::endpoints(key);
                let lib = libs.get(&state.lib_id);
                json!({
                    "local": std::net::SocketAddr::new(local.0, local.1).to_string(),
                    "remote": std::net::SocketAddr::new(remote.0, remote.1).to_string(),
                    "library": {
                        "id": state.lib_id,
                        "family": lib.map_or("unknown", |l| l.family.name()),
                        "path": lib.map(|l| l.path.clone()),
                    },
                    "verdict": if state.verdict == verdict::ALLOWED && blocked { "blocked" } else { events::verdict_name(state.verdict) },
                    "blocked": blocked,
                    "call": events::op_name(state.op),
                    "evidence": if state.evidence == evidence::RANDOM { "random" } else { "thread" },
                    "tls": posture.as_ref().map(negotiated::tls_json),
                    "ja4": self.reporter.ja4_of(key),
                })
            })
            .collect();
        json!({"ok": true, "flows": list})
    }
}
