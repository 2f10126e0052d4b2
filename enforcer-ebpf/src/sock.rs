//! The 4-tuple of a kernel `struct sock`, read with field offsets that userspace took from the
//! running kernel's BTF (rustc emits no CO-RE relocations, so nothing is compiled in).

use aya_ebpf::helpers::bpf_probe_read_kernel;
use enforcer_common::flow::{FlowKey, SockOffsets, family};

/// Filled by userspace at load time (`EbpfLoader::override_global`, must exist). All zero would
/// mean "not set"; userspace refuses to load without it.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets {
    family: 0,
    num: 0,
    dport: 0,
    rcv_saddr: 0,
    daddr: 0,
    v6_rcv_saddr: 0,
    v6_daddr: 0,
    protocol: 0,
    sport: 0,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

#[inline(always)]
fn offsets() -> SockOffsets {
    // Volatile: otherwise the compiler folds the all-zero initialiser into the code and the
    // load-time value is never read.
    unsafe { core::ptr::read_volatile(&SOCK_OFFSETS) }
}

/// Why a socket names no flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SockError {
    /// Not a TCP socket (the generic `sock_*_length` tracepoints fire for every socket).
    NotTcp,
    /// Not connected, or aborted and unhashed (the kernel clears its local port): writes on it
    /// go nowhere.
    Unconnected,
    /// An address family other than IPv4 and IPv6.
    UnknownFamily,
    /// `bpf_probe_read_kernel` failed on one of its fields: the socket pointer or the offsets
    /// are not what we think. Counted by the callers (`Stat::SockReadFailures`).
    ReadFailed,
}

#[inline(always)]
fn read<T>(sk: *const u8, offset: u32) -> Result<T, SockError> {
    // SAFETY: bpf_probe_read_kernel tolerates bad pointers (returns an error).
    unsafe { bpf_probe_read_kernel(sk.wrapping_add(offset as usize) as *const T) }
        .map_err(|_| SockError::ReadFailed)
}

/// The flow of a TCP socket, from this host's point of view.
#[inline(always)]
pub fn flow_of(sk: *const u8) -> Result<FlowKey, SockError> {
    let local_port = read::<u16>(sk, offsets().num)?;
    flow_with_local_port(sk, local_port)
}

/// The flow of a socket reaching TCP_CLOSE. By then the kernel may have unhashed it and cleared
/// `skc_num`, so the local port comes from `inet_sport`, which keeps it.
#[inline(always)]
pub fn closing_flow_of(sk: *const u8) -> Result<FlowKey, SockError> {
    let local_port = u16::from_be(read::<u16>(sk, offsets().sport)?);
    flow_with_local_port(sk, local_port)
}

#[inline(always)]
fn flow_with_local_port(sk: *const u8, local_port: u16) -> Result<FlowKey, SockError> {
    let o = offsets();
    if read::<u16>(sk, o.protocol)? != IPPROTO_TCP {
        return Err(SockError::NotTcp);
    }
    let mut key = FlowKey {
        local_port,
        remote_port: u16::from_be(read::<u16>(sk, o.dport)?),
        ..FlowKey::default()
    };
    if key.local_port == 0 || key.remote_port == 0 {
        return Err(SockError::Unconnected);
    }
    match read::<u16>(sk, o.family)? {
        AF_INET => {
            key.family = family::V4;
            let local: [u8; 4] = read(sk, o.rcv_saddr)?;
            let remote: [u8; 4] = read(sk, o.daddr)?;
            key.local_addr[..4].copy_from_slice(&local);
            key.remote_addr[..4].copy_from_slice(&remote);
        }
        AF_INET6 => {
            let local: [u8; 16] = read(sk, o.v6_rcv_saddr)?;
            let remote: [u8; 16] = read(sk, o.v6_daddr)?;
            if is_v4_mapped(&remote) {
                // A dual-stack socket talking IPv4: its packets carry IPv4 headers.
                key.family = family::V4;
                key.local_addr[..4].copy_from_slice(&local[12..]);
                key.remote_addr[..4].copy_from_slice(&remote[12..]);
            } else {
                key.family = family::V6;
                key.local_addr = local;
                key.remote_addr = remote;
            }
        }
        _ => return Err(SockError::UnknownFamily),
    }
    Ok(key)
}

#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}
