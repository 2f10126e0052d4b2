//! QUIC Initial datagrams under the policy's `quic` action (`enforcer-ebpf/src/quic.rs`): what
//! is recognised, in both directions and both address families, and what passes.

use aya::maps::RingBuf;
use enforcer_common::{
    event::{QuicEvent, kind},
    flow::{direction, verdict},
    maps,
    policy::{action, mode},
    quic::{MIN_INITIAL_DATAGRAM, VERSION_1, VERSION_2},
};

use crate::harness::*;
use crate::packets::*;

/// A UDP payload of `len` bytes starting with `first` and `version` (the rest zero).
fn datagram(first: u8, version: u32, len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    d[0] = first;
    d[1..5].copy_from_slice(&version.to_be_bytes());
    d
}

fn v4_frame(e: &Ends<4>, payload: &[u8]) -> Vec<u8> {
    let ip = Ipv4::new(e.src, e.dst, IPPROTO_UDP);
    ethernet(&[], ETH_P_IP, &ip.build(&udp(e.sport, e.dport, payload)))
}

fn v6_frame(e: &Ends<16>, exts: &[Ext], payload: &[u8]) -> Vec<u8> {
    let ip = Ipv6::new(e.src, e.dst).with_exts(exts);
    ethernet(
        &[],
        ETH_P_IPV6,
        &ip.build(IPPROTO_UDP, &udp(e.sport, e.dport, payload)),
    )
}

fn events(h: &mut Harness) -> Vec<QuicEvent> {
    let mut ring =
        RingBuf::try_from(h.ebpf.take_map(maps::HELLO_EVENTS).expect("ring")).expect("ring type");
    let mut out = vec![];
    while let Some(item) = ring.next() {
        assert_eq!(item[0], kind::QUIC, "a QUIC record");
        assert!(item.len() >= size_of::<QuicEvent>());
        // SAFETY: the record holds a whole QuicEvent (checked above); it is plain data.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<QuicEvent>()) });
    }
    out
}

/// `deny` in enforce mode: version 1 and 2 Initials are dropped leaving (tc) and arriving (XDP),
/// IPv4 and IPv6 (also behind extension headers); one event per 4-tuple and direction, naming
/// the version and the 4-tuple from this host's side.
#[test]
fn denied_initials_are_dropped_both_ways_and_reported_once() {
    let mut h = Harness::new();
    h.set_quic(mode::ENFORCE, action::DENY);
    let v1 = datagram(0xc3, VERSION_1, MIN_INITIAL_DATAGRAM);
    let v2 = datagram(0xd3, VERSION_2, 1350);
    for payload in [&v1, &v2] {
        assert_eq!(
            h.egress(&v4_frame(&FLOW4.outbound(), payload)),
            Drop,
            "v4 out"
        );
        assert_eq!(
            h.ingress(&v4_frame(&FLOW4.inbound(), payload)),
            Drop,
            "v4 in"
        );
        assert_eq!(
            h.egress(&v6_frame(&FLOW6.outbound(), &[], payload)),
            Drop,
            "v6 out"
        );
        let exts = [
            Ext::HopByHop { len_units: 0 },
            Ext::DestOpts { len_units: 1 },
        ];
        assert_eq!(
            h.ingress(&v6_frame(&FLOW6.inbound(), &exts, payload)),
            Drop,
            "v6 in"
        );
    }
    h.assert_drops(4, 4);
    let seen = events(&mut h);
    assert_eq!(
        seen.len(),
        4,
        "one event per 4-tuple and direction: {seen:?}"
    );
    let sent = seen
        .iter()
        .find(|e| e.direction == direction::SEND)
        .expect("a send event");
    assert_eq!(sent.flow, FLOW4.key(), "4-tuple from this host's side");
    assert_eq!((sent.version, sent.verdict), (VERSION_1, verdict::BLOCKED));
    let received = seen.iter().filter(|e| e.direction == direction::RECV);
    assert!(received.clone().any(|e| e.flow == FLOW4.key()));
    assert!(received.clone().any(|e| e.flow == FLOW6.key()));
}

/// What is not an Initial passes under `deny`: short, short-header, Handshake, unknown
/// version, version negotiation, DNS; and nothing is reported for them.
#[test]
fn other_udp_passes_under_deny() {
    let mut h = Harness::new();
    h.set_quic(mode::ENFORCE, action::DENY);
    let cases = [
        (
            "1199-byte Initial",
            datagram(0xc3, VERSION_1, MIN_INITIAL_DATAGRAM - 1),
        ),
        ("short header", datagram(0x43, VERSION_1, 1300)),
        ("no fixed bit", datagram(0x83, VERSION_1, 1300)),
        ("Handshake packet", datagram(0xe3, VERSION_1, 1300)),
        (
            "version 2 Initial type under version 1",
            datagram(0xd3, VERSION_1, 1300),
        ),
        ("unknown version", datagram(0xc3, 0xff00_001d, 1300)),
        ("version negotiation", datagram(0xc3, 0, 1300)),
        (
            "a DNS query",
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00".to_vec(),
        ),
        ("empty", vec![]),
    ];
    for (what, payload) in &cases {
        h.expect_pass(what, &v4_frame(&FLOW4.outbound(), payload));
        h.expect_pass(what, &v6_frame(&FLOW6.inbound(), &[], payload));
    }
    h.assert_drops(0, 0);
    assert!(events(&mut h).is_empty(), "no event for other UDP");
}

/// Audit mode and `audit`: reported, never dropped; `allow`: neither.
#[test]
fn audit_reports_and_allow_passes_silently() {
    let initial = datagram(0xc3, VERSION_1, 1252);
    for (mode_code, quic, want) in [
        (mode::AUDIT, action::DENY, Some(verdict::WOULD_BLOCK)),
        (mode::ENFORCE, action::AUDIT, Some(verdict::AUDITED)),
        (mode::ENFORCE, action::ALLOW, None),
    ] {
        let mut h = Harness::new();
        h.set_quic(mode_code, quic);
        h.expect_pass("Initial", &v4_frame(&FLOW4.outbound(), &initial));
        h.assert_drops(0, 0);
        let seen = events(&mut h);
        assert_eq!(seen.first().map(|e| e.verdict), want, "{seen:?}");
    }
}

/// A frame cut anywhere before the 5 bytes the recogniser reads passes, as every truncated
/// frame does (fail-open for frames the kernel would not deliver either).
#[test]
fn initials_truncated_before_the_version_pass() {
    let mut h = Harness::new();
    h.set_quic(mode::ENFORCE, action::DENY);
    let full = v4_frame(&FLOW4.outbound(), &datagram(0xc3, VERSION_1, 1200));
    let version_end = 14 + 20 + 8 + 5;
    // Cuts inside the IP header are truncation.rs's (the kernel refuses some of them).
    for cut in 14 + 20..version_end {
        h.expect_pass(&format!("cut at {cut}"), &full[..cut]);
    }
    assert_eq!(
        h.egress(&full[..version_end]),
        Drop,
        "the 5 bytes are enough"
    );
}
