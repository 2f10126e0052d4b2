//! The ClientHello reader (`enforcer-ebpf/src/offer.rs`, `offer_fields.rs`) on crafted frames,
//! run in the kernel through `BPF_PROG_TEST_RUN`: the egress classifier judges the hello and
//! tail-calls the reader, which reassembles it across segments and reports its fields (an
//! `OfferedEvent` on `HELLO_EVENTS`). A post-quantum hello (1,216-byte key share) in one frame
//! and split at every byte of its first 64 and at the MSS; a flow without a stream head;
//! retransmissions; garbage lengths and a hello cut short. Arriving at a server on this host
//! (XDP and tc ingress): split anywhere after its first 11 bytes, a padded short frame, a
//! retransmission after the ServerHello.
//!
//! Root only, never skipped (like `flow_heads.rs`). Each test loads its own object.

#[allow(
    dead_code,
    reason = "the frame builder is shared with packet_filters.rs, which uses the rest"
)]
mod packets;

#[allow(dead_code, reason = "shared with ja4_cache.rs, which uses part of it")]
mod egress_harness;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use egress_harness::*;
use enforcer_common::{
    event,
    flow::{FlowKey, direction, family},
    maps,
    offer::{self, OfferState, OfferedEvent, field},
};
use packets::offers::*;
use packets::*;

/// The fields as comparable values.
fn fields(e: &OfferedEvent) -> String {
    let n = |c: usize, cap: usize| c.min(cap);
    format!(
        "read {:#x} legacy {:#06x} len {} suites {:04x?} exts {:04x?} versions {:04x?} groups \
         {:04x?} schemes {:04x?} shares {:04x?} sni {} alpn {:?}..{}",
        e.read,
        e.legacy_version,
        e.hello_len,
        &e.suites[..n(e.suite_count as usize, e.suites.len())],
        &e.extensions[..n(e.extension_count as usize, e.extensions.len())],
        &e.versions[..e.version_count as usize],
        &e.groups[..e.group_count as usize],
        &e.signature_schemes[..e.signature_scheme_count as usize],
        &e.key_shares[..e.key_share_count as usize],
        e.sni,
        &e.alpn[..(e.alpn_len as usize).min(e.alpn.len())],
        e.alpn_last,
    )
}

fn expect_pq(e: &OfferedEvent, record: &[u8]) {
    assert_eq!(e.read, 0x7f, "every field read: {}", fields(e));
    assert_eq!(e.hello_len as usize, record.len());
    assert_eq!(e.legacy_version, 0x0303);
    assert_eq!(&e.suites[..e.suite_count as usize], &SUITES);
    assert_eq!(&e.extensions[..e.extension_count as usize], &EXT_TYPES);
    assert_eq!(&e.versions[..e.version_count as usize], &VERSIONS);
    assert_eq!(&e.groups[..e.group_count as usize], &GROUPS);
    assert_eq!(
        &e.signature_schemes[..e.signature_scheme_count as usize],
        &SCHEMES
    );
    assert_eq!(
        &e.key_shares[..e.key_share_count as usize],
        &[0x2a2a, 0x11ec, 0x001d]
    );
    assert_eq!(
        (e.sni, e.alpn_len, &e.alpn[..2], e.alpn_last),
        (1, 2, &b"h2"[..], b'2')
    );
    assert_eq!(e.direction, enforcer_common::flow::direction::SEND);
}

#[test]
fn a_post_quantum_hello_in_one_frame_is_read_in_full() {
    let mut h = Harness::new();
    let record = hello(&SUITES, &pq_exts());
    assert!(
        record.len() > MSS,
        "{} bytes: more than one MSS",
        record.len()
    );
    h.run(&seg(40000, ISN, TCP_SYN, &[]));
    h.run(&seg(40000, ISN + 1, TCP_PSH | TCP_ACK, &record));
    expect_pq(&h.one_offer("one frame"), &record);
}

/// Split in two at every byte of the first 64 and at the MSS, after the flow's SYN (the judge
/// collects the head across the cut): the same fields each time.
#[test]
fn a_hello_split_at_every_byte_of_its_first_64_and_at_the_mss_reads_the_same() {
    let mut h = Harness::new();
    let record = hello(&SUITES, &pq_exts());
    let cuts: Vec<usize> = (1..=64).chain([MSS]).collect();
    for (i, &cut) in cuts.iter().enumerate() {
        let sport = 41000 + i as u16;
        h.run(&seg(sport, ISN, TCP_SYN, &[]));
        h.run(&seg(sport, ISN + 1, TCP_PSH | TCP_ACK, &record[..cut]));
        h.run(&seg(
            sport,
            ISN + 1 + cut as u32,
            TCP_PSH | TCP_ACK,
            &record[cut..],
        ));
        let e = h.one_offer(&format!("cut at {cut}"));
        expect_pq(&e, &record);
        let buckets: Array<_, u64> =
            Array::try_from(h.ebpf.map(offer::OFFER_BUCKETS).unwrap()).unwrap();
        assert_eq!(
            buckets.get(&offer::OFFERS_OPEN, 0).unwrap(),
            0,
            "cut at {cut}: completed, nothing counted as being read"
        );
    }
}

/// Three segments, the middle one retransmitted, then a gap filled late: bytes are appended
/// only in order, a retransmission adds nothing.
#[test]
fn retransmissions_and_gaps_wait_for_the_bytes_in_order() {
    let mut h = Harness::new();
    let record = hello(&SUITES, &pq_exts());
    let (a, b) = (500, 1100);
    h.run(&seg(42000, ISN, TCP_SYN, &[]));
    h.run(&seg(42000, ISN + 1, TCP_PSH | TCP_ACK, &record[..a]));
    // The last part first (a gap before it): nothing yet.
    h.run(&seg(
        42000,
        ISN + 1 + b as u32,
        TCP_PSH | TCP_ACK,
        &record[b..],
    ));
    assert!(h.offers().is_empty());
    h.run(&seg(
        42000,
        ISN + 1 + a as u32,
        TCP_PSH | TCP_ACK,
        &record[a..b],
    ));
    h.run(&seg(
        42000,
        ISN + 1 + a as u32,
        TCP_PSH | TCP_ACK,
        &record[a..b],
    ));
    assert!(h.offers().is_empty(), "still waiting for the rest");
    h.run(&seg(
        42000,
        ISN + 1 + b as u32,
        TCP_PSH | TCP_ACK,
        &record[b..],
    ));
    expect_pq(&h.one_offer("in order at last"), &record);
    // Retransmitted whole: judged once already, not read again.
    h.run(&seg(42000, ISN + 1, TCP_PSH | TCP_ACK, &record));
    assert!(h.offers().is_empty());
}

/// A flow whose SYN left before the agent (no stream head): judged at the segment that starts
/// with the hello, continued at the next.
#[test]
fn a_flow_without_a_head_is_read_across_the_mss_too() {
    let mut h = Harness::new();
    let record = hello(&SUITES, &pq_exts());
    h.run(&seg(43000, 9000, TCP_PSH | TCP_ACK, &record[..MSS]));
    assert!(h.offers().is_empty());
    h.run(&seg(
        43000,
        9000 + MSS as u32,
        TCP_PSH | TCP_ACK,
        &record[MSS..],
    ));
    expect_pq(&h.one_offer("no head"), &record);
}

#[test]
fn a_hello_without_extensions_has_every_extension_field_read_and_empty() {
    let mut h = Harness::new();
    let record = packets::tls::client_hello(None);
    h.run(&seg(44000, 1, TCP_PSH | TCP_ACK, &record));
    let e = h.one_offer("no extensions");
    assert_eq!(e.read, 0x7f, "{}", fields(&e));
    assert_eq!(
        &e.suites[..e.suite_count as usize],
        &[0x1301, 0x1302, 0x1303]
    );
    assert_eq!((e.extension_count, e.sni, e.alpn_len), (0, 0, 0));
}

/// Cut at every byte and never completed, a hello reports nothing; lengths that lie leave
/// the fields they cover unread, and the programs never fail.
#[test]
fn garbage_lengths_leave_fields_unread() {
    let mut h = Harness::new();
    let good = hello(&SUITES, &pq_exts());
    let first_ext = 5 + 4 + 2 + 32 + 1 + 32 + 2 + 2 * SUITES.len() + 2 + 2;
    // The server name extension's length runs past the list: nothing after it is known.
    let mut bad = good.clone();
    let sni_len = first_ext + 4 + 2;
    bad[sni_len..sni_len + 2].copy_from_slice(&0xfff0u16.to_be_bytes());
    h.run(&seg(45000, 1, TCP_PSH | TCP_ACK, &bad));
    let e = h.one_offer("bad extension length");
    assert_eq!(e.read, field::SUITES, "{}", fields(&e));
    // A session id longer than 32 bytes: nothing.
    let mut long_session = good.clone();
    long_session[5 + 4 + 2 + 32] = 33;
    h.run(&seg(45001, 1, TCP_PSH | TCP_ACK, &long_session));
    assert_eq!(h.one_offer("session id").read, 0);
    // A signature_algorithms list length that disagrees with its extension's.
    let mut schemes = pq_exts();
    schemes[9].1[1] ^= 2;
    h.run(&seg(45002, 1, TCP_PSH | TCP_ACK, &hello(&SUITES, &schemes)));
    let e = h.one_offer("scheme list");
    assert_eq!(e.read, 0x7f & !field::SIGNATURE_SCHEMES, "{}", fields(&e));
    // More suites than the event holds: counted, not all listed, not read.
    let many: Vec<u16> = (0..80).map(|i| 0x0100 + i).collect();
    h.run(&seg(45003, 1, TCP_PSH | TCP_ACK, &hello(&many, &pq_exts())));
    let e = h.one_offer("80 suites");
    assert_eq!(e.suite_count, 80);
    assert_eq!(e.read & field::SUITES, 0);
    assert_eq!(e.read & field::EXTENSIONS, field::EXTENSIONS);
    // A record that ends before its hello: the fields past the record are unread.
    let mut short_record = good.clone();
    short_record[3..5].copy_from_slice(&300u16.to_be_bytes());
    h.run(&seg(45004, 1, TCP_PSH | TCP_ACK, &short_record));
    let e = h.one_offer("short record");
    assert_eq!(e.hello_len, 305);
    let past = field::EXTENSIONS | field::KEY_SHARES | field::VERSIONS;
    assert_eq!(
        e.read & (field::SUITES | past),
        field::SUITES,
        "{}",
        fields(&e)
    );
}

#[test]
fn a_hello_cut_short_and_never_completed_reports_nothing() {
    let mut h = Harness::new();
    let record = hello(&SUITES, &pq_exts());
    for (i, cut) in (11..record.len()).step_by(97).enumerate() {
        let sport = 46000 + i as u16;
        h.run(&seg(sport, 1, TCP_PSH | TCP_ACK, &record[..cut]));
        assert!(h.offers().is_empty(), "cut at {cut}");
    }
}

const XDP: &str = "enforcer_ingress";
const TC_INGRESS: &str = "enforcer_ingress_tc";

/// The ingress programs (this host is the server), each with its readers.
struct Ingress {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    xdp: bool,
}

impl Ingress {
    fn new(xdp: bool) -> Ingress {
        let offsets = enforcer::datapath::btf::sock_offsets().expect("struct sock offsets");
        let mut ebpf = enforcer::datapath::loader::load(&offsets).expect("loading the eBPF object");
        let name = match xdp {
            true => {
                let p: &mut Xdp = ebpf.program_mut(XDP).unwrap().try_into().unwrap();
                p.load().expect("loading the XDP program (verifier)");
                XDP
            }
            false => {
                let p: &mut SchedClassifier =
                    ebpf.program_mut(TC_INGRESS).unwrap().try_into().unwrap();
                p.load().expect("loading the tc ingress program (verifier)");
                TC_INGRESS
            }
        };
        enforcer::datapath::posture_readers::load_for(&mut ebpf, name).expect("ServerHello reader");
        enforcer::datapath::offer_readers::load_for(&mut ebpf, name).expect("ClientHello reader");
        let events = RingBuf::try_from(ebpf.take_map(maps::HELLO_EVENTS).unwrap()).unwrap();
        Ingress { ebpf, events, xdp }
    }

    fn run(&self, frame: &[u8]) {
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let v = match self.xdp {
            true => {
                let p: &Xdp = self.ebpf.program(XDP).unwrap().try_into().unwrap();
                let v = p.test_run(options).expect("xdp test run").return_value;
                assert_eq!(v, 2, "XDP_PASS");
                v
            }
            false => {
                let p: &SchedClassifier =
                    self.ebpf.program(TC_INGRESS).unwrap().try_into().unwrap();
                p.test_run(options).expect("tc test run").return_value
            }
        };
        let passed = if self.xdp {
            2
        } else {
            enforcer_common::tc_return::PASS_U32
        };
        assert_eq!(v, passed, "passed");
    }

    fn offers(&mut self) -> Vec<OfferedEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item[0] == event::kind::OFFERED {
                // SAFETY: the kernel wrote a whole OfferedEvent.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const OfferedEvent) });
            }
        }
        out
    }

    /// The server's ServerHello left (as the egress judge marks it).
    fn answered(&mut self, sport: u16) {
        let mut seen: HashMap<_, FlowKey, u32> =
            HashMap::try_from(self.ebpf.map_mut(maps::HELLOS_SEEN).unwrap()).unwrap();
        seen.insert(arriving_flow(sport), 0, 0).unwrap();
    }
}

/// This host (10.0.0.1:443) as the server, from its side.
fn arriving_flow(sport: u16) -> FlowKey {
    let mut k = FlowKey {
        family: family::V4,
        local_port: 443,
        remote_port: sport,
        ..FlowKey::default()
    };
    k.local_addr[..4].copy_from_slice(&SRC);
    k.remote_addr[..4].copy_from_slice(&DST);
    k
}

/// A client's segment (from 10.0.0.2:`sport`) to this host's port 443.
fn arriving(sport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = tcp(sport, 443, TCP_PSH | TCP_ACK);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(payload);
    ethernet(&[], ETH_P_IP, &Ipv4::new(DST, SRC, IPPROTO_TCP).build(&t))
}

fn expect_arrived(e: &OfferedEvent, record: &[u8], sport: u16) {
    let mut sent = *e;
    sent.direction = direction::SEND;
    expect_pq(&sent, record);
    assert_eq!(e.direction, direction::RECV);
    assert_eq!(e.flow, arriving_flow(sport));
}

/// Arriving at a server on this host, in XDP and in tc: a hello that starts a segment (its
/// first 11 bytes, at least, in it) is read across the segments that follow, cut anywhere.
#[test]
fn an_arriving_hello_is_read_across_segments_in_xdp_and_tc() {
    let record = hello(&SUITES, &pq_exts());
    for xdp in [true, false] {
        let mut h = Ingress::new(xdp);
        let cuts: Vec<usize> = (11..=64).chain([MSS]).collect();
        for (i, &cut) in cuts.iter().enumerate() {
            let sport = 47000 + i as u16;
            h.run(&arriving(sport, 77, &record[..cut]));
            h.run(&arriving(sport, 77 + cut as u32, &record[cut..]));
            let offers = h.offers();
            assert_eq!(offers.len(), 1, "xdp {xdp}, cut at {cut}");
            expect_arrived(&offers[0], &record, sport);
        }
    }
}

/// A last segment of three bytes arrives padded to Ethernet's 60: the padding is not taken for
/// hello bytes (the segment ends where its IP header says).
#[test]
fn an_arriving_short_segment_ends_where_its_ip_header_says() {
    let record = hello(&SUITES, &pq_exts());
    let cut = record.len() - 3;
    let mut h = Ingress::new(true);
    h.run(&arriving(48000, 5, &record[..cut]));
    let mut last = arriving(48000, 5 + cut as u32, &record[cut..]);
    assert!(last.len() < 60);
    last.resize(60, 0xee);
    h.run(&last);
    let offers = h.offers();
    assert_eq!(offers.len(), 1);
    expect_arrived(&offers[0], &record, 48000);
}

/// Once the server's ServerHello left, a segment that starts like a ClientHello is a
/// retransmission (or ciphertext): not read.
#[test]
fn an_arriving_hello_after_the_server_answered_is_not_read() {
    let record = hello(&SUITES, &pq_exts());
    let mut h = Ingress::new(false);
    h.answered(48100);
    h.run(&arriving(48100, 1, &record));
    assert!(h.offers().is_empty());
    h.run(&arriving(48101, 1, &record));
    assert_eq!(h.offers().len(), 1);
}

/// A hello left incomplete counts its bucket; when its entry is gone (evicted), the next
/// segment of the flow takes the count back, so the bucket's flows stop paying the lookup.
#[test]
fn a_bucket_count_an_evicted_entry_left_is_taken_back() {
    let mut h = Harness::new();
    let record = hello(&SUITES, &pq_exts());
    let sport = 49000;
    let key = flow_of(sport);
    let bucket = enforcer_common::flow::held::bucket_in(&key, offer::OFFER_BUCKET_BITS);
    // (the flow's bucket, the sum over all buckets: `OFFERS_OPEN`)
    let count = |h: &Harness| {
        let a: Array<_, u64> = Array::try_from(h.ebpf.map(offer::OFFER_BUCKETS).unwrap()).unwrap();
        (
            a.get(&bucket, 0).unwrap(),
            a.get(&offer::OFFERS_OPEN, 0).unwrap(),
        )
    };
    assert_eq!(count(&h), (0, 0));
    h.run(&seg(sport, 1, TCP_PSH | TCP_ACK, &record[..MSS]));
    assert_eq!(
        count(&h),
        (1, 1),
        "incomplete: counted, in its bucket and the sum"
    );
    let mut offers: HashMap<_, FlowKey, OfferState> =
        HashMap::try_from(h.ebpf.map_mut(offer::OFFERS).unwrap()).unwrap();
    offers.remove(&key).expect("the entry");
    h.run(&seg(
        sport,
        1 + MSS as u32,
        TCP_PSH | TCP_ACK,
        &record[MSS..],
    ));
    assert_eq!(
        count(&h),
        (0, 0),
        "no entry: the count is taken back, from both"
    );
    assert!(h.offers().is_empty());
}

/// TCP Fast Open: the SYN carries the hello's first bytes (they start after the SYN's own
/// sequence number); the rest follows.
#[test]
fn a_hello_in_a_fast_open_syn_is_read_from_the_syn_on() {
    let mut h = Harness::new();
    let record = hello(&SUITES, &pq_exts());
    for (i, cut) in [20, 600].into_iter().enumerate() {
        let sport = 49100 + i as u16;
        h.run(&seg(sport, ISN, TCP_SYN, &record[..cut]));
        h.run(&seg(
            sport,
            ISN + 1 + cut as u32,
            TCP_PSH | TCP_ACK,
            &record[cut..],
        ));
        expect_pq(&h.one_offer(&format!("SYN with {cut} bytes")), &record);
    }
}

/// What reading a ClientHello costs: the post-quantum hello in one frame through the egress
/// classifier, each on a flow of its own, with the reader loaded and without (the tail call then
/// fails and the packet passes), median `BPF_PROG_TEST_RUN` durations. A measurement, run by
/// hand: `cargo test -p enforcer --test client_offers -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn cost_of_reading_a_client_hello() {
    let record = hello(&SUITES, &pq_exts());
    let small = packets::tls::client_hello(Some(&[packets::tls::server_name_ext(b"a.example")]));
    for (name, bytes) in [("1.7 KiB post-quantum", &record), ("158-byte", &small)] {
        let mut medians = vec![];
        for with_reader in [true, false] {
            let mut h = Harness::new();
            if !with_reader {
                let mut table: aya::maps::ProgramArray<_> =
                    aya::maps::ProgramArray::try_from(h.ebpf.map_mut(offer::OFFER_TC).unwrap())
                        .unwrap();
                table.clear_index(&0).unwrap();
            }
            let tc: &SchedClassifier = h.ebpf.program(EGRESS).unwrap().try_into().unwrap();
            let mut ns: Vec<u128> = (0..300u16)
                .map(|i| {
                    let frame = seg(50000 + i, 1, TCP_PSH | TCP_ACK, bytes);
                    let options = TestRunOptions {
                        data_in: Some(&frame),
                        repeat: 1,
                        ..TestRunOptions::default()
                    };
                    tc.test_run(options).unwrap().duration.as_nanos()
                })
                .collect();
            ns.sort_unstable();
            medians.push(ns[ns.len() / 2]);
        }
        eprintln!(
            "{name} hello: {} ns with the reader, {} ns without",
            medians[0], medians[1]
        );
    }
}
