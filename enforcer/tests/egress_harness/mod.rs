//! The egress classifier with its ClientHello reader, loaded for `BPF_PROG_TEST_RUN` on
//! crafted IPv4 frames (client_offers.rs, ja4_cache.rs).

use aya::{
    Ebpf,
    maps::{Array, MapData, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use enforcer_common::{
    event,
    flow::{FlowKey, family},
    maps,
    offer::OfferedEvent,
    policy::{HelloPolicy, action, mode},
};

use super::packets::*;

pub const EGRESS: &str = "enforcer_egress";
pub const PASS: u32 = enforcer_common::tc_return::PASS_U32;
pub const SRC: [u8; 4] = [10, 0, 0, 1];
pub const DST: [u8; 4] = [10, 0, 0, 2];
pub const ISN: u32 = 5000;
pub const MSS: usize = 1448;

pub struct Harness {
    pub ebpf: Ebpf,
    pub events: RingBuf<MapData>,
}

impl Harness {
    /// Enforce mode, unattributed TLS allowed (so every hello passes and is read); the egress
    /// classifier loaded with its ClientHello reader.
    pub fn new() -> Harness {
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
        enforcer::datapath::offer_readers::load_for(&mut ebpf, EGRESS)
            .expect("loading the ClientHello reader (verifier)");
        let mut m: Array<_, u32> = Array::try_from(ebpf.map_mut(maps::MODE).unwrap()).unwrap();
        m.set(0, mode::ENFORCE, 0).unwrap();
        let mut p: Array<_, HelloPolicy> =
            Array::try_from(ebpf.map_mut(maps::HELLO_POLICY).unwrap()).unwrap();
        let policy = HelloPolicy {
            unattributed: action::ALLOW,
            scoped: 0,
            late_attribution: 0,
            quic: 0,
        };
        p.set(0, policy, 0).unwrap();
        let events = RingBuf::try_from(ebpf.take_map(maps::HELLO_EVENTS).unwrap()).unwrap();
        Harness { ebpf, events }
    }

    pub fn run(&self, frame: &[u8]) {
        let tc: &SchedClassifier = self.ebpf.program(EGRESS).unwrap().try_into().unwrap();
        let r = tc
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("tc test run of {} bytes: {e:?}", frame.len()));
        assert_eq!(r.return_value, PASS, "the reader never drops");
    }

    /// The `OfferedEvent`s reported since the last call (hello events skipped).
    pub fn offers(&mut self) -> Vec<OfferedEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item[0] != event::kind::OFFERED {
                continue;
            }
            assert!(item.len() >= size_of::<OfferedEvent>(), "short record");
            // SAFETY: the kernel wrote a whole OfferedEvent.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const OfferedEvent) });
        }
        out
    }

    pub fn one_offer(&mut self, what: &str) -> OfferedEvent {
        let offers = self.offers();
        assert_eq!(offers.len(), 1, "{what}: one offered event");
        offers[0]
    }
}

/// An IPv4 segment from `sport` with sequence number `seq`, `flags`, `payload`.
pub fn seg(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = tcp(sport, 443, flags);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(payload);
    ethernet(&[], ETH_P_IP, &Ipv4::new(SRC, DST, IPPROTO_TCP).build(&t))
}

/// The 4-tuple of [`seg`]'s frames from `sport`, from this host's side.
pub fn flow_of(sport: u16) -> FlowKey {
    let mut key = FlowKey {
        family: family::V4,
        local_port: sport,
        remote_port: 443,
        ..FlowKey::default()
    };
    key.local_addr[..4].copy_from_slice(&SRC);
    key.remote_addr[..4].copy_from_slice(&DST);
    key
}
