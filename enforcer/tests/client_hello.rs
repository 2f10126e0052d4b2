//! The egress classifier's ClientHello parser and decisions (`enforcer-ebpf/src/client_hello.rs`)
//! on crafted frames, run in the kernel through `BPF_PROG_TEST_RUN`: server name extraction over
//! IPv4 and IPv6, TCP options, ClientHellos split over segments, truncated at every length,
//! oversized extension lists, garbage lengths; unattributed TLS; rules scoped by server name.
//!
//! Root only, never skipped (like `packet_filters.rs`). Each test loads its own object.

#[allow(
    dead_code,
    reason = "the frame builder is shared with packet_filters.rs, which uses the rest"
)]
mod packets;

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, MapData, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use enforcer::policy::ServerNamePattern;
use enforcer_common::{
    event::{self, HelloEvent, UNATTRIBUTED, sni},
    flow::{FlowKey, FlowState, family, held, verdict},
    maps,
    policy::{HelloPolicy, ServerNameKey, action, mode},
};
use packets::tls::*;
use packets::*;

const EGRESS: &str = "enforcer_egress";
const TC_ACT_OK: u32 = enforcer_common::tc_return::PASS_U32;
const TC_ACT_SHOT: u32 = 2;

const SRC4: [u8; 4] = [10, 0, 0, 1];
const DST4: [u8; 4] = [10, 0, 0, 2];
const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const LIB: u32 = 5;

struct Harness {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
}

impl Harness {
    fn new(mode_code: u32, unattributed: u8) -> Self {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "client_hello loads eBPF programs and needs root: run `sudo -E cargo test -p enforcer --test client_hello`"
        );
        let offsets =
            enforcer::datapath::btf::sock_offsets().expect("reading struct sock offsets from BTF");
        let mut ebpf = enforcer::datapath::loader::load(&offsets).expect("loading the eBPF object");
        let tc: &mut SchedClassifier = ebpf.program_mut(EGRESS).unwrap().try_into().unwrap();
        tc.load().expect("loading the tc program (verifier)");
        let mut m: Array<_, u32> = Array::try_from(ebpf.map_mut(maps::MODE).unwrap()).unwrap();
        m.set(0, mode_code, 0).unwrap();
        let mut p: Array<_, HelloPolicy> =
            Array::try_from(ebpf.map_mut(maps::HELLO_POLICY).unwrap()).unwrap();
        let policy = HelloPolicy {
            unattributed,
            scoped: 1,
            late_attribution: 0,
            quic: 0,
        };
        p.set(0, policy, 0).unwrap();
        let events = RingBuf::try_from(ebpf.take_map(maps::HELLO_EVENTS).unwrap()).unwrap();
        Self { ebpf, events }
    }

    fn run(&self, frame: &[u8]) -> u32 {
        let tc: &SchedClassifier = self.ebpf.program(EGRESS).unwrap().try_into().unwrap();
        let result = tc
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("tc test run of a {}-byte frame: {e:?}", frame.len()));
        assert!(
            matches!(result.return_value, TC_ACT_OK | TC_ACT_SHOT),
            "tc returned {}",
            result.return_value
        );
        result.return_value
    }

    /// The `HelloEvent`s the runs so far produced.
    fn hellos(&mut self) -> Vec<HelloEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            assert_eq!(
                item.len(),
                size_of::<HelloEvent>(),
                "unexpected record in HELLO_EVENTS"
            );
            assert_eq!(
                item[0],
                event::kind::HELLO,
                "the record's header names its kind"
            );
            // SAFETY: the kernel wrote a whole HelloEvent.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const HelloEvent) });
        }
        out
    }

    fn one_hello(&mut self, what: &str) -> HelloEvent {
        let events = self.hellos();
        assert_eq!(
            events.len(),
            1,
            "{what}: expected one ClientHello event, got {}",
            events.len()
        );
        events[0]
    }

    fn attribute(&mut self, flow: FlowKey, verdict: u8) {
        let mut flows: HashMap<_, FlowKey, FlowState> =
            HashMap::try_from(self.ebpf.map_mut(maps::FLOWS).unwrap()).unwrap();
        let state = FlowState {
            first_seen_ns: 1,
            lib_id: LIB,
            verdict,
            op: 0,
            direction: 0,
            evidence: 0,
        };
        flows.insert(flow, state, 0).unwrap();
    }

    fn flow_verdict(&self, flow: &FlowKey) -> Option<u8> {
        let flows: HashMap<_, FlowKey, FlowState> =
            HashMap::try_from(self.ebpf.map(maps::FLOWS).unwrap()).unwrap();
        flows.get(flow, 0).ok().map(|s| s.verdict)
    }

    fn blocked(&self, flow: &FlowKey) -> bool {
        let b: HashMap<_, FlowKey, u8> =
            HashMap::try_from(self.ebpf.map(maps::BLOCKLIST).unwrap()).unwrap();
        b.get(flow, 0).is_ok()
    }

    /// `BLOCKLIST_HELD`: (the kernel's count of its blocks, userspace's sticky flag).
    fn held(&self) -> (u64, u64) {
        let a: Array<_, u64> =
            Array::try_from(self.ebpf.map(maps::BLOCKLIST_HELD).unwrap()).unwrap();
        let slot = |i| a.get(&i, 0).unwrap();
        (slot(held::KERNEL), slot(held::USERSPACE))
    }

    /// `BLOCKLIST_BUCKETS[bucket_of(flow)]`: the kernel's blocks in `flow`'s bucket.
    fn bucket(&self, flow: &FlowKey) -> u64 {
        let a: Array<_, u64> =
            Array::try_from(self.ebpf.map(maps::BLOCKLIST_BUCKETS).unwrap()).unwrap();
        a.get(&held::bucket_of(flow), 0).unwrap()
    }

    /// `LIB` is scoped: `patterns` → actions, `base` for other names, `nameless` without one.
    fn scope(&mut self, patterns: &[(&str, u8)], base: u8, nameless: u8) {
        let mut trie: LpmTrie<_, ServerNameKey, u8> =
            LpmTrie::try_from(self.ebpf.map_mut(maps::SERVER_NAME_RULES).unwrap()).unwrap();
        for (p, a) in patterns {
            let (bits, data) = ServerNamePattern::new(p).unwrap().kernel_key(LIB);
            trie.insert(&Key::new(bits, data), a, 0).unwrap();
        }
        let mut scoped: HashMap<_, u32, u8> =
            HashMap::try_from(self.ebpf.map_mut(maps::SCOPED_LIBS).unwrap()).unwrap();
        scoped.insert(LIB, nameless, 0).unwrap();
        let mut actions: HashMap<_, u32, u8> =
            HashMap::try_from(self.ebpf.map_mut(maps::LIB_ACTIONS).unwrap()).unwrap();
        actions.insert(LIB, base, 0).unwrap();
    }
}

fn name_of(e: &HelloEvent) -> Option<String> {
    (e.sni == sni::PRESENT)
        .then(|| String::from_utf8_lossy(&e.name[..e.name_len as usize]).into_owned())
}

/// A TCP header with `options` (padded to 4 bytes), PSH|ACK, then `payload`.
fn tcp_with(sport: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(1); // NOP
    }
    let mut h = tcp(sport, 443, TCP_PSH | TCP_ACK);
    h[12] = (((20 + opts.len()) / 4) << 4) as u8;
    h.extend_from_slice(&opts);
    h.extend_from_slice(payload);
    h
}

fn v4(sport: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IP,
        &Ipv4::new(SRC4, DST4, IPPROTO_TCP).build(&tcp_with(sport, &[], payload)),
    )
}

fn v4_flow(sport: u16) -> FlowKey {
    let mut k = FlowKey {
        family: family::V4,
        local_port: sport,
        remote_port: 443,
        ..FlowKey::default()
    };
    k.local_addr[..4].copy_from_slice(&SRC4);
    k.remote_addr[..4].copy_from_slice(&DST4);
    k
}

fn sni_hello(name: &str) -> Vec<u8> {
    client_hello(Some(&[
        (10, vec![0, 2, 0, 0x1d]),
        server_name_ext(name.as_bytes()),
        (43, vec![2, 3, 4]),
    ]))
}

#[test]
fn unattributed_hello_is_denied_in_enforce_mode_and_names_the_server() {
    let mut h = Harness::new(mode::ENFORCE, action::DENY);
    assert_eq!(
        h.run(&v4(40000, &sni_hello("api.example.com"))),
        TC_ACT_SHOT
    );
    let e = h.one_hello("unattributed");
    assert_eq!(e.lib_id, UNATTRIBUTED);
    assert_eq!(e.verdict, verdict::BLOCKED);
    assert_eq!(e.flow, v4_flow(40000));
    assert_eq!(name_of(&e).as_deref(), Some("api.example.com"));
    assert!(
        h.blocked(&v4_flow(40000)),
        "denied unattributed flow must be blocklisted"
    );
    // Everything after it on the flow is dropped by the blocklist, without a second event: the
    // kernel counted its block, so the packet programs look the blocklist up.
    assert_eq!(
        h.held(),
        (1, 0),
        "BLOCKLIST_HELD counts the kernel's one block"
    );
    assert_eq!(h.bucket(&v4_flow(40000)), 1, "its bucket counts it");
    assert_eq!(h.run(&v4(40000, b"more")), TC_ACT_SHOT);
    assert!(h.hellos().is_empty());

    // The gate is per bucket: a flow in another, empty bucket is not looked up at all. Shown
    // with an entry no count covers (userspace never makes one: it sets USERSPACE first).
    let other = (40001..41000)
        .map(v4_flow)
        .find(|f| held::bucket_of(f) != held::bucket_of(&v4_flow(40000)))
        .expect("a flow in another bucket");
    assert_eq!(h.bucket(&other), 0);
    let mut b: HashMap<_, FlowKey, u8> =
        HashMap::try_from(h.ebpf.map_mut(maps::BLOCKLIST).unwrap()).unwrap();
    b.insert(other, 1, 0).unwrap();
    assert_eq!(
        h.run(&v4(other.local_port, b"data")),
        TC_ACT_OK,
        "an empty bucket skips the lookup"
    );
}

#[test]
fn unattributed_hello_in_audit_mode_passes_as_would_block() {
    let mut h = Harness::new(mode::AUDIT, action::DENY);
    assert_eq!(h.run(&v4(40001, &sni_hello("a.example"))), TC_ACT_OK);
    let e = h.one_hello("audit");
    assert_eq!(e.verdict, verdict::WOULD_BLOCK);
    // A retransmission is neither judged nor reported again.
    assert_eq!(h.run(&v4(40001, &sni_hello("a.example"))), TC_ACT_OK);
    assert!(
        h.hellos().is_empty(),
        "retransmitted ClientHello reported twice"
    );
}

#[test]
fn attributed_flow_reports_its_name_and_keeps_its_verdict() {
    let mut h = Harness::new(mode::ENFORCE, action::DENY);
    h.attribute(v4_flow(40002), verdict::ALLOWED);
    assert_eq!(
        h.run(&v4(40002, &sni_hello("Mixed.Case.Example"))),
        TC_ACT_OK
    );
    let e = h.one_hello("attributed");
    assert_eq!((e.lib_id, e.verdict), (LIB, verdict::ALLOWED));
    assert_eq!(
        name_of(&e).as_deref(),
        Some("Mixed.Case.Example"),
        "reported as sent"
    );
}

#[test]
fn non_hello_data_and_bare_segments_are_not_parsed() {
    let mut h = Harness::new(mode::ENFORCE, action::DENY);
    for payload in [
        &b"GET / HTTP/1.1\r\n"[..],
        &[0x16, 0x03, 0x03, 0, 4, 0x02][..],
        &[0x17, 0x03, 0x03, 0, 1, 1][..],
        &[0x16][..],
        &[][..],
    ] {
        assert_eq!(h.run(&v4(40003, payload)), TC_ACT_OK, "{payload:?}");
    }
    assert!(h.hellos().is_empty());
}

#[test]
fn ipv6_with_tcp_options() {
    let mut h = Harness::new(mode::AUDIT, action::AUDIT);
    // MSS, SACK-permitted, timestamps, window scale: a 40-byte TCP header.
    let options = [
        2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    let segment = tcp_with(40004, &options, &sni_hello("v6.example"));
    let frame = ethernet(
        &[],
        ETH_P_IPV6,
        &Ipv6::new(SRC6, DST6).build(IPPROTO_TCP, &segment),
    );
    assert_eq!(h.run(&frame), TC_ACT_OK);
    let e = h.one_hello("ipv6");
    assert_eq!(e.flow.family, family::V6);
    assert_eq!(e.verdict, verdict::AUDITED);
    assert_eq!(name_of(&e).as_deref(), Some("v6.example"));
}

#[test]
fn hello_without_extensions_or_without_sni_is_absent() {
    let mut h = Harness::new(mode::AUDIT, action::ALLOW);
    h.run(&v4(40005, &client_hello(None)));
    assert_eq!(h.one_hello("no extensions").sni, sni::ABSENT);
    h.run(&v4(40006, &client_hello(Some(&filler_exts(5)))));
    assert_eq!(h.one_hello("no sni").sni, sni::ABSENT);
}

#[test]
fn sni_at_the_end_of_long_extension_lists() {
    let mut h = Harness::new(mode::AUDIT, action::ALLOW);
    // 63 extensions, then the name: the 64th is still walked.
    let mut exts = filler_exts(63);
    exts.push(server_name_ext(b"last.example"));
    h.run(&v4(40007, &client_hello(Some(&exts))));
    assert_eq!(
        name_of(&h.one_hello("63 + sni")).as_deref(),
        Some("last.example")
    );
    // 64 before it: more than the parser walks, so unreadable (never a wrong name).
    let mut exts = filler_exts(64);
    exts.push(server_name_ext(b"late.example"));
    h.run(&v4(40008, &client_hello(Some(&exts))));
    assert_eq!(h.one_hello("64 + sni").sni, sni::UNREADABLE);
    // Oversized: 350 extensions (2800 bytes of list; BPF_PROG_TEST_RUN takes frames up to about
    // a page), all filler.
    h.run(&v4(40009, &client_hello(Some(&filler_exts(350)))));
    assert_eq!(h.one_hello("350").sni, sni::UNREADABLE);
}

#[test]
fn hello_split_across_segments_is_judged_on_the_first() {
    let mut h = Harness::new(mode::ENFORCE, action::DENY);
    let mut exts = filler_exts(40);
    exts.push(server_name_ext(b"split.example"));
    let record = client_hello(Some(&exts));
    // First segment ends before the name: a ClientHello all the same (denied), name unreadable.
    let cut = record.len() - 8;
    assert_eq!(h.run(&v4(40010, &record[..cut])), TC_ACT_SHOT);
    let e = h.one_hello("first segment");
    assert_eq!((e.sni, e.verdict), (sni::UNREADABLE, verdict::BLOCKED));
    // Allowed flow: the continuation segment does not start a record and is not parsed.
    let mut h = Harness::new(mode::AUDIT, action::ALLOW);
    h.run(&v4(40011, &record[..cut]));
    h.hellos();
    assert_eq!(h.run(&v4(40011, &record[cut..])), TC_ACT_OK);
    assert!(h.hellos().is_empty());
}

#[test]
fn truncated_at_every_length_never_yields_a_wrong_name() {
    let mut h = Harness::new(mode::AUDIT, action::DENY);
    let record = sni_hello("trunc.example");
    let name_end = record
        .windows(13)
        .position(|w| w == b"trunc.example")
        .unwrap()
        + 13;
    for len in 0..=record.len() {
        let sport = 41000 + len as u16;
        assert_eq!(h.run(&v4(sport, &record[..len])), TC_ACT_OK);
        let events = h.hellos();
        if len < 11 {
            // A flow without a head is judged only on the whole header before the random.
            assert!(
                events.is_empty(),
                "len {len}: judged without the hello's header"
            );
            continue;
        }
        assert_eq!(events.len(), 1, "len {len}");
        let e = events[0];
        assert_eq!(e.verdict, verdict::WOULD_BLOCK, "len {len}");
        match name_of(&e) {
            Some(n) => {
                assert_eq!(n, "trunc.example", "len {len}");
                assert!(len >= name_end, "len {len}: name read past the segment");
            }
            None => assert!(
                len < record.len(),
                "len {len}: complete ClientHello without a name"
            ),
        }
    }
}

#[test]
fn garbage_lengths_are_unreadable_not_misread() {
    let mut h = Harness::new(mode::AUDIT, action::ALLOW);
    let good = sni_hello("g.example");
    let sid = 5 + 4 + 2 + 32;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut c = good.clone();
    c[sid] = 255;
    cases.push(("session id 255", c));
    let mut c = good.clone();
    c[6] = 0x01;
    cases.push(("handshake longer than record", c));
    let mut c = good.clone();
    let ext_len_at = FIRST_EXTENSION - 2;
    c[ext_len_at] = 0xff;
    cases.push(("extension list past the message", c));
    let mut c = good.clone();
    c[FIRST_EXTENSION + 2] = 0xff; // first extension's length
    cases.push(("extension past the list", c));
    let sni_at = good.windows(9).position(|w| w == b"g.example").unwrap();
    let mut c = good.clone();
    c[sni_at - 3] = 1; // name type not host_name
    cases.push(("name type 1", c));
    let mut c = good.clone();
    c[sni_at - 2] = 0;
    c[sni_at - 1] = 0;
    cases.push(("empty name", c));
    let mut c = good.clone();
    c[sni_at - 1] = 200;
    cases.push(("name longer than its extension", c));
    for (i, (what, frame)) in cases.iter().enumerate() {
        assert_eq!(h.run(&v4(42000 + i as u16, frame)), TC_ACT_OK, "{what}");
        let e = h.one_hello(what);
        assert_eq!(e.sni, sni::UNREADABLE, "{what}");
    }
}

#[test]
fn scoped_library_is_judged_by_server_name() {
    let mut h = Harness::new(mode::ENFORCE, action::ALLOW);
    h.scope(
        &[
            ("*.internal.example", action::ALLOW),
            ("db.internal.example", action::DENY),
        ],
        action::DENY,
        action::DENY,
    );
    let cases: [(&str, Option<&str>, u32, u8); 6] = [
        (
            "inside",
            Some("api.internal.example"),
            TC_ACT_OK,
            verdict::ALLOWED,
        ),
        (
            "inside, upper case",
            Some("API.Internal.EXAMPLE"),
            TC_ACT_OK,
            verdict::ALLOWED,
        ),
        (
            "exact deny inside the scope",
            Some("db.internal.example"),
            TC_ACT_SHOT,
            verdict::BLOCKED,
        ),
        (
            "apex is not *.",
            Some("internal.example"),
            TC_ACT_SHOT,
            verdict::BLOCKED,
        ),
        (
            "outside",
            Some("evil.example"),
            TC_ACT_SHOT,
            verdict::BLOCKED,
        ),
        ("no name", None, TC_ACT_SHOT, verdict::BLOCKED),
    ];
    for (i, (what, name, ret, v)) in cases.into_iter().enumerate() {
        let flow = v4_flow(43000 + i as u16);
        h.attribute(flow, verdict::PENDING_SERVER_NAME);
        let record = match name {
            Some(n) => sni_hello(n),
            None => client_hello(Some(&filler_exts(3))),
        };
        assert_eq!(h.run(&v4(flow.local_port, &record)), ret, "{what}");
        let e = h.one_hello(what);
        assert_eq!((e.lib_id, e.verdict), (LIB, v), "{what}");
        assert_eq!(h.flow_verdict(&flow), Some(v), "{what}: FLOWS not settled");
        assert_eq!(h.blocked(&flow), v == verdict::BLOCKED, "{what}");
    }
    // A pending flow that sends something else first is judged without a name (deny here).
    let flow = v4_flow(43100);
    h.attribute(flow, verdict::PENDING_SERVER_NAME);
    assert_eq!(h.run(&v4(43100, b"not a ClientHello")), TC_ACT_SHOT);
    assert_eq!(h.flow_verdict(&flow), Some(verdict::BLOCKED));
}

#[test]
fn long_server_names_match_by_their_last_bytes() {
    let mut h = Harness::new(mode::ENFORCE, action::ALLOW);
    h.scope(
        &[("*.internal.example", action::ALLOW)],
        action::DENY,
        action::DENY,
    );
    let long = format!("{}.internal.example", vec!["a".repeat(60); 4].join("."));
    assert!(long.len() > 255);
    let flow = v4_flow(44000);
    h.attribute(flow, verdict::PENDING_SERVER_NAME);
    assert_eq!(h.run(&v4(44000, &sni_hello(&long))), TC_ACT_OK);
    let e = h.one_hello("long");
    assert_eq!(
        name_of(&e).unwrap(),
        long[long.len() - 255..],
        "the last 255 bytes are reported"
    );
}
