//! One loaded object with its packet programs (verdicts and drop counters checked together),
//! the flows the tests block, and the frames of those flows. Every ingress frame goes through
//! both ingress forms, XDP and the tc ingress classifier (`--ingress`), which must agree.

use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use enforcer_common::{
    flow::{FlowKey, family},
    maps,
    policy::HelloPolicy,
    stat::Stat,
};

use crate::packets::*;

pub const INGRESS: &str = "enforcer_ingress";
pub const EGRESS: &str = "enforcer_egress";
pub const INGRESS_TC: &str = "enforcer_ingress_tc";

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = enforcer_common::tc_return::PASS_U32;
pub const TC_ACT_SHOT: u32 = 2;

/// Offset, in the TCP header, of the last byte the parser reads (the flags, for tc's RST
/// exception), plus one: a frame is parsed only if it holds `l4 + TCP_BYTES_READ` bytes.
pub const TCP_BYTES_READ: usize = TCP_FLAGS_OFFSET + 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}
pub use Verdict::{Drop, Pass};

/// One loaded object, its two packet programs, and the drops seen so far.
pub struct Harness {
    pub ebpf: Ebpf,
    pub xdp_drops: u64,
    pub tc_drops: u64,
    pub tc_ingress_drops: u64,
}

impl Harness {
    pub fn new() -> Self {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "packet_filters loads eBPF programs and needs root: run `sudo -E cargo test -p enforcer --test packet_filters`"
        );
        let offsets =
            enforcer::datapath::btf::sock_offsets().expect("reading struct sock offsets from BTF");
        let mut ebpf = enforcer::datapath::loader::load(&offsets).expect("loading the eBPF object");
        let xdp: &mut Xdp = ebpf
            .program_mut(INGRESS)
            .expect("XDP program missing")
            .try_into()
            .expect("not an XDP program");
        xdp.load().expect("loading the XDP program (verifier)");
        let tc: &mut SchedClassifier = ebpf
            .program_mut(EGRESS)
            .expect("tc program missing")
            .try_into()
            .expect("not a tc classifier");
        tc.load().expect("loading the tc program (verifier)");
        let tc: &mut SchedClassifier = ebpf
            .program_mut(INGRESS_TC)
            .expect("tc ingress program missing")
            .try_into()
            .expect("not a tc classifier");
        tc.load()
            .expect("loading the tc ingress program (verifier)");
        let harness = Self {
            ebpf,
            xdp_drops: 0,
            tc_drops: 0,
            tc_ingress_drops: 0,
        };
        assert_eq!(
            harness.stats(),
            (0, 0),
            "fresh object with non-zero drop counters"
        );
        harness
    }

    /// Blocks `key` as userspace does (`LiveMaps::block`): `BLOCKLIST_HELD[USERSPACE]` first.
    pub fn block(&mut self, key: FlowKey) {
        let map = self
            .ebpf
            .map_mut(maps::BLOCKLIST_HELD)
            .expect("BLOCKLIST_HELD map");
        let mut held: Array<_, u64> = Array::try_from(map).expect("BLOCKLIST_HELD type");
        held.set(enforcer_common::flow::held::USERSPACE, 1, 0)
            .expect("writing BLOCKLIST_HELD");
        let map = self.ebpf.map_mut(maps::BLOCKLIST).expect("BLOCKLIST map");
        let mut blocklist: HashMap<_, FlowKey, u8> =
            HashMap::try_from(map).expect("BLOCKLIST type");
        blocklist
            .insert(key, 1, 0)
            .expect("inserting into BLOCKLIST");
    }

    /// `MODE` and the `quic` action of `HELLO_POLICY` (the rest of it zero).
    pub fn set_quic(&mut self, mode: u32, quic: u8) {
        let map = self.ebpf.map_mut(maps::MODE).expect("MODE map");
        let mut m: Array<_, u32> = Array::try_from(map).expect("MODE type");
        m.set(0, mode, 0).expect("writing MODE");
        let map = self
            .ebpf
            .map_mut(maps::HELLO_POLICY)
            .expect("HELLO_POLICY map");
        let mut p: Array<_, HelloPolicy> = Array::try_from(map).expect("HELLO_POLICY type");
        let policy = HelloPolicy {
            quic,
            ..HelloPolicy::default()
        };
        p.set(0, policy, 0).expect("writing HELLO_POLICY");
    }

    /// (XDP drops, tc drops), summed over CPUs.
    pub fn stats(&self) -> (u64, u64) {
        let map = self.ebpf.map(maps::STATS).expect("STATS map");
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).expect("STATS type");
        let sum = |index| {
            stats
                .get(&index, 0)
                .expect("reading STATS")
                .iter()
                .sum::<u64>()
        };
        (sum(Stat::XdpDrops.index()), sum(Stat::TcDrops.index()))
    }

    pub fn run_ingress(&self, frame: &[u8], repeat: u32) -> Result<Verdict, ProgramError> {
        let xdp: &Xdp = self.ebpf.program(INGRESS).unwrap().try_into().unwrap();
        let result = xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok(match result.return_value {
            XDP_PASS => Pass,
            XDP_DROP => Drop,
            other => panic!("XDP returned {other}, neither XDP_PASS nor XDP_DROP"),
        })
    }

    pub fn run_egress(&self, frame: &[u8], repeat: u32) -> Result<Verdict, ProgramError> {
        self.run_classifier(EGRESS, frame, repeat)
    }

    pub fn run_ingress_tc(&self, frame: &[u8], repeat: u32) -> Result<Verdict, ProgramError> {
        self.run_classifier(INGRESS_TC, frame, repeat)
    }

    fn run_classifier(
        &self,
        name: &str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<Verdict, ProgramError> {
        let tc: &SchedClassifier = self.ebpf.program(name).unwrap().try_into().unwrap();
        let result = tc.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok(match result.return_value {
            TC_ACT_OK => Pass,
            TC_ACT_SHOT => Drop,
            other => panic!("tc returned {other}, neither TC_ACT_OK nor TC_ACT_SHOT"),
        })
    }

    /// The XDP verdict on `frame`, which the tc ingress classifier must give too; each drop
    /// counter must follow its program exactly.
    pub fn ingress(&mut self, frame: &[u8]) -> Verdict {
        let verdict = self
            .run_ingress(frame, 1)
            .unwrap_or_else(|e| panic!("XDP test run of a {}-byte frame: {e:?}", frame.len()));
        if verdict == Drop {
            self.xdp_drops += 1;
        }
        match self.run_ingress_tc(frame, 1) {
            Ok(tc) => assert_eq!(
                tc,
                verdict,
                "tc ingress and XDP differ on a {}-byte frame",
                frame.len()
            ),
            // The skb test run refuses some short frames XDP runs (see `skb_may_refuse`).
            Err(e) => assert!(
                verdict == Pass && skb_may_refuse(frame) && is_einval(&Err(e)),
                "tc ingress test run of a {}-byte frame failed",
                frame.len()
            ),
        }
        if verdict == Drop {
            self.tc_ingress_drops += 1;
        }
        self.check_stats();
        verdict
    }

    /// The tc verdict on `frame`; the tc drop counter must follow it exactly.
    pub fn egress(&mut self, frame: &[u8]) -> Verdict {
        let verdict = self
            .run_egress(frame, 1)
            .unwrap_or_else(|e| panic!("tc test run of a {}-byte frame: {e:?}", frame.len()));
        if verdict == Drop {
            self.tc_drops += 1;
        }
        self.check_stats();
        verdict
    }

    pub fn check_stats(&self) {
        assert_eq!(
            self.stats(),
            (self.xdp_drops, self.tc_drops),
            "STATS (XDP drops, tc drops) differ from the drops returned"
        );
        let map = self.ebpf.map(maps::STATS).expect("STATS map");
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).expect("STATS type");
        let index = Stat::TcIngressDrops.index();
        let tc_ingress: u64 = stats.get(&index, 0).expect("reading STATS").iter().sum();
        assert_eq!(
            tc_ingress, self.tc_ingress_drops,
            "STATS tc ingress drops differ"
        );
    }

    /// Asserts the total drops so far, as counted by the test itself.
    pub fn assert_drops(&self, xdp: u64, tc: u64) {
        assert_eq!((self.xdp_drops, self.tc_drops), (xdp, tc), "drops returned");
        self.check_stats();
    }

    /// Runs the inbound and the outbound frame of `flow` (made by `build`) through both hooks.
    /// Blocked: inbound dropped by XDP, outbound by tc, each passed by the other hook.
    /// Not blocked: everything passes.
    pub fn expect_flow<const N: usize>(
        &mut self,
        what: &str,
        flow: &Flow<N>,
        blocked: bool,
        build: impl Fn(&Ends<N>) -> Vec<u8>,
    ) {
        let inbound = build(&flow.inbound());
        let outbound = build(&flow.outbound());
        let want = if blocked { Drop } else { Pass };
        assert_eq!(self.ingress(&inbound), want, "{what}: inbound frame at XDP");
        assert_eq!(self.egress(&inbound), Pass, "{what}: inbound frame at tc");
        assert_eq!(
            self.ingress(&outbound),
            Pass,
            "{what}: outbound frame at XDP"
        );
        assert_eq!(self.egress(&outbound), want, "{what}: outbound frame at tc");
    }

    /// `frame` passes both hooks.
    pub fn expect_pass(&mut self, what: &str, frame: &[u8]) {
        assert_eq!(self.ingress(frame), Pass, "{what}: XDP");
        assert_eq!(self.egress(frame), Pass, "{what}: tc");
    }
}

/// A TCP connection seen from this host, like a `FlowKey`; `N` is 4 or 16 address bytes.
#[derive(Clone, Copy, Debug)]
pub struct Flow<const N: usize> {
    pub local: [u8; N],
    pub local_port: u16,
    pub remote: [u8; N],
    pub remote_port: u16,
}

/// Source and destination of one frame.
#[derive(Clone, Copy, Debug)]
pub struct Ends<const N: usize> {
    pub src: [u8; N],
    pub dst: [u8; N],
    pub sport: u16,
    pub dport: u16,
}

impl<const N: usize> Flow<N> {
    pub fn key(&self) -> FlowKey {
        let mut key = FlowKey {
            family: match N {
                4 => family::V4,
                16 => family::V6,
                _ => unreachable!(),
            },
            local_port: self.local_port,
            remote_port: self.remote_port,
            ..FlowKey::default()
        };
        key.local_addr[..N].copy_from_slice(&self.local);
        key.remote_addr[..N].copy_from_slice(&self.remote);
        key
    }

    /// A frame from the peer to this host.
    pub fn inbound(&self) -> Ends<N> {
        Ends {
            src: self.remote,
            dst: self.local,
            sport: self.remote_port,
            dport: self.local_port,
        }
    }

    /// A frame from this host to the peer.
    pub fn outbound(&self) -> Ends<N> {
        Ends {
            src: self.local,
            dst: self.remote,
            sport: self.local_port,
            dport: self.remote_port,
        }
    }

    /// The flows differing from this one in exactly one element, or with the ports swapped:
    /// none of them may match this flow's blocklist entry.
    pub fn neighbours(&self) -> Vec<(&'static str, Flow<N>)> {
        let bump = |mut a: [u8; N]| {
            a[N - 1] ^= 1;
            a
        };
        vec![
            (
                "other local port",
                Flow {
                    local_port: self.local_port + 1,
                    ..*self
                },
            ),
            (
                "other remote port",
                Flow {
                    remote_port: self.remote_port + 1,
                    ..*self
                },
            ),
            (
                "other local address",
                Flow {
                    local: bump(self.local),
                    ..*self
                },
            ),
            (
                "other remote address",
                Flow {
                    remote: bump(self.remote),
                    ..*self
                },
            ),
            (
                "ports swapped",
                Flow {
                    local_port: self.remote_port,
                    remote_port: self.local_port,
                    ..*self
                },
            ),
            (
                "addresses swapped",
                Flow {
                    local: self.remote,
                    remote: self.local,
                    ..*self
                },
            ),
        ]
    }
}

/// A client connection from 192.0.2.10:40000 to 198.51.100.7:443.
pub const FLOW4: Flow<4> = Flow {
    local: [192, 0, 2, 10],
    local_port: 40000,
    remote: [198, 51, 100, 7],
    remote_port: 443,
};

/// A client connection from [2001:db8::10]:40000 to [2001:db8:1::7]:443.
pub const FLOW6: Flow<16> = Flow {
    local: [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ],
    local_port: 40000,
    remote: [
        0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07,
    ],
    remote_port: 443,
};

pub fn v4_tcp(e: &Ends<4>, flags: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IP,
        &Ipv4::new(e.src, e.dst, IPPROTO_TCP).build(&tcp(e.sport, e.dport, flags)),
    )
}

pub fn v6_tcp(e: &Ends<16>, flags: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IPV6,
        &Ipv6::new(e.src, e.dst).build(IPPROTO_TCP, &tcp(e.sport, e.dport, flags)),
    )
}

pub fn v6_tcp_exts(e: &Ends<16>, exts: &[Ext]) -> Vec<u8> {
    let ip = Ipv6::new(e.src, e.dst).with_exts(exts);
    ethernet(
        &[],
        ETH_P_IPV6,
        &ip.build(IPPROTO_TCP, &tcp(e.sport, e.dport, TCP_ACK)),
    )
}

pub const DATA_FLAGS: [(&str, u8); 5] = [
    ("SYN", TCP_SYN),
    ("SYN|ACK", TCP_SYN | TCP_ACK),
    ("ACK", TCP_ACK),
    ("PSH|ACK", TCP_PSH | TCP_ACK),
    ("FIN|ACK", TCP_FIN | TCP_ACK),
];

/// For skb programs, recent kernels (6.18 here) also refuse a frame whose EtherType is IPv4 or
/// IPv6 (untagged) when it is shorter than the fixed IP header; older ones run the program.
/// Either is accepted for those lengths: EINVAL, or the program's verdict (which must then be
/// pass, since no ports can be in such a frame).
pub fn skb_may_refuse(frame: &[u8]) -> bool {
    let ip_len = match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IP => 20,
        ETH_P_IPV6 => 40,
        _ => 0,
    };
    frame.len() < ETH_HLEN + ip_len
}

pub fn is_einval(result: &Result<Verdict, ProgramError>) -> bool {
    matches!(result, Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL))
}
