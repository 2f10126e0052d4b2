//! What the parser walks to find the ports: plain IPv4 and IPv6, IPv4 options and fragments,
//! IPv6 extension headers and their limits, VLAN tags.

use crate::harness::*;
use crate::packets::*;

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
