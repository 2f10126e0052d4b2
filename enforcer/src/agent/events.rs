//! The event pipeline: drains the ring buffers, aborts the local socket of every blocked flow,
//! and reports each attributed connection once (text through `tracing`, or JSON lines), and each
//! judged TLS hello (`hello`).
//!
//! Two rings, two reader threads ([`RingReader`]): connection events (`EVENTS`, what blocked
//! libraries' sockets are aborted from) at a raised priority, hello events (`HELLO_EVENTS`,
//! which anyone can make in bulk) at a lowered one, their owner lookups in a bounded queue
//! (`owners`), and the records written by a thread of their own (`output`). A hello flood fills
//! its own ring and keeps its own threads busy; connection events keep their room, their
//! reader, and their place in the output.

mod aborts;
mod hello;
pub mod ja4;
pub mod ja4_gate;
mod ja4_seen;
pub mod negotiated;
pub mod offered;
mod origin;
mod output;
mod owners;
mod quic;
mod violations;
pub mod who;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use enforcer_common::{
    event::{self, HelloEvent, QuicEvent, TlsEvent},
    flow::{FlowKey, direction, family, op, verdict},
    hello::evidence,
    offer::OfferedEvent,
    posture::NegotiatedEvent,
};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::datapath::{
    sock_destroy,
    table::{LibInfo, Libraries},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    /// Human-readable log lines on stderr.
    Text,
    /// One JSON object per line on stdout (see docs/events.md).
    Json,
}

/// Whose blocked sockets are aborted (`--abort-namespaces`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AbortNamespaces {
    /// Every network namespace: a socket is looked up in its owner's.
    #[default]
    All,
    /// Only the agent's own network namespace.
    Own,
}

/// Connections reported, by (library family, verdict name): the metrics' counters.
pub type ConnectionCounts = BTreeMap<(String, &'static str), u64>;

/// Cheap to clone: clones share the datapath's library table (a read-only view).
#[derive(Clone)]
pub struct Reporter {
    libs: Libraries,
    /// Recent flows' owners, for `client_hello` events.
    recent: hello::RecentTable,
    pub format: EventFormat,
    /// The record writer (stdout with `--events json`; the `--events-file` whatever `format`
    /// says), on a thread of its own.
    output: Arc<output::Output>,
    counts: Arc<Mutex<ConnectionCounts>>,
    /// Connections by what they negotiated (`negotiated`).
    postures: Arc<Mutex<negotiated::PostureCounts>>,
    /// The newest violations, for the control socket's `recent` request.
    violations: Arc<Mutex<violations::Ring>>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, to turn `bpf_ktime_get_ns` into wall-clock time.
    boot_offset_ns: i128,
    /// The owner-lookup queue (`None`: lookups are done in place; the worker's own clone).
    owners: Option<Arc<owners::Queue>>,
    lookups: Arc<owners::Counters>,
    /// Blocked flows' socket aborts, one per flow for both of its reports.
    aborts: Arc<aborts::Aborts>,
    /// Recent flows' JA4s (`offered`), for their `negotiated` events and `enforcer flows`.
    ja4s: Arc<ja4_seen::Ja4Seen>,
    /// Writes the JA4 verdicts `ja4` rules wait for (`None`: before the agent serves).
    ja4_gate: Option<Arc<ja4_gate::Ja4Gate>>,
    /// Answers the kernel's questions on who is talking (`None`: before the agent serves).
    who_gate: Option<Arc<who::WhoGate>>,
    /// Network namespace cookies of the processes reported (`origin`).
    netns: Arc<crate::netns::Cookies>,
}

impl Reporter {
    pub fn new(libs: Libraries, format: EventFormat) -> Self {
        Self {
            libs,
            recent: Default::default(),
            format,
            output: Arc::new(output::Output::start(format == EventFormat::Json)),
            counts: Arc::default(),
            postures: Arc::default(),
            violations: Arc::default(),
            boot_offset_ns: realtime_minus_monotonic(),
            owners: None,
            lookups: Arc::default(),
            aborts: Arc::default(),
            ja4s: Arc::default(),
            ja4_gate: None,
            who_gate: None,
            netns: Arc::default(),
        }
    }

    /// From now on, this reporter and its later clones answer the kernel's questions on the
    /// senders of flows that rules scoped to who is talking may decide.
    pub fn start_who_gate(&mut self, gate: who::WhoGate) {
        self.who_gate = Some(Arc::new(gate));
    }

    /// From now on, this reporter and its later clones write each flow's JA4 verdict for the
    /// policy's `ja4` rules.
    pub fn start_ja4_gate(&mut self, gate: ja4_gate::Ja4Gate) {
        self.ja4_gate = Some(Arc::new(gate));
    }

    /// The JA4 of `flow`'s latest ClientHello, if one was made (`enforcer flows`).
    pub fn ja4_of(&self, flow: &FlowKey) -> Option<String> {
        self.ja4s.latest(flow)
    }

    /// From now on, this reporter and its later clones queue owner lookups for a worker thread
    /// instead of walking `/proc` where the hello is read.
    pub fn start_owner_lookups(&mut self) -> std::io::Result<()> {
        let queue = owners::Queue::start(self.clone(), self.lookups.clone())?;
        self.owners = Some(Arc::new(queue));
        Ok(())
    }

    /// Aborts blocked sockets in these network namespaces from now on (this reporter and its
    /// later clones).
    pub fn abort_in(&mut self, namespaces: AbortNamespaces) {
        self.aborts = Arc::new(aborts::Aborts::new(namespaces));
    }

    /// Also appends every record, as one JSON line, to `path` (created 0600 if missing). Each
    /// line goes out in one `write` on an `O_APPEND` file: lines are never interleaved or cut.
    pub fn with_events_file(self, path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        self.output.set_file(file);
        Ok(self)
    }

    /// Connections reported so far, by (library family, verdict).
    pub fn connection_counts(&self) -> ConnectionCounts {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The newest violations (their `connection` records, newest first, at most
    /// `violations::MAX_RECENT`), and how many there were since start.
    pub fn recent_violations(&self) -> (Vec<serde_json::Value>, u64) {
        let ring = self
            .violations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (ring.newest_first(), ring.seen())
    }

    /// How many libraries are known.
    pub fn library_count(&self) -> usize {
        self.libs.len()
    }

    /// (flows whose owner is remembered for `client_hello` events now, owners forgotten to make
    /// room since start): the one per-flow table of the agent, bounded by `hello::MAX_RECENT`.
    pub fn recent_owners(&self) -> (usize, u64) {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        (recent.remembered(), recent.forgotten())
    }

    /// Prints a non-connection record (`ready`, ...) in the chosen format.
    pub fn lifecycle(&self, record: serde_json::Value) {
        self.emit(&record);
    }

    /// A record to stdout (`--events json`) and to the events file, never dropped.
    fn emit(&self, record: &serde_json::Value) {
        self.output.push(record.to_string(), output::Lane::Records);
    }

    /// Whether records are written as JSON anywhere (stdout or the events file).
    fn writes_json(&self) -> bool {
        self.format == EventFormat::Json || self.output.writes_file()
    }

    /// Hello records dropped because their output lane was full (a reader of stdout slower than
    /// the hellos come), since start.
    pub fn hello_reports_dropped(&self) -> u64 {
        self.output.dropped()
    }

    /// Waits up to 5 s for every record to be written (before the agent exits).
    pub fn flush(&self) {
        self.output.flush(Duration::from_secs(5));
    }

    fn library(&self, id: u32) -> Option<LibInfo> {
        self.libs.get(id)
    }

    /// The owner the latest connection event named for `flow`, if it is still remembered.
    fn recent_owner(&self, flow: &FlowKey) -> Option<owners::Owner> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .latest(flow)
            .cloned()
    }

    fn handle(&self, event: &TlsEvent) {
        // A flow that did not fit in the blocklist is dropped all the same: its socket too.
        let blocked = event.verdict == verdict::BLOCKED || event.verdict == verdict::BLOCKLIST_FULL;
        // Read before the abort: a denied client often exits at once, and its namespace with it.
        let (ns, cgroup) = (
            crate::netns::Ns::of_pid(event.pid),
            crate::containers::cgroup_of(event.pid),
        );
        let aborted = blocked.then(|| self.aborts.abort(&event.flow, Some(event.pid)));
        let lib = self.library(event.lib_id);
        let lib = lib.as_ref();
        let family = lib.map_or("unknown", |l| l.family.name());
        let path = lib.map_or("?", |l| l.path.as_str());
        let version = lib.and_then(|l| l.version.as_deref());
        let by_random = event.evidence == evidence::RANDOM;
        // Attributed by the egress classifier (no process context): `pid` made the random,
        // `comm` is its name then (recorded with the random: the process may be gone now).
        let source = match by_random {
            true => "hello-random",
            false => "connection-event",
        };
        let comm = match comm(&event.comm) {
            c if c.is_empty() && by_random => hello::process_comm(event.pid),
            c => c,
        };
        let cookie = ns.and_then(|ns| self.netns.of(&ns));
        let origin = origin::Origin::of(event.pid, cgroup, cookie, &self.netns);
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remember(
                event.flow,
                owners::Owner {
                    pid: event.pid,
                    comm: comm.clone(),
                    source,
                    cgroup: origin.cgroup.clone(),
                    netns_cookie: origin.netns_cookie,
                },
                event.header.ts_ns,
            );
        let (local, remote) = endpoints(&event.flow);
        let verdict_name = verdict_name(event.verdict);
        let time = self.wall_clock(event.header.ts_ns);
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((family.to_string(), verdict_name))
            .or_default() += 1;
        let record = || {
            json!({
                "type": "connection",
                "time": humantime::format_rfc3339_millis(time).to_string(),
                "pid": event.pid,
                "tid": event.tid,
                "comm": comm,
                "library": match lib {
                    Some(l) => origin::library_json(event.lib_id, l),
                    None => json!({ "id": event.lib_id, "family": family, "path": path, "version": version, "container_path": null, "host_path": null }),
                },
                "local": { "addr": local.0.to_string(), "port": local.1 },
                "remote": { "addr": remote.0.to_string(), "port": remote.1 },
                "direction": if event.direction == direction::SEND { "send" } else { "recv" },
                "call": op_name(event.op),
                "evidence": if by_random { "random" } else { "thread" },
                "verdict": verdict_name,
                "socket_aborted": aborted.as_ref().map(|r| r.is_ok()),
                "netns_cookie": origin.netns_cookie,
                "cgroup": origin.cgroup,
                "container": origin.container_json(),
            })
        };
        if self.writes_json() {
            self.emit(&record());
        }
        if is_violation(event.verdict) {
            self.violations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(record());
        }
        match self.format {
            EventFormat::Json => {}
            EventFormat::Text => {
                let local = sockaddr(local);
                let remote = sockaddr(remote);
                // tracing takes the level at compile time: one macro, two levels.
                macro_rules! log_connection {
                    ($level:ident, $message:literal) => {
                        $level!(
                            pid = event.pid,
                            comm,
                            library = family,
                            version = version.unwrap_or("unknown"),
                            path,
                            container = origin.container_short(),
                            local,
                            remote,
                            verdict = verdict_name,
                            $message
                        )
                    };
                }
                if event.verdict == verdict::ALLOWED {
                    log_connection!(info, "TLS connection");
                } else if event.verdict == verdict::PENDING_SERVER_NAME {
                    log_connection!(info, "TLS connection (judged at its ClientHello)");
                } else {
                    log_connection!(warn, "TLS policy violation");
                }
            }
        }
        match aborted {
            Some(Err(err @ sock_destroy::SockDestroyError::NotFound { .. })) => {
                debug!(%err, "blocked flow: no local socket to abort");
            }
            Some(Err(err)) => {
                warn!(%err, "blocked flow: could not abort the local socket; its packets are still dropped");
            }
            _ => {}
        }
    }

    fn wall_clock(&self, ts_ns: u64) -> SystemTime {
        let ns = (ts_ns as i128 + self.boot_offset_ns).max(0);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns.min(u64::MAX as i128) as u64)
    }
}

/// The two ring buffers, taken from the object at start.
pub struct Rings {
    /// `EVENTS`: connection events.
    pub connections: RingBuf<MapData>,
    /// `HELLO_EVENTS`: hello events.
    pub hellos: RingBuf<MapData>,
}

/// How a ring's reader thread is scheduled relative to the agent's other threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Connection events: nice -10 where the agent may raise it (root), so that the socket
    /// abort of a denied connection is not kept waiting by a flood on a busy host.
    Urgent,
    /// Hello events: nice 10, their work can wait.
    Background,
}

/// The reader of one ring buffer, on a thread of its own; it stops when this drops.
pub struct RingReader {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RingReader {
    /// Reads `ring` until dropped; if waiting on its fd fails (the map went away), the error
    /// goes to `failed` and the thread ends.
    pub fn start(
        name: &str,
        mut ring: RingBuf<MapData>,
        reporter: Reporter,
        priority: Priority,
        failed: tokio::sync::oneshot::Sender<std::io::Error>,
    ) -> std::io::Result<RingReader> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::Builder::new().name(name.into()).spawn(move || {
                match priority {
                    Priority::Urgent => crate::agent::urgent_thread(),
                    Priority::Background => crate::agent::background_thread(),
                }
                let mut skipped: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Wakes when records are there, or after 100 ms to look at `stop`.
                    let mut poll = libc::pollfd {
                        fd: ring.as_fd().as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    let n = unsafe { libc::poll(&raw mut poll, 1, 100) };
                    let err = std::io::Error::last_os_error();
                    if n < 0 && err.kind() != std::io::ErrorKind::Interrupted {
                        let _ = failed.send(err);
                        return;
                    }
                    while let Some(item) = ring.next() {
                        let record = decode(&item);
                        drop(item);
                        reporter.dispatch(record, &mut skipped);
                    }
                }
            })?
        };
        Ok(RingReader {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Reporter {
    /// Handles one ring record of either kind (either ring may hold both: a pinned ring an
    /// earlier version wrote).
    fn dispatch(&self, record: Result<Record, Skipped>, skipped: &mut u64) {
        match record {
            Ok(Record::Tls(event)) => self.handle(&event),
            Ok(Record::Hello(event)) => self.handle_hello(&event),
            Ok(Record::Quic(event)) => self.handle_quic(&event),
            Ok(Record::Negotiated(event)) => self.handle_negotiated(&event),
            Ok(Record::Offered(event)) => self.handle_offered(&event),
            Err(why) => {
                *skipped += 1;
                // The first, then every 1024th: a kernel object and a binary that disagree
                // would otherwise flood the log.
                if *skipped % 1024 == 1 {
                    warn!(skipped, "ring record skipped: {why}");
                }
            }
        }
    }
}

/// A record of the `EVENTS` ring buffer, by the kind in its header.
#[derive(Debug)]
pub enum Record {
    Tls(TlsEvent),
    Hello(Box<HelloEvent>),
    Quic(QuicEvent),
    Negotiated(NegotiatedEvent),
    Offered(Box<OfferedEvent>),
}

/// Why a ring record was not decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error(
        "kind {0} is not one this agent knows (kernel object and binary of different versions?)"
    )]
    UnknownKind(u8),
    #[error("kind {kind}: {len} bytes, shorter than its record")]
    Short { kind: u8, len: usize },
}

/// Decodes one ring record by `event::Header::kind`; never reads past `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Record, Skipped> {
    let kind = *bytes.first().ok_or(Skipped::Short { kind: 0, len: 0 })?;
    match kind {
        event::kind::TLS => read(bytes).map(Record::Tls),
        event::kind::HELLO => read(bytes).map(|e| Record::Hello(Box::new(e))),
        event::kind::QUIC => read(bytes).map(Record::Quic),
        event::kind::NEGOTIATED => read(bytes).map(Record::Negotiated),
        event::kind::OFFERED => read(bytes).map(|e| Record::Offered(Box::new(e))),
        other => Err(Skipped::UnknownKind(other)),
    }
}

fn read<T: aya::Pod>(bytes: &[u8]) -> Result<T, Skipped> {
    if bytes.len() < size_of::<T>() {
        return Err(Skipped::Short {
            kind: bytes[0],
            len: bytes.len(),
        });
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes; T is Pod (any bit pattern valid).
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

fn realtime_minus_monotonic() -> i128 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

pub fn endpoints(flow: &FlowKey) -> ((IpAddr, u16), (IpAddr, u16)) {
    let addr = |bytes: &[u8; 16]| -> IpAddr {
        if flow.family == family::V4 {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*bytes))
        }
    };
    (
        (addr(&flow.local_addr), flow.local_port),
        (addr(&flow.remote_addr), flow.remote_port),
    )
}

fn sockaddr((addr, port): (IpAddr, u16)) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// A denied library's connection: blocked, or what would have been (audit mode).
fn is_violation(v: u8) -> bool {
    matches!(
        v,
        verdict::BLOCKED | verdict::WOULD_BLOCK | verdict::BLOCKLIST_FULL
    )
}

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::ALLOWED => "allowed",
        verdict::BLOCKED => "blocked",
        verdict::WOULD_BLOCK => "would-block",
        verdict::AUDITED => "audited",
        verdict::BLOCKLIST_FULL => "blocklist-full",
        verdict::PENDING_SERVER_NAME => "pending-server-name",
        verdict::PENDING_WHO => "pending-sender",
        _ => "unknown-library",
    }
}

pub fn op_name(v: u8) -> &'static str {
    match v {
        op::HANDSHAKE => "handshake",
        op::READ => "read",
        op::WRITE => "write",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests;
