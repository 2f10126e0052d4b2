//! Every frame cut at every length: dropped exactly when the bytes the parser reads are there.

use aya::programs::ProgramError;

use crate::harness::*;
use crate::packets::*;

/// `BPF_PROG_TEST_RUN` refuses (EINVAL) input shorter than an Ethernet header, for XDP and skb
/// programs alike: such frames never reach the programs, and the test asserts the refusal.
const MIN_TEST_RUN: usize = ETH_HLEN;

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
                expect_einval(h.run_ingress_tc(frame, 1), what, "tc ingress", len);
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
