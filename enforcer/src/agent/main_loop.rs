//! The running agent's main loop: events, signals, policy reloads, the operator socket, the
//! metrics endpoint, and a one-second housekeeping tick (policy file poll, blocklist capacity,
//! pinning links of libraries probed since the last tick).

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use enforcer_common::stat::Stat;
use serde_json::{Value, json};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    agent::{
        control, events,
        events::Reporter,
        metrics::{self, AgentCounters},
        operator::{AgentInfo, Live, Operator, ReloadRequest},
        reload::{self, ReloadConfig},
        watcher::Watcher,
    },
    datapath::{
        maps::LiveMaps,
        pin::{self, PinDir},
        tc,
    },
    policy::Policy,
};

const TICK: Duration = Duration::from_secs(1);
/// Blocklist fill ratio above which a `capacity` warning is reported (once per crossing).
const PRESSURE_HIGH: f64 = 0.8;
/// ... and below which it is considered relieved again.
const PRESSURE_LOW: f64 = 0.7;

/// Everything the loop serves.
pub struct Running {
    pub info: AgentInfo,
    pub reporter: Reporter,
    pub maps: Arc<Mutex<LiveMaps>>,
    pub policy: Policy,
    /// `None`: the embedded default policy (nothing to reload).
    pub reload: Option<ReloadConfig>,
    /// The pin directory and the programs whose links are pinned.
    pub pin: Option<(PinDir, Vec<u32>)>,
    pub control: Option<tokio::net::UnixListener>,
    pub control_path: PathBuf,
    pub metrics: Option<(tokio::net::TcpListener, std::net::SocketAddr)>,
}

/// A task aborted when this drops.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Running {
    /// Reports `ready`, then serves until SIGINT/SIGTERM (or the ring buffer fails).
    pub async fn serve(mut self, ring: RingBuf<MapData>, watcher: &mut Watcher) -> Result<()> {
        let counters = Arc::new(AgentCounters::default());
        let live = Arc::new(Mutex::new(Live {
            mode: self.policy_mode(),
            policy: self.policy.source.clone(),
        }));
        let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
        let operator = Operator {
            info: self.info.clone(),
            live: live.clone(),
            maps: self.maps.clone(),
            reporter: self.reporter.clone(),
            reload: reload_tx,
        };
        let control_task = self
            .control
            .take()
            .map(|listener| Task(tokio::spawn(control::serve(listener, operator.handler()))));
        let metrics_addr = self.metrics.as_ref().map(|(_, addr)| *addr);
        let metrics_task = self.metrics.take().map(|(listener, _)| {
            Task(tokio::spawn(metrics::serve(
                listener,
                metrics::Sources {
                    reporter: self.reporter.clone(),
                    maps: self.maps.clone(),
                    counters: counters.clone(),
                },
            )))
        });
        // Before `ready`: a SIGTERM sent as soon as the agent says it is ready must stop it
        // cleanly (with `--pin`: persist), not kill it with the default action.
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let i = &self.info;
        self.reporter.lifecycle(json!({
            "type": "ready",
            "interfaces": i.interfaces,
            "mode": self.policy_mode(),
            "policy": self.policy.source,
            "kernel_hook": i.kernel_hook,
            "libraries": self.reporter.library_count(),
            "new_files": i.new_files,
            "pin": i.pin,
            "control_socket": self.control_path.display().to_string(),
            "metrics": metrics_addr.map(|a| a.to_string()),
        }));
        info!(interfaces = ?i.interfaces, mode = self.policy_mode(), kernel_hook = i.kernel_hook, libraries = self.reporter.library_count(), new_files = i.new_files, control = %self.control_path.display(), metrics = ?metrics_addr, "enforcer ready");

        let mut tick = tokio::time::interval(TICK);
        let mut fingerprint = self
            .reload
            .as_ref()
            .and_then(|c| reload::fingerprint(&c.path));
        let mut pressure = Pressure::default();
        let events = events::run(ring, self.reporter.clone());
        tokio::pin!(events);
        let result = loop {
            tokio::select! {
                result = &mut events => break result.context("reading events"),
                _ = sigint.recv() => { info!("SIGINT: stopping"); break Ok(()) }
                _ = sigterm.recv() => { info!("SIGTERM: stopping"); break Ok(()) }
                _ = sighup.recv() => {
                    self.reload_now("SIGHUP", watcher, &counters, &live);
                }
                Some(reply) = reload_rx.recv() => {
                    let answer = self.reload_now("operator request", watcher, &counters, &live);
                    let _ = reply.send(answer);
                }
                _ = tick.tick() => {
                    if let Some(config) = &self.reload {
                        let now = reload::fingerprint(&config.path);
                        if now != fingerprint {
                            fingerprint = now;
                            self.reload_now("policy file changed", watcher, &counters, &live);
                        }
                    }
                    self.housekeeping(&mut pressure, &counters);
                }
            }
        };
        drop((control_task, metrics_task));
        if let Some((dir, programs)) = &self.pin {
            // The last libraries probed are pinned too before we go.
            let _ = pin::sweep(dir, programs);
        }
        result
    }

    fn policy_mode(&self) -> &'static str {
        let dry_run = self.reload.as_ref().is_some_and(|c| c.dry_run);
        self.policy.effective_mode(dry_run).name()
    }

    /// Reads, validates and applies the policy file; reports the outcome as a `reload` event,
    /// a log line, and the returned answer. A bad file changes nothing.
    fn reload_now(
        &mut self,
        why: &str,
        watcher: &Watcher,
        counters: &AgentCounters,
        live: &Mutex<Live>,
    ) -> Value {
        let Some(config) = self.reload.clone() else {
            return json!({"ok": false, "error": "the agent runs the embedded default policy (no --policy file): nothing to reload"});
        };
        let new = match reload::read(&config).map_err(|e| e.to_string()) {
            Ok(new) => new,
            Err(message) => {
                error!(
                    why,
                    "policy reload rejected, the policy in force stays: {message}"
                );
                counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.reporter
                    .lifecycle(reload::rejected_record(&config.path, &message));
                return json!({"ok": false, "error": format!("policy rejected, the one in force stays: {message}")});
            }
        };
        // The watcher first: a library found meanwhile is decided by the new policy.
        watcher.set_policy(new.clone());
        let applied = tokio::task::block_in_place(|| {
            let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
            reload::apply(&new, &self.policy, &config, &mut maps, &self.reporter)
        });
        match applied {
            Ok(summary) => {
                info!(
                    why,
                    mode = summary.mode,
                    actions_changed = summary.actions_changed,
                    scopes_changed = summary.scopes_changed,
                    unattributed_tls = summary.unattributed_tls,
                    flows_reevaluated = summary.flows_reevaluated,
                    newly_blocked = summary.newly_blocked,
                    newly_unblocked = summary.newly_unblocked,
                    "policy reloaded"
                );
                counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                let record = reload::applied_record(&config.path, &summary);
                self.reporter.lifecycle(record.clone());
                *live.lock().unwrap_or_else(PoisonError::into_inner) = Live {
                    mode: summary.mode,
                    policy: new.source.clone(),
                };
                self.policy = new;
                json!({"ok": true, "reload": record})
            }
            Err(err) => {
                error!(why, "policy reload failed while writing the maps: {err}");
                counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.reporter
                    .lifecycle(reload::rejected_record(&config.path, &err.to_string()));
                json!({"ok": false, "error": err.to_string()})
            }
        }
    }

    fn housekeeping(&self, pressure: &mut Pressure, counters: &AgentCounters) {
        let (blocked, max, full) = {
            let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
            let stats = maps.stats();
            (
                maps.blocked().len(),
                maps.blocklist_max,
                stats[Stat::BlocklistFull as usize],
            )
        };
        let ratio = blocked as f64 / f64::from(max.max(1));
        let record = |level: &str, extra: Value| {
            let mut v = json!({"type": "capacity", "map": "BLOCKLIST", "level": level, "entries": blocked, "max_entries": max});
            if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(extra.clone());
            }
            v
        };
        if full > pressure.full_seen {
            let failed = full - pressure.full_seen;
            pressure.full_seen = full;
            warn!(
                failed,
                entries = blocked,
                max,
                "BLOCKLIST full: denied flows could not be blocked (fail-open); raise --blocklist-max"
            );
            self.reporter
                .lifecycle(record("full", json!({"failed_inserts": failed})));
        }
        if ratio > PRESSURE_HIGH && !pressure.high {
            pressure.high = true;
            counters
                .blocklist_pressure_warnings
                .fetch_add(1, Ordering::Relaxed);
            warn!(entries = blocked, max, "BLOCKLIST over 80 % full");
            self.reporter.lifecycle(record("high", json!({})));
        } else if ratio < PRESSURE_LOW && pressure.high {
            pressure.high = false;
            self.reporter.lifecycle(record("normal", json!({})));
        }
        if let Some((dir, programs)) = &self.pin
            && let Err(err) = pin::sweep(dir, programs)
        {
            warn!("pinning links failed: {err}");
        }
    }
}

#[derive(Default)]
struct Pressure {
    high: bool,
    full_seen: u64,
}

/// What an earlier run left pinned, read before this run attaches.
pub struct Earlier {
    /// The largest library id of earlier runs: ours continue after it.
    pub max_lib_id: u32,
    links: Vec<pin::PinnedLink>,
}

impl Earlier {
    pub fn read(dir: &PinDir, live: &LiveMaps) -> Result<Earlier> {
        let links = dir.pinned_links()?;
        let max_lib_id = live.action_ids().into_iter().max().unwrap_or(0);
        if !links.is_empty() {
            info!(links = links.len(), max_lib_id, pin = %dir.root().display(), "taking over the state an earlier agent pinned");
        }
        Ok(Earlier { max_lib_id, links })
    }

    /// Once this run is attached: the earlier run's links go (its XDP links on our interfaces
    /// were taken over and stay; those on other interfaces go with their tc filters), and the
    /// policy of its libraries that no flow refers to any more (action, server-name scope).
    pub async fn retire(
        &self,
        dir: &PinDir,
        handle: &rtnetlink::Handle,
        ifaces: &[(String, u32)],
        live: &mut LiveMaps,
    ) {
        let mut removed = 0;
        for link in &self.links {
            if let Some(ifindex) = link.xdp_ifindex {
                if ifaces.iter().any(|(_, i)| *i == ifindex) {
                    continue;
                }
                if let Err(err) = tc::remove_named(handle, ifindex, tc::FILTER_NAME).await {
                    warn!(
                        ifindex,
                        "removing the earlier run's tc filter failed: {err}"
                    );
                }
            }
            match pin::unpin(&link.path) {
                Ok(()) => removed += 1,
                Err(err) => warn!("removing an earlier run's link failed: {err}"),
            }
        }
        let referenced: HashSet<u32> = live.flows().iter().map(|(_, s)| s.lib_id).collect();
        for id in live.action_ids() {
            if id <= self.max_lib_id && !referenced.contains(&id) {
                live.remove_action(id);
                let _ = live.remove_scoped(id);
                for key in live.name_rules_of(id) {
                    let _ = live.remove_name_rule(&key);
                }
            }
        }
        if removed > 0 {
            info!(links = removed, pin = %dir.root().display(), "the earlier run's links released");
        }
    }
}
