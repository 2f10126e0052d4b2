//! What `enforcer top` shows, as plain data: one [`Sample`] per poll, read from the agent's
//! answers to `status` and `recent` (missing fields read as zero or `?`, never a panic), and the
//! [`Model`] that turns two samples into per-second rates.

use std::collections::BTreeMap;

use serde_json::Value;

/// One poll of the agent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub agent: Agent,
    /// Connections reported since the agent started, by (library family, verdict).
    pub connections: BTreeMap<(String, String), u64>,
    /// The newest violations, newest first.
    pub violations: Vec<Violation>,
    /// Violations since start (the agent keeps only the newest).
    pub violations_total: u64,
    /// Packets dropped by the XDP program (ingress) and the tc classifier (egress), over all
    /// filtered interfaces: the kernel counts them per hook, not per interface.
    pub ingress_drops: u64,
    pub tc_drops: u64,
    /// Ring-buffer records the kernel could not write (ring full): connection and hello events.
    pub events_lost: u64,
    pub hello_events_lost: u64,
}

/// The agent line of the view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Agent {
    pub pid: u64,
    pub uptime_s: u64,
    pub mode: String,
    pub policy: String,
    pub interfaces: Vec<String>,
    pub kernel_hook: String,
}

/// One violation: who, with which library, on which connection, and what happened.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Violation {
    pub time: String,
    pub pid: u64,
    pub comm: String,
    pub library: String,
    pub version: String,
    pub local: String,
    pub remote: String,
    pub verdict: String,
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_owned()
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `addr:port`, bracketed for IPv6, from an event's `{"addr": ..., "port": ...}`.
fn endpoint(v: &Value) -> String {
    let addr = text(&v["addr"]);
    let port = v["port"].as_u64().map_or("?".to_owned(), |p| p.to_string());
    match addr.contains(':') {
        true => format!("[{addr}]:{port}"),
        false => format!("{addr}:{port}"),
    }
}

impl Violation {
    /// From a `connection` record (docs/events.md).
    pub fn from_record(r: &Value) -> Violation {
        Violation {
            // RFC 3339 with milliseconds: the time of day is what a person scans for.
            time: r["time"]
                .as_str()
                .and_then(|t| t.split_once('T'))
                .map_or("?".to_owned(), |(_, t)| t.trim_end_matches('Z').to_owned()),
            pid: count(&r["pid"]),
            comm: text(&r["comm"]),
            library: text(&r["library"]["family"]),
            version: r["library"]["version"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            local: endpoint(&r["local"]),
            remote: endpoint(&r["remote"]),
            verdict: text(&r["verdict"]),
        }
    }
}

impl Sample {
    /// From the agent's answers to `status` and `recent`.
    pub fn from_answers(status: &Value, recent: &Value) -> Sample {
        let c = &status["counters"];
        let connections = recent["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                (
                    (text(&row["library"]), text(&row["verdict"])),
                    count(&row["count"]),
                )
            })
            .collect();
        Sample {
            agent: Agent {
                pid: count(&status["pid"]),
                uptime_s: count(&status["uptime_s"]),
                mode: text(&status["mode"]),
                policy: text(&status["policy"]),
                interfaces: status["interfaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect(),
                kernel_hook: text(&status["kernel_hook"]),
            },
            connections,
            violations: recent["violations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Violation::from_record)
                .collect(),
            violations_total: count(&recent["violations_total"]),
            ingress_drops: count(&c["xdp_drops"]) + count(&c["tc_ingress_drops"]),
            tc_drops: count(&c["tc_drops"]),
            events_lost: count(&c["events_lost"]),
            hello_events_lost: count(&c["hello_events_lost"]),
        }
    }
}

/// A counter: its total and its rate since the previous poll.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counter {
    pub total: u64,
    pub per_s: f64,
}

/// One line of the connections table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub library: String,
    pub verdict: String,
    pub count: Counter,
}

/// The view's data: the newest sample, with rates against the one before.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub agent: Agent,
    /// Busiest first (by rate, then total), then by name.
    pub rows: Vec<Row>,
    pub violations: Vec<Violation>,
    pub violations_total: Counter,
    pub ingress_drops: Counter,
    pub tc_drops: Counter,
    pub events_lost: Counter,
    pub hello_events_lost: Counter,
    /// Why the last poll failed, if it did (the view keeps the last good data).
    pub error: Option<String>,
    previous: Option<(Sample, f64)>,
}

fn counter(now: u64, before: Option<u64>, seconds: f64) -> Counter {
    // A counter that went down (an agent restarted on the same socket) has no rate.
    let per_s = match before {
        Some(b) if seconds > 0.0 && now >= b => (now - b) as f64 / seconds,
        _ => 0.0,
    };
    Counter { total: now, per_s }
}

impl Model {
    /// Takes the sample polled at `at` (seconds on any monotonic clock).
    pub fn observe(&mut self, sample: Sample, at: f64) {
        let (before, seconds) = match &self.previous {
            Some((s, t)) => (Some(s), at - t),
            None => (None, 0.0),
        };
        let c = |now: u64, f: fn(&Sample) -> u64| counter(now, before.map(f), seconds);
        let mut rows: Vec<Row> = sample
            .connections
            .iter()
            .map(|((library, verdict), n)| {
                let was = before.map(|b| {
                    b.connections
                        .get(&(library.clone(), verdict.clone()))
                        .copied()
                        .unwrap_or(0)
                });
                Row {
                    library: library.clone(),
                    verdict: verdict.clone(),
                    count: counter(*n, was, seconds),
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            b.count
                .per_s
                .total_cmp(&a.count.per_s)
                .then(b.count.total.cmp(&a.count.total))
                .then_with(|| (&a.library, &a.verdict).cmp(&(&b.library, &b.verdict)))
        });
        self.rows = rows;
        self.violations_total = c(sample.violations_total, |s| s.violations_total);
        self.ingress_drops = c(sample.ingress_drops, |s| s.ingress_drops);
        self.tc_drops = c(sample.tc_drops, |s| s.tc_drops);
        self.events_lost = c(sample.events_lost, |s| s.events_lost);
        self.hello_events_lost = c(sample.hello_events_lost, |s| s.hello_events_lost);
        self.agent = sample.agent.clone();
        self.violations = sample.violations.clone();
        self.error = None;
        self.previous = Some((sample, at));
    }

    /// A poll failed: the view says so and keeps what it had.
    pub fn failed(&mut self, error: String) {
        self.error = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(xdp: u64, lost: u64) -> Value {
        json!({"ok": true, "pid": 42, "uptime_s": 7, "mode": "enforce", "policy": "/etc/p.yaml",
               "interfaces": ["veth0"], "kernel_hook": "fentry",
               "counters": {"xdp_drops": xdp, "tc_drops": 1, "events_lost": lost,
                            "hello_events_lost": 0}})
    }

    fn recent(openssl: u64, gnutls_blocked: u64) -> Value {
        json!({"ok": true,
               "connections": [
                   {"library": "gnutls", "verdict": "blocked", "count": gnutls_blocked},
                   {"library": "openssl", "verdict": "allowed", "count": openssl}],
               "violations": [{
                   "type": "connection", "time": "2026-12-03T10:11:12.345Z", "pid": 9,
                   "comm": "gnutls-cli",
                   "library": {"id": 3, "family": "gnutls", "path": "/x", "version": "3.7.9"},
                   "local": {"addr": "fd00::1", "port": 40000},
                   "remote": {"addr": "10.0.0.2", "port": 443},
                   "verdict": "blocked"}],
               "violations_total": gnutls_blocked})
    }

    #[test]
    fn a_sample_reads_every_field() {
        let s = Sample::from_answers(&status(5, 2), &recent(3, 1));
        assert_eq!(s.agent.pid, 42);
        assert_eq!(s.agent.interfaces, ["veth0"]);
        assert_eq!(s.connections[&("openssl".into(), "allowed".into())], 3);
        assert_eq!((s.ingress_drops, s.tc_drops, s.events_lost), (5, 1, 2));
        let v = &s.violations[0];
        assert_eq!(v.time, "10:11:12.345");
        assert_eq!((v.pid, v.comm.as_str()), (9, "gnutls-cli"));
        assert_eq!(
            (v.library.as_str(), v.version.as_str()),
            ("gnutls", "3.7.9")
        );
        assert_eq!(v.local, "[fd00::1]:40000");
        assert_eq!(v.remote, "10.0.0.2:443");
        assert_eq!(v.verdict, "blocked");
    }

    #[test]
    fn hostile_or_empty_answers_read_as_nothing() {
        for junk in [
            json!(null),
            json!([1, 2]),
            json!({"counters": "x", "violations": [7]}),
        ] {
            let s = Sample::from_answers(&junk, &junk);
            assert_eq!(s.ingress_drops, 0);
            assert!(s.connections.is_empty());
            assert!(s.violations.iter().all(|v| v.library == "?"));
        }
    }

    #[test]
    fn rates_are_the_difference_between_polls() {
        let mut m = Model::default();
        m.observe(Sample::from_answers(&status(10, 0), &recent(4, 0)), 100.0);
        assert!(m.rows.iter().all(|r| r.count.per_s == 0.0), "no rate yet");
        m.observe(Sample::from_answers(&status(30, 1), &recent(8, 2)), 102.0);
        assert_eq!(
            m.ingress_drops,
            Counter {
                total: 30,
                per_s: 10.0
            }
        );
        assert_eq!(m.events_lost.per_s, 0.5);
        assert_eq!(m.tc_drops.per_s, 0.0);
        // Busiest first.
        assert_eq!(m.rows[0].library, "openssl");
        assert_eq!(
            m.rows[0].count,
            Counter {
                total: 8,
                per_s: 2.0
            }
        );
        assert_eq!(
            m.rows[1].count,
            Counter {
                total: 2,
                per_s: 1.0
            }
        );
    }

    #[test]
    fn a_counter_that_went_down_has_no_rate() {
        let mut m = Model::default();
        m.observe(Sample::from_answers(&status(50, 0), &recent(9, 0)), 1.0);
        m.observe(Sample::from_answers(&status(3, 0), &recent(1, 0)), 2.0);
        assert_eq!(
            m.ingress_drops,
            Counter {
                total: 3,
                per_s: 0.0
            }
        );
        assert_eq!(m.rows[0].count.per_s, 0.0);
    }

    #[test]
    fn a_failed_poll_keeps_the_data() {
        let mut m = Model::default();
        m.observe(Sample::from_answers(&status(1, 0), &recent(1, 1)), 1.0);
        m.failed("gone".into());
        assert_eq!(m.error.as_deref(), Some("gone"));
        assert_eq!(m.violations.len(), 1);
    }
}
