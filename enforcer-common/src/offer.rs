//! What a TLS client offers: the fields of its ClientHello that its JA4 fingerprint and the
//! `offered` record are made of (legacy version, cipher suites, extension types in order,
//! `supported_versions`, `supported_groups`, `key_share` groups, `signature_algorithms`, the
//! first ALPN value, whether a server name is sent), read by the packet programs
//! (`enforcer-ebpf/src/offer.rs`, `offer_fields.rs`) from a ClientHello reassembled across
//! however many segments it spans (a post-quantum one is more than one MSS), and reported as an
//! [`OfferedEvent`]. The JA4 string itself is made in userspace (a hash the kernel cannot
//! compute): `enforcer/src/agent/events/ja4.rs`.

/// `LruHashMap<FlowKey, OfferState>`: ClientHellos being reassembled (an entry lives from the
/// segment that starts the hello to the one that completes it).
pub const OFFERS: &str = "OFFERS";
/// `Array<u64>` of [`OFFER_BUCKET_COUNT`] + 1: `OFFERS` entries per bucket of the 4-tuple
/// (`flow::held::bucket_in`), so a segment of a flow in an empty bucket skips the lookup; the
/// last slot, [`OFFERS_OPEN`], is their sum, so while no hello is being reassembled anywhere a
/// segment skips the bucket's hash as well.
pub const OFFER_BUCKETS: &str = "OFFER_BUCKETS";
pub const OFFER_BUCKET_BITS: u32 = 12;
pub const OFFER_BUCKET_COUNT: u32 = 1 << OFFER_BUCKET_BITS;
/// Index in `OFFER_BUCKETS` of the sum of every bucket's count.
pub const OFFERS_OPEN: u32 = OFFER_BUCKET_COUNT;
/// Tail-call tables of the ClientHello reader (slot 0), one per kind of caller (like the
/// ServerHello reader's, `posture::POSTURE_TC`): the reader is a program of its own, so the
/// verifier walks it once and not once per path of the caller.
pub const OFFER_TC: &str = "OFFER_TC";
pub const OFFER_XDP: &str = "OFFER_XDP";
pub const OFFER_XDP_NOFRAGS: &str = "OFFER_XDP_NOFRAGS";
/// The host layer's (`--host-layer cgroup`: cgroup_skb egress).
pub const OFFER_CG: &str = "OFFER_CG";
/// The reader programs, by the table they go in.
pub const READER_TC: &str = "offer_tc";
pub const READER_XDP: &str = "offer_xdp";
pub const READER_XDP_NOFRAGS: &str = "offer_xdp_nofrags";
pub const READER_CG: &str = "offer_cg";

/// Bytes of a ClientHello record reassembled (record header included); a longer one is read up
/// to here and reported with the fields past it unread.
pub const OFFER_BUFFER: usize = 4096;
/// Room after `OFFER_BUFFER` for the last copy (at most [`COPY_CHUNK`] bytes at an offset the
/// eBPF side masks below `OFFER_BUFFER`).
pub const COPY_CHUNK: usize = 256;

/// Values kept per list; a longer list is reported as read only this far (its field bit is
/// not set, and no JA4 is made from it).
pub const MAX_SUITES: usize = 64;
pub const MAX_EXTENSIONS: usize = 32;
pub const MAX_GROUPS: usize = 16;
pub const MAX_SIGNATURE_SCHEMES: usize = 32;
pub const MAX_VERSIONS: usize = 8;
pub const MAX_KEY_SHARES: usize = 8;
/// Bytes of the first ALPN value kept (JA4 needs its first and last: `alpn_last`).
pub const ALPN_KEPT: usize = 8;

/// A ClientHello being reassembled, one per flow in `OFFERS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OfferState {
    /// Sequence number of the hello record's first byte.
    pub seq: u32,
    /// Bytes collected from `seq` on, without a gap.
    pub have: u32,
    /// Bytes wanted: the record (5 + its length), at most `OFFER_BUFFER`.
    pub want: u32,
    /// `flow::direction::*` of the hello.
    pub direction: u8,
    pub _pad: [u8; 3],
    /// The parser's place between its steps (`enforcer-ebpf/src/offer_fields.rs`): the next
    /// offset to read (`u32::MAX`: stop), the hello's end, and the end of what was collected.
    pub cursor: u32,
    pub end: u32,
    pub limit: u32,
    pub _pad2: u32,
    /// Where the extensions the parser reads lie (`spot::*`): offset of the data, its length.
    pub spots: [Spot; spot::COUNT],
    pub bytes: [u8; OFFER_BUFFER + COPY_CHUNK],
}
const _: () =
    assert!(core::mem::size_of::<OfferState>() == 32 + 4 * spot::COUNT + OFFER_BUFFER + COPY_CHUNK);

/// Where one extension's data lies in `OfferState::bytes` (`at` 0: not sent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Spot {
    pub at: u16,
    pub len: u16,
}

/// Indexes of `OfferState::spots`.
pub mod spot {
    pub const VERSIONS: usize = 0;
    pub const GROUPS: usize = 1;
    pub const SIGNATURE_SCHEMES: usize = 2;
    pub const KEY_SHARES: usize = 3;
    pub const ALPN: usize = 4;
    pub const COUNT: usize = 6;
}

/// Bits of `OfferedEvent::read`: which fields were read in full. A field whose extension is
/// absent counts as read (empty) once the extension list was read to its end.
pub mod field {
    /// Every cipher suite is in `suites`.
    pub const SUITES: u16 = 1;
    /// The extension list was read to its end and every type is in `extensions`.
    pub const EXTENSIONS: u16 = 2;
    pub const VERSIONS: u16 = 4;
    pub const GROUPS: u16 = 8;
    pub const SIGNATURE_SCHEMES: u16 = 16;
    pub const KEY_SHARES: u16 = 32;
    pub const ALPN: u16 = 64;
    /// What a JA4 is made of.
    pub const JA4: u16 = SUITES | EXTENSIONS | VERSIONS | SIGNATURE_SCHEMES | ALPN;
}

/// One per ClientHello judged on egress (this host is the client), once all of it was seen
/// (or as much as `OFFER_BUFFER` holds). On the hello ring: anyone can send ClientHellos.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OfferedEvent {
    /// `event::kind::OFFERED`.
    pub header: crate::event::Header,
    /// From this host's side.
    pub flow: crate::flow::FlowKey,
    /// `field::*` bits.
    pub read: u16,
    /// The hello's own version field.
    pub legacy_version: u16,
    /// Cipher suites in the hello (more than `suites` holds when it is longer).
    pub suite_count: u16,
    /// Extensions walked (more than `extensions` holds when the list is longer).
    pub extension_count: u16,
    pub version_count: u8,
    pub group_count: u8,
    pub signature_scheme_count: u8,
    pub key_share_count: u8,
    /// 1: a `server_name` extension was sent.
    pub sni: u8,
    /// `flow::direction::*`: `SEND` (this host is the client).
    pub direction: u8,
    /// Length of the first ALPN value (0: no ALPN, or an empty one).
    pub alpn_len: u8,
    /// Its last byte.
    pub alpn_last: u8,
    /// Its first bytes (`ALPN_KEPT` at most).
    pub alpn: [u8; ALPN_KEPT],
    /// Bytes of the hello record seen (record header included).
    pub hello_len: u32,
    pub _pad: [u8; 4],
    pub suites: [u16; MAX_SUITES],
    /// Types in the order sent.
    pub extensions: [u16; MAX_EXTENSIONS],
    pub versions: [u16; MAX_VERSIONS],
    pub groups: [u16; MAX_GROUPS],
    /// In the order sent (JA4 hashes them unsorted).
    pub signature_schemes: [u16; MAX_SIGNATURE_SCHEMES],
    pub key_shares: [u16; MAX_KEY_SHARES],
}
const _: () = assert!(core::mem::size_of::<OfferedEvent>() == 408);

impl Default for OfferedEvent {
    fn default() -> Self {
        OfferedEvent {
            header: Default::default(),
            flow: Default::default(),
            read: 0,
            legacy_version: 0,
            suite_count: 0,
            extension_count: 0,
            version_count: 0,
            group_count: 0,
            signature_scheme_count: 0,
            key_share_count: 0,
            sni: 0,
            direction: 0,
            alpn_len: 0,
            alpn_last: 0,
            alpn: [0; ALPN_KEPT],
            hello_len: 0,
            _pad: [0; 4],
            suites: [0; MAX_SUITES],
            extensions: [0; MAX_EXTENSIONS],
            versions: [0; MAX_VERSIONS],
            groups: [0; MAX_GROUPS],
            signature_schemes: [0; MAX_SIGNATURE_SCHEMES],
            key_shares: [0; MAX_KEY_SHARES],
        }
    }
}

impl OfferedEvent {
    pub const fn has(&self, bits: u16) -> bool {
        self.read & bits == bits
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::OfferedEvent {}
    unsafe impl aya::Pod for super::OfferState {}
}
