//! The running agent's main loop: connection events, signals, policy reloads, the operator
//! socket, the metrics endpoint, and a one-second housekeeping tick (policy file poll, blocklist
//! capacity and lost events from the sampler's snapshot, pinning links of libraries probed since
//! the last tick). Hello events, owner lookups and the map sampler run on threads of their own.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
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
        layers,
        metrics::{self, AgentCounters},
        operator::{AgentInfo, Operator, ReloadRequest},
        reload::{self, ReloadConfig},
        sampler::{Sampler, Snapshot},
    },
    datapath::{
        Datapath,
        pin::{self, PinDir},
    },
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
    pub datapath: Arc<Datapath>,
    /// `None`: the embedded default policy (nothing to reload).
    pub reload: Option<ReloadConfig>,
    /// The pin directory and the programs whose links are pinned.
    pub pin: Option<(PinDir, Vec<u32>)>,
    pub control: Option<tokio::net::UnixListener>,
    pub control_path: PathBuf,
    pub metrics: Option<(tokio::net::TcpListener, std::net::SocketAddr)>,
    /// Seconds between blocklist sweeps (0: none).
    pub blocklist_sweep: u64,
    /// What runs before our programs on the interfaces (read every few ticks).
    pub layers: layers::Layers,
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
    pub async fn serve(mut self, rings: events::Rings) -> Result<()> {
        let counters = Arc::new(AgentCounters::default());
        self.reporter
            .start_owner_lookups()
            .context("starting the owner-lookup thread")?;
        let ja4_maps = crate::datapath::maps::ja4_maps(&self.datapath.ebpf())
            .context("opening the maps of the JA4 verdicts")?;
        self.reporter.start_ja4_gate(events::ja4_gate::Ja4Gate::new(
            self.datapath.policy(),
            ja4_maps,
        ));
        let who_maps = crate::datapath::who_maps::WhoGateMaps::open(&self.datapath.ebpf())
            .context("opening the maps of the verdicts on who is talking")?;
        self.reporter.start_who_gate(events::who::WhoGate::new(
            self.datapath.policy(),
            who_maps,
            self.datapath.maps(),
        ));
        let maps = self
            .datapath
            .open_maps()
            .context("opening the maps for the sampler")?;
        let (sampler, sampled) =
            Sampler::start(maps, self.blocklist_sweep).context("starting the sampler thread")?;
        let stats = Arc::new(
            self.datapath
                .open_maps()
                .context("opening the maps for the metrics")?,
        );
        let (hellos_failed, mut hello_ring_failed) = tokio::sync::oneshot::channel();
        let hello_reader = events::RingReader::start(
            "hello-events",
            rings.hellos,
            self.reporter.clone(),
            events::Priority::Background,
            hellos_failed,
        )
        .context("starting the hello-event thread")?;
        let (connections_failed, mut connection_ring_failed) = tokio::sync::oneshot::channel();
        let connection_reader = events::RingReader::start(
            "connection-events",
            rings.connections,
            self.reporter.clone(),
            events::Priority::Urgent,
            connections_failed,
        )
        .context("starting the connection-event thread")?;
        let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
        let operator = Operator {
            info: self.info.clone(),
            policy: self.datapath.policy(),
            maps: self.datapath.maps(),
            libraries: self.datapath.libraries().clone(),
            library_ids: self.datapath.capacity(),
            reporter: self.reporter.clone(),
            reload: reload_tx,
            layers: self.layers.shared(),
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
                    sampled: sampled.clone(),
                    stats: stats.clone(),
                    counters: counters.clone(),
                    library_ids: self.datapath.capacity(),
                },
            )))
        });
        // Before `ready`: a SIGTERM sent as soon as the agent says it is ready must stop it
        // cleanly (with `--pin`: persist), not kill it with the default action.
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let i = &self.info;
        let (mode, source) = {
            let in_force = self.datapath.policy();
            let in_force = in_force.read();
            (in_force.mode().name(), in_force.policy.source.clone())
        };
        let libraries = self.datapath.libraries().len();
        self.reporter.lifecycle(json!({
            "type": "ready",
            "interfaces": i.interfaces,
            "mode": mode,
            "policy": source,
            "kernel_hook": i.kernel_hook,
            "libraries": libraries,
            "new_files": i.new_files,
            "pin": i.pin,
            "control_socket": self.control_path.display().to_string(),
            "metrics": metrics_addr.map(|a| a.to_string()),
        }));
        info!(interfaces = ?i.interfaces, mode, kernel_hook = i.kernel_hook, libraries, new_files = i.new_files, control = %self.control_path.display(), metrics = metrics_addr.map(tracing::field::display), "enforcer ready");

        let mut tick = tokio::time::interval(TICK);
        // From the file as it was when the policy in force was read, not as it is now: a file
        // replaced while the agent started (or right after `ready`) is reloaded at the first tick.
        let mut fingerprint = self.reload.as_ref().and_then(|c| c.loaded);
        let mut pressure = Pressure::default();
        let mut ticks: u64 = 0;
        let result = loop {
            tokio::select! {
                Ok(err) = &mut connection_ring_failed => break Err(err).context("reading connection events"),
                Ok(err) = &mut hello_ring_failed => break Err(err).context("reading hello events"),
                _ = sigint.recv() => { info!("SIGINT: stopping"); break Ok(()) }
                _ = sigterm.recv() => { info!("SIGTERM: stopping"); break Ok(()) }
                _ = sighup.recv() => {
                    self.reload_now("SIGHUP", &counters);
                }
                Some(reply) = reload_rx.recv() => {
                    let answer = self.reload_now("operator request", &counters);
                    let _ = reply.send(answer);
                }
                _ = tick.tick() => {
                    if let Some(config) = &self.reload {
                        let now = reload::fingerprint(&config.path);
                        if now != fingerprint {
                            fingerprint = now;
                            self.reload_now("policy file changed", &counters);
                        }
                    }
                    self.housekeeping(&mut pressure, &counters, &sampled.get());
                    // The first tick comes at once: the layers are read right after `ready`.
                    if ticks.is_multiple_of(layers::EVERY) {
                        self.layers.check(|event| self.reporter.lifecycle(event)).await;
                    }
                    ticks += 1;
                }
            }
        };
        drop((
            control_task,
            metrics_task,
            connection_reader,
            hello_reader,
            sampler,
        ));
        if let Some((dir, programs)) = &self.pin {
            // The last libraries probed are pinned too before we go.
            let _ = pin::sweep(dir, programs);
        }
        result
    }

    /// Reads, validates and applies the policy file; reports the outcome as a `reload` event,
    /// a log line, and the returned answer. A bad file changes nothing.
    fn reload_now(&self, why: &str, counters: &AgentCounters) -> Value {
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
        let applied =
            tokio::task::block_in_place(|| self.datapath.apply(new, config.reevaluate_established));
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
                    record_probes_added = summary.record_probes_added,
                    "policy reloaded"
                );
                counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                let record = reload::applied_record(&config.path, &summary);
                self.reporter.lifecycle(record.clone());
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

    fn housekeeping(&self, pressure: &mut Pressure, counters: &AgentCounters, now: &Snapshot) {
        let (blocked, max) = (now.fill.blocklist, now.fill.blocklist_max);
        let full = now.stats[Stat::BlocklistFull as usize];
        let rings = [
            ("EVENTS", Stat::EventsLost),
            ("HELLO_EVENTS", Stat::HelloEventsLost),
        ];
        for ((ring, stat), seen) in rings.into_iter().zip(&mut pressure.lost_seen) {
            let lost = now.stats[stat as usize];
            if lost > *seen {
                let new = lost - *seen;
                *seen = lost;
                warn!(
                    ring,
                    lost = new,
                    total = lost,
                    "events lost: the ring buffer was full (enforcement went on; the records are gone)"
                );
                self.reporter.lifecycle(json!({"type": "capacity", "map": ring, "level": "lost", "lost": new, "lost_total": lost}));
            }
        }
        if now.swept > pressure.swept_seen {
            let moved = now.swept - pressure.swept_seen;
            pressure.swept_seen = now.swept;
            self.reporter.lifecycle(json!({"type": "capacity", "map": "BLOCKLIST", "level": "swept", "entries": blocked, "max_entries": max, "moved": moved}));
        }
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
                "BLOCKLIST full: denied flows went to the overflow table (still dropped, sockets aborted); raise --blocklist-max"
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
    /// `EventsLost`, `HelloEventsLost` as last reported.
    lost_seen: [u64; 2],
    swept_seen: u64,
}
