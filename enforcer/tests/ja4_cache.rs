//! The kernel side of the JA4 cache (`enforcer-ebpf/src/ja4_cache.rs`) on crafted frames, run
//! through `BPF_PROG_TEST_RUN`: a ClientHello whose JA4 fields userspace cached a verdict for
//! gets that verdict in `JA4_VERDICTS` as soon as the reader has read it (its ServerHello then
//! does not wait), and only under the policy generation it was cached for.
//!
//! Root only, never skipped (like `client_offers.rs`).

#[allow(
    dead_code,
    reason = "the frame builder is shared with packet_filters.rs, which uses the rest"
)]
mod packets;

#[allow(
    dead_code,
    reason = "shared with client_offers.rs, which uses all of it"
)]
mod egress_harness;

use aya::maps::{Array, HashMap};
use egress_harness::*;
use enforcer_common::{
    flow::FlowKey,
    ja4_key::{JA4_CACHE, JA4_GENERATION, Ja4Key},
    posture::{JA4_VERDICTS, Ja4Verdict, ja4_state},
};
use packets::offers::*;
use packets::*;

fn verdict(h: &Harness, sport: u16) -> Option<Ja4Verdict> {
    let v: HashMap<_, FlowKey, Ja4Verdict> =
        HashMap::try_from(h.ebpf.map(JA4_VERDICTS).unwrap()).unwrap();
    v.get(&flow_of(sport), 0).ok()
}

fn set_generation(h: &mut Harness, generation: u64) {
    let mut g: Array<_, u64> = Array::try_from(h.ebpf.map_mut(JA4_GENERATION).unwrap()).unwrap();
    g.set(0, generation, 0).unwrap();
}

/// The hello in one segment after its SYN, from `sport`; its `offered` event.
fn send(h: &mut Harness, sport: u16, record: &[u8]) -> enforcer_common::offer::OfferedEvent {
    h.run(&seg(sport, ISN, TCP_SYN, &[]));
    h.run(&seg(sport, ISN + 1, TCP_PSH | TCP_ACK, record));
    h.one_offer(&format!("port {sport}"))
}

#[test]
fn a_cached_verdict_becomes_the_flows_at_once_under_its_generation_only() {
    let mut h = Harness::new();
    // Split across two segments as well: the reader reassembles it first.
    let record = hello(&SUITES, &pq_exts());
    let first = send(&mut h, 44000, &record);
    assert_eq!(verdict(&h, 44000), None, "no generation: the cache is off");
    let key = Ja4Key::of(&first, 7).expect("the hello has a JA4");
    {
        let mut cache: HashMap<_, Ja4Key, u64> =
            HashMap::try_from(h.ebpf.map_mut(JA4_CACHE).unwrap()).unwrap();
        cache.insert(key, 0b101, 0).unwrap();
    }
    set_generation(&mut h, 7);
    send(&mut h, 44001, &record);
    let v = verdict(&h, 44001).expect("a hit: the verdict is there");
    assert_eq!((v.state, v.matched), (ja4_state::MATCHED, 0b101));
    // The same hello split at the MSS: the same fields, the same key.
    h.run(&seg(44002, ISN, TCP_SYN, &[]));
    h.run(&seg(44002, ISN + 1, TCP_PSH | TCP_ACK, &record[..MSS]));
    assert_eq!(verdict(&h, 44002), None, "not read yet");
    h.run(&seg(
        44002,
        ISN + 1 + MSS as u32,
        TCP_PSH | TCP_ACK,
        &record[MSS..],
    ));
    h.one_offer("split");
    assert_eq!(verdict(&h, 44002).map(|v| v.matched), Some(0b101));
    // Another policy (the patterns renumbered): the entry is not its verdict.
    set_generation(&mut h, 8);
    send(&mut h, 44003, &record);
    assert_eq!(verdict(&h, 44003), None, "another generation: a miss");
    // Another hello (other suites): a miss.
    set_generation(&mut h, 7);
    let other = hello(&SUITES[..8], &pq_exts());
    send(&mut h, 44004, &other);
    assert_eq!(verdict(&h, 44004), None, "other fields: a miss");
}
