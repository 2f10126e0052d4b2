//! What each client offers: the ClientHello of every flow the egress judge let through
//! (`hello.rs`) is reassembled across the segments it spans (`OFFERS`, bounded per flow) and
//! its fields read (`offer_fields.rs`) for the `offered` event, from which userspace makes the
//! JA4 fingerprint (a hash the kernel does not compute). A post-quantum ClientHello (its
//! X25519MLKEM768 key share alone is 1,216 bytes) is more than one MSS.
//!
//! ClientHellos arriving at servers on this host are read the same way, from the ingress
//! judge (`ingress.rs`: XDP or tc), when their segment starts with one (checked as strictly as
//! the egress judge checks a segment's start) and the flow's ServerHello has not left yet.
//!
//! The reader is a program of its own, reached by a tail call from the egress classifier
//! (`tc.rs`) and the ingress programs, like the ServerHello reader (`posture.rs`) and for the same reason: the verifier
//! walks its loops once, not once per path of the caller. The caller writes only what it
//! hands over (`mode::*`) to `OFFER_ARGS`; the reader parses the headers itself (`stage_one`,
//! see `hand_off` for why). An empty table (reader not loaded) makes the tail call fail and the
//! caller passes the packet.
//!
//! Reassembly: the judged segment starts an `OFFERS` entry (sequence number of the record's
//! first byte, bytes wanted: the record, at most `OFFER_BUFFER`); each segment appends the
//! bytes that follow what was collected, without a gap (a gap waits for the retransmission, a
//! retransmission adds nothing new); the segment that completes it has the fields read, the
//! event sent and the entry removed. A hello whose first bytes came in earlier segments than
//! the judged one (its head was collected by `flow_head.rs`) starts from the head's copy of
//! its first 11 bytes (the random is not needed).
//!
//! Cost to the egress classifier on a data segment that is no hello, of a flow that is not
//! reassembling: one read of `OFFER_BUCKETS` (`hello.rs`; the tail call and the `OFFERS`
//! lookup only when its bucket counts an entry). Ingress: the same read per TCP segment.

use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action,
    helpers::generated::bpf_ktime_get_ns,
    macros::{cgroup_skb, classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, ProgramArray},
    programs::{SkBuffContext, TcContext, XdpContext},
};
use enforcer_common::{
    flow::{FlowKey, direction, family, held},
    hello::{HEAD_LEN, RANDOM_AT},
    offer::{
        COPY_CHUNK, OFFER_BUCKET_BITS, OFFER_BUCKET_COUNT, OFFER_BUFFER, OFFERS_OPEN, OfferState,
        OfferedEvent,
    },
};

use crate::{
    client_hello::{HELLO_SCRATCH, MAX_OFFSET, load},
    events, flow, host_guard, ja4_cache, offer_fields,
    packet::{self, Frame, Packet},
    posture::Caller,
};
use enforcer_common::tc_return::PASS as TC_PASS;

/// ClientHellos being reassembled. 1,024 of 4.4 KiB: room for the hellos in flight at once
/// (a hello that fits one segment is removed in the run that added it). LRU: a hello that
/// never completes is evicted by newer ones.
#[map(name = "OFFERS")]
static OFFERS: LruHashMap<FlowKey, OfferState> = LruHashMap::with_max_entries(1024, 0);

/// `OFFERS` entries per bucket of the 4-tuple: incremented when a hello stays incomplete at
/// the end of the run that started it, decremented when a later segment completes it, or finds
/// no entry (`forget_stale`: an evicted entry left its count). Slot `OFFERS_OPEN` is their sum,
/// changed with each bucket (never below it: +1 before, −1 after the bucket's).
#[map(name = "OFFER_BUCKETS")]
static OFFER_BUCKETS: Array<u64> = Array::with_max_entries(OFFER_BUCKET_COUNT + 1, 0);

/// The value an `OFFERS` entry is inserted from (larger than the 512-byte stack), and the
/// event being built.
#[map(name = "OFFER_TEMPLATE")]
static OFFER_TEMPLATE: PerCpuArray<OfferState> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "OFFER_EVENT")]
static OFFER_EVENT: PerCpuArray<OfferedEvent> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "OFFER_TC")]
static OFFER_TC: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map(name = "OFFER_XDP")]
static OFFER_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map(name = "OFFER_XDP_NOFRAGS")]
static OFFER_XDP_NOFRAGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map(name = "OFFER_CG")]
static OFFER_CG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The segment handed to the reader.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Args {
    pub flow: FlowKey,
    /// Offset of the TCP header in the frame, and the frame's length (for an arriving segment,
    /// the IP header's length is used where it is found: a short frame is padded on the wire).
    pub l4: u32,
    pub end: u32,
    /// Sequence number of the hello record's first byte (`start` only).
    pub seq: u32,
    /// The record's first 11 bytes (`start` only, when it began in an earlier segment).
    pub header: [u8; RANDOM_AT],
    /// 1: the segment the hello was judged in; 0: a later one.
    pub start: u8,
    /// 1: the hello record starts at this segment's payload.
    pub starts_here: u8,
    /// `flow::direction::*`.
    pub direction: u8,
    /// `mode::*`: the only field the caller writes; the reader fills the rest (`stage_one`).
    pub mode: u8,
    pub _pad: u8,
}

/// What the caller hands over (`Args::mode`).
pub mod mode {
    /// The egress judge let a ClientHello through now (its start: `HELLO_SCRATCH`).
    pub const START_SEND: u8 = 1;
    /// A later segment leaving, of a flow whose bucket counts a hello being read.
    pub const CONTINUE_SEND: u8 = 2;
    /// An arriving segment that starts with a ClientHello.
    pub const START_RECV: u8 = 3;
    /// A later segment arriving, of a flow whose bucket counts a hello being read.
    pub const CONTINUE_RECV: u8 = 4;
}

#[map(name = "OFFER_ARGS")]
static OFFER_ARGS: PerCpuArray<Args> = PerCpuArray::with_max_entries(1, 0);

/// Copies per segment: `OFFER_BUFFER / COPY_CHUNK`, and one for a hello that does not start at
/// a chunk boundary.
const MAX_COPIES: usize = OFFER_BUFFER / COPY_CHUNK + 1;

#[inline(always)]
fn bucket(flow: &FlowKey) -> u32 {
    held::bucket_in(flow, OFFER_BUCKET_BITS)
}

/// Whether `OFFERS` may hold `flow` (unreadable counts as no: nothing is dropped for it).
/// Asked of every data segment that is no hello: while no hello is being reassembled (the
/// sum is 0) it costs one inlined array read, not the bucket's hash (figure 3's no-match rows).
#[inline(always)]
pub fn pending(flow: &FlowKey) -> bool {
    OFFER_BUCKETS.get(OFFERS_OPEN).copied().unwrap_or(0) != 0
        && OFFER_BUCKETS.get(bucket(flow)).copied().unwrap_or(0) != 0
}

#[inline(always)]
fn count(flow: &FlowKey, delta: u64) {
    if let Some(slot) = OFFER_BUCKETS.get_ptr_mut(bucket(flow)) {
        let raise = delta == 1;
        if raise {
            add_open(delta);
        }
        crate::atomic::add(slot, delta);
        if !raise {
            add_open(delta);
        }
    }
}

/// The sum follows its buckets: it is raised before and lowered after a bucket would be read
/// as non-zero by `pending`, so it is never 0 while a bucket is not (a reader may find it
/// above, which costs the bucket's read and nothing else).
#[inline(always)]
fn add_open(delta: u64) {
    if let Some(open) = OFFER_BUCKETS.get_ptr_mut(OFFERS_OPEN) {
        crate::atomic::add(open, delta);
    }
}

/// A segment came for `flow` because its bucket counts an entry, and there is none: the count
/// is (likely) one an evicted entry left. It is taken back, so stale counts (a flood of hellos
/// that never complete, from anyone, on ingress) cost one lookup each, not one on every later
/// segment of the bucket's flows. If another flow's entry was the one counted, its later
/// segments are no longer handed over and its hello is not reported (nothing is enforced on
/// these fields in the kernel): the price of bounding the flood's cost.
#[inline(always)]
fn forget_stale(flow: &FlowKey) {
    if let Some(slot) = OFFER_BUCKETS.get_ptr_mut(bucket(flow)) {
        // SAFETY: array value pointer, valid for this run.
        if unsafe { *slot } != 0 {
            crate::atomic::add(slot, u64::MAX);
            add_open(u64::MAX);
        }
    }
}

/// Whether the first 11 bytes of an arriving segment are a ClientHello's record header,
/// handshake header and version, as strictly as the egress judge takes them at a segment's
/// start (`hello.rs`): random data matches about once in 2^45 segments.
#[inline(always)]
pub fn starts_client_hello(b: &[u8; RANDOM_AT]) -> bool {
    let record_len = u16::from_be_bytes([b[3], b[4]]);
    b[0] == 0x16
        && b[1] == 3
        && b[2] <= 4
        && (1..=(1 << 14) + 2048).contains(&record_len)
        && b[5] == 1
        && b[6] <= 2
        && b[9] == 3
        && b[10] <= 4
}

/// Hands the segment to the reader (`mode::*`). Returns only if the tail call failed (no reader
/// loaded): the caller then passes the packet.
///
/// Only a constant is written here: the reader finds the flow, the offsets and the hello's
/// start itself (`stage_one`). Reading the caller's flow key (on its stack) here made the
/// verifier tell apart the thousands of ways the egress classifier reaches this point (each
/// way the key's bytes were written while parsing the headers, times each way of judging the
/// hello): on 6.1 that took the egress program past its 1M processed instructions.
#[inline(always)]
pub fn hand_off<C: EbpfContext>(ctx: &C, caller: Caller, mode: u8) {
    let Some(slot) = OFFER_ARGS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, valid for this run; the reader runs next on this CPU.
    unsafe { (*slot).mode = mode };
    let table = match caller {
        Caller::Tc => &OFFER_TC,
        Caller::Xdp => &OFFER_XDP,
        Caller::XdpNoFrags => &OFFER_XDP_NOFRAGS,
        Caller::Cgroup => &OFFER_CG,
    };
    // SAFETY: control goes to the reader and does not come back on success.
    unsafe { table.tail_call(ctx, 0) };
}

/// Never drops: the fields are reported, not judged, in the kernel.
#[classifier]
pub fn offer_tc(ctx: TcContext) -> i32 {
    if stage_one(&ctx, ctx.len() as usize) {
        read(&ctx);
    }
    TC_PASS
}

#[xdp(frags)]
pub fn offer_xdp(ctx: XdpContext) -> u32 {
    if stage_one(&ctx, ctx.data_end() - ctx.data()) {
        read(&ctx);
    }
    xdp_action::XDP_PASS
}

#[xdp]
pub fn offer_xdp_nofrags(ctx: XdpContext) -> u32 {
    if stage_one(&ctx, ctx.data_end() - ctx.data()) {
        read(&ctx);
    }
    xdp_action::XDP_PASS
}

/// The host layer's (`cgroup.rs`, egress): the run it continues marked its CPU busy.
#[cgroup_skb(egress)]
pub fn offer_cg(ctx: SkBuffContext) -> i32 {
    if stage_one(&ctx, ctx.len() as usize) {
        read(&ctx);
    }
    host_guard::leave();
    host_guard::PASS
}

/// Fills `OFFER_ARGS` from the segment and the caller's `mode`: its flow, TCP header offset
/// and frame length, and where a hello starting now begins. The rest of the reader takes them
/// from the map (`read`), so however the headers were parsed here, it starts in one verifier
/// state. False: nothing to read (not TCP, or an arriving hello whose ServerHello already left:
/// a retransmission, or ciphertext that looks like one). A function of its own (a BPF call):
/// its header parsing and the reading after it do not fit the 512-byte stack together.
#[inline(never)]
fn stage_one<P: Frame>(packet: &P, frame_len: usize) -> bool {
    let Some(slot) = OFFER_ARGS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU map value, valid for this run.
    let args = unsafe { &mut *slot };
    let mode = args.mode;
    let Some(seg) = packet.segment() else {
        return false;
    };
    if seg.udp {
        return false;
    }
    let recv = mode == mode::START_RECV || mode == mode::CONTINUE_RECV;
    args.flow = match recv {
        true => seg.as_receiver(),
        false => seg.as_sender(),
    };
    args.l4 = seg.l4 as u32;
    args.end = frame_len as u32;
    args.direction = match recv {
        true => direction::RECV,
        false => direction::SEND,
    };
    args.start = (mode == mode::START_SEND || mode == mode::START_RECV) as u8;
    match mode {
        mode::START_SEND => {
            let Some(scratch) = HELLO_SCRATCH.get(0) else {
                return false;
            };
            args.seq = scratch.hello.seq;
            args.header = scratch.hello.header;
            args.starts_here = scratch.hello.starts_here;
        }
        mode::START_RECV => {
            if flow::hello_seen(&args.flow) {
                return false;
            }
            let Some(payload) = packet::payload_of(packet, &seg) else {
                return false;
            };
            let Some(header) = load::<[u8; RANDOM_AT], P>(packet, payload) else {
                return false;
            };
            args.header = header;
            args.starts_here = 1;
        }
        _ => {}
    }
    true
}

#[inline(always)]
fn read<P: Packet>(packet: &P) {
    let Some(slot) = OFFER_ARGS.get_ptr_mut(0) else {
        return;
    };
    // Read in place (map memory, which `stage_one`, a call of its own, filled): no copy on the
    // stack, and nothing of the header parsing's per-path states carried over.
    // SAFETY: per-CPU map value, valid for this run.
    let args = unsafe { &mut *slot };
    let (l4, direction, start) = (args.l4 as usize, args.direction, args.start);
    // Sequence number (4), acknowledgment (4), data offset (1), flags (1).
    let Some(tcp) = load::<[u8; 10], P>(packet, l4 + 4) else {
        return;
    };
    // A SYN's data (TCP Fast Open) starts after the SYN's own sequence number.
    let syn = (tcp[9] & 0x02 != 0) as u32;
    let seq = u32::from_be_bytes([tcp[0], tcp[1], tcp[2], tcp[3]]).wrapping_add(syn);
    let payload = l4 + ((tcp[8] >> 4) as usize) * 4;
    let end = match direction {
        direction::RECV => arrived_end(packet, &args.flow, l4, args.end as usize),
        _ => args.end as usize,
    };
    if start != 0 && direction == direction::RECV {
        args.seq = seq;
    }
    let flow = &args.flow;
    let state = match start {
        0 => OFFERS.get_ptr_mut(flow),
        _ => begin(args),
    };
    let Some(state) = state else {
        if start == 0 {
            forget_stale(flow);
        }
        return;
    };
    // SAFETY: map value pointer, valid for this program run.
    let state = unsafe { &mut *state };
    append(packet, state, seq, payload, end);
    if state.have < state.want {
        if start != 0 {
            count(flow, 1);
        }
        return;
    }
    finish(state, flow);
    if OFFERS.remove(flow).is_ok() && start == 0 {
        count(flow, u64::MAX);
    }
}

/// Where an arriving segment ends: from its IP header when that sits right before the TCP
/// header (IPv4 without options, IPv6 without extension headers), else the frame's end. A
/// frame shorter than Ethernet's 60 bytes arrives padded, and a multi-buffer XDP frame is longer
/// than its first buffer (`end` then).
#[inline(always)]
fn arrived_end<P: Packet>(packet: &P, flow: &FlowKey, l4: usize, end: usize) -> usize {
    if flow.family == family::V4
        && l4 >= 20
        && let Some(ip) = load::<[u8; 4], P>(packet, l4 - 20)
    {
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        // 0: a GRO packet over 64 KiB (BIG TCP) states no length.
        if ip[0] == 0x45 && total != 0 {
            return l4 - 20 + total;
        }
    } else if flow.family == family::V6
        && l4 >= 40
        && let Some(ip) = load::<[u8; 8], P>(packet, l4 - 40)
    {
        let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        if ip[0] >> 4 == 6 && ip[6] == 6 && payload_len != 0 {
            return l4 + payload_len;
        }
    }
    end
}

/// A new `OFFERS` entry for the judged hello (replacing what a 4-tuple's earlier connection
/// left there).
#[inline(always)]
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "the key and the 4.4 KiB value stay in map memory: by value they would be copied \
              onto the 512-byte stack"
)]
fn begin(args: &Args) -> Option<*mut OfferState> {
    let template = OFFER_TEMPLATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value, valid for this run.
    let t = unsafe { &mut *template };
    t.seq = args.seq;
    t.direction = args.direction;
    t.bytes[..RANDOM_AT].copy_from_slice(&args.header);
    let record_len = u16::from_be_bytes([args.header[3], args.header[4]]) as u32;
    t.want = (5 + record_len).min(OFFER_BUFFER as u32);
    // A hello that began in an earlier segment: its head (43 bytes) is complete, and this
    // segment carries what follows it. Only its first 11 bytes are read (not the random).
    t.have = match args.starts_here {
        0 => HEAD_LEN as u32,
        _ => 0,
    };
    // By reference: the value is copied by the kernel from the map, never onto the stack.
    if OFFERS.insert(&args.flow, &*t, 0).is_err() {
        return None;
    }
    OFFERS.get_ptr_mut(&args.flow)
}

/// Appends the bytes of the segment (sequence number `seq`, payload at `payload`, frame end
/// `end`) that follow what `state` holds, in chunks of at most `COPY_CHUNK`.
#[inline(always)]
fn append<P: Packet>(packet: &P, state: &mut OfferState, seq: u32, payload: usize, end: usize) {
    let plen = end.saturating_sub(payload) as i64;
    // Where the segment starts relative to the hello's first byte (negative: before it).
    let rel = seq.wrapping_sub(state.seq) as i32 as i64;
    for _ in 0..MAX_COPIES {
        let have = state.have as i64;
        let want = state.want as i64;
        if have >= want || rel > have || rel + plen <= have {
            break;
        }
        let from = payload as i64 + (have - rel);
        if from > MAX_OFFSET as i64 {
            break;
        }
        let n = (rel + plen - have).min(want - have).min(COPY_CHUNK as i64) as u32;
        // `n` is 1..=COPY_CHUNK and `have` below OFFER_BUFFER, but LLVM folds what it knows
        // into other registers and the verifier, tracking these, sees neither bound. A
        // volatile read hides the values from LLVM, so the masks stay on the very registers
        // passed to the helper: 1..=COPY_CHUNK bytes at most COPY_CHUNK past OFFER_BUFFER - 1.
        // SAFETY: reads locals.
        let n = unsafe { core::ptr::read_volatile(&n) };
        let n = (n.wrapping_sub(1) & (COPY_CHUNK as u32 - 1)) + 1;
        let at = have as usize;
        // SAFETY: reads a local.
        let at = unsafe { core::ptr::read_volatile(&at) } & (OFFER_BUFFER - 1);
        let dst = state.bytes[at..].as_mut_ptr();
        if !packet.load_bytes(from as u32, dst, n) {
            break;
        }
        state.have += n;
    }
}

/// Reads the fields of the collected hello and reports them.
#[inline(always)]
fn finish(state: &mut OfferState, flow: &FlowKey) {
    let Some(event) = OFFER_EVENT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, valid for this run; nothing else on this CPU uses it meanwhile.
    let event = unsafe { &mut *event };
    offer_fields::read(state, event);
    event.flow = *flow;
    event.direction = state.direction;
    ja4_cache::recall(flow, event);
    // SAFETY: plain helper call.
    events::offered(event, unsafe { bpf_ktime_get_ns() });
}
