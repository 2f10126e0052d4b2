//! Crypto posture: what each connection negotiated, read from its ServerHello in the kernel
//! (`enforcer-ebpf/src/server_hello.rs`): the TLS version (`supported_versions` for TLS 1.3,
//! the legacy version otherwise), the cipher suite and, for TLS 1.3, the key-share group.
//!
//! The ServerHello is read where it passes: on ingress (XDP) for clients on this host, on egress
//! (tc) for servers. A flow is parsed on ingress only once its ClientHello left (`AWAITING`), so
//! the packets of established flows and of flows that are not TLS are never parsed.

/// `LruHashMap<FlowKey, Posture>`: flows whose ClientHello left (ingress parsing expected) or
/// whose ServerHello was read.
pub const POSTURES: &str = "POSTURES";

/// `Posture::status`. 0 is never written.
pub mod status {
    /// The ClientHello left; the ServerHello has not been read yet.
    pub const AWAITING: u8 = 1;
    /// The ServerHello was read: version, suite and (TLS 1.3) group are the negotiated ones.
    pub const NEGOTIATED: u8 = 2;
    /// A TLS 1.3 HelloRetryRequest (its fixed random): `group` is the group the server asked the
    /// client to retry with; the real ServerHello follows and replaces this.
    pub const RETRY: u8 = 3;
    /// The ServerHello could not be read: it continues past its segment or its record, a length
    /// is inconsistent, or it has more extensions than the parser walks. Fields not read are 0.
    pub const UNREADABLE: u8 = 4;
}

/// `Posture::flags`.
pub mod flags {
    /// Read on egress: this host is the server (else on ingress: this host is the client).
    pub const EGRESS: u8 = 1;
    /// A HelloRetryRequest came before this ServerHello.
    pub const RETRIED: u8 = 2;
}

/// `HashMap<u32, PostureRule>`: what the policy requires of negotiated parameters, by library
/// id (the rule that decides the library), and `HOST_RULE` for every connection.
pub const POSTURE_RULES: &str = "POSTURE_RULES";
/// The `POSTURE_RULES` key of the host-wide requirements (library ids start at 1).
pub const HOST_RULE: u32 = 0;
/// Groups one rule may list.
pub const MAX_RULE_GROUPS: usize = 8;

/// What a connection must have negotiated. A field left empty requires nothing; a required
/// field that could not be read (`status::UNREADABLE`, TLS 1.2's group) breaks the rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostureRule {
    /// Allowed versions, one bit each ([`version_bit`]); 0: any.
    pub versions: u8,
    /// `groups[..groups_len]` allowed; 0: any.
    pub groups_len: u8,
    pub _pad: [u8; 2],
    pub groups: [u16; MAX_RULE_GROUPS],
}
const _: () = assert!(core::mem::size_of::<PostureRule>() == 20);

/// The bit of version `v` (SSL 3.0 to TLS 1.3) in `PostureRule::versions`; 0 for any other.
pub const fn version_bit(v: u16) -> u8 {
    if v >= 0x0300 && v <= 0x0304 {
        1 << (v - 0x0300)
    } else {
        0
    }
}

/// Which requirement a connection broke (`NegotiatedEvent::broken`).
pub mod broken {
    pub const NONE: u8 = 0;
    /// The host-wide `tls_versions`, `groups`.
    pub const HOST_VERSION: u8 = 1;
    pub const HOST_GROUP: u8 = 2;
    /// The library rule's `tls_versions`, `groups`.
    pub const RULE_VERSION: u8 = 3;
    pub const RULE_GROUP: u8 = 4;
}

/// Extension types the parser reads (IANA TLS ExtensionType values).
pub const EXT_SUPPORTED_VERSIONS: u16 = 43;
pub const EXT_KEY_SHARE: u16 = 51;

/// The value of `POSTURES`. A field that was not (or could not be) read is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Posture {
    /// The negotiated version as on the wire (0x0304: TLS 1.3, 0x0303: TLS 1.2).
    pub version: u16,
    /// The cipher suite (IANA TLS Cipher Suites registry).
    pub suite: u16,
    /// The key-share group (IANA TLS Supported Groups registry): TLS 1.3 only.
    pub group: u16,
    /// `status::*`.
    pub status: u8,
    /// `flags::*`.
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<Posture>() == 8);

impl Posture {
    pub const fn awaiting() -> Posture {
        Posture {
            version: 0,
            suite: 0,
            group: 0,
            status: status::AWAITING,
            flags: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::Posture {}
    unsafe impl aya::Pod for super::PostureRule {}
}
