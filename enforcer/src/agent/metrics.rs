//! `--metrics ADDR`: a Prometheus `/metrics` endpoint (text exposition format 0.0.4) on plain
//! HTTP, served by a small tokio task. One request per connection, `GET /metrics` only; any other
//! path is 404. Request heads are read up to 8 KiB and for at most 5 s. A scrape reads counters
//! only: `STATS` through map handles of its own (one lookup per counter), the sampler's last
//! snapshot of the map fill (`sampler`), the reporter's and the agent's counters; it never walks
//! a map or waits for the maps' lock.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use enforcer_common::stat;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::{info, warn};

use crate::{
    agent::{events::Reporter, sampler::Sampled},
    datapath::{capacity::Capacity, maps::LiveMaps},
};

/// What the endpoint reads on every scrape.
#[derive(Clone)]
pub struct Sources {
    pub reporter: Reporter,
    pub sampled: Sampled,
    /// Handles of the metrics' own, for `STATS` (never locked: reads only).
    pub stats: Arc<LiveMaps>,
    pub counters: Arc<AgentCounters>,
    /// Library id slots (`--max-libraries`) and what became of libraries past them.
    pub library_ids: Arc<Capacity>,
}

/// Agent-side counters that are not in a map.
#[derive(Default)]
pub struct AgentCounters {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub blocklist_pressure_warnings: AtomicU64,
}

const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `--metrics`: `ADDR:PORT`, or a bare `PORT`, which binds 127.0.0.1 (the endpoint has no
/// authentication: another address is an explicit choice).
pub fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value
        .parse()
        .map_err(|_| format!("{value:?} is neither ADDR:PORT nor PORT"))
}

/// Binds `addr`; the returned address is the one bound (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves scrapes until the task is dropped.
pub async fn serve(listener: TcpListener, sources: Sources) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(%err, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let read = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream, &mut head));
            let (status, body) = match read.await {
                Ok(Ok(())) if is_get_metrics(&head) => {
                    let body = tokio::task::spawn_blocking(move || render(&sources))
                        .await
                        .unwrap_or_default();
                    ("200 OK", body)
                }
                Ok(Ok(())) => ("404 Not Found", "only GET /metrics\n".to_string()),
                _ => return,
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(err) = stream.write_all(response.as_bytes()).await {
                info!(%peer, %err, "metrics: writing the response failed");
            }
        });
    }
}

async fn read_head(stream: &mut tokio::net::TcpStream, head: &mut Vec<u8>) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

fn is_get_metrics(head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    parts.next() == Some(b"GET") && parts.next().is_some_and(|p| p == b"/metrics")
}

/// The exposition text.
pub fn render(sources: &Sources) -> String {
    let snapshot = sources.sampled.get();
    let (stats, fill) = (sources.stats.stats(), snapshot.fill);
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        "enforcer_connections_total",
        "counter",
        "TLS connections attributed and reported, by library family and verdict.",
    );
    let mut lines = String::new();
    for ((lib, verdict), n) in sources.reporter.connection_counts() {
        let _ = writeln!(
            lines,
            "enforcer_connections_total{{library=\"{}\",verdict=\"{verdict}\"}} {n}",
            escape(&lib)
        );
    }
    out.push_str(&lines);
    negotiated_lines(sources, &mut out);
    // The kernel's counters, one family per `Shown::metric` (consecutive counters may share it).
    let mut last = "";
    for counter in stat::ALL {
        let shown = counter.shown();
        let (name, help) = (shown.metric, shown.help);
        if name != last {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            last = name;
        }
        let _ = writeln!(out, "{name}{} {}", shown.labels, stats[counter as usize]);
    }
    let (owners, forgotten) = sources.reporter.recent_owners();
    let lookups = sources.reporter.owner_lookups();
    let gauge_lines = [
        (
            "enforcer_recent_owners",
            "gauge",
            "Flows whose owner the agent remembers for client_hello events (at most 8192).",
            vec![("", owners as u64)],
        ),
        (
            "enforcer_recent_owners_forgotten_total",
            "counter",
            "Remembered flow owners dropped to make room (their ClientHellos are joined by socket inode).",
            vec![("", forgotten)],
        ),
        (
            "enforcer_owner_lookups_total",
            "counter",
            "Owner lookups of unattributed hellos (/proc walks), by result; dropped: the bounded queue was full or the rate limit reached, reported without owner.",
            vec![
                ("{result=\"done\"}", lookups.done),
                ("{result=\"dropped\"}", lookups.dropped),
            ],
        ),
        (
            "enforcer_hello_reports_dropped_total",
            "counter",
            "Hello records not written because the output fell behind (stdout or the events file slower than the hellos came).",
            vec![("", sources.reporter.hello_reports_dropped())],
        ),
        (
            "enforcer_map_entries",
            "gauge",
            "Entries in a map (sampled: BLOCKLIST every second, the others every 5 s).",
            vec![
                ("{map=\"FLOWS\"}", fill.flows as u64),
                ("{map=\"BLOCKLIST\"}", fill.blocklist as u64),
                ("{map=\"BLOCKLIST_OVERFLOW\"}", fill.overflow as u64),
            ],
        ),
        (
            "enforcer_map_max_entries",
            "gauge",
            "Capacity of a map.",
            vec![
                ("{map=\"FLOWS\"}", u64::from(fill.flows_max)),
                ("{map=\"BLOCKLIST\"}", u64::from(fill.blocklist_max)),
                ("{map=\"BLOCKLIST_OVERFLOW\"}", u64::from(fill.overflow_max)),
            ],
        ),
        (
            "enforcer_blocklist_swept_total",
            "counter",
            "Blocklist entries without a local socket moved to the overflow table by the sweep (still dropped).",
            vec![("", snapshot.swept)],
        ),
        (
            "enforcer_libraries_probed",
            "gauge",
            "TLS library files with uprobes attached.",
            vec![("", sources.reporter.library_count() as u64)],
        ),
        (
            "enforcer_library_ids",
            "gauge",
            "Library id slots held by probed libraries (used), and --max-libraries (max).",
            vec![
                ("{slots=\"used\"}", sources.library_ids.held() as u64),
                ("{slots=\"max\"}", sources.library_ids.max as u64),
            ],
        ),
        (
            "enforcer_libraries_over_capacity_total",
            "counter",
            "Libraries that found no free id: probed under the shared over-capacity id, judged by the policy's default.",
            vec![(
                "",
                sources.library_ids.over_capacity.load(Ordering::Relaxed),
            )],
        ),
        (
            "enforcer_libraries_released_total",
            "counter",
            "Libraries no process mapped any more: probes detached, id slot freed.",
            vec![("", sources.library_ids.released.load(Ordering::Relaxed))],
        ),
        (
            "enforcer_policy_reloads_total",
            "counter",
            "Policy reloads, by result.",
            vec![
                (
                    "{result=\"ok\"}",
                    sources.counters.reloads_ok.load(Ordering::Relaxed),
                ),
                (
                    "{result=\"rejected\"}",
                    sources.counters.reloads_failed.load(Ordering::Relaxed),
                ),
            ],
        ),
    ];
    for (name, kind, help, values) in gauge_lines {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in values {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }
    out
}

/// Label values: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `enforcer_negotiated_connections_total`: connections by what their ServerHello said.
fn negotiated_lines(sources: &Sources, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP enforcer_negotiated_connections_total TLS connections whose ServerHello was read, by library family, version, cipher suite, key-exchange group and whether the group is post-quantum.\n# TYPE enforcer_negotiated_connections_total counter"
    );
    let names = |code: Option<u16>, table: &'static [(u16, &'static str)]| {
        code.map_or_else(
            || "unread".to_owned(),
            |c| enforcer_common::iana::named(table, c).to_string(),
        )
    };
    let libs = sources.reporter.library_families();
    for ((lib, version, suite, group), seen) in sources.reporter.posture_counts() {
        let family = libs.get(&lib).map_or("unattributed", String::as_str);
        let _ = writeln!(
            out,
            "enforcer_negotiated_connections_total{{library=\"{}\",version=\"{}\",cipher_suite=\"{}\",group=\"{}\",post_quantum=\"{}\"}} {}",
            escape(family),
            names(version, enforcer_common::iana::VERSIONS),
            names(suite, enforcer_common::iana::CIPHER_SUITES),
            names(group, enforcer_common::iana::GROUPS),
            group.is_some_and(enforcer_common::iana::is_post_quantum),
            seen.connections
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_binds_loopback() {
        assert_eq!(parse_addr("9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            parse_addr("0.0.0.0:9464"),
            Ok("0.0.0.0:9464".parse().unwrap())
        );
        assert_eq!(parse_addr("[::1]:1"), Ok("[::1]:1".parse().unwrap()));
        assert!(parse_addr("localhost:9464").is_err());
        assert!(parse_addr("70000").is_err());
    }
}
