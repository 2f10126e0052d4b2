//! A small builder for the frames `packet_filters.rs` (and `client_hello.rs`) feed to the XDP and tc programs.
//!
//! Every header is laid out byte by byte as on the wire (network byte order), lengths are
//! consistent (IPv4 total length and header checksum, IPv6 payload length, extension header
//! length fields), so a frame that the programs drop is one the kernel would also accept.
//! TCP/UDP/ICMP checksums are left zero: nothing on the path under test reads them.

#[allow(dead_code, reason = "used by client_offers.rs only")]
pub mod offers;
#[allow(
    dead_code,
    reason = "ClientHello frames are used by client_hello.rs only"
)]
pub mod tls;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Offset of the TCP flags byte in the TCP header.
pub const TCP_FLAGS_OFFSET: usize = 13;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// An Ethernet frame: MACs, zero or more VLAN tags `(TPID, VID)` outermost first, EtherType,
/// payload.
pub fn ethernet(vlans: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_HLEN + 4 * vlans.len() + payload.len());
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    for &(tpid, vid) in vlans {
        frame.extend_from_slice(&tpid.to_be_bytes());
        // PCP 0, DEI 0, 12-bit VLAN id.
        frame.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A 20-byte TCP header (data offset 5, no options), checksum zero.
pub fn tcp(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&dst_port.to_be_bytes());
    h.extend_from_slice(&0x1000_0000u32.to_be_bytes()); // sequence number
    let ack = if flags & TCP_ACK != 0 {
        0x2000_0000u32
    } else {
        0
    };
    h.extend_from_slice(&ack.to_be_bytes());
    h.push(5 << 4); // data offset 5 words
    h.push(flags);
    h.extend_from_slice(&64240u16.to_be_bytes()); // window
    h.extend_from_slice(&[0, 0]); // checksum
    h.extend_from_slice(&[0, 0]); // urgent pointer
    debug_assert_eq!(h.len(), 20);
    h
}

/// An 8-byte UDP header followed by `data`, checksum zero.
pub fn udp(src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + data.len());
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&dst_port.to_be_bytes());
    h.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(data);
    h
}

/// An ICMP (type 8) or ICMPv6 (type 128) echo request, checksum zero.
pub fn icmp_echo(echo_type: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut h = vec![echo_type, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&[0xab; 16]);
    h
}

/// An ICMP / ICMPv6 error (e.g. destination unreachable) quoting `quoted`: the offending
/// packet's IP header and the start of its TCP header, ports included.
pub fn icmp_error(error_type: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut h = vec![error_type, code, 0, 0, 0, 0, 0, 0];
    h.extend_from_slice(quoted);
    h
}

/// An ARP request for Ethernet/IPv4 (the payload of EtherType 0x0806).
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut h = Vec::with_capacity(28);
    h.extend_from_slice(&1u16.to_be_bytes()); // HTYPE Ethernet
    h.extend_from_slice(&ETH_P_IP.to_be_bytes()); // PTYPE IPv4
    h.push(6); // HLEN
    h.push(4); // PLEN
    h.extend_from_slice(&1u16.to_be_bytes()); // request
    h.extend_from_slice(&SRC_MAC);
    h.extend_from_slice(&sender);
    h.extend_from_slice(&[0; 6]);
    h.extend_from_slice(&target);
    h
}

/// RFC 1071 Internet checksum of `bytes` (one's complement of the one's complement sum).
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = match *chunk {
            [hi, lo] => u16::from_be_bytes([hi, lo]),
            [hi] => u16::from_be_bytes([hi, 0]),
            _ => unreachable!(),
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header under construction.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    /// Raw option bytes; padded with End of Option List to a multiple of 4 by `build`.
    pub options: Vec<u8>,
    /// Flags (DF 0x4000, MF 0x2000) and fragment offset in 8-byte units (low 13 bits).
    pub flags_fragment: u16,
    /// Overrides the version nibble (4) to build malformed headers.
    pub version: u8,
    /// Overrides the IHL computed from the options, to build malformed headers.
    pub ihl: Option<u8>,
}

pub const IPV4_DF: u16 = 0x4000;
pub const IPV4_MF: u16 = 0x2000;

impl Ipv4 {
    pub fn new(src: [u8; 4], dst: [u8; 4], protocol: u8) -> Self {
        Self {
            src,
            dst,
            protocol,
            options: Vec::new(),
            flags_fragment: IPV4_DF,
            version: 4,
            ihl: None,
        }
    }

    /// Options making the header exactly `ihl` 32-bit words long (5..=15): a Router Alert
    /// (RFC 2113) when there is room, then NOPs, then End of Option List.
    pub fn with_ihl(mut self, ihl: u8) -> Self {
        assert!((5..=15).contains(&ihl), "IHL {ihl} out of range");
        let len = (usize::from(ihl) - 5) * 4;
        let mut options = Vec::with_capacity(len);
        if len >= 4 {
            options.extend_from_slice(&[0x94, 0x04, 0x00, 0x00]);
        }
        while options.len() + 1 < len {
            options.push(0x01); // NOP
        }
        if options.len() < len {
            options.push(0x00); // EOL
        }
        self.options = options;
        self
    }

    /// Fragment: `more` sets MF, `offset` is in 8-byte units.
    pub fn fragment(mut self, more: bool, offset: u16) -> Self {
        assert!(offset < 0x2000);
        self.flags_fragment = if more { IPV4_MF } else { 0 } | offset;
        self
    }

    /// Header (with a correct checksum) followed by `payload`.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0x00);
        }
        assert!(options.len() <= 40, "IPv4 options longer than 40 bytes");
        let header_len = 20 + options.len();
        let ihl = self.ihl.unwrap_or((header_len / 4) as u8);
        let total_len = u16::try_from(header_len + payload.len()).expect("IPv4 packet too long");
        let mut h = Vec::with_capacity(header_len + payload.len());
        h.push((self.version << 4) | (ihl & 0x0f));
        h.push(0); // DSCP/ECN
        h.extend_from_slice(&total_len.to_be_bytes());
        h.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
        h.extend_from_slice(&self.flags_fragment.to_be_bytes());
        h.push(64); // TTL
        h.push(self.protocol);
        h.extend_from_slice(&[0, 0]); // checksum, below
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&options);
        let checksum = internet_checksum(&h[..header_len]);
        h[10..12].copy_from_slice(&checksum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// One IPv6 extension header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-Hop Options; `len_units` is the Hdr Ext Len field (size = (len_units + 1) * 8).
    HopByHop { len_units: u8 },
    /// Routing header (type 4, segments left 0: ignored by every node); size as above.
    Routing { len_units: u8 },
    /// Destination Options; size as above.
    DestOpts { len_units: u8 },
    /// Fragment header: `offset` in 8-byte units, `more` = M flag.
    Fragment { offset: u16, more: bool },
    /// Authentication Header with `icv_words` 32-bit words of ICV (size = 12 + 4 * icv_words).
    Ah { icv_words: u8 },
}

impl Ext {
    pub fn protocol(self) -> u8 {
        match self {
            Ext::HopByHop { .. } => IPPROTO_HOPOPTS,
            Ext::Routing { .. } => IPPROTO_ROUTING,
            Ext::DestOpts { .. } => IPPROTO_DSTOPTS,
            Ext::Fragment { .. } => IPPROTO_FRAGMENT,
            Ext::Ah { .. } => IPPROTO_AH,
        }
    }

    /// Size on the wire, in bytes.
    pub fn len(self) -> usize {
        match self {
            Ext::HopByHop { len_units }
            | Ext::Routing { len_units }
            | Ext::DestOpts { len_units } => (usize::from(len_units) + 1) * 8,
            Ext::Fragment { .. } => 8,
            Ext::Ah { icv_words } => 12 + 4 * usize::from(icv_words),
        }
    }

    fn write(self, next: u8, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(next);
        match self {
            Ext::HopByHop { len_units } | Ext::DestOpts { len_units } => {
                out.push(len_units);
                pad_options(out, self.len() - 2);
            }
            Ext::Routing { len_units } => {
                out.push(len_units);
                out.push(4); // routing type: segment routing
                out.push(0); // segments left
                out.resize(start + self.len(), 0);
            }
            Ext::Fragment { offset, more } => {
                assert!(offset < 0x2000);
                out.push(0); // reserved
                out.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
                out.extend_from_slice(&0xdead_beefu32.to_be_bytes()); // identification
            }
            Ext::Ah { icv_words } => {
                // Payload Len: length in 32-bit words, minus 2.
                out.push(self.len() as u8 / 4 - 2);
                out.extend_from_slice(&[0, 0]); // reserved
                out.extend_from_slice(&0x0000_0100u32.to_be_bytes()); // SPI
                out.extend_from_slice(&1u32.to_be_bytes()); // sequence number
                out.extend(std::iter::repeat_n(0x5a, 4 * usize::from(icv_words)));
            }
        }
        debug_assert_eq!(out.len() - start, self.len());
    }
}

/// Fills `len` bytes of an options header body with Pad1 / PadN options (RFC 8200 4.2).
fn pad_options(out: &mut Vec<u8>, mut len: usize) {
    while len > 0 {
        if len == 1 {
            out.push(0); // Pad1
            len -= 1;
        } else {
            let data = (len - 2).min(255);
            out.push(1); // PadN
            out.push(data as u8);
            out.extend(std::iter::repeat_n(0, data));
            len -= 2 + data;
        }
    }
}

/// An IPv6 header and its extension header chain under construction.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub exts: Vec<Ext>,
    /// Overrides the version nibble (6) to build malformed headers.
    pub version: u8,
}

impl Ipv6 {
    pub fn new(src: [u8; 16], dst: [u8; 16]) -> Self {
        Self {
            src,
            dst,
            exts: Vec::new(),
            version: 6,
        }
    }

    pub fn with_exts(mut self, exts: &[Ext]) -> Self {
        self.exts = exts.to_vec();
        self
    }

    /// Bytes from the start of the IPv6 header to the upper-layer header.
    pub fn header_len(&self) -> usize {
        40 + self.exts.iter().map(|e| e.len()).sum::<usize>()
    }

    /// Fixed header, extension headers, then `payload` of upper-layer protocol `protocol`.
    pub fn build(&self, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let payload_len =
            u16::try_from(self.header_len() - 40 + payload.len()).expect("IPv6 payload too long");
        let first_next = self.exts.first().map_or(protocol, |e| e.protocol());
        let mut h = Vec::with_capacity(self.header_len() + payload.len());
        h.extend_from_slice(&(u32::from(self.version) << 28).to_be_bytes()); // version, class, label
        h.extend_from_slice(&payload_len.to_be_bytes());
        h.push(first_next);
        h.push(64); // hop limit
        h.extend_from_slice(&self.src);
        h.extend_from_slice(&self.dst);
        for (i, ext) in self.exts.iter().enumerate() {
            let next = self.exts.get(i + 1).map_or(protocol, |e| e.protocol());
            ext.write(next, &mut h);
        }
        h.extend_from_slice(payload);
        h
    }
}

/// `::ffff:a.b.c.d`.
pub fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&v4);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_checksum_verifies_for_every_ihl() {
        for ihl in 5..=15 {
            let packet = Ipv4::new([192, 0, 2, 1], [198, 51, 100, 2], IPPROTO_TCP)
                .with_ihl(ihl)
                .build(&tcp(1, 2, TCP_ACK));
            let header_len = usize::from(packet[0] & 0x0f) * 4;
            assert_eq!(header_len, usize::from(ihl) * 4);
            assert_eq!(internet_checksum(&packet[..header_len]), 0, "IHL {ihl}");
            assert_eq!(
                usize::from(u16::from_be_bytes([packet[2], packet[3]])),
                packet.len()
            );
        }
    }

    #[test]
    fn rfc1071_example() {
        // The worked example of RFC 1071 section 3: sum 0xddf2, checksum its complement.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&bytes), !0xddf2);
    }

    #[test]
    fn ipv6_chain_links_next_headers() {
        let exts = [
            Ext::HopByHop { len_units: 0 },
            Ext::Routing { len_units: 2 },
            Ext::Fragment {
                offset: 0,
                more: true,
            },
            Ext::Ah { icv_words: 3 },
            Ext::DestOpts { len_units: 40 },
        ];
        let ip = Ipv6::new([1; 16], [2; 16]).with_exts(&exts);
        let packet = ip.build(IPPROTO_TCP, &tcp(1, 2, 0));
        assert_eq!(packet.len(), ip.header_len() + 20);
        assert_eq!(
            usize::from(u16::from_be_bytes([packet[4], packet[5]])),
            packet.len() - 40
        );
        // Walk the chain the way RFC 8200 says and land on the TCP header.
        let (mut next, mut offset) = (packet[6], 40);
        while next != IPPROTO_TCP {
            let len = match next {
                IPPROTO_FRAGMENT => 8,
                IPPROTO_AH => (usize::from(packet[offset + 1]) + 2) * 4,
                _ => (usize::from(packet[offset + 1]) + 1) * 8,
            };
            next = packet[offset];
            offset += len;
        }
        assert_eq!(offset, ip.header_len());
    }
}
