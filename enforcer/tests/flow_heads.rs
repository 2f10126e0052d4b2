//! The egress classifier's stream heads and random lookup (`enforcer-ebpf/src/flow_head.rs`,
//! `hello.rs`) on crafted frames, run in the kernel through `BPF_PROG_TEST_RUN`: a hello split
//! into 1-byte segments after the SYN, a TCP Fast Open SYN carrying the hello, retransmissions
//! and gaps, a stream that is not TLS, a HelloRetryRequest and ChangeCipherSpec before the real
//! ServerHello, and a random found in `HELLO_RANDOMS` deciding the flow's library.
//!
//! Root only, never skipped (like `client_hello.rs`). Each test loads its own object.

#[allow(
    dead_code,
    reason = "the frame builder is shared with packet_filters.rs, which uses the rest"
)]
mod packets;

use aya::{
    Ebpf,
    maps::{Array, HashMap},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use enforcer_common::{
    flow::{FlowKey, FlowState, family, verdict},
    hello::{self, HELLO_RETRY_RANDOM, RandomKey, RandomOrigin, evidence},
    maps,
    policy::{HelloPolicy, action, mode},
};
use packets::tls::client_hello;
use packets::*;

const EGRESS: &str = "enforcer_egress";
const PASS: u32 = enforcer_common::tc_return::PASS_U32;
const DROP: u32 = 2;
const SRC: [u8; 4] = [10, 0, 0, 1];
const DST: [u8; 4] = [10, 0, 0, 2];
const ISN: u32 = 1000;
const ALLOWED_LIB: u32 = 7;
const DENIED_LIB: u32 = 8;

struct Harness(Ebpf);

impl Harness {
    /// Enforce mode, `unattributed_tls: deny`, library 7 allowed and 8 denied.
    fn new() -> Harness {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "BPF_PROG_TEST_RUN needs root"
        );
        let offsets = enforcer::datapath::btf::sock_offsets().expect("struct sock offsets");
        let mut ebpf = enforcer::datapath::loader::load(&offsets).expect("loading the eBPF object");
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
        actions.insert(ALLOWED_LIB, action::ALLOW, 0).unwrap();
        actions.insert(DENIED_LIB, action::DENY, 0).unwrap();
        Harness(ebpf)
    }

    fn run(&self, frame: &[u8]) -> u32 {
        let tc: &SchedClassifier = self.0.program(EGRESS).unwrap().try_into().unwrap();
        let r = tc
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("tc test run: {e:?}"));
        r.return_value
    }

    /// `lib` made `random` (as the library-side probes record it).
    fn made(&mut self, random: &[u8; 32], lib: u32) {
        let mut m: HashMap<_, RandomKey, RandomOrigin> =
            HashMap::try_from(self.0.map_mut(hello::HELLO_RANDOMS).unwrap()).unwrap();
        let mut key = [0u8; hello::KEY_LEN];
        key.copy_from_slice(&random[hello::KEY_FROM..hello::KEY_FROM + hello::KEY_LEN]);
        let origin = RandomOrigin {
            made_ns: 1,
            lib_id: lib,
            tgid: 4242,
            comm: *b"flow-heads-test\0",
        };
        m.insert(RandomKey(key), origin, 0).unwrap();
    }

    fn state(&self, sport: u16) -> Option<FlowState> {
        let flows: HashMap<_, FlowKey, FlowState> =
            HashMap::try_from(self.0.map(maps::FLOWS).unwrap()).unwrap();
        flows.get(&flow(sport), 0).ok()
    }

    fn blocked(&self, sport: u16) -> bool {
        let b: HashMap<_, FlowKey, u8> =
            HashMap::try_from(self.0.map(maps::BLOCKLIST).unwrap()).unwrap();
        b.get(&flow(sport), 0).is_ok()
    }
}

impl Harness {
    /// `HEAD_BUCKETS[head_bucket_of(flow(sport))]`: the heads counted in that flow's bucket.
    fn head_bucket(&self, sport: u16) -> u64 {
        let a: Array<_, u64> =
            Array::try_from(self.0.map(enforcer_common::hello::HEAD_BUCKETS).unwrap()).unwrap();
        a.get(&enforcer_common::hello::head_bucket_of(&flow(sport)), 0)
            .unwrap()
    }
}

fn flow(sport: u16) -> FlowKey {
    let mut k = FlowKey {
        family: family::V4,
        local_port: sport,
        remote_port: 443,
        ..FlowKey::default()
    };
    k.local_addr[..4].copy_from_slice(&SRC);
    k.remote_addr[..4].copy_from_slice(&DST);
    k
}

/// An IPv4 segment from `sport` with sequence number `seq`, `flags`, `payload`.
fn seg(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = tcp(sport, 443, flags);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(payload);
    ethernet(&[], ETH_P_IP, &Ipv4::new(SRC, DST, IPPROTO_TCP).build(&t))
}

fn syn(sport: u16) -> Vec<u8> {
    seg(sport, ISN, TCP_SYN, &[])
}

/// Sends `bytes` as 1-byte segments from stream offset `from`; the verdicts.
fn one_byte_segments(h: &Harness, sport: u16, bytes: &[u8], from: u32) -> Vec<u32> {
    (0..bytes.len())
        .map(|i| {
            let at = ISN + 1 + from + i as u32;
            h.run(&seg(sport, at, TCP_PSH | TCP_ACK, &bytes[i..i + 1]))
        })
        .collect()
}

/// The random of `packets::tls::client_hello` (bytes 11..43 of the record).
fn random_of(hello: &[u8]) -> [u8; 32] {
    hello[11..43].try_into().unwrap()
}

#[test]
fn one_byte_segments_are_collected_and_the_43rd_is_judged() {
    let h = Harness::new();
    let hello = client_hello(None);
    assert_eq!(h.run(&syn(41000)), PASS);
    let verdicts = one_byte_segments(&h, 41000, &hello[..43], 0);
    assert!(verdicts[..42].iter().all(|&v| v == PASS), "{verdicts:?}");
    assert_eq!(
        verdicts[42], DROP,
        "the byte completing the random is dropped"
    );
    assert!(h.blocked(41000), "unattributed and split: blocked");
    assert_eq!(h.run(&seg(41000, ISN + 44, TCP_ACK, &hello[43..])), DROP);
}

/// `HEAD_BUCKETS` counts a flow's head from its SYN (a retransmitted SYN adds nothing) until the
/// hello is judged; a split hello is collected with the count in place, and once judged the
/// bucket is back at zero, so the flow's later segments skip the `FLOW_HEADS` lookup.
#[test]
fn a_heads_bucket_counts_it_from_the_syn_until_its_hello_is_judged() {
    let h = Harness::new();
    let sport = 41010;
    assert_eq!(h.head_bucket(sport), 0);
    assert_eq!(h.run(&syn(sport)), PASS);
    assert_eq!(h.run(&syn(sport)), PASS, "a retransmitted SYN");
    assert_eq!(h.head_bucket(sport), 1, "one head, counted once");
    let hello = client_hello(None);
    let verdicts = one_byte_segments(&h, sport, &hello[..43], 0);
    assert_eq!(
        verdicts[42], DROP,
        "collected across 43 segments: {verdicts:?}"
    );
    assert_eq!(
        h.head_bucket(sport),
        0,
        "judged: the head and its count are gone"
    );
}

#[test]
fn retransmissions_and_gaps_do_not_change_collected_bytes() {
    let h = Harness::new();
    let hello = client_hello(None);
    let sport = 41001;
    assert_eq!(h.run(&syn(sport)), PASS);
    assert_eq!(
        one_byte_segments(&h, sport, &hello[..10], 0),
        vec![PASS; 10]
    );
    // A gap (bytes 20..30 before 10..20) adds nothing; a retransmission of 0..10 with other bytes
    // is not read again.
    assert_eq!(h.run(&seg(sport, ISN + 21, TCP_ACK, &hello[20..30])), PASS);
    assert_eq!(h.run(&seg(sport, ISN + 1, TCP_ACK, b"GET / HTTP")), PASS);
    assert!(!h.blocked(sport));
    // The rest, from offset 10, in one segment: judged now, as the hello it is.
    assert_eq!(h.run(&seg(sport, ISN + 11, TCP_ACK, &hello[10..])), DROP);
}

#[test]
fn fast_open_syn_data_is_the_start_of_the_stream() {
    let mut h = Harness::new();
    let hello = client_hello(None);
    h.made(&random_of(&hello), ALLOWED_LIB);
    assert_eq!(h.run(&seg(41002, ISN, TCP_SYN, &hello)), PASS);
    let s = h.state(41002).expect("attributed by its random");
    assert_eq!(
        (s.lib_id, s.verdict, s.evidence),
        (ALLOWED_LIB, verdict::ALLOWED, evidence::RANDOM)
    );
    // The same random on a denied library's hello, split: blocked.
    let mut h = Harness::new();
    h.made(&random_of(&hello), DENIED_LIB);
    assert_eq!(h.run(&seg(41003, ISN, TCP_SYN, &hello[..20])), PASS);
    assert_eq!(h.run(&seg(41003, ISN + 21, TCP_ACK, &hello[20..])), DROP);
    assert_eq!(
        h.state(41003).map(|s| (s.lib_id, s.verdict)),
        Some((DENIED_LIB, verdict::BLOCKED))
    );
}

#[test]
fn a_thread_claim_without_the_librarys_random_is_unattributed() {
    let mut h = Harness::new();
    let sport = 41004;
    // A thread of library 7 touched the socket, and 7 makes its own randoms.
    let mut flows: HashMap<_, FlowKey, FlowState> =
        HashMap::try_from(h.0.map_mut(maps::FLOWS).unwrap()).unwrap();
    let state = FlowState {
        first_seen_ns: 1,
        lib_id: ALLOWED_LIB,
        verdict: verdict::ALLOWED,
        op: 1,
        direction: 1,
        evidence: evidence::THREAD,
    };
    flows.insert(flow(sport), state, 0).unwrap();
    let mut bound: HashMap<_, u32, u8> =
        HashMap::try_from(h.0.map_mut(hello::RANDOM_LIBS).unwrap()).unwrap();
    bound.insert(ALLOWED_LIB, 1, 0).unwrap();
    assert_eq!(h.run(&syn(sport)), PASS);
    assert_eq!(
        h.run(&seg(sport, ISN + 1, TCP_ACK, &client_hello(None))),
        DROP
    );
}

#[test]
fn a_stream_that_is_not_tls_passes_and_is_not_judged_later() {
    let h = Harness::new();
    let sport = 41005;
    assert_eq!(h.run(&syn(sport)), PASS);
    let request = b"GET / HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n";
    assert_eq!(h.run(&seg(sport, ISN + 1, TCP_ACK, request)), PASS);
    assert!(!h.blocked(sport));
}

/// A ServerHello record with `random`.
fn server_hello(random: &[u8; 32]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(random);
    body.push(0); // session id
    body.extend_from_slice(&[0x13, 0x01, 0]); // cipher suite, compression
    body.extend_from_slice(&[0, 6, 0, 43, 0, 2, 3, 4]); // supported_versions: TLS 1.3
    let mut hs = vec![2, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 3, 3, 0, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

#[test]
fn the_server_hello_after_a_retry_and_a_change_cipher_spec_is_judged() {
    let mut h = Harness::new();
    let sport = 41006;
    let real = [0x5a; 32];
    h.made(&real, DENIED_LIB);
    assert_eq!(h.run(&seg(sport, ISN, TCP_SYN | TCP_ACK, &[])), PASS);
    let mut flight = server_hello(&HELLO_RETRY_RANDOM);
    flight.extend_from_slice(&[0x14, 3, 3, 0, 1, 1]);
    assert_eq!(
        h.run(&seg(sport, ISN + 1, TCP_PSH | TCP_ACK, &flight)),
        PASS,
        "the retry passes"
    );
    assert!(!h.blocked(sport));
    let next = ISN + 1 + flight.len() as u32;
    assert_eq!(
        h.run(&seg(sport, next, TCP_PSH | TCP_ACK, &server_hello(&real))),
        DROP
    );
    assert_eq!(h.state(sport).map(|s| s.lib_id), Some(DENIED_LIB));

    // The ChangeCipherSpec at the start of the next segment instead, the hello split after it.
    let sport = 41007;
    assert_eq!(h.run(&seg(sport, ISN, TCP_SYN | TCP_ACK, &[])), PASS);
    let retry = server_hello(&HELLO_RETRY_RANDOM);
    assert_eq!(h.run(&seg(sport, ISN + 1, TCP_ACK, &retry)), PASS);
    let at = ISN + 1 + retry.len() as u32;
    let mut rest = vec![0x14, 3, 3, 0, 1, 1];
    rest.extend_from_slice(&server_hello(&real));
    assert_eq!(h.run(&seg(sport, at, TCP_ACK, &rest[..20])), PASS);
    assert_eq!(h.run(&seg(sport, at + 20, TCP_ACK, &rest[20..])), DROP);
}

#[test]
fn a_hello_that_begins_a_later_segment_is_still_judged() {
    let h = Harness::new();
    let sport = 41008;
    assert_eq!(h.run(&syn(sport)), PASS);
    // STARTTLS: a short plaintext command, then the ClientHello in the next segment; the head
    // (10 + 33 bytes) is not a hello, the segment that completed it begins one.
    assert_eq!(h.run(&seg(sport, ISN + 1, TCP_ACK, b"STARTTLS\r\n")), PASS);
    assert_eq!(
        h.run(&seg(sport, ISN + 11, TCP_ACK, &client_hello(None))),
        DROP
    );
    assert!(h.blocked(sport));
}

#[test]
fn a_server_hello_no_library_made_is_unattributed_tls() {
    let h = Harness::new();
    // This host as the server: its SYN-ACK starts the head; the ServerHello's random was made
    // by no probed library and no thread claimed the flow.
    let sport = 41009;
    assert_eq!(h.run(&seg(sport, ISN, TCP_SYN | TCP_ACK, &[])), PASS);
    let hello = server_hello(&[0x3c; 32]);
    assert_eq!(h.run(&seg(sport, ISN + 1, TCP_ACK, &hello[..7])), PASS);
    assert_eq!(h.run(&seg(sport, ISN + 8, TCP_ACK, &hello[7..])), DROP);
    assert!(h.blocked(sport));
    // On a flow without a head (its SYN-ACK left before the agent attached), judged too.
    let sport = 41010;
    assert_eq!(h.run(&seg(sport, ISN + 1, TCP_ACK, &hello)), DROP);
    assert!(h.blocked(sport));
}

#[test]
fn ciphertext_that_begins_like_a_hello_on_a_flow_without_a_head_passes() {
    let h = Harness::new();
    // The record type, version and message type of a hello (which random data matches once in
    // 2^23 segments), but no hello's handshake length or version after them.
    let mut looks_like = server_hello(&[0x11; 32]);
    looks_like[6] = 0x9d; // a handshake length of 10 MiB
    let mut wrong_version = client_hello(None);
    wrong_version[9] = 0xe1;
    let short = [0x16, 3, 3, 0, 4, 2, 0, 0, 0, 3];
    for (i, payload) in [&looks_like[..], &wrong_version[..], &short[..]]
        .into_iter()
        .enumerate()
    {
        let sport = 41011 + i as u16;
        assert_eq!(
            h.run(&seg(sport, 77_000, TCP_ACK, payload)),
            PASS,
            "case {i}"
        );
        assert!(!h.blocked(sport), "case {i}");
        assert!(h.state(sport).is_none(), "case {i}: not judged");
    }
}
