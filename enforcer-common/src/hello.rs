//! Content-bound attribution: a TLS hello (ClientHello or ServerHello) belongs to the library that
//! made its 32-byte random. The random sources of the libraries (`RAND_bytes_ex`, `gnutls_rnd`,
//! ...) are probed; a 32-byte output whose caller is the library's own code is recorded in
//! `HELLO_RANDOMS` (`enforcer-ebpf/src/random.rs`). The egress classifier collects the first
//! bytes of every new flow's stream (`FlowHead`, `enforcer-ebpf/src/flow_head.rs`), however the
//! sender split them, and looks the hello's random up: found, the flow is that library's
//! whatever thread, process or relay sent it; not found, the hello is unattributed TLS.
//! See docs/architecture.md, "Content-bound attribution".

/// `LruHashMap<RandomKey, RandomOrigin>`: randoms made by probed libraries.
pub const HELLO_RANDOMS: &str = "HELLO_RANDOMS";
/// `HashMap<u32, u8>`: libraries whose hellos must carry a random they made (their random
/// source is probed): a hello on their flow with another random is unattributed.
pub const RANDOM_LIBS: &str = "RANDOM_LIBS";
/// `HashMap<u32, CodeSpan>`: for each library with a session probe (`op::SESSION`), where its
/// code lies around that function. Written by userspace before the probes attach.
pub const LIB_CODE: &str = "LIB_CODE";
/// `LruHashMap<u32, ProcessCode>`: per process (tgid), where the code of the libraries it started
/// sessions of lies in its address space, learned at each session probe hit.
pub const CODE_RANGES: &str = "CODE_RANGES";
/// `LruHashMap<FlowKey, FlowHead>`: the first bytes of flows whose SYN or SYN-ACK left.
pub const FLOW_HEADS: &str = "FLOW_HEADS";
/// `Array<u64>` of [`HEAD_BUCKET_COUNT`] elements: `FLOW_HEADS` entries per bucket of the
/// 4-tuple ([`head_bucket_of`]), so a segment of a flow in an empty bucket skips the
/// `FLOW_HEADS` lookup. Counted like `BLOCKLIST_BUCKETS`: never below the entries.
pub const HEAD_BUCKETS: &str = "HEAD_BUCKETS";
/// One bucket per entry `FLOW_HEADS` can hold (65,536).
pub const HEAD_BUCKET_BITS: u32 = 16;
pub const HEAD_BUCKET_COUNT: u32 = 1 << HEAD_BUCKET_BITS;

/// The bucket of `flow` in `HEAD_BUCKETS`.
#[inline(always)]
pub fn head_bucket_of(flow: &crate::flow::FlowKey) -> u32 {
    crate::flow::held::bucket_in(flow, HEAD_BUCKET_BITS)
}

/// Bytes of a stream's head the classifier needs: record header (5), handshake header (4),
/// version (2), random (32).
pub const HEAD_LEN: usize = 43;
/// Where the random starts in the head.
pub const RANDOM_AT: usize = 11;

/// The part of a random that is its key: bytes 4..24. Bytes 0..4 may be the time (OpenSSL's
/// `SSL_MODE_SEND_*HELLO_TIME`), bytes 24..32 of a ServerHello the RFC 8446 downgrade sentinel
/// the server writes over its random when it negotiates TLS 1.2 or older. 160 bits are still
/// unique.
pub const KEY_FROM: usize = 4;
pub const KEY_LEN: usize = 20;

/// A random source's output of `len` bytes (28..=32) is taken to be the last `len` bytes of the
/// random; its key starts at this offset into the output.
pub const fn key_offset_in_output(len: usize) -> usize {
    len + KEY_FROM - 32
}
pub const MIN_OUTPUT: usize = 28;
pub const MAX_OUTPUT: usize = 32;

/// The random of a TLS 1.3 HelloRetryRequest (RFC 8446 4.1.3): fixed, made by no library. A
/// flow whose server sends one is judged at the real ServerHello that follows.
pub const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RandomKey(pub [u8; KEY_LEN]);
const _: () = assert!(core::mem::size_of::<RandomKey>() == 20);

/// Who made a random, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RandomOrigin {
    pub made_ns: u64,
    pub lib_id: u32,
    /// The process that made it, and its command name then (it may be gone by the time its hello
    /// is reported).
    pub tgid: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<RandomOrigin>() == 32);

/// The head of a flow's byte stream in this host's sending direction, collected segment by
/// segment from its SYN (client) or SYN-ACK (server) on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowHead {
    /// Sequence number of the first byte of the record being collected (`isn + 1` at first;
    /// moved past a HelloRetryRequest and a ChangeCipherSpec record).
    pub base: u32,
    /// Bytes collected from `base` on, without a gap (0..=HEAD_LEN).
    pub count: u32,
    /// HelloRetryRequests skipped (a server sends at most one).
    pub retries: u8,
    pub _pad: [u8; 3],
    /// `bytes[..count]` collected. 64 bytes, not 43: the eBPF side indexes it with a mask
    /// (`& 63`), the one bound the verifier keeps through LLVM's unrolled copy loop.
    pub bytes: [u8; HEAD_BUFFER],
}
/// Size of `FlowHead::bytes` (a power of two above `HEAD_LEN`).
pub const HEAD_BUFFER: usize = 64;
const _: () = assert!(core::mem::size_of::<FlowHead>() == 76);

/// The executable segment of a library's file around its session function (`op::SESSION`):
/// `before` bytes of code precede the function's first instruction, `after` bytes follow from
/// it. A process that calls the function at address `a` has the library's code at
/// `a - before .. a + after`; its random source counts a caller inside that range as the library.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CodeSpan {
    pub before: u64,
    pub after: u64,
}

/// Libraries a process (`CODE_RANGES` key: tgid) has sessions of, with where their code lies.
/// A process rarely has more than one TLS library; a fifth replaces the oldest slot.
pub const CODE_SLOTS: usize = 4;

/// One library's code in one process: `[start, end)`; `lib_id` 0 marks a free slot (library ids
/// start at 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeRange {
    pub start: u64,
    pub end: u64,
    pub lib_id: u32,
    pub _pad: u32,
}

/// The value of `CODE_RANGES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCode {
    pub slots: [CodeRange; CODE_SLOTS],
    /// Next slot to replace when none is free or the library's own.
    pub next: u32,
    pub _pad: u32,
}

/// How a flow's library was found (`FlowState::evidence`, `TlsEvent::evidence`).
pub mod evidence {
    /// A thread inside a probed TLS call of the library touched the socket.
    pub const THREAD: u8 = 0;
    /// The flow's hello carries a random the library made.
    pub const RANDOM: u8 = 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::RandomKey {}
    unsafe impl aya::Pod for super::RandomOrigin {}
    unsafe impl aya::Pod for super::FlowHead {}
    unsafe impl aya::Pod for super::CodeSpan {}
    unsafe impl aya::Pod for super::ProcessCode {}
}
