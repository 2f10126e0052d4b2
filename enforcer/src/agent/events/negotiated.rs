//! `negotiated` events: what a connection negotiated (TLS version, cipher suite, key-share
//! group), one per ServerHello the kernel read (`enforcer-ebpf/src/server_hello.rs`). The
//! `connection` event of the flow comes before it (the library is attributed at the ClientHello,
//! or earlier); the owner is joined from it, by 4-tuple and attribution time, as for
//! `client_hello`.

use enforcer_common::{
    event::{NegotiatedEvent, UNATTRIBUTED},
    flow::verdict,
    iana,
    posture::{Posture, broken, flags, status},
};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{Reporter, endpoints, sockaddr, verdict_name};
use crate::datapath::sock_destroy;

/// The requirement a connection broke: whose (`host`: the top-level keys, `rule`: its
/// library's rule), which key, and the negotiated value that broke it.
fn broken_fields(event: &NegotiatedEvent) -> Value {
    let (rule, key) = match event.broken {
        broken::HOST_VERSION => ("host", "tls_versions"),
        broken::HOST_GROUP => ("host", "groups"),
        broken::RULE_VERSION => ("rule", "tls_versions"),
        broken::RULE_GROUP => ("rule", "groups"),
        _ => return Value::Null,
    };
    let p = &event.posture;
    let value = match (key, p.status) {
        (_, s) if s != status::NEGOTIATED => Value::from("unreadable"),
        ("tls_versions", _) => named(p.version, iana::version_name),
        _ => named(p.group, iana::group_name),
    };
    json!({ "rule": rule, "key": key, "value": value })
}

/// A code's IANA name, else its hex value (`"0x1234"`); `null` for 0 (not read).
fn named(code: u16, name: fn(u16) -> Option<&'static str>) -> Value {
    match code {
        0 => Value::Null,
        c => name(c).map_or_else(|| format!("{c:#06x}").into(), Value::from),
    }
}

pub fn status_name(v: u8) -> &'static str {
    match v {
        status::AWAITING => "awaiting",
        status::NEGOTIATED => "negotiated",
        status::RETRY => "hello-retry",
        _ => "unreadable",
    }
}

/// The negotiated parameters as the `negotiated` event and `enforcer flows` show them.
pub fn tls_fields(p: &Posture) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("status".into(), status_name(p.status).into());
    m.insert("tls_version".into(), named(p.version, iana::version_name));
    m.insert("cipher_suite".into(), named(p.suite, iana::suite_name));
    m.insert("group".into(), named(p.group, iana::group_name));
    m.insert(
        "hello_retry".into(),
        (p.flags & flags::RETRIED != 0 || p.status == status::RETRY).into(),
    );
    m
}

impl Reporter {
    pub(super) fn handle_negotiated(&self, event: &NegotiatedEvent) {
        // Blocked at its ServerHello: its socket goes first, as for a denied library.
        let blocked = event.verdict == verdict::BLOCKED || event.verdict == verdict::BLOCKLIST_FULL;
        let broke = broken_fields(event);
        let lib = (event.lib_id != UNATTRIBUTED)
            .then(|| self.library(event.lib_id))
            .flatten();
        let owner = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .owner(&event.flow, event.flow_since_ns)
            .cloned();
        // The owner, when known, is what an MPTCP socket's shutdown needs (`sock_destroy`).
        let aborted =
            blocked.then(|| sock_destroy::destroy(&event.flow, owner.as_ref().map(|o| o.pid)));
        let (local, remote) = endpoints(&event.flow);
        let side = if event.posture.flags & flags::EGRESS != 0 {
            "server"
        } else {
            "client"
        };
        let tls = tls_fields(&event.posture);
        if self.writes_json() {
            let mut record = json!({
                "type": "negotiated",
                "time": humantime::format_rfc3339_millis(self.wall_clock(event.header.ts_ns)).to_string(),
                "local": { "addr": local.0.to_string(), "port": local.1 },
                "remote": { "addr": remote.0.to_string(), "port": remote.1 },
                "side": side,
                "library": lib.as_ref().map(|l| json!({
                    "id": event.lib_id,
                    "family": l.family.name(),
                    "path": l.path,
                    "version": l.version,
                })),
                "pid": owner.as_ref().map(|o| o.pid),
                "comm": owner.as_ref().map(|o| o.comm.clone()),
                "verdict": verdict_name(event.verdict),
                "broken": broke,
                "socket_aborted": aborted.as_ref().map(|r| r.is_ok()),
            });
            if let Value::Object(m) = &mut record {
                m.extend(tls.clone());
            }
            self.emit(&record);
        }
        if self.format == super::EventFormat::Text {
            let text = |k: &str| tls[k].as_str().unwrap_or("-").to_owned();
            let library = lib.as_ref().map_or("unattributed", |l| l.family.name());
            let (local, remote) = (sockaddr(local), sockaddr(remote));
            let (version, suite, group) =
                (text("tls_version"), text("cipher_suite"), text("group"));
            if broke.is_null() {
                info!(
                    local,
                    remote,
                    side,
                    library,
                    status = text("status"),
                    version,
                    suite,
                    group,
                    "TLS negotiated"
                );
            } else {
                warn!(
                    local, remote, side, library, version, suite, group,
                    verdict = verdict_name(event.verdict),
                    broken = %broke,
                    "TLS posture violation"
                );
            }
        }
        if let Some(Err(err)) = aborted
            && !matches!(err, sock_destroy::SockDestroyError::NotFound { .. })
        {
            warn!(%err, "blocked at its ServerHello: could not abort the local socket; its packets are still dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_or_shown_in_hex() {
        let p = Posture {
            version: 0x0304,
            suite: 0x1301,
            group: 0x11ec,
            status: status::NEGOTIATED,
            flags: flags::RETRIED,
        };
        assert_eq!(
            Value::Object(tls_fields(&p)),
            json!({"status": "negotiated", "tls_version": "TLS 1.3",
                   "cipher_suite": "TLS_AES_128_GCM_SHA256", "group": "X25519MLKEM768",
                   "hello_retry": true})
        );
        let odd = Posture {
            version: 0x7f1c,
            suite: 0xabcd,
            group: 0,
            status: status::UNREADABLE,
            flags: 0,
        };
        assert_eq!(
            Value::Object(tls_fields(&odd)),
            json!({"status": "unreadable", "tls_version": "0x7f1c", "cipher_suite": "0xabcd",
                   "group": null, "hello_retry": false})
        );
    }
}
