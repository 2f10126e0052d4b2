//! QUIC Initial packets, recognised from the first bytes of a UDP datagram (RFC 9000 §17.2,
//! RFC 9369 §3): QUIC carries TLS 1.3 inside UDP, where no TCP hook and no ClientHello parser
//! of this project sees it, so the policy's `quic` key judges the protocol itself.
//!
//! A datagram counts when all of these hold: a long header with the fixed bit (`0b11` in the
//! two high bits), version 1 or 2 with that version's Initial type, and a UDP payload of at
//! least 1,200 bytes (every datagram with a client's Initial is padded to that, and a server's
//! ack-eliciting Initials are too, RFC 9000 §14.1). Other UDP (DNS, WireGuard, QUIC short-header
//! packets of connections already established) is not QUIC Initial.

/// QUIC version 1 (RFC 9000).
pub const VERSION_1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369).
pub const VERSION_2: u32 = 0x6b33_43cf;
/// Smallest UDP payload carrying an Initial (RFC 9000 §14.1).
pub const MIN_INITIAL_DATAGRAM: usize = 1200;
/// Bytes of the UDP payload the recogniser reads: first byte and version.
pub const HEAD: usize = 5;

/// The version of the QUIC Initial that `head` (the first `HEAD` payload bytes) starts, in a
/// UDP payload of `payload_len` bytes; `None` when it is not one.
#[inline(always)]
pub fn initial_version(head: [u8; HEAD], payload_len: usize) -> Option<u32> {
    if payload_len < MIN_INITIAL_DATAGRAM || head[0] & 0xc0 != 0xc0 {
        return None;
    }
    let version = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    // Long packet type, bits 4-5: Initial is 0b00 in version 1 and 0b01 in version 2.
    let packet_type = (head[0] >> 4) & 0x03;
    match (version, packet_type) {
        (VERSION_1, 0) | (VERSION_2, 1) => Some(version),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_and_2_initials_are_recognised() {
        assert_eq!(initial_version([0xc3, 0, 0, 0, 1], 1200), Some(VERSION_1));
        assert_eq!(
            initial_version([0xd0, 0x6b, 0x33, 0x43, 0xcf], 1350),
            Some(VERSION_2)
        );
    }

    #[test]
    fn other_datagrams_are_not() {
        // Too short, a short header, no fixed bit, a Handshake packet, version negotiation,
        // version 2's type for Initial under version 1, an unknown version.
        assert_eq!(initial_version([0xc3, 0, 0, 0, 1], 1199), None);
        assert_eq!(initial_version([0x43, 0, 0, 0, 1], 1200), None);
        assert_eq!(initial_version([0x83, 0, 0, 0, 1], 1200), None);
        assert_eq!(initial_version([0xe3, 0, 0, 0, 1], 1200), None);
        assert_eq!(initial_version([0xc3, 0, 0, 0, 0], 1200), None);
        assert_eq!(initial_version([0xd3, 0, 0, 0, 1], 1200), None);
        assert_eq!(initial_version([0xc3, 0xff, 0, 0, 0x1d], 1200), None);
    }

    /// Every first byte, against the RFCs' wording restated: the header form bit (0x80) and
    /// the fixed bit (0x40) set, and the long packet type that version gives Initial.
    #[test]
    fn every_first_byte_matches_the_rfcs() {
        for first in 0..=255u8 {
            for (version, initial_type) in [(VERSION_1, 0u8), (VERSION_2, 1), (0xff00_001d, 9)] {
                let v = version.to_be_bytes();
                let head = [first, v[0], v[1], v[2], v[3]];
                let long_with_fixed = first & 0x80 != 0 && first & 0x40 != 0;
                let want = long_with_fixed && (first & 0x30) >> 4 == initial_type;
                assert_eq!(
                    initial_version(head, 1200),
                    want.then_some(version),
                    "{first:#04x}"
                );
                assert_eq!(initial_version(head, 1199), None);
            }
        }
    }
}
