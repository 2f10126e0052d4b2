//! What userspace writes into the kernel from the policy: each library's action
//! (`LIB_ACTIONS`), the mode (`MODE`), and the ClientHello policy of the egress classifier
//! (`HELLO_POLICY`, `SCOPED_LIBS`, `SERVER_NAME_RULES`): TLS on flows no probed library claimed
//! (`unattributed_tls`), and rules scoped by server name.

/// What the policy says about one library (value of `LIB_ACTIONS`, `SCOPED_LIBS` and
/// `SERVER_NAME_RULES`).
pub mod action {
    /// Connections are recorded, never blocked.
    pub const ALLOW: u8 = 0;
    /// Connections are blocked in enforce mode and reported as would-block in audit mode.
    pub const DENY: u8 = 1;
    /// Connections are reported at warn level but never blocked.
    pub const AUDIT: u8 = 2;
}

/// The library id shared by every library that got no id of its own: the library table is at
/// its limit (`--max-libraries`) or `LIB_ACTIONS` is full. Its `LIB_ACTIONS` entry is the
/// policy's `default`, written at start and on every reload, so a library over capacity is
/// probed and judged by `default`, never left unprobed (docs/architecture.md, threat model).
pub const OVER_CAPACITY: u32 = u32::MAX - 1;

/// Agent-wide mode (value of `MODE[0]`).
pub mod mode {
    pub const AUDIT: u32 = 0;
    pub const ENFORCE: u32 = 1;
}

/// `HELLO_POLICY[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelloPolicy {
    /// `action::*` for a ClientHello on a flow no probed library claimed.
    pub unattributed: u8,
    /// 1 if any library has rules scoped by server name: only then does the classifier look up
    /// `FLOWS` for data packets that are not a ClientHello (a pending flow must not slip past).
    pub scoped: u8,
    /// 1 if the kernel hook attributes a send only after its packets left (`sock_send_length`):
    /// scoped libraries are then judged at attribution, without a name.
    pub late_attribution: u8,
    /// `action::*` for a QUIC Initial datagram (`quic`), either direction.
    pub quic: u8,
}
const _: () = assert!(core::mem::size_of::<HelloPolicy>() == 4);

/// Longest server name kept: an LPM trie key holds at most 256 data bytes (kernel
/// `LPM_DATA_SIZE_MAX`), 4 of which are the library id. DNS names are at most 253 bytes; a
/// longer one is kept by its last 252 bytes, which is what a suffix match needs.
pub const MAX_NAME: usize = 252;
/// Byte after the reversed name in a key, so a pattern without `*` matches only itself.
pub const NAME_END: u8 = 0;

/// Data of a `SERVER_NAME_RULES` key (the trie's key is `prefix_len: u32` followed by this;
/// aya's `lpm_trie::Key`). The prefix counts bits from `lib_id_be` on: 32 + 8 × the bytes of the
/// pattern. The id is big-endian so its bits come first in the trie's order. 256 bytes: the
/// kernel's limit for LPM trie data (`LPM_DATA_SIZE_MAX`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerNameKey {
    pub lib_id_be: u32,
    /// Lowercased and reversed (`elpmaxe.lanretni.` for `*.internal.example`), followed by
    /// `NAME_END` for a name without `*`.
    pub name: [u8; MAX_NAME],
}
const _: () = assert!(core::mem::size_of::<ServerNameKey>() == 256);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::HelloPolicy {}
    unsafe impl aya::Pod for super::ServerNameKey {}
}
