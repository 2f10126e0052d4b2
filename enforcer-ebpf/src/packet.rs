//! The 4-tuple of an Ethernet frame, for XDP and tc. Packets come from the wire: every read is
//! bounds-checked, every loop has a constant bound, offsets are capped.
//!
//! Two readers of the same headers, with the same answers:
//! - `direct` (the fast path): packet pointers into the linear part of the frame (`data` ..
//!   `data_end`), one bounds check per header, then plain loads. This is every frame the local
//!   stack sends and almost every frame a NIC or veth delivers.
//! - `loaded` (the fallback): `bpf_xdp_load_bytes` / `bpf_skb_load_bytes`, one helper call per
//!   field. It runs only when `direct` finds a header reaching past `data_end`: an XDP
//!   multi-buffer frame (`xdp.frags`) whose headers spill into a fragment, an skb whose headers
//!   are not all in its linear head, or a truncated frame. The helpers read paged data, so
//!   non-linear data never makes a frame pass unparsed.
//!
//! tc does not call `bpf_skb_pull_data` to make the headers linear instead: the local TCP stack
//! builds its headers in the skb head, so the fallback is rare, and pulling would copy the head of
//! every cloned skb (TCP transmits clones) and change the skb for the rest of the stack, where
//! the helper only reads.

mod direct;

use core::mem::{MaybeUninit, size_of};

use enforcer_common::flow::{FlowKey, family};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers we walk past; anything else ends the walk.
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
const MAX_VLAN_TAGS: usize = 2;
const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Headers past this offset are not parsed (verifier-friendly bound; real headers are far smaller).
pub const MAX_L4_OFFSET: usize = 512;
const TCP_FLAG_RST: u8 = 0x04;

/// A TCP segment's or UDP datagram's addressing, as on the wire (source / destination).
pub struct Segment {
    pub family: u8,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub rst: bool,
    /// A UDP datagram (`rst` is then false): only `quic.rs` looks at it.
    pub udp: bool,
    /// Offset of the TCP (or UDP) header in the frame.
    pub l4: u16,
}

impl Segment {
    /// Nothing parsed yet.
    const EMPTY: Segment = Segment {
        family: 0,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        rst: false,
        udp: false,
        l4: 0,
    };

    /// The flow key when this host is the sender (egress).
    #[inline(always)]
    pub fn as_sender(&self) -> FlowKey {
        flow_key(
            self.family,
            self.src_port,
            self.dst_port,
            &self.src_addr,
            &self.dst_addr,
        )
    }

    /// The flow key when this host is the receiver (ingress).
    #[inline(always)]
    pub fn as_receiver(&self) -> FlowKey {
        flow_key(
            self.family,
            self.dst_port,
            self.src_port,
            &self.dst_addr,
            &self.src_addr,
        )
    }
}

/// A `FlowKey` written field by field, the family and its padding as one aligned `u32`. A
/// struct literal's `_pad: [0; 3]` is a 3-byte store at an odd stack offset, which the BPF
/// backend emits as a call to the `memset` builtin (a BPF function of its own, with its own
/// prologue and a byte loop): two of those on every packet of both packet programs.
#[inline(always)]
fn flow_key(
    family: u8,
    local_port: u16,
    remote_port: u16,
    local_addr: &[u8; 16],
    remote_addr: &[u8; 16],
) -> FlowKey {
    let mut key = MaybeUninit::<FlowKey>::uninit();
    let p = key.as_mut_ptr();
    // SAFETY: every byte of the key is written below, each field through its own place;
    // FlowKey is `align(4)` with `family` and `_pad` its first four bytes, so the `u32`
    // store is aligned and covers exactly those.
    unsafe {
        (p as *mut u32).write(u32::from_ne_bytes([family, 0, 0, 0]));
        core::ptr::addr_of_mut!((*p).local_port).write(local_port);
        core::ptr::addr_of_mut!((*p).remote_port).write(remote_port);
        core::ptr::addr_of_mut!((*p).local_addr).write(*local_addr);
        core::ptr::addr_of_mut!((*p).remote_addr).write(*remote_addr);
        key.assume_init()
    }
}

/// Copies `len` packet bytes at `offset` into `dst`; false if the packet is shorter. Reads
/// anywhere in the frame (paged skb data, XDP fragments): the fallback here, and the reader of
/// `client_hello.rs`.
pub trait Packet {
    fn load_bytes(&self, offset: u32, dst: *mut u8, len: u32) -> bool;
}

/// [`Packet::load_bytes`] of an skb (tc, cgroup_skb): `bpf_skb_load_bytes`, which also reads
/// paged data.
#[inline(always)]
pub fn skb_load_bytes(
    skb: &aya_ebpf::programs::sk_buff::SkBuff,
    offset: u32,
    dst: *mut u8,
    len: u32,
) -> bool {
    // SAFETY: dst points at `len` writable stack bytes; skb.skb is the program's context.
    unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            skb.skb as *const _,
            offset,
            dst.cast(),
            len,
        ) == 0
    }
}

#[inline(always)]
pub fn load<T: Copy, P: Packet>(packet: &P, offset: usize) -> Option<T> {
    if offset > MAX_L4_OFFSET + 64 {
        return None;
    }
    let mut value = MaybeUninit::<T>::uninit();
    if !packet.load_bytes(
        offset as u32,
        value.as_mut_ptr() as *mut u8,
        size_of::<T>() as u32,
    ) {
        return None;
    }
    // SAFETY: the helper filled all size_of::<T>() bytes; T is plain data.
    Some(unsafe { value.assume_init() })
}

/// `T` at `offset`: a plain load where it lies in the linear part (TCP headers, and all of a
/// test-run or small frame), the load helper where it does not (the payload of an skb the local
/// TCP stack built, which sits in page fragments).
#[inline(always)]
pub fn read<T: Copy, P: Packet + Linear>(packet: &P, offset: usize) -> Option<T> {
    match direct::read(packet, offset) {
        Some(value) => Some(value),
        None => load(packet, offset),
    }
}

/// The linear part of a frame, readable through packet pointers: all of a single-buffer XDP
/// frame (the first buffer of a multi-buffer one), the linear head of an skb.
pub trait Linear {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

/// Where a program's packets begin: at the Ethernet header (XDP, tc; the default) or at the IP
/// header (cgroup_skb). The readers that the packet programs tail-call parse the headers again
/// through this, as the program that called them did.
pub trait Frame: Packet + Linear + Sized {
    #[inline(always)]
    fn segment(&self) -> Option<Segment> {
        parse(self)
    }
}

/// `None` for anything that is not a TCP segment or UDP datagram with a readable header:
/// non-IP, other protocols, truncated, non-first fragments (they carry no ports), or headers
/// nested too deep.
#[inline(always)]
pub fn parse<P: Packet + Linear>(packet: &P) -> Option<Segment> {
    match direct::parse(packet) {
        Ok(answer) => answer,
        Err(direct::Short) => loaded(packet),
    }
}

/// The fallback: `parse` through the load helpers, for headers `direct` cannot reach.
#[inline(always)]
fn loaded<P: Packet>(packet: &P) -> Option<Segment> {
    let mut offset = ETH_HLEN;
    let mut ethertype = u16::from_be(load::<u16, P>(packet, 12)?);
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = u16::from_be(load::<u16, P>(packet, offset + 2)?);
        offset += 4;
    }
    let mut seg = Segment::EMPTY;
    let l4 = match ethertype {
        ETH_P_IP => ipv4(packet, offset, &mut seg)?,
        ETH_P_IPV6 => ipv6(packet, offset, &mut seg)?,
        _ => return None,
    };
    ports(packet, l4, seg)
}

/// A packet that begins with its IP header (cgroup_skb: `skb->data` is the network header
/// there): direct packet access, the load helpers where a header is past the linear part.
#[inline(always)]
pub fn parse_l3<P: Packet + Linear>(packet: &P) -> Option<Segment> {
    match direct::parse_l3(packet) {
        Ok(answer) => answer,
        Err(direct::Short) => loaded_l3(packet),
    }
}

/// The fallback of [`parse_l3`].
#[inline(always)]
fn loaded_l3<P: Packet>(packet: &P) -> Option<Segment> {
    let mut seg = Segment::EMPTY;
    let l4 = match load::<u8, P>(packet, 0)? >> 4 {
        4 => ipv4(packet, 0, &mut seg)?,
        6 => ipv6(packet, 0, &mut seg)?,
        _ => return None,
    };
    ports(packet, l4, seg)
}

/// The ports and the RST flag of the TCP or UDP header at `l4`.
#[inline(always)]
fn ports<P: Packet>(packet: &P, l4: usize, mut seg: Segment) -> Option<Segment> {
    seg.src_port = u16::from_be(load::<u16, P>(packet, l4)?);
    seg.dst_port = u16::from_be(load::<u16, P>(packet, l4 + 2)?);
    seg.rst = !seg.udp && load::<u8, P>(packet, l4 + 13)? & TCP_FLAG_RST != 0;
    // Below MAX_L4_OFFSET, so it fits.
    seg.l4 = l4 as u16;
    Some(seg)
}

/// Returns the offset of the TCP or UDP header.
#[inline(always)]
fn ipv4<P: Packet>(packet: &P, l3: usize, seg: &mut Segment) -> Option<usize> {
    let version_ihl = load::<u8, P>(packet, l3)?;
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    match load::<u8, P>(packet, l3 + 9)? {
        IPPROTO_TCP => {}
        IPPROTO_UDP => seg.udp = true,
        _ => return None,
    }
    // Fragment offset (low 13 bits): a non-first fragment has no TCP header.
    if u16::from_be(load::<u16, P>(packet, l3 + 6)?) & 0x1fff != 0 {
        return None;
    }
    seg.family = family::V4;
    let src: [u8; 4] = load(packet, l3 + 12)?;
    let dst: [u8; 4] = load(packet, l3 + 16)?;
    seg.src_addr[..4].copy_from_slice(&src);
    seg.dst_addr[..4].copy_from_slice(&dst);
    Some(l3 + ihl)
}

/// Returns the offset of the TCP or UDP header, after walking extension headers.
#[inline(always)]
fn ipv6<P: Packet>(packet: &P, l3: usize, seg: &mut Segment) -> Option<usize> {
    if load::<u8, P>(packet, l3)? >> 4 != 6 {
        return None;
    }
    seg.family = family::V6;
    seg.src_addr = load(packet, l3 + 8)?;
    seg.dst_addr = load(packet, l3 + 24)?;
    let mut next = load::<u8, P>(packet, l3 + 6)?;
    let mut offset = l3 + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_TCP || next == IPPROTO_UDP {
            seg.udp = next == IPPROTO_UDP;
            return Some(offset);
        }
        let header_next = load::<u8, P>(packet, offset)?;
        let len_field = load::<u8, P>(packet, offset + 1)? as usize;
        let len = match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => (len_field + 1) * 8,
            IPV6_AH => (len_field + 2) * 4,
            IPV6_FRAGMENT => {
                // Offset in the upper 13 bits of bytes 2..4: non-first fragments carry no ports.
                if u16::from_be(load::<u16, P>(packet, offset + 2)?) & 0xfff8 != 0 {
                    return None;
                }
                8
            }
            _ => return None,
        };
        next = header_next;
        offset += len;
        if offset > MAX_L4_OFFSET {
            return None;
        }
    }
    if next == IPPROTO_TCP || next == IPPROTO_UDP {
        seg.udp = next == IPPROTO_UDP;
        Some(offset)
    } else {
        None
    }
}

/// The offset of a TCP segment's payload (from its data offset), if the header is readable.
#[inline(always)]
pub fn payload_of<P: Packet + Linear>(packet: &P, seg: &Segment) -> Option<usize> {
    payload_after(packet, seg.l4 as usize)
}

/// Where the payload of the TCP segment whose header is at `l4` begins.
#[inline(always)]
pub fn payload_after<P: Packet + Linear>(packet: &P, l4: usize) -> Option<usize> {
    // Two bytes (data offset, flags), not one: LLVM turns a one-byte bound check into
    // `start >= data_end`, which the verifier does not take as a bound on the packet pointer.
    let [data_offset, _flags] = read::<[u8; 2], P>(packet, l4 + 12)?;
    Some(l4 + ((data_offset >> 4) as usize) * 4)
}
