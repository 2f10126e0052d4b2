//! The fast path of `packet::parse`: the headers read through packet pointers into the linear
//! part of the frame, one bounds check per header (Ethernet, each VLAN tag, the IP header, each
//! IPv6 extension header, TCP). `Err(Short)` when a header reaches past the linear part (or the
//! frame is truncated): the caller then parses the frame again with the load helpers, so the
//! answer never depends on where the kernel put the bytes.
//!
//! Verifier shape (the same on 6.1, 6.12 and 6.18): every packet pointer is `data + offset`,
//! with `offset` a constant on each verifier path (Ethernet, VLAN) or a scalar whose bound the
//! verifier reads off the register itself: the IHL nibble times 4 (at most 60), or the IPv6
//! walk's offset right after its `> MAX_L4_OFFSET` check. `Window::at` checks
//! `pointer + N > data_end` on that same pointer and every load is at a constant offset below N,
//! so no bound has to travel between registers (older verifiers do not link `r2 = r1 + k`
//! bounds back to `r1`). Offsets stay `usize` adds without overflow checks, which LLVM does not
//! reassociate across the comparison.

use core::{mem::size_of, ptr::read_unaligned};

use enforcer_common::flow::family;

use super::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_AH,
    IPV6_DSTOPTS, IPV6_FRAGMENT, IPV6_HOPOPTS, IPV6_ROUTING, Linear, MAX_IPV6_EXT_HEADERS,
    MAX_L4_OFFSET, MAX_VLAN_TAGS, Segment, TCP_FLAG_RST,
};

/// A header reaches past `data_end`: read the frame with the helpers instead.
pub struct Short;

/// `N` bytes of the linear part, bounds-checked once.
struct Window<const N: usize>(*const u8);

impl<const N: usize> Window<N> {
    #[inline(always)]
    fn at(data: usize, end: usize, offset: usize) -> Result<Self, Short> {
        let start = data + offset;
        if start + N > end {
            return Err(Short);
        }
        Ok(Window(start as *const u8))
    }

    /// `M` bytes at `i`; callers pass constants, so the range test folds away.
    #[inline(always)]
    fn bytes<const M: usize>(&self, i: usize) -> [u8; M] {
        if i + M > N {
            return [0; M];
        }
        // SAFETY: `at` checked that all N bytes from self.0 are inside the packet, and
        // i + M <= N.
        unsafe { read_unaligned(self.0.add(i) as *const [u8; M]) }
    }

    #[inline(always)]
    fn u8(&self, i: usize) -> u8 {
        self.bytes::<1>(i)[0]
    }

    #[inline(always)]
    fn be16(&self, i: usize) -> u16 {
        if i + 2 > N {
            return 0;
        }
        // SAFETY: `at` checked that all N bytes from self.0 are inside the packet, i + 2 <= N.
        u16::from_be(unsafe { load_u16(self.0.add(i)) })
    }

    /// The 16 bytes at `i` (an IPv6 address) as four word loads.
    #[inline(always)]
    fn bytes16(&self, i: usize) -> [u8; 16] {
        if i + 16 > N {
            return [0; 16];
        }
        // SAFETY: `at` checked that all N bytes from self.0 are inside the packet, i + 16 <= N.
        let words = unsafe {
            let p = self.0.add(i);
            [
                load_u32(p),
                load_u32(p.add(4)),
                load_u32(p.add(8)),
                load_u32(p.add(12)),
            ]
        };
        // SAFETY: [u32; 4] and [u8; 16] have the same size; each word keeps its bytes in
        // memory order (native loads, native layout).
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
    }

    /// The 4 bytes at `i` (an IPv4 address), in memory order.
    #[inline(always)]
    fn bytes4(&self, i: usize) -> [u8; 4] {
        if i + 4 > N {
            return [0; 4];
        }
        // SAFETY: `at` checked that all N bytes from self.0 are inside the packet, i + 4 <= N.
        unsafe { load_u32(self.0.add(i)) }.to_ne_bytes()
    }
}

// One load instruction for a 2- or 4-byte header field. The frame's bytes have no alignment
// LLVM can know (the IP header follows a 14-byte Ethernet header), so `read_unaligned` of a
// `u32` is four byte loads and the shifts that join them: about 100 instructions for an IPv6
// header's two addresses. The kernel takes a misaligned load from a packet pointer on every
// architecture with efficient unaligned access (x86-64, arm64; the verifier insists on
// alignment there only for programs loaded with BPF_F_STRICT_ALIGNMENT), so one `ldxw` does.
// Written in asm: a plain `*(p as *const u32)` would promise LLVM an alignment the pointer does
// not have, which is undefined behaviour in Rust.

/// `unsafe fn $name(p) -> $ty`: one load of a `$ty` at `p`, which must be a packet pointer
/// with `size_of::<$ty>()` bytes inside the verified range (the asm reads only those).
macro_rules! packet_load {
    ($name:ident, $ty:ty, $insn:literal) => {
        #[inline(always)]
        unsafe fn $name(p: *const u8) -> $ty {
            let v: u64;
            // SAFETY: per the caller.
            unsafe {
                core::arch::asm!(
                    $insn,
                    p = in(reg) p,
                    v = lateout(reg) v,
                    options(readonly, nostack, preserves_flags)
                );
            }
            v as $ty
        }
    };
}
packet_load!(load_u32, u32, "{v} = *(u32 *)({p} + 0)");
packet_load!(load_u16, u16, "{v} = *(u16 *)({p} + 0)");

/// `T` at `offset` of the linear part, or `None` where it reaches past it (or `offset` is past
/// the headers' bound). The bound is checked on the register that is then added to `data`, as
/// in the IPv6 walk, so the verifier knows the pointer's range.
#[inline(always)]
pub fn read<T: Copy, L: Linear>(frame: &L, offset: usize) -> Option<T> {
    if offset > MAX_L4_OFFSET + 64 {
        return None;
    }
    let start = frame.data() + offset;
    if start + size_of::<T>() > frame.data_end() {
        return None;
    }
    // SAFETY: all size_of::<T>() bytes from `start` are inside the linear part (checked just
    // above); T is plain data.
    Some(unsafe { read_unaligned(start as *const T) })
}

/// `Ok` is the answer `packet::parse` gives; `Err(Short)` sends the frame to the helpers.
#[inline(always)]
pub fn parse<L: Linear>(frame: &L) -> Result<Option<Segment>, Short> {
    let data = frame.data();
    let end = frame.data_end();
    let mut ethertype = Window::<ETH_HLEN>::at(data, end, 0)?.be16(12);
    let mut l3 = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = Window::<4>::at(data, end, l3)?.be16(2);
        l3 += 4;
    }
    let ip = match ethertype {
        ETH_P_IP => ipv4(data, end, l3)?,
        ETH_P_IPV6 => ipv6(data, end, l3)?,
        _ => None,
    };
    transport(data, end, ip)
}

/// [`parse`] of a packet that begins with its IP header (cgroup_skb).
#[inline(always)]
pub fn parse_l3<L: Linear>(frame: &L) -> Result<Option<Segment>, Short> {
    let data = frame.data();
    let end = frame.data_end();
    // Twenty bytes (the smallest IP header), not one: LLVM turns a one-byte bound check into
    // `start >= data_end`, which the verifier does not take as a bound on the pointer.
    let ip = match Window::<20>::at(data, end, 0)?.u8(0) >> 4 {
        4 => ipv4(data, end, 0)?,
        6 => ipv6(data, end, 0)?,
        _ => None,
    };
    transport(data, end, ip)
}

/// The ports (and TCP flags) after the IP layer `ip` found.
#[inline(always)]
fn transport(data: usize, end: usize, ip: Option<Ip>) -> Result<Option<Segment>, Short> {
    let Some(Ip {
        family,
        src_addr,
        dst_addr,
        l4,
        udp,
    }) = ip
    else {
        return Ok(None);
    };
    if udp {
        let header = Window::<8>::at(data, end, l4)?;
        return Ok(Some(Segment {
            family,
            src_addr,
            dst_addr,
            src_port: header.be16(0),
            dst_port: header.be16(2),
            rst: false,
            udp: true,
            l4: l4 as u16,
        }));
    }
    // The bytes `loaded` reads: ports (0..4) and flags (13).
    let tcp = Window::<14>::at(data, end, l4)?;
    Ok(Some(Segment {
        family,
        src_addr,
        dst_addr,
        src_port: tcp.be16(0),
        dst_port: tcp.be16(2),
        rst: tcp.u8(13) & TCP_FLAG_RST != 0,
        udp: false,
        // At most MAX_L4_OFFSET, so it fits.
        l4: l4 as u16,
    }))
}

/// The IP layer's part of a `Segment`.
struct Ip {
    family: u8,
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    /// Offset of the TCP or UDP header.
    l4: usize,
    udp: bool,
}

/// An IPv4 address in the 16-byte field, zero-padded. Built as one 128-bit value, so the
/// padding is two stores rather than a call to the `memset` builtin (a byte loop in BPF).
#[inline(always)]
fn v4_addr(addr: [u8; 4]) -> [u8; 16] {
    (u32::from_le_bytes(addr) as u128).to_le_bytes()
}

/// `None` if the frame is not a first-fragment TCP segment or UDP datagram.
#[inline(always)]
fn ipv4(data: usize, end: usize, l3: usize) -> Result<Option<Ip>, Short> {
    let ip = Window::<20>::at(data, end, l3)?;
    let version_ihl = ip.u8(0);
    // (nibble) * 4: the verifier bounds it at 60 from the mask and shift.
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    let protocol = ip.u8(9);
    if version_ihl >> 4 != 4 || ihl < 20 || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) {
        return Ok(None);
    }
    // Fragment offset (low 13 bits): a non-first fragment has no TCP header.
    if ip.be16(6) & 0x1fff != 0 {
        return Ok(None);
    }
    Ok(Some(Ip {
        family: family::V4,
        src_addr: v4_addr(ip.bytes4(12)),
        dst_addr: v4_addr(ip.bytes4(16)),
        l4: l3 + ihl,
        udp: protocol == IPPROTO_UDP,
    }))
}

/// The TCP or UDP header found after the extension headers, walked as `packet::ipv6` walks them.
#[inline(always)]
fn ipv6(data: usize, end: usize, l3: usize) -> Result<Option<Ip>, Short> {
    let ip = Window::<40>::at(data, end, l3)?;
    if ip.u8(0) >> 4 != 6 {
        return Ok(None);
    }
    let found = |l4, next| {
        Ok(Some(Ip {
            family: family::V6,
            src_addr: ip.bytes16(8),
            dst_addr: ip.bytes16(24),
            l4,
            udp: next == IPPROTO_UDP,
        }))
    };
    let mut next = ip.u8(6);
    let mut offset = l3 + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_TCP || next == IPPROTO_UDP {
            return found(offset, next);
        }
        if !matches!(
            next,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT
        ) {
            return Ok(None);
        }
        // Next header, length, and (fragment header) the fragment offset.
        let ext = Window::<4>::at(data, end, offset)?;
        let len_field = ext.u8(1) as usize;
        let len = match next {
            IPV6_AH => (len_field + 2) * 4,
            // Offset in the upper 13 bits of bytes 2..4: non-first fragments carry no ports.
            IPV6_FRAGMENT if ext.be16(2) & 0xfff8 != 0 => return Ok(None),
            IPV6_FRAGMENT => 8,
            _ => (len_field + 1) * 8,
        };
        next = ext.u8(0);
        offset += len;
        // The bound the next `Window::at` (a pointer add) needs, on this register.
        if offset > MAX_L4_OFFSET {
            return Ok(None);
        }
    }
    if next == IPPROTO_TCP || next == IPPROTO_UDP {
        found(offset, next)
    } else {
        Ok(None)
    }
}
