//! The ServerHello parser (`enforcer-ebpf/src/server_hello.rs`) on crafted frames, run in the
//! kernel through `BPF_PROG_TEST_RUN`: what a TLS 1.3 and a TLS 1.2 server negotiated, a
//! HelloRetryRequest and the real ServerHello after it, a post-quantum key share, truncation at
//! every byte, garbage lengths, extension lists past the parser's bound; on ingress (this host is
//! the client: XDP) and egress (the server: tc); and the policy's `tls_versions` and `groups`
//! judged there (`POSTURE_RULES`).
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
    hello::{self, HELLO_RETRY_RANDOM, RandomKey, RandomOrigin},
    maps,
    policy::{HelloPolicy, action, mode},
    posture::{POSTURES, Posture, flags, status},
};
use frames::*;
use packets::tls::client_hello;
use packets::*;

#[path = "server_hellos/frames.rs"]
mod frames;

const INGRESS: &str = "enforcer_ingress";
const EGRESS: &str = "enforcer_egress";
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
/// This host, and the server it talks to (or the client talking to it).
const HOST: [u8; 4] = [10, 0, 0, 1];
const PEER: [u8; 4] = [10, 0, 0, 2];
const ISN: u32 = 1000;
const LIB: u32 = 7;

const TLS13: u16 = 0x0304;
const TLS12: u16 = 0x0303;
const AES_128_GCM_SHA256: u16 = 0x1301;
const ECDHE_RSA_AES_128_GCM_SHA256: u16 = 0xc02f;
const X25519: u16 = 0x001d;
const SECP256R1: u16 = 0x0017;
const X25519MLKEM768: u16 = 0x11ec;

struct Harness(Ebpf);

impl Harness {
    /// Enforce mode, `unattributed_tls: deny`, library 7 allowed.
    fn new() -> Harness {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "BPF_PROG_TEST_RUN needs root"
        );
        let offsets = enforcer::datapath::btf::sock_offsets().expect("struct sock offsets");
        let mut ebpf = enforcer::datapath::loader::load(&offsets).expect("loading the eBPF object");
        let xdp: &mut Xdp = ebpf.program_mut(INGRESS).unwrap().try_into().unwrap();
        xdp.load().expect("loading the XDP program (verifier)");
        let tc: &mut SchedClassifier = ebpf.program_mut(EGRESS).unwrap().try_into().unwrap();
        tc.load().expect("loading the tc program (verifier)");
        let mut m: Array<_, u32> = Array::try_from(ebpf.map_mut(maps::MODE).unwrap()).unwrap();
        m.set(0, mode::ENFORCE, 0).unwrap();
        let mut p: Array<_, HelloPolicy> =
            Array::try_from(ebpf.map_mut(maps::HELLO_POLICY).unwrap()).unwrap();
        let policy = HelloPolicy {
            unattributed: action::DENY,
            scoped: 0,
            late_attribution: 0,
            quic: 0,
        };
        p.set(0, policy, 0).unwrap();
        let mut actions: HashMap<_, u32, u8> =
            HashMap::try_from(ebpf.map_mut(maps::LIB_ACTIONS).unwrap()).unwrap();
        actions.insert(LIB, action::ALLOW, 0).unwrap();
        Harness(ebpf)
    }

    /// A frame arriving (XDP); every one passes: reading a ServerHello never drops.
    fn ingress(&self, frame: &[u8]) {
        let xdp: &Xdp = self.0.program(INGRESS).unwrap().try_into().unwrap();
        let r = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("XDP test run: {e:?}"));
        assert_eq!(r.return_value, XDP_PASS, "XDP verdict");
    }

    /// A frame leaving (tc); they all pass here (the hellos are the allowed library's).
    fn egress(&self, frame: &[u8]) {
        let tc: &SchedClassifier = self.0.program(EGRESS).unwrap().try_into().unwrap();
        let r = tc
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("tc test run: {e:?}"));
        assert_eq!(r.return_value, TC_ACT_OK, "tc verdict");
    }

    /// The allowed library made `random`.
    fn made(&mut self, random: &[u8; 32]) {
        let mut m: HashMap<_, RandomKey, RandomOrigin> =
            HashMap::try_from(self.0.map_mut(hello::HELLO_RANDOMS).unwrap()).unwrap();
        let mut key = [0u8; hello::KEY_LEN];
        key.copy_from_slice(&random[hello::KEY_FROM..hello::KEY_FROM + hello::KEY_LEN]);
        let origin = RandomOrigin {
            made_ns: 1,
            lib_id: LIB,
            tgid: 4242,
            comm: *b"server-hellos\0\0\0",
        };
        m.insert(RandomKey(key), origin, 0).unwrap();
    }

    /// The ClientHello of the flow from `port` left (as `hello.rs` records it).
    fn awaiting(&mut self, port: u16) {
        let mut m: HashMap<_, FlowKey, Posture> =
            HashMap::try_from(self.0.map_mut(POSTURES).unwrap()).unwrap();
        m.insert(flow(port), Posture::awaiting(), 0).unwrap();
    }

    fn posture(&self, port: u16) -> Option<Posture> {
        let m: HashMap<_, FlowKey, Posture> =
            HashMap::try_from(self.0.map(POSTURES).unwrap()).unwrap();
        m.get(&flow(port), 0).ok()
    }

    /// A fresh flow from `port` awaiting its ServerHello, sent `payload` in one segment.
    fn read(&mut self, port: u16, payload: &[u8]) -> Posture {
        self.awaiting(port);
        self.ingress(&from_peer(port, ISN + 1, payload));
        self.posture(port).expect("the flow's posture")
    }
}

/// This host's end of the flow: local `port`, the peer's 443.
fn flow(port: u16) -> FlowKey {
    let mut k = FlowKey {
        family: family::V4,
        local_port: port,
        remote_port: 443,
        ..FlowKey::default()
    };
    k.local_addr[..4].copy_from_slice(&HOST);
    k.remote_addr[..4].copy_from_slice(&PEER);
    k
}

/// A segment of the flow from the peer (ingress).
fn from_peer(port: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = tcp(443, port, TCP_PSH | TCP_ACK);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(payload);
    ethernet(&[], ETH_P_IP, &Ipv4::new(PEER, HOST, IPPROTO_TCP).build(&t))
}

/// A segment of the flow from this host (egress).
fn to_peer(port: u16, seq: u32, tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = tcp(port, 443, tcp_flags);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(payload);
    ethernet(&[], ETH_P_IP, &Ipv4::new(HOST, PEER, IPPROTO_TCP).build(&t))
}

fn negotiated(version: u16, suite: u16, group: u16, flags: u8) -> Posture {
    Posture {
        version,
        suite,
        group,
        status: status::NEGOTIATED,
        flags,
    }
}

fn unreadable(suite: u16) -> Posture {
    Posture {
        suite,
        status: status::UNREADABLE,
        ..Posture::default()
    }
}

#[test]
fn tls13_version_suite_and_group_are_read_on_ingress() {
    let mut h = Harness::new();
    assert_eq!(
        h.read(42001, &tls13(X25519, 32)),
        negotiated(TLS13, AES_128_GCM_SHA256, X25519, 0)
    );
    // The post-quantum hybrid: a 1,120-byte key exchange, still one segment.
    assert_eq!(
        h.read(42002, &tls13(X25519MLKEM768, 1120)),
        negotiated(TLS13, AES_128_GCM_SHA256, X25519MLKEM768, 0)
    );
    // key_share before supported_versions (rustls' order), and the rest of the flight after
    // the ServerHello in the same segment.
    let exts = [key_share(SECP256R1, 65), supported_version(TLS13)];
    let mut flight = server_hello(&[0x34; 32], 0x1302, Some(&exts));
    flight.extend_from_slice(&[0x14, 3, 3, 0, 1, 1, 0x17, 3, 3, 0, 40]);
    assert_eq!(
        h.read(42003, &flight),
        negotiated(TLS13, 0x1302, SECP256R1, 0)
    );
}

#[test]
fn tls12_is_the_legacy_version_without_a_group() {
    let mut h = Harness::new();
    let want = negotiated(TLS12, ECDHE_RSA_AES_128_GCM_SHA256, 0, 0);
    assert_eq!(h.read(42011, &tls12()), want);
    // No extension list at all.
    let bare = server_hello(&[0x12; 32], ECDHE_RSA_AES_128_GCM_SHA256, None);
    assert_eq!(h.read(42012, &bare), want);
    // TLS 1.0, empty list.
    let mut old = server_hello(&[0x12; 32], 0x002f, Some(&[]));
    old[10] = 1;
    assert_eq!(h.read(42013, &old), negotiated(0x0301, 0x002f, 0, 0));
}

#[test]
fn a_hello_retry_request_is_reported_then_replaced_by_the_real_server_hello() {
    let mut h = Harness::new();
    let port = 42021;
    let exts = [supported_version(TLS13), retry_key_share(SECP256R1)];
    let mut flight = server_hello(&HELLO_RETRY_RANDOM, AES_128_GCM_SHA256, Some(&exts));
    flight.extend_from_slice(&[0x14, 3, 3, 0, 1, 1]);
    let retry = h.read(port, &flight);
    assert_eq!(
        retry,
        Posture {
            status: status::RETRY,
            ..negotiated(TLS13, AES_128_GCM_SHA256, SECP256R1, 0)
        }
    );
    let next = ISN + 1 + flight.len() as u32;
    h.ingress(&from_peer(port, next, &tls13(SECP256R1, 65)));
    assert_eq!(
        h.posture(port),
        Some(negotiated(
            TLS13,
            AES_128_GCM_SHA256,
            SECP256R1,
            flags::RETRIED
        ))
    );
    // A HelloRetryRequest's key_share is two bytes; a ServerHello-sized one is inconsistent.
    let exts = [supported_version(TLS13), key_share(X25519, 32)];
    let odd = server_hello(&HELLO_RETRY_RANDOM, AES_128_GCM_SHA256, Some(&exts));
    assert_eq!(h.read(42022, &odd), unreadable(AES_128_GCM_SHA256));
}

#[test]
fn only_flows_awaiting_their_server_hello_are_read_and_only_once() {
    let mut h = Harness::new();
    // No ClientHello of ours on this flow: nothing recorded.
    h.ingress(&from_peer(42031, ISN + 1, &tls13(X25519, 32)));
    assert_eq!(h.posture(42031), None);
    // Read once: a second ServerHello-looking segment (a retransmission, or ciphertext) on the
    // flow changes nothing.
    let port = 42032;
    let first = h.read(port, &tls13(X25519, 32));
    h.ingress(&from_peer(port, ISN + 1, &tls12()));
    assert_eq!(h.posture(port), Some(first));
}

#[test]
fn truncation_at_every_byte_is_unreadable_never_wrong() {
    let mut h = Harness::new();
    for (i, (hello, want)) in [
        (
            tls13(X25519, 32),
            negotiated(TLS13, AES_128_GCM_SHA256, X25519, 0),
        ),
        (
            tls12(),
            negotiated(TLS12, ECDHE_RSA_AES_128_GCM_SHA256, 0, 0),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        for cut in 0..hello.len() {
            let port = 43000 + (i * 1000 + cut) as u16;
            let got = h.read(port, &hello[..cut]);
            // Fewer than six bytes do not look like a ServerHello: the flow still waits.
            let ok = if cut < 6 {
                got == Posture::awaiting()
            } else {
                got == want
                    || (got.status == status::UNREADABLE
                        && got.version == 0
                        && got.group == 0
                        && (got.suite == 0 || got.suite == want.suite))
            };
            assert!(ok, "cut at {cut} of {}: {got:?}", hello.len());
            // TLS 1.2 is known only once the whole list was read; TLS 1.3 once both of its
            // extensions' fields were (the key share's group and key length: its key bytes
            // change nothing).
            let known_from = if want.version == TLS13 {
                hello.len() - 32
            } else {
                hello.len()
            };
            if got == want {
                assert!(
                    cut >= known_from,
                    "read at {cut}, before {known_from}: {got:?}"
                );
            }
        }
        let port = 43000 + (i * 1000 + hello.len()) as u16;
        assert_eq!(h.read(port, &hello), want, "the whole hello");
    }
}

#[test]
fn garbage_lengths_are_unreadable() {
    let mut h = Harness::new();
    let good = tls13(X25519, 32);
    let suite = AES_128_GCM_SHA256;
    let at = EXT_LIST_AT;
    // (what, offset, value) written over the good hello.
    let cases: &[(&str, usize, &[u8], Posture)] = &[
        (
            "record shorter than the handshake",
            3,
            &[0, 20],
            unreadable(0),
        ),
        (
            "handshake longer than the record",
            6,
            &[0, 1, 0],
            unreadable(0),
        ),
        ("session id of 33", 43, &[33], unreadable(0)),
        ("session id of 255", 43, &[255], unreadable(0)),
        ("legacy version 0x0203", 9, &[2], unreadable(0)),
        ("extension list too long", at, &[0, 200], unreadable(suite)),
        ("extension list too short", at, &[0, 2], unreadable(suite)),
        (
            "extension past the list",
            at + 4,
            &[0, 200],
            unreadable(suite),
        ),
        (
            "supported_versions of 3",
            at + 4,
            &[0, 3],
            unreadable(suite),
        ),
        (
            "key exchange past its entry",
            at + 14,
            &[0, 33],
            unreadable(suite),
        ),
        ("key share group 0", at + 12, &[0, 0], unreadable(suite)),
    ];
    for (i, (what, offset, value, want)) in cases.iter().enumerate() {
        let mut bad = good.clone();
        bad[*offset..*offset + value.len()].copy_from_slice(value);
        assert_eq!(&h.read(44000 + i as u16, &bad), want, "{what}");
    }
    // Every byte set to 0x00 and to 0xff in turn: the program passes every frame and reports
    // either the true values or unreadable (a byte it does not check, e.g. in the random or the
    // key, changes nothing); except where the byte is a value it reports (the suite, the types
    // of the two extensions, the version, the group), which may then read as another.
    let values = [
        at - 3,
        at - 2,
        at + 2,
        at + 3,
        at + 6,
        at + 7,
        at + 8,
        at + 9,
        at + 12,
        at + 13,
    ];
    for (i, fill) in [0u8, 0xff].into_iter().enumerate() {
        for byte in 6..good.len() {
            let mut bad = good.clone();
            bad[byte] = fill;
            let port = 45000 + (i * 1000 + byte) as u16;
            let got = h.read(port, &bad);
            let ok = if values.contains(&byte) {
                got.status == status::UNREADABLE || got.status == status::NEGOTIATED
            } else {
                got.status == status::UNREADABLE || got == negotiated(TLS13, suite, X25519, 0)
            };
            assert!(ok, "byte {byte} = {fill:#x}: {got:?}");
        }
    }
}

#[test]
fn extension_lists_past_the_bound_are_unreadable() {
    let mut h = Harness::new();
    let filler = |n: usize| (0..n).map(|i| ext(0x1000 + i as u16, &[i as u8])).collect();
    let suite = ECDHE_RSA_AES_128_GCM_SHA256;
    // Sixteen extensions are walked to the end; seventeen are more than the parser walks.
    let sixteen: Vec<Vec<u8>> = filler(16);
    let hello = server_hello(&[1; 32], suite, Some(&sixteen));
    assert_eq!(h.read(46001, &hello), negotiated(TLS12, suite, 0, 0));
    let seventeen: Vec<Vec<u8>> = filler(17);
    let hello = server_hello(&[1; 32], suite, Some(&seventeen));
    assert_eq!(h.read(46002, &hello), unreadable(suite));
    // TLS 1.3's two extensions after fourteen others: read; after fifteen: the key share is
    // the seventeenth, past the bound.
    for (port, n, readable) in [(46003, 14, true), (46004, 15, false)] {
        let mut exts: Vec<Vec<u8>> = filler(n);
        exts.push(supported_version(TLS13));
        exts.push(key_share(X25519, 32));
        let got = h.read(
            port,
            &server_hello(&[1; 32], AES_128_GCM_SHA256, Some(&exts)),
        );
        let want = if readable {
            negotiated(TLS13, AES_128_GCM_SHA256, X25519, 0)
        } else {
            unreadable(AES_128_GCM_SHA256)
        };
        assert_eq!(got, want, "{n} extensions before TLS 1.3's");
    }
    // A list longer than the segment (the rest would come later): unreadable, not guessed.
    let mut exts: Vec<Vec<u8>> = filler(3);
    exts.push(ext(0x2000, &[0; 3000]));
    exts.push(supported_version(TLS13));
    let mut hello = server_hello(&[1; 32], suite, Some(&exts));
    hello.truncate(1200);
    assert_eq!(h.read(46005, &hello), unreadable(suite));
}

#[test]
fn egress_records_the_client_hello_and_this_servers_server_hello() {
    let mut h = Harness::new();
    // This host as the client: its ClientHello (its library's random) leaves; the flow awaits.
    let port = 47001;
    let hello = client_hello(None);
    let mut random = [0u8; 32];
    random.copy_from_slice(&hello[hello::RANDOM_AT..hello::RANDOM_AT + 32]);
    h.made(&random);
    h.egress(&to_peer(port, ISN, TCP_SYN, &[]));
    h.egress(&to_peer(port, ISN + 1, TCP_PSH | TCP_ACK, &hello));
    assert_eq!(h.posture(port), Some(Posture::awaiting()));
    h.ingress(&from_peer(port, 5000, &tls13(X25519, 32)));
    assert_eq!(
        h.posture(port),
        Some(negotiated(TLS13, AES_128_GCM_SHA256, X25519, 0))
    );

    // This host as the server: its SYN-ACK, a HelloRetryRequest, then its real ServerHello.
    let port = 47002;
    let exts = [supported_version(TLS13), retry_key_share(SECP256R1)];
    let retry = server_hello(&HELLO_RETRY_RANDOM, AES_128_GCM_SHA256, Some(&exts));
    let exts = [supported_version(TLS13), key_share(SECP256R1, 65)];
    let real = server_hello(&[0x44; 32], AES_128_GCM_SHA256, Some(&exts));
    h.made(&[0x44; 32]);
    h.egress(&to_peer(port, ISN, TCP_SYN | TCP_ACK, &[]));
    h.egress(&to_peer(port, ISN + 1, TCP_PSH | TCP_ACK, &retry));
    let next = ISN + 1 + retry.len() as u32;
    h.egress(&to_peer(port, next, TCP_PSH | TCP_ACK, &real));
    assert_eq!(
        h.posture(port),
        Some(negotiated(
            TLS13,
            AES_128_GCM_SHA256,
            SECP256R1,
            flags::EGRESS | flags::RETRIED
        ))
    );
    // Its TLS 1.2 ServerHello split after 7 bytes: judged by its random, not readable here.
    let port = 47003;
    let hello = tls12();
    h.made(&[0x12; 32]);
    h.egress(&to_peer(port, ISN, TCP_SYN | TCP_ACK, &[]));
    h.egress(&to_peer(port, ISN + 1, TCP_ACK, &hello[..7]));
    h.egress(&to_peer(port, ISN + 8, TCP_ACK, &hello[7..]));
    assert_eq!(
        h.posture(port),
        Some(Posture {
            flags: flags::EGRESS,
            ..unreadable(0)
        })
    );
}

/// The policy's `tls_versions` and `groups` (`POSTURE_RULES`), judged at the ServerHello: in
/// enforce mode a breaking one is dropped and its flow blocklisted, on ingress and egress; what
/// could not be read breaks them (fail-closed); audit mode passes and blocklists nothing.
#[test]
fn server_hellos_breaking_the_policy_are_dropped_and_blocklisted() {
    use enforcer_common::posture::{HOST_RULE, POSTURE_RULES, PostureRule, version_bit};
    const XDP_DROP: u32 = 1;
    const TC_ACT_SHOT: u32 = 2;
    let mut h = Harness::new();
    let rule = |versions: u8, groups: &[u16]| {
        let mut r = PostureRule {
            versions,
            groups_len: groups.len() as u8,
            ..PostureRule::default()
        };
        r.groups[..groups.len()].copy_from_slice(groups);
        r
    };
    let set = |h: &mut Harness, key: u32, r: PostureRule| {
        let mut m: HashMap<_, u32, PostureRule> =
            HashMap::try_from(h.0.map_mut(POSTURE_RULES).unwrap()).unwrap();
        m.insert(key, r, 0).unwrap();
    };
    let run = |h: &Harness, frame: &[u8]| {
        let xdp: &Xdp = h.0.program(INGRESS).unwrap().try_into().unwrap();
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        };
        xdp.test_run(opts).unwrap().return_value
    };
    let blocked = |h: &Harness, port: u16| {
        let b: HashMap<_, FlowKey, u8> =
            HashMap::try_from(h.0.map(maps::BLOCKLIST).unwrap()).unwrap();
        b.get(&flow(port), 0).is_ok()
    };
    set(&mut h, HOST_RULE, rule(version_bit(TLS13), &[]));
    // TLS 1.3 passes, TLS 1.2 is dropped, and so is a ServerHello that could not be read.
    let cases = [
        (48001, tls13(X25519, 32), XDP_PASS),
        (48002, tls12(), XDP_DROP),
        (48003, tls13(X25519, 32)[..60].to_vec(), XDP_DROP),
    ];
    for (port, hello, want) in &cases {
        h.awaiting(*port);
        assert_eq!(
            run(&h, &from_peer(*port, ISN + 1, hello)),
            *want,
            "port {port}"
        );
        assert_eq!(blocked(&h, *port), *want == XDP_DROP, "port {port}");
    }
    // A group list: the library's rule (unattributed flows have only the host's).
    set(&mut h, HOST_RULE, rule(0, &[X25519MLKEM768, X25519]));
    for (port, hello, want) in [
        (48011, tls13(X25519MLKEM768, 1120), XDP_PASS),
        (48012, tls13(SECP256R1, 65), XDP_DROP),
        (48013, tls12(), XDP_DROP), // TLS 1.2's group is not read: fail-closed
    ] {
        h.awaiting(port);
        assert_eq!(
            run(&h, &from_peer(port, ISN + 1, &hello)),
            want,
            "port {port}"
        );
    }
    // This host as the server: its ServerHello breaking the rule is dropped as it leaves.
    let port = 48021;
    let exts = [supported_version(TLS13), key_share(SECP256R1, 65)];
    h.made(&[0x45; 32]);
    h.egress(&to_peer(port, ISN, TCP_SYN | TCP_ACK, &[]));
    let tc: &SchedClassifier = h.0.program(EGRESS).unwrap().try_into().unwrap();
    let frame = to_peer(
        port,
        ISN + 1,
        TCP_PSH | TCP_ACK,
        &server_hello(&[0x45; 32], AES_128_GCM_SHA256, Some(&exts)),
    );
    let opts = TestRunOptions {
        data_in: Some(&frame),
        repeat: 1,
        ..TestRunOptions::default()
    };
    assert_eq!(tc.test_run(opts).unwrap().return_value, TC_ACT_SHOT);
    assert!(blocked(&h, port));
    // Audit mode: reported, nothing dropped or blocklisted.
    let mut m: Array<_, u32> = Array::try_from(h.0.map_mut(maps::MODE).unwrap()).unwrap();
    m.set(0, mode::AUDIT, 0).unwrap();
    h.awaiting(48031);
    assert_eq!(run(&h, &from_peer(48031, ISN + 1, &tls12())), XDP_PASS);
    assert!(!blocked(&h, 48031));
}
