//! Frames of a blocked flow's addresses that must pass (other protocols, our own RST), how
//! v4-mapped sockets are keyed, and the drop counters under `repeat`.

use crate::harness::*;
use crate::packets::*;

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
