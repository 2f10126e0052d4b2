//! Verdicts of the XDP (ingress, `enforcer_ingress`) and tc (egress, `enforcer_egress`) programs
//! on crafted frames, run in the kernel through `BPF_PROG_TEST_RUN`.
//!
//! Root only, and deliberately not skipped otherwise: a run that cannot load the programs fails.
//! Each test loads its own copy of the object (its own maps), so tests run in parallel without
//! sharing the blocklist or the drop counters.
//!
//! Every frame is run through both programs. The blocklist holds a flow as the kernel hooks
//! store it: (local, remote). XDP keys a frame as (local = destination, remote = source), tc as
//! (local = source, remote = destination); so an *inbound* frame of a blocked flow is dropped
//! by XDP only and an *outbound* one by tc only. After every run the `STATS` drop counters are
//! read back and must have grown by exactly the number of drops seen.

mod packets;

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use enforcer_common::{
    flow::{FlowKey, family},
    maps,
    stat::Stat,
};
use packets::*;

const INGRESS: &str = "enforcer_ingress";
const EGRESS: &str = "enforcer_egress";

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// Offset, in the TCP header, of the last byte the parser reads (the flags, for tc's RST
/// exception), plus one: a frame is parsed only if it holds `l4 + TCP_BYTES_READ` bytes.
const TCP_BYTES_READ: usize = TCP_FLAGS_OFFSET + 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
}
use Verdict::{Drop, Pass};

/// One loaded object, its two packet programs, and the drops seen so far.
struct Harness {
    ebpf: Ebpf,
    xdp_drops: u64,
    tc_drops: u64,
}

impl Harness {
    fn new() -> Self {
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
        let harness = Self {
            ebpf,
            xdp_drops: 0,
            tc_drops: 0,
        };
        assert_eq!(
            harness.stats(),
            (0, 0),
            "fresh object with non-zero drop counters"
        );
        harness
    }

    fn block(&mut self, key: FlowKey) {
        let map = self.ebpf.map_mut(maps::BLOCKLIST).expect("BLOCKLIST map");
        let mut blocklist: HashMap<_, FlowKey, u8> =
            HashMap::try_from(map).expect("BLOCKLIST type");
        blocklist
            .insert(key, 1, 0)
            .expect("inserting into BLOCKLIST");
    }

    /// (XDP drops, tc drops), summed over CPUs.
    fn stats(&self) -> (u64, u64) {
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

    fn run_ingress(&self, frame: &[u8], repeat: u32) -> Result<Verdict, ProgramError> {
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

    fn run_egress(&self, frame: &[u8], repeat: u32) -> Result<Verdict, ProgramError> {
        let tc: &SchedClassifier = self.ebpf.program(EGRESS).unwrap().try_into().unwrap();
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

    /// The XDP verdict on `frame`; the XDP drop counter must follow it exactly.
    fn ingress(&mut self, frame: &[u8]) -> Verdict {
        let verdict = self
            .run_ingress(frame, 1)
            .unwrap_or_else(|e| panic!("XDP test run of a {}-byte frame: {e:?}", frame.len()));
        if verdict == Drop {
            self.xdp_drops += 1;
        }
        self.check_stats();
        verdict
    }

    /// The tc verdict on `frame`; the tc drop counter must follow it exactly.
    fn egress(&mut self, frame: &[u8]) -> Verdict {
        let verdict = self
            .run_egress(frame, 1)
            .unwrap_or_else(|e| panic!("tc test run of a {}-byte frame: {e:?}", frame.len()));
        if verdict == Drop {
            self.tc_drops += 1;
        }
        self.check_stats();
        verdict
    }

    fn check_stats(&self) {
        assert_eq!(
            self.stats(),
            (self.xdp_drops, self.tc_drops),
            "STATS (XDP drops, tc drops) differ from the drops returned"
        );
    }

    /// Asserts the total drops so far, as counted by the test itself.
    fn assert_drops(&self, xdp: u64, tc: u64) {
        assert_eq!((self.xdp_drops, self.tc_drops), (xdp, tc), "drops returned");
        self.check_stats();
    }

    /// Runs the inbound and the outbound frame of `flow` (made by `build`) through both hooks.
    /// Blocked: inbound dropped by XDP, outbound by tc, each passed by the other hook.
    /// Not blocked: everything passes.
    fn expect_flow<const N: usize>(
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
    fn expect_pass(&mut self, what: &str, frame: &[u8]) {
        assert_eq!(self.ingress(frame), Pass, "{what}: XDP");
        assert_eq!(self.egress(frame), Pass, "{what}: tc");
    }
}

/// A TCP connection seen from this host, like a `FlowKey`; `N` is 4 or 16 address bytes.
#[derive(Clone, Copy, Debug)]
struct Flow<const N: usize> {
    local: [u8; N],
    local_port: u16,
    remote: [u8; N],
    remote_port: u16,
}

/// Source and destination of one frame.
#[derive(Clone, Copy, Debug)]
struct Ends<const N: usize> {
    src: [u8; N],
    dst: [u8; N],
    sport: u16,
    dport: u16,
}

impl<const N: usize> Flow<N> {
    fn key(&self) -> FlowKey {
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
    fn inbound(&self) -> Ends<N> {
        Ends {
            src: self.remote,
            dst: self.local,
            sport: self.remote_port,
            dport: self.local_port,
        }
    }

    /// A frame from this host to the peer.
    fn outbound(&self) -> Ends<N> {
        Ends {
            src: self.local,
            dst: self.remote,
            sport: self.local_port,
            dport: self.remote_port,
        }
    }

    /// The flows differing from this one in exactly one element, or with the ports swapped:
    /// none of them may match this flow's blocklist entry.
    fn neighbours(&self) -> Vec<(&'static str, Flow<N>)> {
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
const FLOW4: Flow<4> = Flow {
    local: [192, 0, 2, 10],
    local_port: 40000,
    remote: [198, 51, 100, 7],
    remote_port: 443,
};

/// A client connection from [2001:db8::10]:40000 to [2001:db8:1::7]:443.
const FLOW6: Flow<16> = Flow {
    local: [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ],
    local_port: 40000,
    remote: [
        0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07,
    ],
    remote_port: 443,
};

fn v4_tcp(e: &Ends<4>, flags: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IP,
        &Ipv4::new(e.src, e.dst, IPPROTO_TCP).build(&tcp(e.sport, e.dport, flags)),
    )
}

fn v6_tcp(e: &Ends<16>, flags: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IPV6,
        &Ipv6::new(e.src, e.dst).build(IPPROTO_TCP, &tcp(e.sport, e.dport, flags)),
    )
}

fn v6_tcp_exts(e: &Ends<16>, exts: &[Ext]) -> Vec<u8> {
    let ip = Ipv6::new(e.src, e.dst).with_exts(exts);
    ethernet(
        &[],
        ETH_P_IPV6,
        &ip.build(IPPROTO_TCP, &tcp(e.sport, e.dport, TCP_ACK)),
    )
}

const DATA_FLAGS: [(&str, u8); 5] = [
    ("SYN", TCP_SYN),
    ("SYN|ACK", TCP_SYN | TCP_ACK),
    ("ACK", TCP_ACK),
    ("PSH|ACK", TCP_PSH | TCP_ACK),
    ("FIN|ACK", TCP_FIN | TCP_ACK),
];

#[test]
fn ipv4_tcp_blocklisted_drops_and_nothing_else() {
    let mut h = Harness::new();
    h.expect_flow("empty blocklist", &FLOW4, false, |e| v4_tcp(e, TCP_ACK));
    h.block(FLOW4.key());
    for (name, flags) in DATA_FLAGS {
        h.expect_flow(name, &FLOW4, true, |e| v4_tcp(e, flags));
    }
    for (what, flow) in FLOW4.neighbours() {
        h.expect_flow(what, &flow, false, |e| v4_tcp(e, TCP_ACK));
    }
    h.assert_drops(DATA_FLAGS.len() as u64, DATA_FLAGS.len() as u64);
}

#[test]
fn ipv6_tcp_blocklisted_drops_and_nothing_else() {
    let mut h = Harness::new();
    h.expect_flow("empty blocklist", &FLOW6, false, |e| v6_tcp(e, TCP_ACK));
    h.block(FLOW6.key());
    for (name, flags) in DATA_FLAGS {
        h.expect_flow(name, &FLOW6, true, |e| v6_tcp(e, flags));
    }
    for (what, flow) in FLOW6.neighbours() {
        h.expect_flow(what, &flow, false, |e| v6_tcp(e, TCP_ACK));
    }
    h.assert_drops(DATA_FLAGS.len() as u64, DATA_FLAGS.len() as u64);
}

#[test]
fn ipv4_options_every_ihl() {
    let mut h = Harness::new();
    h.block(FLOW4.key());
    for ihl in 5..=15 {
        h.expect_flow(&format!("IHL {ihl}"), &FLOW4, true, |e| {
            let ip = Ipv4::new(e.src, e.dst, IPPROTO_TCP).with_ihl(ihl);
            ethernet(&[], ETH_P_IP, &ip.build(&tcp(e.sport, e.dport, TCP_ACK)))
        });
    }
    // The classic 60-byte header: Record Route (RFC 791) filling the 40 option bytes.
    h.expect_flow("record route", &FLOW4, true, |e| {
        let mut ip = Ipv4::new(e.src, e.dst, IPPROTO_TCP);
        ip.options = [7, 39, 4].into_iter().chain([0; 36]).collect();
        ethernet(&[], ETH_P_IP, &ip.build(&tcp(e.sport, e.dport, TCP_ACK)))
    });
    h.assert_drops(12, 12);

    // Malformed: IHL below 5 (a header shorter than its fixed part) is not parsed.
    for ihl in 0..5 {
        h.expect_flow(&format!("IHL {ihl}"), &FLOW4, false, |e| {
            let mut ip = Ipv4::new(e.src, e.dst, IPPROTO_TCP);
            ip.ihl = Some(ihl);
            ethernet(&[], ETH_P_IP, &ip.build(&tcp(e.sport, e.dport, TCP_ACK)))
        });
    }
    // EtherType IPv4 but another version in the header, and the reverse.
    h.expect_flow("IPv4 EtherType, version 6", &FLOW4, false, |e| {
        let mut ip = Ipv4::new(e.src, e.dst, IPPROTO_TCP);
        ip.version = 6;
        ethernet(&[], ETH_P_IP, &ip.build(&tcp(e.sport, e.dport, TCP_ACK)))
    });
    h.expect_flow("IPv6 EtherType, IPv4 packet", &FLOW4, false, |e| {
        let ip = Ipv4::new(e.src, e.dst, IPPROTO_TCP);
        ethernet(&[], ETH_P_IPV6, &ip.build(&tcp(e.sport, e.dport, TCP_ACK)))
    });
    h.assert_drops(12, 12);
}

#[test]
fn ipv4_fragments() {
    let mut h = Harness::new();
    h.block(FLOW4.key());
    let fragment = |more: bool, offset: u16| {
        move |e: &Ends<4>| {
            let ip = Ipv4::new(e.src, e.dst, IPPROTO_TCP).fragment(more, offset);
            // A non-first fragment carries payload, not a TCP header; give it bytes that look
            // like the flow's TCP header anyway, so only the fragment offset can make it pass.
            ethernet(&[], ETH_P_IP, &ip.build(&tcp(e.sport, e.dport, TCP_ACK)))
        }
    };
    // The first fragment holds the TCP header: parsed like an unfragmented packet.
    h.expect_flow(
        "first fragment (MF, offset 0)",
        &FLOW4,
        true,
        fragment(true, 0),
    );
    h.expect_flow("unfragmented, DF clear", &FLOW4, true, fragment(false, 0));
    h.assert_drops(2, 2);
    // Later fragments carry no ports: passed (the reassembled packet is judged elsewhere).
    for offset in [1, 2, 185, 0x1fff] {
        h.expect_flow(
            &format!("middle fragment at {offset}"),
            &FLOW4,
            false,
            fragment(true, offset),
        );
        h.expect_flow(
            &format!("last fragment at {offset}"),
            &FLOW4,
            false,
            fragment(false, offset),
        );
    }
    h.assert_drops(2, 2);
}

#[test]
fn ipv6_extension_headers() {
    let mut h = Harness::new();
    h.block(FLOW6.key());
    let parsed: &[(&str, Ext)] = &[
        ("hop-by-hop (8 bytes)", Ext::HopByHop { len_units: 0 }),
        ("hop-by-hop (24 bytes)", Ext::HopByHop { len_units: 2 }),
        ("routing", Ext::Routing { len_units: 2 }),
        ("destination options", Ext::DestOpts { len_units: 0 }),
        (
            "destination options (64 bytes)",
            Ext::DestOpts { len_units: 7 },
        ),
        (
            "first fragment",
            Ext::Fragment {
                offset: 0,
                more: true,
            },
        ),
        (
            "atomic fragment",
            Ext::Fragment {
                offset: 0,
                more: false,
            },
        ),
        ("AH, HMAC-SHA1-96", Ext::Ah { icv_words: 3 }),
        ("AH, HMAC-SHA256-128", Ext::Ah { icv_words: 4 }),
    ];
    for &(what, ext) in parsed {
        h.expect_flow(what, &FLOW6, true, |e| v6_tcp_exts(e, &[ext]));
    }
    let n = parsed.len() as u64;
    h.assert_drops(n, n);

    // Non-first fragments carry no ports, wherever the fragment header sits in the chain.
    for offset in [1, 2, 185, 0x1fff] {
        for more in [true, false] {
            let frag = Ext::Fragment { offset, more };
            let what = format!("fragment at {offset}, more {more}");
            h.expect_flow(&what, &FLOW6, false, |e| v6_tcp_exts(e, &[frag]));
            let chain = [
                Ext::HopByHop { len_units: 0 },
                frag,
                Ext::DestOpts { len_units: 0 },
            ];
            h.expect_flow(&format!("{what}, in a chain"), &FLOW6, false, |e| {
                v6_tcp_exts(e, &chain)
            });
        }
    }
    h.assert_drops(n, n);
}

#[test]
fn ipv6_extension_header_chains_and_limits() {
    let mut h = Harness::new();
    h.block(FLOW6.key());
    let all = [
        Ext::HopByHop { len_units: 1 },
        Ext::DestOpts { len_units: 0 },
        Ext::Routing { len_units: 2 },
        Ext::Fragment {
            offset: 0,
            more: true,
        },
        Ext::Ah { icv_words: 3 },
        Ext::DestOpts { len_units: 1 },
        Ext::DestOpts { len_units: 0 },
    ];
    // The parser walks at most 6 extension headers (MAX_IPV6_EXT_HEADERS).
    for n in 2..=6 {
        h.expect_flow(&format!("chain of {n}"), &FLOW6, true, |e| {
            v6_tcp_exts(e, &all[..n])
        });
    }
    h.assert_drops(5, 5);
    // One more is past the limit: documented fail-open (packet.rs), passed.
    h.expect_flow("chain of 7", &FLOW6, false, |e| v6_tcp_exts(e, &all));
    let eight_small = [Ext::DestOpts { len_units: 0 }; 8];
    h.expect_flow("chain of 8", &FLOW6, false, |e| {
        v6_tcp_exts(e, &eight_small)
    });

    // The TCP header must start within MAX_L4_OFFSET (512) bytes of the frame start.
    // Ethernet (14) + IPv6 (40) + 456 = 510: parsed.
    let ip_at = |len_units| move |e: &Ends<16>| v6_tcp_exts(e, &[Ext::DestOpts { len_units }]);
    h.expect_flow("TCP at offset 510", &FLOW6, true, ip_at(56));
    // 14 + 40 + 464 = 518: past the limit, fail-open.
    h.expect_flow("TCP at offset 518", &FLOW6, false, ip_at(57));
    h.expect_flow("TCP at offset 2102", &FLOW6, false, ip_at(255));
    let two_big = [
        Ext::HopByHop { len_units: 30 },
        Ext::DestOpts { len_units: 30 },
    ];
    h.expect_flow("two headers ending at 550", &FLOW6, false, |e| {
        v6_tcp_exts(e, &two_big)
    });
    h.assert_drops(6, 6);

    // Next headers the parser does not walk: ESP (encrypted, ports invisible), No Next Header,
    // Mobility. Each carries bytes that look like the flow's TCP header.
    for (what, protocol) in [
        ("ESP", IPPROTO_ESP),
        ("no next header", IPPROTO_NONE),
        ("mobility", 135),
    ] {
        h.expect_flow(what, &FLOW6, false, |e| {
            let ip = Ipv6::new(e.src, e.dst).with_exts(&[Ext::HopByHop { len_units: 0 }]);
            ethernet(
                &[],
                ETH_P_IPV6,
                &ip.build(protocol, &tcp(e.sport, e.dport, TCP_ACK)),
            )
        });
    }
    h.assert_drops(6, 6);
}

#[test]
fn vlan_tags() {
    let mut h = Harness::new();
    h.block(FLOW4.key());
    h.block(FLOW6.key());
    let parsed: &[(&str, &[(u16, u16)])] = &[
        ("802.1Q", &[(ETH_P_8021Q, 100)]),
        ("802.1ad alone", &[(ETH_P_8021AD, 100)]),
        (
            "802.1ad + 802.1Q (QinQ)",
            &[(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)],
        ),
        ("802.1Q + 802.1Q", &[(ETH_P_8021Q, 100), (ETH_P_8021Q, 200)]),
        ("802.1Q, VID 0 (priority tag)", &[(ETH_P_8021Q, 0)]),
    ];
    for &(what, vlans) in parsed {
        h.expect_flow(&format!("IPv4, {what}"), &FLOW4, true, |e| {
            let ip = Ipv4::new(e.src, e.dst, IPPROTO_TCP).with_ihl(7);
            ethernet(vlans, ETH_P_IP, &ip.build(&tcp(e.sport, e.dport, TCP_ACK)))
        });
        h.expect_flow(&format!("IPv6, {what}"), &FLOW6, true, |e| {
            let ip = Ipv6::new(e.src, e.dst).with_exts(&[Ext::HopByHop { len_units: 0 }]);
            ethernet(
                vlans,
                ETH_P_IPV6,
                &ip.build(IPPROTO_TCP, &tcp(e.sport, e.dport, TCP_ACK)),
            )
        });
    }
    let n = 2 * parsed.len() as u64;
    h.assert_drops(n, n);

    // At most two tags are walked (MAX_VLAN_TAGS); a third is fail-open.
    let three = [(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)];
    h.expect_flow("IPv4, three tags", &FLOW4, false, |e| {
        let ip = Ipv4::new(e.src, e.dst, IPPROTO_TCP);
        ethernet(&three, ETH_P_IP, &ip.build(&tcp(e.sport, e.dport, TCP_ACK)))
    });
    h.expect_flow("IPv6, three tags", &FLOW6, false, |e| {
        let ip = Ipv6::new(e.src, e.dst);
        ethernet(
            &three,
            ETH_P_IPV6,
            &ip.build(IPPROTO_TCP, &tcp(e.sport, e.dport, TCP_ACK)),
        )
    });
    // A tagged frame of another protocol.
    let arp = ethernet(
        &[(ETH_P_8021Q, 100)],
        ETH_P_ARP,
        &arp_request(FLOW4.remote, FLOW4.local),
    );
    h.expect_pass("ARP in 802.1Q", &arp);
    h.assert_drops(n, n);
}

/// `BPF_PROG_TEST_RUN` refuses (EINVAL) input shorter than an Ethernet header, for XDP and skb
/// programs alike: such frames never reach the programs, and the test asserts the refusal.
const MIN_TEST_RUN: usize = ETH_HLEN;

/// For skb programs, recent kernels (6.18 here) also refuse a frame whose EtherType is IPv4 or
/// IPv6 (untagged) when it is shorter than the fixed IP header; older ones run the program.
/// Either is accepted for those lengths: EINVAL, or the program's verdict (which must then be
/// pass, since no ports can be in such a frame).
fn skb_may_refuse(frame: &[u8]) -> bool {
    let ip_len = match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IP => 20,
        ETH_P_IPV6 => 40,
        _ => 0,
    };
    frame.len() < ETH_HLEN + ip_len
}

fn is_einval(result: &Result<Verdict, ProgramError>) -> bool {
    matches!(result, Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL))
}

fn expect_einval(result: Result<Verdict, ProgramError>, what: &str, hook: &str, len: usize) {
    assert!(
        is_einval(&result),
        "{what}: {hook} test run of {len} bytes: want EINVAL, got {result:?}"
    );
}

/// Runs every prefix of `inbound` through XDP and of `outbound` through tc. Both frames have
/// their TCP header at `l4`. Returns the number of lengths that dropped, per hook.
fn truncations(h: &mut Harness, what: &str, inbound: &[u8], outbound: &[u8], l4: usize) -> u64 {
    assert_eq!(inbound.len(), outbound.len());
    let full = inbound.len();
    // The parser reads the ports (l4..l4 + 4) and then the flags byte (l4 + 13, for tc's RST
    // exception), and gives up if either is missing. So a frame is dropped exactly when it
    // reaches l4 + 14 bytes; one holding the ports but cut before the flags passes (such a
    // segment is shorter than a TCP header, and the stack discards it anyway).
    let first_parsed = l4 + TCP_BYTES_READ;
    assert!(first_parsed <= full);
    for len in 0..=full {
        let want = if len >= first_parsed { Drop } else { Pass };
        let (inbound, outbound) = (&inbound[..len], &outbound[..len]);
        if len < MIN_TEST_RUN {
            for frame in [inbound, outbound] {
                expect_einval(h.run_ingress(frame, 1), what, "XDP", len);
                expect_einval(h.run_egress(frame, 1), what, "tc", len);
            }
            h.check_stats();
            continue;
        }
        let at = format!("{what}: cut to {len} bytes, at XDP");
        assert_eq!(h.ingress(inbound), want, "{at}, inbound");
        assert_eq!(h.ingress(outbound), Pass, "{at}, outbound");
        let at = format!("{what}: cut to {len} bytes, at tc");
        for (frame, want, direction) in [(inbound, Pass, "inbound"), (outbound, want, "outbound")] {
            if skb_may_refuse(frame) {
                let result = h.run_egress(frame, 1);
                if !is_einval(&result) {
                    assert_eq!(result.unwrap(), Pass, "{at}, {direction}");
                }
                h.check_stats();
            } else {
                assert_eq!(h.egress(frame), want, "{at}, {direction}");
            }
        }
    }
    (full - first_parsed + 1) as u64
}

#[test]
fn truncated_frames_at_every_length() {
    let mut h = Harness::new();
    h.block(FLOW4.key());
    h.block(FLOW6.key());
    let mut drops = 0;

    // IPv4, no options: TCP at 14 + 20 = 34; parsed from 48 bytes to the full 54.
    let (inbound, outbound) = (
        v4_tcp(&FLOW4.inbound(), TCP_ACK),
        v4_tcp(&FLOW4.outbound(), TCP_ACK),
    );
    assert_eq!(inbound.len(), 54);
    drops += truncations(&mut h, "IPv4", &inbound, &outbound, 34);
    assert_eq!(drops, 7);

    // IPv6, no extension headers: TCP at 14 + 40 = 54; parsed from 68 bytes to the full 74.
    let (inbound, outbound) = (
        v6_tcp(&FLOW6.inbound(), TCP_ACK),
        v6_tcp(&FLOW6.outbound(), TCP_ACK),
    );
    assert_eq!(inbound.len(), 74);
    drops += truncations(&mut h, "IPv6", &inbound, &outbound, 54);

    // IPv4 with a 60-byte header behind two VLAN tags: TCP at 14 + 8 + 60 = 82.
    let qinq = [(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)];
    let v4_big = |e: &Ends<4>| {
        let ip = Ipv4::new(e.src, e.dst, IPPROTO_TCP).with_ihl(15);
        ethernet(&qinq, ETH_P_IP, &ip.build(&tcp(e.sport, e.dport, TCP_ACK)))
    };
    drops += truncations(
        &mut h,
        "IPv4 IHL 15 QinQ",
        &v4_big(&FLOW4.inbound()),
        &v4_big(&FLOW4.outbound()),
        82,
    );

    // IPv6 with a chain of six extension headers behind one tag: the cut falls inside each.
    let exts = [
        Ext::HopByHop { len_units: 0 },
        Ext::DestOpts { len_units: 1 },
        Ext::Routing { len_units: 2 },
        Ext::Fragment {
            offset: 0,
            more: true,
        },
        Ext::Ah { icv_words: 3 },
        Ext::DestOpts { len_units: 0 },
    ];
    let v6_chain = |e: &Ends<16>| {
        let ip = Ipv6::new(e.src, e.dst).with_exts(&exts);
        ethernet(
            &[(ETH_P_8021Q, 7)],
            ETH_P_IPV6,
            &ip.build(IPPROTO_TCP, &tcp(e.sport, e.dport, TCP_ACK)),
        )
    };
    let l4 = 14 + 4 + Ipv6::new([0; 16], [0; 16]).with_exts(&exts).header_len();
    assert_eq!(l4, 18 + 40 + 8 + 16 + 24 + 8 + 24 + 8);
    drops += truncations(
        &mut h,
        "IPv6 six extension headers",
        &v6_chain(&FLOW6.inbound()),
        &v6_chain(&FLOW6.outbound()),
        l4,
    );

    h.assert_drops(drops, drops);
}

#[test]
fn non_tcp_with_matching_addresses_passes() {
    let mut h = Harness::new();
    h.block(FLOW4.key());
    h.block(FLOW6.key());
    h.expect_flow("UDP, same ports", &FLOW4, false, |e| {
        let ip = Ipv4::new(e.src, e.dst, IPPROTO_UDP);
        ethernet(&[], ETH_P_IP, &ip.build(&udp(e.sport, e.dport, b"payload")))
    });
    h.expect_flow("UDP, same ports", &FLOW6, false, |e| {
        let ip = Ipv6::new(e.src, e.dst);
        ethernet(
            &[],
            ETH_P_IPV6,
            &ip.build(IPPROTO_UDP, &udp(e.sport, e.dport, b"payload")),
        )
    });
    h.expect_flow("ICMP echo", &FLOW4, false, |e| {
        let ip = Ipv4::new(e.src, e.dst, IPPROTO_ICMP);
        ethernet(&[], ETH_P_IP, &ip.build(&icmp_echo(8, e.sport, e.dport)))
    });
    h.expect_flow("ICMPv6 echo", &FLOW6, false, |e| {
        let ip = Ipv6::new(e.src, e.dst);
        ethernet(
            &[],
            ETH_P_IPV6,
            &ip.build(IPPROTO_ICMPV6, &icmp_echo(128, e.sport, e.dport)),
        )
    });
    // An ICMP error about the blocked flow quotes its IP and TCP headers: not parsed as TCP.
    h.expect_flow(
        "ICMP port unreachable quoting the flow",
        &FLOW4,
        false,
        |e| {
            let quoted =
                Ipv4::new(e.dst, e.src, IPPROTO_TCP).build(&tcp(e.dport, e.sport, TCP_ACK));
            let ip = Ipv4::new(e.src, e.dst, IPPROTO_ICMP);
            ethernet(&[], ETH_P_IP, &ip.build(&icmp_error(3, 3, &quoted[..28])))
        },
    );
    h.expect_flow("ICMPv6 unreachable quoting the flow", &FLOW6, false, |e| {
        let quoted = Ipv6::new(e.dst, e.src).build(IPPROTO_TCP, &tcp(e.dport, e.sport, TCP_ACK));
        let ip = Ipv6::new(e.src, e.dst);
        ethernet(
            &[],
            ETH_P_IPV6,
            &ip.build(IPPROTO_ICMPV6, &icmp_error(1, 4, &quoted)),
        )
    });
    // A TCP header behind another IPv4 protocol number: the protocol decides, not the bytes.
    for (what, protocol) in [
        ("UDP", IPPROTO_UDP),
        ("AH (not walked for IPv4)", IPPROTO_AH),
        ("IP-in-IP", 4),
    ] {
        h.expect_flow(&format!("TCP bytes as {what}"), &FLOW4, false, |e| {
            let ip = Ipv4::new(e.src, e.dst, protocol);
            ethernet(&[], ETH_P_IP, &ip.build(&tcp(e.sport, e.dport, TCP_ACK)))
        });
    }
    h.expect_flow("TCP bytes as IPv6 UDP", &FLOW6, false, |e| {
        let ip = Ipv6::new(e.src, e.dst);
        ethernet(
            &[],
            ETH_P_IPV6,
            &ip.build(IPPROTO_UDP, &tcp(e.sport, e.dport, TCP_ACK)),
        )
    });
    // ARP between the flow's two addresses, both directions.
    h.expect_pass(
        "ARP request, peer to us",
        &ethernet(&[], ETH_P_ARP, &arp_request(FLOW4.remote, FLOW4.local)),
    );
    h.expect_pass(
        "ARP request, us to peer",
        &ethernet(&[], ETH_P_ARP, &arp_request(FLOW4.local, FLOW4.remote)),
    );
    // An unknown EtherType whose payload is the flow's IPv4 packet.
    let packet = Ipv4::new(FLOW4.remote, FLOW4.local, IPPROTO_TCP).build(&tcp(443, 40000, TCP_ACK));
    h.expect_pass(
        "IPv4 packet behind EtherType 0x88b5",
        &ethernet(&[], 0x88b5, &packet),
    );
    h.assert_drops(0, 0);
}

#[test]
fn egress_rst_of_a_blocked_flow_passes() {
    let mut h = Harness::new();
    h.block(FLOW4.key());
    h.block(FLOW6.key());
    for (name, flags) in [("RST", TCP_RST), ("RST|ACK", TCP_RST | TCP_ACK)] {
        // Deliberate (tc.rs): our RST goes out so the peer forgets the aborted connection.
        assert_eq!(
            h.egress(&v4_tcp(&FLOW4.outbound(), flags)),
            Pass,
            "IPv4 {name} at tc"
        );
        assert_eq!(
            h.egress(&v6_tcp(&FLOW6.outbound(), flags)),
            Pass,
            "IPv6 {name} at tc"
        );
        // The exception is egress only: the peer's RST is dropped on ingress like anything else.
        assert_eq!(
            h.ingress(&v4_tcp(&FLOW4.inbound(), flags)),
            Drop,
            "IPv4 {name} at XDP"
        );
        assert_eq!(
            h.ingress(&v6_tcp(&FLOW6.inbound(), flags)),
            Drop,
            "IPv6 {name} at XDP"
        );
    }
    // The same flow's data still does not leave.
    assert_eq!(
        h.egress(&v4_tcp(&FLOW4.outbound(), TCP_PSH | TCP_ACK)),
        Drop
    );
    assert_eq!(
        h.egress(&v6_tcp(&FLOW6.outbound(), TCP_PSH | TCP_ACK)),
        Drop
    );
    h.assert_drops(4, 2);
}

#[test]
fn ipv4_mapped_sockets_are_keyed_as_ipv4() {
    let mut h = Harness::new();
    // A dual-stack (AF_INET6) socket talking to ::ffff:198.51.100.7 is keyed as IPv4 by the
    // kernel hooks (sock.rs), because its packets are IPv4 on the wire: they are dropped.
    h.block(FLOW4.key());
    h.expect_flow("IPv4 frames of a v4-mapped socket", &FLOW4, true, |e| {
        v4_tcp(e, TCP_ACK)
    });
    h.assert_drops(1, 1);

    // IPv6 frames with mapped addresses (never on the wire, RFC 4291 2.5.5.2; the stack drops
    // them) are keyed by their own family and do not match the IPv4 entry.
    let mapped = Flow {
        local: v4_mapped(FLOW4.local),
        local_port: FLOW4.local_port,
        remote: v4_mapped(FLOW4.remote),
        remote_port: FLOW4.remote_port,
    };
    h.expect_flow("IPv6 frames with mapped addresses", &mapped, false, |e| {
        v6_tcp(e, TCP_ACK)
    });

    // The family is part of the key: IPv6 addresses that begin with the IPv4 address bytes
    // (the rest zero, as in an IPv4 key) do not match the IPv4 entry...
    let mut lookalike = Flow {
        local: [0; 16],
        local_port: FLOW4.local_port,
        remote: [0; 16],
        remote_port: FLOW4.remote_port,
    };
    lookalike.local[..4].copy_from_slice(&FLOW4.local);
    lookalike.remote[..4].copy_from_slice(&FLOW4.remote);
    h.expect_flow("IPv6 frames, IPv4 address bytes", &lookalike, false, |e| {
        v6_tcp(e, TCP_ACK)
    });
    h.assert_drops(1, 1);

    // ...and an IPv6 entry (here with mapped addresses, which sock.rs never writes) matches
    // only IPv6 frames: the parser does not translate mapped addresses.
    let mut h = Harness::new();
    h.block(mapped.key());
    h.block(lookalike.key());
    h.expect_flow("IPv4 frames, IPv6 entries only", &FLOW4, false, |e| {
        v4_tcp(e, TCP_ACK)
    });
    h.expect_flow("IPv6 frames, mapped IPv6 entry", &mapped, true, |e| {
        v6_tcp(e, TCP_ACK)
    });
    h.assert_drops(1, 1);
}

#[test]
fn drop_counters_count_every_run() {
    let mut h = Harness::new();
    h.block(FLOW4.key());
    h.block(FLOW6.key());
    // BPF_PROG_TEST_RUN with repeat runs the program that many times: one drop each.
    let runs = [
        (
            v4_tcp(&FLOW4.inbound(), TCP_ACK),
            v4_tcp(&FLOW4.outbound(), TCP_ACK),
        ),
        (
            v6_tcp(&FLOW6.inbound(), TCP_ACK),
            v6_tcp(&FLOW6.outbound(), TCP_ACK),
        ),
    ];
    for (inbound, outbound) in &runs {
        assert_eq!(h.run_ingress(inbound, 100).unwrap(), Drop);
        assert_eq!(h.run_egress(outbound, 250).unwrap(), Drop);
        // Passed frames count nothing.
        assert_eq!(h.run_ingress(outbound, 100).unwrap(), Pass);
        assert_eq!(h.run_egress(inbound, 100).unwrap(), Pass);
    }
    h.xdp_drops += 200;
    h.tc_drops += 500;
    h.check_stats();
    // The two counters are separate.
    assert_eq!(h.ingress(&runs[0].0), Drop);
    h.assert_drops(201, 500);
}
