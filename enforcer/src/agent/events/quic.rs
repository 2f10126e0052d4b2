//! `quic` events: a QUIC Initial datagram the policy's `quic` action judged (the kernel side is
//! `enforcer-ebpf/src/quic.rs`, at most one record per 4-tuple and direction a second). The
//! datagram was judged in softirq context, without a process: the event names none.

use enforcer_common::{
    event::QuicEvent,
    flow::{direction, verdict},
    quic,
};
use serde_json::json;
use tracing::{info, warn};

use super::{Reporter, endpoints, sockaddr, verdict_name};

/// `quic::VERSION_*` as the event prints it.
fn version_name(version: u32) -> String {
    match version {
        quic::VERSION_1 => "1".into(),
        quic::VERSION_2 => "2".into(),
        other => format!("{other:#010x}"),
    }
}

impl Reporter {
    pub(super) fn handle_quic(&self, event: &QuicEvent) {
        let (local, remote) = endpoints(&event.flow);
        let verdict = verdict_name(event.verdict);
        let dir = match event.direction {
            direction::SEND => "send",
            _ => "recv",
        };
        let version = version_name(event.version);
        if self.writes_json() {
            let time = self.wall_clock(event.header.ts_ns);
            let record = json!({
                "type": "quic",
                "time": humantime::format_rfc3339_millis(time).to_string(),
                "direction": dir,
                "version": version,
                "local": { "addr": local.0.to_string(), "port": local.1 },
                "remote": { "addr": remote.0.to_string(), "port": remote.1 },
                "verdict": verdict,
            });
            self.output
                .push(record.to_string(), super::output::Lane::Hellos);
        }
        if self.format == super::EventFormat::Json {
            return;
        }
        let (local, remote) = (sockaddr(local), sockaddr(remote));
        macro_rules! log_quic {
            ($level:ident, $message:expr) => {
                $level!(
                    direction = dir,
                    version,
                    local,
                    remote,
                    verdict,
                    "{}",
                    $message
                )
            };
        }
        match event.verdict {
            verdict::AUDITED => log_quic!(info, "QUIC Initial (TLS in QUIC, no library known)"),
            _ => log_quic!(warn, "QUIC Initial judged by the policy's quic action"),
        }
    }
}
