//! The records of the `EVENTS` ring buffer. Every record starts with a `Header` whose `kind`
//! says which struct follows; userspace dispatches on it (and skips, counting, a record whose
//! kind it does not know or that is shorter than its kind's struct), never on the size.

/// `Header::kind`. 0 is never written: a zeroed record is not mistaken for an event.
pub mod kind {
    /// A `TlsEvent`.
    pub const TLS: u8 = 1;
    /// A `HelloEvent`.
    pub const HELLO: u8 = 2;
    /// A `QuicEvent`.
    pub const QUIC: u8 = 3;
    /// A `posture::NegotiatedEvent`.
    pub const NEGOTIATED: u8 = 4;
    /// An `offer::OfferedEvent`.
    pub const OFFERED: u8 = 5;
}

/// The start of every `EVENTS` record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// `kind::*`.
    pub kind: u8,
    pub _pad: [u8; 7],
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Header>() == 16);

impl Header {
    pub const fn new(kind: u8, ts_ns: u64) -> Header {
        Header {
            kind,
            _pad: [0; 7],
            ts_ns,
        }
    }
}

/// Reported once per (flow, library): the first time a library's call moves bytes on a 4-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsEvent {
    /// `kind::TLS`.
    pub header: Header,
    pub pid: u32,
    pub tid: u32,
    pub lib_id: u32,
    /// `flow::verdict::*`.
    pub verdict: u8,
    /// `flow::op::*`.
    pub op: u8,
    /// `flow::direction::*`.
    pub direction: u8,
    /// `hello::evidence::*`. With `RANDOM` (found by the egress classifier), `pid` and `comm`
    /// are the process that made the random, and `tid` is 0.
    pub evidence: u8,
    pub comm: [u8; 16],
    pub flow: crate::flow::FlowKey,
}
const _: () = assert!(core::mem::size_of::<TlsEvent>() == 88);

/// Library id used in `HelloEvent::lib_id` for a flow no probed library claimed.
pub const UNATTRIBUTED: u32 = u32::MAX;

/// What the ClientHello said about the server name (`HelloEvent::sni`).
pub mod sni {
    /// A `server_name` extension with a `host_name` entry: the name is in the event.
    pub const PRESENT: u8 = 0;
    /// The extension list was read to its end: the client sent no server name.
    pub const ABSENT: u8 = 1;
    /// The name could not be read: the ClientHello continues past this segment, the
    /// extension list is longer than the parser walks, or a length field is inconsistent.
    pub const UNREADABLE: u8 = 2;
}

/// Which hello a `HelloEvent` is about (`HelloEvent::hello`).
pub mod hello {
    /// A ClientHello: this host is the client.
    pub const CLIENT: u8 = 1;
    /// A ServerHello: this host is the server.
    pub const SERVER: u8 = 2;
}

/// One event per ClientHello the egress classifier judged, and per ServerHello it judged
/// unattributed (a ServerHello made by a probed library is reported as the flow's connection).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HelloEvent {
    /// `kind::HELLO`.
    pub header: Header,
    pub flow: crate::flow::FlowKey,
    /// The library `FLOWS` holds for the flow, or `UNATTRIBUTED`.
    pub lib_id: u32,
    /// `flow::verdict::*` of the flow after this ClientHello.
    pub verdict: u8,
    /// `sni::*`.
    pub sni: u8,
    /// Bytes of `name` in use.
    pub name_len: u16,
    /// As sent (not lowercased, not reversed); the last 255 bytes of a longer name.
    pub name: [u8; 256],
    /// `hello::*`.
    pub hello: u8,
    /// `hello::evidence::*`: `RANDOM` when the random was made by `lib_id`.
    pub evidence: u8,
    pub _pad: [u8; 2],
    /// The process that made the random (`evidence::RANDOM`), else 0.
    pub producer_pid: u32,
    /// Its command name when it made the random (it may be gone when the hello is reported).
    pub producer_comm: [u8; 16],
    /// `FlowState::first_seen_ns` of the flow's state before this hello (the `ts_ns` of the
    /// connection event that attributed it), else 0. A 4-tuple is reused as soon as its local
    /// socket is gone, so userspace joins a hello to a connection event of the same 4-tuple
    /// only when this matches.
    pub flow_since_ns: u64,
}
const _: () = assert!(core::mem::size_of::<HelloEvent>() == 352);

/// A QUIC Initial datagram judged by the `quic` policy, at most one per 4-tuple and direction a
/// second (`QUIC_SEEN`): an Initial is retransmitted, and anyone can send UDP in bulk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct QuicEvent {
    /// `kind::QUIC`.
    pub header: Header,
    /// UDP ports and addresses, from this host's side.
    pub flow: crate::flow::FlowKey,
    /// `quic::VERSION_*`.
    pub version: u32,
    /// `flow::verdict::*`: `BLOCKED` (dropped), `WOULD_BLOCK` (audit mode), `AUDITED`.
    pub verdict: u8,
    /// `flow::direction::*`: `SEND` (tc egress) or `RECV` (XDP ingress).
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<QuicEvent>() == 64);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::Header {}
    unsafe impl aya::Pod for super::TlsEvent {}
    unsafe impl aya::Pod for super::HelloEvent {}
    unsafe impl aya::Pod for super::QuicEvent {}
}
