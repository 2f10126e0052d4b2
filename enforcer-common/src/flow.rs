//! A TCP connection as the datapath knows it: its 4-tuple (`FlowKey`), the library it was
//! attributed to and the verdict (`FlowState`, the value of `FLOWS`), and how the kernel hooks
//! find it (the uprobe cookie, the `struct sock` offsets).

/// Address family as stored in `FlowKey::family`.
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// A TCP connection seen from this host: local and remote end.
///
/// Ports are in host byte order. Addresses are in network byte order; an IPv4 address fills the
/// first four bytes and the rest stay zero. IPv4-mapped IPv6 sockets (`::ffff:a.b.c.d`) are
/// recorded as IPv4, because that is what their packets carry on the wire.
/// 4-aligned (same layout and size as 2-aligned: every field already sits at a multiple of its
/// size): the address words `held::bucket_in` folds are then aligned `u32`s, which the BPF
/// backend loads in one instruction each instead of assembling them from bytes.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub local_port: u16,
    pub remote_port: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::offset_of!(FlowKey, local_addr) == 8);
const _: () = assert!(core::mem::offset_of!(FlowKey, remote_addr) == 24);

/// What the library call was doing; part of the uprobe cookie.
pub mod op {
    pub const HANDSHAKE: u8 = 0;
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    /// A random source whose output may be a hello's random (`hello.rs`): the output buffer is
    /// argument 0 and its length argument 1 (`RAND_bytes(buf, num)`) ...
    pub const RANDOM_BUFFER_ARG0: u8 = 3;
    /// ... or the buffer is argument 1 and the length argument 2 (`RAND_bytes_ex(ctx, buf,
    /// num, strength)`, `gnutls_rnd(level, data, len)`).
    pub const RANDOM_BUFFER_ARG1: u8 = 4;
    /// The function every session of the library starts with (`SSL_new`, `gnutls_init`): an
    /// entry probe only, that learns where the library's code lies in the calling process
    /// (`hello::CODE_RANGES`), so its random source can tell the library's own calls from
    /// other code's.
    pub const SESSION: u8 = 5;

    pub const fn is_random(op: u8) -> bool {
        op == RANDOM_BUFFER_ARG0 || op == RANDOM_BUFFER_ARG1
    }
}

/// Kernel TCP direction that revealed the 4-tuple.
pub mod direction {
    pub const SEND: u8 = 0;
    pub const RECV: u8 = 1;
}

/// Outcome recorded for a flow (`FlowState::verdict`) and reported in its events.
pub mod verdict {
    pub const ALLOWED: u8 = 0;
    /// Denied library, enforce mode: the 4-tuple is in the blocklist.
    pub const BLOCKED: u8 = 1;
    /// Denied library, audit mode: reported only.
    pub const WOULD_BLOCK: u8 = 2;
    /// The library's rule says audit: reported only.
    pub const AUDITED: u8 = 3;
    /// The library id has no entry in `LIB_ACTIONS` (should not happen): let through, reported.
    pub const UNKNOWN_LIBRARY: u8 = 4;
    /// Denied in enforce mode, but the blocklist was full: the flow went to the overflow table
    /// (`BLOCKLIST_OVERFLOW`), where it is dropped all the same (fail-closed, counted).
    pub const BLOCKLIST_FULL: u8 = 5;
    /// The flow's library has rules scoped by server name: it is judged at its ClientHello.
    pub const PENDING_SERVER_NAME: u8 = 6;
    /// A rule scoped to who is talking may decide the flow, and userspace has not judged the
    /// sender yet (`who`): its hello is held (enforce mode) or let through (audit mode) until
    /// it has. Only in hello events, never in `FLOWS`.
    pub const PENDING_WHO: u8 = 7;
}

/// The counts of what `BLOCKLIST` may hold: the two slots of `BLOCKLIST_HELD` and the buckets of
/// `BLOCKLIST_BUCKETS`. The packet programs look `BLOCKLIST` up only while [`held::USERSPACE`]
/// or the packet's bucket is non-zero ([`held::KERNEL`], the total, is for reading); each count
/// is kept at or above what it stands for, never below (one too high only costs the lookup, one
/// too low would let a blocked flow's packets through).
pub mod held {
    /// Entries the kernel put in `BLOCKLIST`: incremented (atomically) before each insert,
    /// decremented after an insert that did not add one and after each delete that removed one.
    /// Entries removed by userspace are never subtracted, so this stays an upper bound of the
    /// kernel's entries as long as userspace made none (a close may delete one of those and
    /// subtract it: by then [`USERSPACE`] is set for good, so the lookup never stops).
    pub const KERNEL: u32 = 0;
    /// 1 once userspace put anything in `BLOCKLIST` (the operator's `block`, a reload's
    /// verdicts), or took over a pinned `BLOCKLIST` without its `BLOCKLIST_HELD` or
    /// `BLOCKLIST_BUCKETS`; never cleared.
    pub const USERSPACE: u32 = 1;
    pub const ENTRIES: u32 = 2;

    /// `BLOCKLIST_BUCKETS` has `1 << BUCKET_BITS` slots: the kernel's entries counted per bucket
    /// of the 4-tuple ([`bucket_of`]), kept like [`KERNEL`] (incremented before the insert,
    /// decremented after a delete). A packet whose bucket is zero skips the `BLOCKLIST` lookup
    /// while other flows are blocked; with a few hundred blocked flows, all but a few percent
    /// of packets do. A bucket another flow shares only costs the lookup.
    pub const BUCKET_BITS: u32 = 14;
    pub const BUCKETS: u32 = 1 << BUCKET_BITS;

    /// The bucket of `flow` in `BLOCKLIST_BUCKETS`. The same on the TCP hooks (which insert and
    /// delete) and in the packet programs (which look up).
    #[inline(always)]
    pub fn bucket_of(flow: &super::FlowKey) -> u32 {
        bucket_in(flow, BUCKET_BITS)
    }

    /// `flow`'s bucket among `1 << bits`: the addresses' first and last words and the ports
    /// folded into 32 bits, then multiplied (Fibonacci hashing) so the top `bits` depend on all
    /// of them. `bits` is 1..=31.
    #[inline(always)]
    pub fn bucket_in(flow: &super::FlowKey, bits: u32) -> u32 {
        let folded = word(&flow.local_addr, 0)
            ^ word(&flow.local_addr, 3).rotate_left(5)
            ^ word(&flow.remote_addr, 0).rotate_left(11)
            ^ word(&flow.remote_addr, 3).rotate_left(17)
            ^ (((flow.local_port as u32) << 16) | flow.remote_port as u32);
        folded.wrapping_mul(0x9E37_79B1) >> (32 - bits)
    }

    /// Word `i` (0..4) of an address of a `FlowKey`, as `u32::from_ne_bytes` of its bytes: the
    /// same value pinned counts were kept under by earlier builds.
    #[inline(always)]
    fn word(addr: &[u8; 16], i: usize) -> u32 {
        let words: &[u32; 4] = {
            let p = core::ptr::from_ref(addr).cast::<[u32; 4]>();
            // SAFETY: same size; the addresses of a 4-aligned FlowKey sit at offsets 8 and 24
            // (asserted above), so `p` is 4-aligned; every bit pattern is a valid u32. Only a
            // FlowKey's own addresses are passed here.
            unsafe { &*p }
        };
        words[i & 3]
    }
}

/// The value of a `BLOCKLIST` entry: who put the flow there.
pub mod block {
    /// A kernel verdict (a denied library, unattributed TLS, a name out of scope).
    pub const KERNEL: u8 = 1;
    /// The operator (`enforcer block`): the agent's sweep leaves it, only `unblock` removes it.
    pub const OPERATOR: u8 = 2;
}

/// The uprobe attach cookie: which library, and what the probed function does.
pub mod cookie {
    pub const fn encode(lib_id: u32, op: u8) -> u64 {
        ((op as u64) << 32) | lib_id as u64
    }
    pub const fn lib_id(cookie: u64) -> u32 {
        cookie as u32
    }
    pub const fn op(cookie: u64) -> u8 {
        (cookie >> 32) as u8
    }
}

/// One entry of `FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub first_seen_ns: u64,
    pub lib_id: u32,
    /// `verdict::*`.
    pub verdict: u8,
    /// `op::*`.
    pub op: u8,
    /// `direction::*`.
    pub direction: u8,
    /// `hello::evidence::*`.
    pub evidence: u8,
}
const _: () = assert!(core::mem::size_of::<FlowState>() == 16);

/// Name of the load-time global holding the `SockOffsets` (see `EbpfLoader::override_global`).
pub const SOCK_OFFSETS_GLOBAL: &str = "SOCK_OFFSETS";

/// Byte offsets of the `struct sock` fields the kernel hooks read, taken from the running
/// kernel's BTF at start (rustc emits no CO-RE relocations, so nothing here is compiled in).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `__sk_common.skc_family` (u16).
    pub family: u32,
    /// `__sk_common.skc_num` (u16, local port, host order).
    pub num: u32,
    /// `__sk_common.skc_dport` (__be16).
    pub dport: u32,
    /// `__sk_common.skc_rcv_saddr` (__be32).
    pub rcv_saddr: u32,
    /// `__sk_common.skc_daddr` (__be32).
    pub daddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr` (struct in6_addr).
    pub v6_rcv_saddr: u32,
    /// `__sk_common.skc_v6_daddr` (struct in6_addr).
    pub v6_daddr: u32,
    /// `sk_protocol` (u16).
    pub protocol: u32,
    /// `inet_sock.inet_sport` (__be16, local port). Unlike `skc_num` it is not cleared when the
    /// socket is unhashed, so it still names the flow when the socket reaches TCP_CLOSE.
    pub sport: u32,
}
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 36);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::SockOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buckets pinned counts were kept under: the byte-wise fold of earlier builds.
    fn bytewise_bucket(flow: &FlowKey, bits: u32) -> u32 {
        let word =
            |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        let folded = word(&flow.local_addr, 0)
            ^ word(&flow.local_addr, 12).rotate_left(5)
            ^ word(&flow.remote_addr, 0).rotate_left(11)
            ^ word(&flow.remote_addr, 12).rotate_left(17)
            ^ (((flow.local_port as u32) << 16) | flow.remote_port as u32);
        folded.wrapping_mul(0x9E37_79B1) >> (32 - bits)
    }

    #[test]
    fn word_loads_give_the_buckets_of_the_bytewise_fold() {
        let mut flow = FlowKey::default();
        for n in 0u32..2000 {
            let b = n.wrapping_mul(0x0101_0107).to_be_bytes();
            flow.local_addr[..4].copy_from_slice(&b);
            flow.remote_addr[12..].copy_from_slice(&b);
            flow.remote_addr[(n % 13) as usize] ^= n as u8;
            flow.local_port = n as u16;
            flow.remote_port = (n >> 3) as u16 ^ 443;
            for bits in [1, 12, 14, 16, 31] {
                assert_eq!(held::bucket_in(&flow, bits), bytewise_bucket(&flow, bits));
            }
        }
    }
}
