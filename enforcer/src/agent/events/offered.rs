//! `offered` events: what a client on this host offered in its ClientHello (versions, cipher
//! suites, extensions, groups, key-share groups, signature schemes, ALPN, server name), read by
//! the packet programs from the hello reassembled across its segments
//! (`enforcer-ebpf/src/offer.rs`), and its JA4 fingerprint, made here (`ja4`). A list the
//! kernel could not read in full (the hello longer than 4 KiB, more values than the event
//! holds, lengths that disagree) is `null` and named in `unread`, and no JA4 is made from it.

use enforcer_common::{
    flow::direction,
    iana,
    offer::{OfferedEvent, field},
};
use serde_json::{Value, json};
use tracing::info;

use super::{Reporter, endpoints, ja4, sockaddr};

fn hex(v: u16) -> String {
    format!("{v:#06x}")
}

fn named(table: &[(u16, &'static str)], v: u16) -> String {
    iana::name_of(table, v).map_or_else(|| hex(v), str::to_owned)
}

/// The lists of `event`, each cut to what it holds.
pub struct Lists<'a> {
    pub versions: &'a [u16],
    pub suites: &'a [u16],
    pub extensions: &'a [u16],
    pub groups: &'a [u16],
    pub schemes: &'a [u16],
    pub shares: &'a [u16],
}

pub fn lists(e: &OfferedEvent) -> Lists<'_> {
    fn cut(list: &[u16], count: usize) -> &[u16] {
        &list[..count.min(list.len())]
    }
    Lists {
        versions: cut(&e.versions, e.version_count as usize),
        suites: cut(&e.suites, e.suite_count as usize),
        extensions: cut(&e.extensions, e.extension_count as usize),
        groups: cut(&e.groups, e.group_count as usize),
        schemes: cut(&e.signature_schemes, e.signature_scheme_count as usize),
        shares: cut(&e.key_shares, e.key_share_count as usize),
    }
}

/// The JA4 inputs of `event`, `None` when a field JA4 needs was not read in full.
pub fn ja4_hello(e: &OfferedEvent) -> Option<ja4::Hello<'_>> {
    if !e.has(field::JA4) {
        return None;
    }
    let l = lists(e);
    Some(ja4::Hello {
        legacy_version: e.legacy_version,
        versions: l.versions,
        suites: l.suites,
        extensions: l.extensions,
        signature_schemes: l.schemes,
        server_name: e.sni != 0,
        alpn: (e.alpn_len != 0).then_some((e.alpn[0], e.alpn_last)),
    })
}

/// The `offered` record's fields of what the hello offered (all but `type`, `time`, the owner
/// and the 4-tuple).
pub fn offer_json(e: &OfferedEvent) -> Value {
    let l = lists(e);
    let read = |bit: u16| e.has(bit);
    let list = |bit: u16, values: &[u16], f: &dyn Fn(u16) -> String| -> Value {
        match read(bit) {
            true => values.iter().map(|v| f(*v)).collect::<Vec<_>>().into(),
            false => Value::Null,
        }
    };
    let versions = |v| named(iana::VERSIONS, v);
    let suites = |v| named(iana::CIPHER_SUITES, v);
    let groups = |v| named(iana::GROUPS, v);
    let unread: Vec<&str> = [
        (field::VERSIONS, "versions"),
        (field::SUITES, "cipher_suites"),
        (field::EXTENSIONS, "extensions"),
        (field::GROUPS, "groups"),
        (field::KEY_SHARES, "key_share_groups"),
        (field::SIGNATURE_SCHEMES, "signature_schemes"),
        (field::ALPN, "alpn"),
    ]
    .into_iter()
    .filter(|(bit, _)| !read(*bit))
    .map(|(_, name)| name)
    .collect();
    let alpn = (read(field::ALPN) && e.alpn_len != 0).then(|| {
        let kept = (e.alpn_len as usize).min(e.alpn.len());
        String::from_utf8_lossy(&e.alpn[..kept]).into_owned()
    });
    let hello = ja4_hello(e);
    json!({
        "ja4": hello.as_ref().map(ja4::ja4),
        "ja4_r": hello.as_ref().map(ja4::ja4_r),
        "unread": unread,
        "hello_bytes": e.hello_len,
        "legacy_version": named(iana::VERSIONS, e.legacy_version),
        "versions": list(field::VERSIONS, l.versions, &versions),
        "cipher_suites": list(field::SUITES, l.suites, &suites),
        "extensions": list(field::EXTENSIONS, l.extensions, &hex),
        "groups": list(field::GROUPS, l.groups, &groups),
        "key_share_groups": list(field::KEY_SHARES, l.shares, &groups),
        "signature_schemes": list(field::SIGNATURE_SCHEMES, l.schemes, &hex),
        "alpn": alpn,
        "server_name": read(field::EXTENSIONS).then_some(e.sni != 0),
    })
}

impl Reporter {
    pub(super) fn handle_offered(&self, event: &OfferedEvent) {
        let owner = self.recent_owner(&event.flow);
        let (local, remote) = endpoints(&event.flow);
        let offer = offer_json(event);
        // Recorded before the verdict goes out: a report of the ServerHello the verdict lets
        // through finds the JA4.
        let ja4 = offer["ja4"].as_str().map(str::to_owned);
        self.ja4s
            .record(event.flow, event.header.ts_ns, ja4.clone());
        if let Some(gate) = &self.ja4_gate {
            gate.judge(event, ja4.as_deref());
        }
        if self.writes_json() {
            let mut record = json!({
                "type": "offered",
                "time": humantime::format_rfc3339_millis(self.wall_clock(event.header.ts_ns)).to_string(),
                "pid": owner.as_ref().map(|o| o.pid),
                "comm": owner.as_ref().map(|o| o.comm.clone()),
                "local": { "addr": local.0.to_string(), "port": local.1 },
                "remote": { "addr": remote.0.to_string(), "port": remote.1 },
                "side": if event.direction == direction::RECV { "server" } else { "client" },
            });
            if let (Some(r), Value::Object(o)) = (record.as_object_mut(), offer.clone()) {
                r.extend(o);
            }
            self.output
                .push(record.to_string(), super::output::Lane::Hellos);
        }
        if self.format == super::EventFormat::Text {
            let ja4 = offer["ja4"].as_str().unwrap_or("unread").to_owned();
            let (local, remote) = (sockaddr(local), sockaddr(remote));
            info!(local, remote, ja4, "TLS ClientHello offered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_not_read_in_full_is_null_and_no_ja4_is_made() {
        let mut e = OfferedEvent {
            read: field::JA4,
            legacy_version: 0x0303,
            suite_count: 2,
            extension_count: 1,
            sni: 1,
            ..Default::default()
        };
        e.suites[..2].copy_from_slice(&[0x1301, 0x4a4a]);
        e.extensions[0] = 0x0000;
        let full = offer_json(&e);
        let ja4 = full["ja4"].as_str().unwrap();
        assert!(ja4.starts_with("t12d010100_"), "{ja4}");
        assert_eq!(full["cipher_suites"][0], "TLS_AES_128_GCM_SHA256");
        assert_eq!(full["cipher_suites"][1], "0x4a4a");
        assert_eq!(full["server_name"], true);
        e.read &= !field::SUITES;
        let partial = offer_json(&e);
        assert_eq!(partial["ja4"], Value::Null);
        assert_eq!(partial["cipher_suites"], Value::Null);
        assert_eq!(partial["unread"][0], "cipher_suites");
    }
}
