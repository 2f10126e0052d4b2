//! Figure 7's bookkeeping: which of the agent's events belong to which connection the peer saw,
//! and whether each connection's events name the right library and process.
//!
//! The peer closes first, so a client port is free again as soon as the client's socket is gone
//! and 10,000 connections reuse many 4-tuples, some within seconds; and the peer prints a
//! refused connection only when its socket times out, after later connections of the same
//! 4-tuple. So events are paired by time, not by order: each event of a 4-tuple goes to that
//! 4-tuple's connection whose accept time is nearest to it (a connection's events come within
//! milliseconds of its accept, two connections of one 4-tuple are at least a TCP handshake
//! apart).

use std::collections::HashMap;

use serde_json::Value;

/// One connection as the tagging peer printed it.
#[derive(Clone, Debug)]
pub struct PeerConn {
    /// Index of the peer (address family) that saw it.
    pub fam: usize,
    /// The client's port.
    pub port: u16,
    /// A request was read (the TLS handshake completed).
    pub ok: bool,
    /// The request's path (`/KIND-JOB-I`), `-` when none was read.
    pub tag: String,
    /// Wall-clock milliseconds when the peer accepted it.
    pub at_ms: i64,
}

/// (remote address, remote port, local port): the 4-tuple as the peer saw it, from the client
/// host's side.
pub type Key = (String, u16, u16);

/// The 4-tuple key of an agent event.
pub fn event_key(e: &Value) -> Option<Key> {
    let rp = e["remote"]["port"].as_u64()?;
    let lp = e["local"]["port"].as_u64()?;
    let ra = e["remote"]["addr"].as_str()?.to_string();
    Some((ra, u16::try_from(rp).ok()?, u16::try_from(lp).ok()?))
}

/// An event's `time` in wall-clock milliseconds.
pub fn event_ms(e: &Value) -> Option<i64> {
    let t = humantime::parse_rfc3339(e["time"].as_str()?).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// How far from its connection's accept an event may be: a connection's events come within
/// milliseconds of it, two connections of one 4-tuple at least a TCP handshake apart (and a
/// client port is not reused within a second or two on this bench's rate).
const PAIR_WINDOW_MS: i64 = 2_000;

/// Events paired with the connections the peer saw.
pub struct Paired<'a> {
    /// For each connection, the events of its 4-tuple nearest to its accept time.
    pub per_conn: Vec<Vec<&'a Value>>,
    /// Events of the peer's 4-tuples no connection was accepted near (within
    /// `PAIR_WINDOW_MS`): a connection the peer never printed. Events of other 4-tuples
    /// (the loopback hop to the relay) are left out.
    pub unmatched: Vec<&'a Value>,
}

/// Pairs each event of `events` with the connection of `conns` (keyed by `key_of`) of its
/// 4-tuple accepted nearest to it.
pub fn pair<'a>(
    conns: &[PeerConn],
    key_of: impl Fn(&PeerConn) -> Key,
    events: &'a [Value],
) -> Paired<'a> {
    let mut by_key: HashMap<Key, Vec<usize>> = HashMap::new();
    for (i, c) in conns.iter().enumerate() {
        by_key.entry(key_of(c)).or_default().push(i);
    }
    let mut paired = Paired {
        per_conn: vec![vec![]; conns.len()],
        unmatched: vec![],
    };
    for e in events {
        let (Some(key), Some(t)) = (event_key(e), event_ms(e)) else {
            continue;
        };
        let Some(candidates) = by_key.get(&key) else {
            continue;
        };
        match candidates
            .iter()
            .map(|&i| ((conns[i].at_ms - t).abs(), i))
            .min()
        {
            Some((gap, nearest)) if gap <= PAIR_WINDOW_MS => paired.per_conn[nearest].push(e),
            _ => paired.unmatched.push(e),
        }
    }
    paired
}

/// What one connection's events were expected to say.
pub struct Expect<'a> {
    /// `openssl` or `gnutls`.
    pub family: &'a str,
    /// The command name of the process that made its hello.
    pub comm: &'a str,
}

/// The counts of figure 7 (from the peer's side; the clients' own counts are the caller's).
#[derive(Debug, Default)]
pub struct Tally {
    /// An event names another library than the one that made the hello.
    pub wrong_lib: usize,
    /// An event names another process (or none) than the one that made the hello.
    pub wrong_process: usize,
    /// A hello reported unattributed.
    pub unattributed: usize,
    /// A completed connection with no event.
    pub no_event: usize,
    /// A refused connection with no event on this interface: a relayed hello stopped on the
    /// hop before the relay (the relay's connection to the peer then carries no hello).
    pub refused_unseen: usize,
    /// An event of a 4-tuple the peer saw but of no connection it printed, blocking the denied
    /// library: a connection refused before the peer's accept() returned it.
    pub refused_unprinted: usize,
    /// Any other event of no connection the peer printed (an allowed verdict, or another
    /// library): a misattribution the pairing cannot place.
    pub unmatched: usize,
    pub examples: Vec<String>,
}

impl Tally {
    fn example(&mut self, what: String) {
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }
}

/// Judges each connection's events against `expect(conn)`, and the unmatched events against
/// `denied_family`.
pub fn judge(
    conns: &[PeerConn],
    paired: &Paired,
    denied_family: &str,
    expect: impl Fn(&PeerConn) -> Expect<'static>,
) -> Tally {
    let mut t = Tally::default();
    for (c, evs) in conns.iter().zip(&paired.per_conn) {
        let want = expect(c);
        let what = format!("{} port {} (request read: {})", c.tag, c.port, c.ok);
        if evs.is_empty() {
            if c.ok {
                t.no_event += 1;
                t.example(format!("{what}: no event"));
            } else {
                t.refused_unseen += 1;
            }
            continue;
        }
        if evs.iter().any(|v| v["attributed"] == false) {
            t.unattributed += 1;
            t.example(format!("{what}: unattributed hello"));
            continue;
        }
        if let Some(v) = evs.iter().find(|v| v["library"]["family"] != want.family) {
            t.wrong_lib += 1;
            t.example(format!("{what}: event {v}"));
            continue;
        }
        if let Some(v) = evs.iter().find(|v| v["comm"] != want.comm) {
            t.wrong_process += 1;
            t.example(format!("{what}: expected process {}, event {v}", want.comm));
        }
    }
    for v in &paired.unmatched {
        if v["verdict"] == "blocked" && v["library"]["family"] == denied_family {
            t.refused_unprinted += 1;
        } else {
            t.unmatched += 1;
            t.example(format!("event of no connection the peer printed: {v}"));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conn(port: u16, ok: bool, at_ms: i64) -> PeerConn {
        PeerConn {
            fam: 0,
            port,
            ok,
            tag: if ok { "/curl-1-0".into() } else { "-".into() },
            at_ms,
        }
    }

    fn event(port: u16, ms: i64, family: &str, comm: &str) -> Value {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
        json!({
            "time": humantime::format_rfc3339_millis(t).to_string(),
            "local": {"addr": "10.0.0.1", "port": port},
            "remote": {"addr": "10.0.0.2", "port": 443},
            "library": {"family": family},
            "attributed": true,
            "comm": comm,
        })
    }

    fn key(c: &PeerConn) -> Key {
        ("10.0.0.2".into(), 443, c.port)
    }

    /// The case the pairing by order got wrong: a refused connection, printed by the peer
    /// only after its 10 s timeout, and a later allowed connection of the same 4-tuple.
    #[test]
    fn a_reused_port_pairs_by_time_not_by_order() {
        let base = 1_800_000_000_000;
        // The peer's order: the allowed one (printed at once) before the refused one.
        let conns = [conn(40000, true, base + 20_000), conn(40000, false, base)];
        let events = [
            event(40000, base + 3, "gnutls", "gnutls-cli"),
            event(40000, base + 20_004, "openssl", "curl"),
            event(40000, base + 20_004, "openssl", "curl"),
            event(40001, base + 5, "openssl", "curl"),
        ];
        let paired = pair(&conns, key, &events);
        assert_eq!(paired.per_conn[0].len(), 2);
        assert_eq!(paired.per_conn[1].len(), 1);
        assert!(paired.unmatched.is_empty());
        let t = judge(&conns, &paired, "gnutls", |c| match c.ok {
            true => Expect {
                family: "openssl",
                comm: "curl",
            },
            false => Expect {
                family: "gnutls",
                comm: "gnutls-cli",
            },
        });
        assert_eq!((t.wrong_lib, t.wrong_process, t.no_event), (0, 0, 0));
    }

    #[test]
    fn wrong_library_process_and_missing_events_are_counted() {
        let conns = [
            conn(1, true, 0),
            conn(2, true, 0),
            conn(3, true, 0),
            conn(4, false, 0),
        ];
        let events = [
            event(1, 1, "gnutls", "curl"),
            event(2, 1, "openssl", "python3"),
        ];
        let paired = pair(&conns, key, &events);
        let t = judge(&conns, &paired, "gnutls", |c| match c.ok {
            true => Expect {
                family: "openssl",
                comm: "curl",
            },
            false => Expect {
                family: "gnutls",
                comm: "gnutls-cli",
            },
        });
        assert_eq!(
            (t.wrong_lib, t.wrong_process, t.no_event, t.refused_unseen),
            (1, 1, 1, 1)
        );
    }

    /// A refused connection the peer never printed leaves its events far from any
    /// connection of its 4-tuple: they are not pinned on the next connection of that 4-tuple.
    #[test]
    fn an_event_far_from_every_connection_is_unmatched() {
        let base = 1_800_000_000_000;
        let conns = [conn(40000, true, base), conn(40000, true, base + 60_000)];
        let mut blocked = event(40000, base + 13_000, "gnutls", "gnutls-cli");
        blocked["verdict"] = "blocked".into();
        let allowed = event(40000, base + 30_000, "openssl", "curl");
        let events = [
            event(40000, base + 1, "openssl", "curl"),
            blocked,
            allowed,
            event(40000, base + 60_001, "openssl", "curl"),
        ];
        let paired = pair(&conns, key, &events);
        assert_eq!(paired.per_conn[0].len(), 1);
        assert_eq!(paired.per_conn[1].len(), 1);
        assert_eq!(paired.unmatched.len(), 2);
        let t = judge(&conns, &paired, "gnutls", |_| Expect {
            family: "openssl",
            comm: "curl",
        });
        assert_eq!((t.wrong_lib, t.refused_unprinted, t.unmatched), (0, 1, 1));
    }
}
