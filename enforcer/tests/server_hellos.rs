//! The ServerHello reader and the posture judge (`enforcer-ebpf/src/posture.rs`,
//! `server_hello.rs`) on crafted frames, run in the kernel through `BPF_PROG_TEST_RUN`: the
//! ingress programs (XDP and tc) tail-call the reader, which records what the flow negotiated
//! (`POSTURES`) and drops a ServerHello that breaks a `tls_versions` / `groups` /
//! `cipher_suites` rule. TLS 1.3 with a post-quantum key share, TLS 1.2, a HelloRetryRequest,
//! truncation at every byte, garbage lengths, extension lists past the bounds.
//!
//! Root only, never skipped (like `flow_heads.rs`). Each test loads its own object.

#[allow(
    dead_code,
    reason = "the frame builder is shared with packet_filters.rs, which uses the rest"
)]
mod packets;

use aya::{
    Ebpf,
    maps::{Array, HashMap},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use enforcer_common::{
    flow::{FlowKey, family},
    hello::HELLO_RETRY_RANDOM,
    maps,
    policy::mode,
    posture::{self, HOST_RULE, Posture, PostureRule, field, version_bit},
};
use packets::tls::{Extension, key_share_ext, selected_version_ext, server_hello};
use packets::*;

const XDP: &str = "enforcer_ingress";
const TC: &str = "enforcer_ingress_tc";
const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;
const TC_OK: u32 = enforcer_common::tc_return::PASS_U32;
const TC_SHOT: u32 = 2;
/// This host, the client.
const CLIENT: [u8; 4] = [10, 0, 0, 1];
const SERVER: [u8; 4] = [10, 0, 0, 2];
const X25519: u16 = 0x001d;
const X25519MLKEM768: u16 = 0x11ec;
const AES128: u16 = 0x1301;
const ECDHE_RSA_AES128: u16 = 0xc02f;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Form {
    Xdp,
    Tc,
}

struct Harness {
    ebpf: Ebpf,
    form: Form,
}

impl Harness {
    /// Enforce mode; the program of `form` loaded with its reader.
    fn new(form: Form) -> Harness {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "BPF_PROG_TEST_RUN needs root"
        );
        let offsets = enforcer::datapath::btf::sock_offsets().expect("struct sock offsets");
        let mut ebpf = enforcer::datapath::loader::load(&offsets).expect("loading the eBPF object");
        let name = match form {
            Form::Xdp => {
                let xdp: &mut Xdp = ebpf.program_mut(XDP).unwrap().try_into().unwrap();
                xdp.load().expect("loading the XDP program (verifier)");
                XDP
            }
            Form::Tc => {
                let tc: &mut SchedClassifier = ebpf.program_mut(TC).unwrap().try_into().unwrap();
                tc.load().expect("loading the tc program (verifier)");
                TC
            }
        };
        enforcer::datapath::posture_readers::load_for(&mut ebpf, name)
            .expect("loading the ServerHello reader (verifier)");
        let mut m: Array<_, u32> = Array::try_from(ebpf.map_mut(maps::MODE).unwrap()).unwrap();
        m.set(0, mode::ENFORCE, 0).unwrap();
        Harness { ebpf, form }
    }

    fn audit(&mut self) {
        let mut m: Array<_, u32> = Array::try_from(self.ebpf.map_mut(maps::MODE).unwrap()).unwrap();
        m.set(0, mode::AUDIT, 0).unwrap();
    }

    /// The host-wide rule.
    fn require(&mut self, rule: PostureRule) {
        let mut rules: HashMap<_, u32, PostureRule> =
            HashMap::try_from(self.ebpf.map_mut(posture::POSTURE_RULES).unwrap()).unwrap();
        rules.insert(HOST_RULE, rule, 0).unwrap();
        let mut on: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(posture::POSTURE_ENABLED).unwrap()).unwrap();
        on.set(0, 1, 0).unwrap();
    }

    /// The egress judge saw the flow's ClientHello (as `hello.rs` marks it).
    fn hello_left(&mut self, sport: u16) {
        let mut seen: HashMap<_, FlowKey, u32> =
            HashMap::try_from(self.ebpf.map_mut(maps::HELLOS_SEEN).unwrap()).unwrap();
        seen.insert(flow(sport), 0, 0).unwrap();
    }

    /// Runs a frame; true if it passed.
    fn passes(&self, frame: &[u8]) -> bool {
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        };
        match self.form {
            Form::Xdp => {
                let xdp: &Xdp = self.ebpf.program(XDP).unwrap().try_into().unwrap();
                let v = xdp.test_run(options).expect("xdp test run").return_value;
                assert!(v == XDP_PASS || v == XDP_DROP, "XDP returned {v}");
                v == XDP_PASS
            }
            Form::Tc => {
                let tc: &SchedClassifier = self.ebpf.program(TC).unwrap().try_into().unwrap();
                let v = tc.test_run(options).expect("tc test run").return_value;
                assert!(v == TC_OK || v == TC_SHOT, "tc returned {v}");
                v == TC_OK
            }
        }
    }

    fn posture(&self, sport: u16) -> Option<Posture> {
        let m: HashMap<_, FlowKey, Posture> =
            HashMap::try_from(self.ebpf.map(posture::POSTURES).unwrap()).unwrap();
        m.get(&flow(sport), 0).ok()
    }

    fn blocked(&self, sport: u16) -> bool {
        let b: HashMap<_, FlowKey, u8> =
            HashMap::try_from(self.ebpf.map(maps::BLOCKLIST).unwrap()).unwrap();
        b.get(&flow(sport), 0).is_ok()
    }
}

fn flow(sport: u16) -> FlowKey {
    let mut k = FlowKey {
        family: family::V4,
        local_port: sport,
        remote_port: 443,
        ..FlowKey::default()
    };
    k.local_addr[..4].copy_from_slice(&CLIENT);
    k.remote_addr[..4].copy_from_slice(&SERVER);
    k
}

/// The server's segment to the client's `sport`, carrying `payload`.
fn from_server(sport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = tcp(443, sport, TCP_PSH | TCP_ACK);
    t.extend_from_slice(payload);
    ethernet(
        &[],
        ETH_P_IP,
        &Ipv4::new(SERVER, CLIENT, IPPROTO_TCP).build(&t),
    )
}

/// A TLS 1.3 ServerHello: `supported_versions` after the key share, as OpenSSL orders them.
fn tls13(group: u16, key_len: usize) -> Vec<u8> {
    let exts: [Extension; 2] = [
        key_share_ext(group, Some(key_len)),
        selected_version_ext(0x0304),
    ];
    server_hello(0x0303, [0x33; 32], AES128, Some(&exts))
}

/// A TLS 1.2 ServerHello ending in `extended_master_secret` (empty), as OpenSSL sends it.
fn tls12() -> Vec<u8> {
    let exts: [Extension; 3] = [(0xff01, vec![0]), (0x000b, vec![1, 0]), (0x0017, vec![])];
    server_hello(0x0303, [0x12; 32], ECDHE_RSA_AES128, Some(&exts))
}

fn pq_only() -> PostureRule {
    let mut rule = PostureRule {
        group_count: 1,
        ..Default::default()
    };
    rule.groups[0] = X25519MLKEM768;
    rule
}

fn tls13_only() -> PostureRule {
    PostureRule {
        versions: version_bit(0x0304).unwrap(),
        ..Default::default()
    }
}

const FORMS: [Form; 2] = [Form::Xdp, Form::Tc];

#[test]
fn a_post_quantum_tls13_server_hello_is_read_across_its_1120_byte_key_share() {
    for form in FORMS {
        let mut h = Harness::new(form);
        h.require(pq_only());
        h.hello_left(42000);
        assert!(
            h.passes(&from_server(42000, &tls13(X25519MLKEM768, 1120))),
            "{form:?}"
        );
        let p = h.posture(42000).expect("recorded");
        assert_eq!(
            (p.version, p.suite, p.group),
            (0x0304, AES128, X25519MLKEM768),
            "{form:?}"
        );
        assert_eq!(p.read, field::VERSION | field::SUITE | field::GROUP);
        assert!(!h.blocked(42000));
    }
}

#[test]
fn a_classical_group_breaks_a_post_quantum_rule_and_is_dropped_and_blocklisted() {
    for form in FORMS {
        let mut h = Harness::new(form);
        h.require(pq_only());
        h.hello_left(42001);
        let hello = from_server(42001, &tls13(X25519, 32));
        assert!(!h.passes(&hello), "{form:?}: dropped at the ServerHello");
        assert!(
            h.blocked(42001),
            "{form:?}: the rest of the flow is dropped too"
        );
        assert_eq!(h.posture(42001).map(|p| p.group), Some(X25519));
    }
}

#[test]
fn audit_mode_records_the_break_and_drops_nothing() {
    let mut h = Harness::new(Form::Xdp);
    h.audit();
    h.require(pq_only());
    h.hello_left(42002);
    assert!(h.passes(&from_server(42002, &tls13(X25519, 32))));
    assert!(!h.blocked(42002));
    assert_eq!(h.posture(42002).map(|p| p.group), Some(X25519));
}

#[test]
fn tls12_is_its_own_version_field_and_breaks_a_tls13_rule() {
    for form in FORMS {
        let mut h = Harness::new(form);
        h.require(tls13_only());
        h.hello_left(42003);
        assert!(!h.passes(&from_server(42003, &tls12())), "{form:?}");
        let p = h.posture(42003).expect("recorded");
        assert_eq!((p.version, p.suite), (0x0303, ECDHE_RSA_AES128));
        assert!(p.has(field::VERSION) && !p.has(field::GROUP), "{p:?}");
    }
}

#[test]
fn without_rules_nothing_is_dropped_and_only_flows_whose_hello_left_are_read() {
    let mut h = Harness::new(Form::Xdp);
    assert!(h.passes(&from_server(42004, &tls13(X25519, 32))));
    assert_eq!(h.posture(42004), None, "no ClientHello of ours: not judged");
    h.hello_left(42004);
    assert!(h.passes(&from_server(42004, &tls13(X25519, 32))));
    assert_eq!(h.posture(42004).map(|p| p.version), Some(0x0304));
    // A retransmission (or anything later that begins like a ServerHello) is not judged again.
    h.require(pq_only());
    assert!(h.passes(&from_server(42004, &tls13(X25519, 32))));
    assert!(!h.blocked(42004));
}

#[test]
fn a_hello_retry_request_is_skipped_and_the_real_server_hello_judged() {
    let mut h = Harness::new(Form::Xdp);
    h.require(pq_only());
    h.hello_left(42005);
    let exts: [Extension; 2] = [
        selected_version_ext(0x0304),
        key_share_ext(X25519MLKEM768, None),
    ];
    let retry = server_hello(0x0303, HELLO_RETRY_RANDOM, AES128, Some(&exts));
    assert!(
        h.passes(&from_server(42005, &retry)),
        "the HelloRetryRequest passes"
    );
    let marked = h.posture(42005).expect("marked");
    assert_eq!((marked.retried, marked.read), (1, 0));
    assert!(h.passes(&from_server(42005, &tls13(X25519MLKEM768, 1120))));
    let p = h.posture(42005).unwrap();
    assert_eq!((p.group, p.retried), (X25519MLKEM768, 1));
}

/// Cut at every byte, the ServerHello is judged with what could be read: a rule on a field not
/// read drops it (fail closed), and the programs never fail to run.
#[test]
fn truncation_at_every_byte_fails_closed_for_rules_on_the_missing_fields() {
    let full = tls13(X25519MLKEM768, 1120);
    let mut h = Harness::new(Form::Xdp);
    h.require(tls13_only());
    for (i, cut) in (6..full.len()).enumerate() {
        let sport = 43000 + i as u16;
        h.hello_left(sport);
        let passed = h.passes(&from_server(sport, &full[..cut]));
        let p = h.posture(sport).expect("judged");
        assert_eq!(passed, p.has(field::VERSION), "cut at {cut}: {p:?}");
        assert!(!passed || p.version == 0x0304, "cut at {cut}");
        // The version is known once the TLS 1.3 suite is in (`supported_versions`, last, is
        // past the cut): from the suite on, every cut passes.
        let suite_end = 5 + 4 + 2 + 32 + 1 + 32 + 3;
        assert_eq!(passed, cut >= suite_end, "cut at {cut}: {p:?}");
    }
    h.hello_left(42999);
    assert!(h.passes(&from_server(42999, &full)));
    // A TLS 1.2 suite says nothing: cut before the end, a TLS 1.2 ServerHello is unread.
    let old = tls12();
    h.hello_left(42998);
    assert!(!h.passes(&from_server(42998, &old[..old.len() - 2])));
}

#[test]
fn garbage_lengths_and_long_extension_lists_leave_fields_unread() {
    let mut h = Harness::new(Form::Tc);
    let mut rule = pq_only();
    rule.versions = version_bit(0x0304).unwrap();
    h.require(rule);
    h.hello_left(42099);
    assert!(
        h.passes(&from_server(42099, &tls13(X25519MLKEM768, 1120))),
        "well formed: passes"
    );
    // An extension whose length runs past the list: the key share's group is not read.
    let mut bad = tls13(X25519MLKEM768, 1120);
    let first_ext = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 1 + 2;
    bad[first_ext + 2..first_ext + 4].copy_from_slice(&0xfff0u16.to_be_bytes());
    h.hello_left(42100);
    assert!(!h.passes(&from_server(42100, &bad)));
    assert!(!h.posture(42100).unwrap().has(field::GROUP));
    // A session id longer than 32 bytes: nothing is read.
    let mut long_session = tls13(X25519MLKEM768, 1120);
    long_session[5 + 4 + 2 + 32] = 33;
    h.hello_left(42101);
    assert!(!h.passes(&from_server(42101, &long_session)));
    assert_eq!(h.posture(42101).map(|p| p.read), Some(0));
    // More extensions than the reader walks, the key share after them.
    let mut exts: Vec<Extension> = (0..20).map(|i| (0x1000 + i, vec![])).collect();
    exts.push(key_share_ext(X25519MLKEM768, Some(1120)));
    exts.push(selected_version_ext(0x0304));
    h.hello_left(42102);
    let many = server_hello(0x0303, [0x44; 32], AES128, Some(&exts));
    assert!(!h.passes(&from_server(42102, &many)));
    let p = h.posture(42102).unwrap();
    assert!(
        !p.has(field::GROUP) && p.version == 0x0304,
        "version from the suite: {p:?}"
    );
    // A handshake length past the record's.
    let mut over = tls13(X25519MLKEM768, 1120);
    over[6] = 0x7f;
    h.hello_left(42103);
    assert!(!h.passes(&from_server(42103, &over)));
}

const SECP256R1: u16 = 0x0017;

/// A handshake message.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(body);
    m
}

/// A handshake record carrying `bytes` (whole messages or parts of them).
fn record(bytes: &[u8]) -> Vec<u8> {
    let mut r = vec![0x16, 0x03, 0x03];
    r.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    r.extend_from_slice(bytes);
    r
}

/// An ECDHE ServerKeyExchange naming `group` (curve type 3), or finite-field DHE params
/// (`None`).
fn key_exchange(group: Option<u16>) -> Vec<u8> {
    let mut body = match group {
        Some(g) => {
            let mut b = vec![3];
            b.extend_from_slice(&g.to_be_bytes());
            b.push(65);
            b.extend_from_slice(&[0x04; 65]);
            b
        }
        None => vec![0, 1, 0xff, 0, 1, 2, 0, 1, 0x55],
    };
    body.extend_from_slice(&[0x04, 0x01, 0, 16]);
    body.extend_from_slice(&[0xee; 16]);
    message(12, &body)
}

/// A TLS 1.2 server flight: ServerHello, a 900-byte Certificate, the ServerKeyExchange,
/// ServerHelloDone; one record each (OpenSSL), or the first two messages' bytes cut across
/// two records `cut` bytes into the Certificate message (its 4-byte header included).
fn tls12_flight(group: Option<u16>, cut: Option<usize>) -> Vec<u8> {
    let hello = tls12()[5..].to_vec();
    let cert = message(11, &[0xce; 900]);
    let mut flight = match cut {
        None => [record(&hello), record(&cert)].concat(),
        Some(cut) => {
            let both = [hello.clone(), cert].concat();
            let at = hello.len() + cut;
            [record(&both[..at]), record(&both[at..])].concat()
        }
    };
    flight.extend(record(&key_exchange(group)));
    flight.extend(record(&message(14, &[])));
    flight
}

fn secp256r1_only() -> PostureRule {
    let mut rule = PostureRule {
        group_count: 1,
        ..Default::default()
    };
    rule.groups[0] = SECP256R1;
    rule
}

#[test]
fn a_tls12_group_is_read_from_the_server_key_exchange_in_the_same_packet() {
    for form in FORMS {
        let mut h = Harness::new(form);
        h.require(secp256r1_only());
        for (sport, cut) in [(42100, None), (42101, Some(4)), (42102, Some(450))] {
            h.hello_left(sport);
            let frame = from_server(sport, &tls12_flight(Some(SECP256R1), cut));
            assert!(h.passes(&frame), "{form:?} cut {cut:?}");
            let p = h.posture(sport).expect("recorded");
            assert_eq!(
                (p.version, p.group),
                (0x0303, SECP256R1),
                "{form:?} {cut:?}"
            );
            assert!(p.has(field::GROUP), "{form:?} {cut:?}: {p:?}");
        }
        // Another group breaks the rule: dropped at the ServerHello's packet.
        h.hello_left(42103);
        assert!(!h.passes(&from_server(42103, &tls12_flight(Some(X25519), None))));
        assert_eq!(h.posture(42103).map(|p| p.group), Some(X25519));
        assert!(h.blocked(42103), "{form:?}");
    }
}

#[test]
fn a_tls12_group_not_in_the_packet_or_not_named_stays_unread_and_fails_closed() {
    for form in FORMS {
        let mut h = Harness::new(form);
        h.require(secp256r1_only());
        let whole = tls12_flight(Some(SECP256R1), None);
        let ske_at = whole.len() - 4 - 5 - key_exchange(Some(SECP256R1)).len() - 5;
        let cases: [(u16, Vec<u8>); 5] = [
            // The Certificate's header split between two records (not followed).
            (42115, tls12_flight(Some(SECP256R1), Some(1))),
            // The packet ends before the ServerKeyExchange (it comes in a later segment).
            (42110, whole[..ske_at].to_vec()),
            // ... or inside its header.
            (42111, whole[..ske_at + 7].to_vec()),
            // Finite-field DHE: no named group.
            (42112, tls12_flight(None, None)),
            // RSA key transport: ServerHelloDone right after the Certificate.
            (
                42113,
                [
                    record(&tls12()[5..]),
                    record(&message(11, &[0xce; 100])),
                    record(&message(14, &[])),
                ]
                .concat(),
            ),
        ];
        for (sport, payload) in cases {
            h.hello_left(sport);
            assert!(!h.passes(&from_server(sport, &payload)), "{form:?} {sport}");
            let p = h.posture(sport).expect("recorded");
            assert!(
                p.has(field::VERSION) && !p.has(field::GROUP),
                "{form:?} {sport}: {p:?}"
            );
        }
        // A record of another type between them (an alert): not followed.
        h.hello_left(42114);
        let mut odd = [record(&tls12()[5..]), vec![0x15, 3, 3, 0, 2, 1, 0]].concat();
        odd.extend(record(&key_exchange(Some(SECP256R1))));
        assert!(!h.passes(&from_server(42114, &odd)), "{form:?}");
    }
}
