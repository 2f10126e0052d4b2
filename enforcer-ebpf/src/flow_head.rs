//! The head of each new flow's byte stream, as it leaves: the first 43 bytes (record header,
//! handshake header, version, random) collected from however many segments the sender split them
//! into (`socat -b1` sends one byte per segment), so a hello is judged by its random and a split
//! one cannot pass unseen (`hello.rs`).
//!
//! A head starts when the flow's SYN (this host is the client) or SYN-ACK (the server) leaves,
//! so a SYN's own data (TCP Fast Open) is stream offset 0. Flows with no head (started before
//! the agent, or on an interface added later) are judged by a hello at the start of a segment,
//! as before. A segment adds the bytes at offsets `count..HEAD_LEN` it carries; a gap (loss,
//! reordering) adds nothing and waits for the retransmission; bytes already collected are not
//! read again, so a retransmission cannot change them.
//!
//! After a TLS 1.3 HelloRetryRequest (a ServerHello with a fixed random, made by no library) the
//! head moves past it, and past a ChangeCipherSpec record, to the real ServerHello.
//!
//! Segments of one flow are handled one after another on the sending CPU in practice (the
//! socket lock serialises a socket's transmits); nothing here relies on it for memory safety.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};
use enforcer_common::{
    flow::FlowKey,
    hello::{
        FlowHead, HEAD_BUCKET_COUNT, HEAD_BUFFER, HEAD_LEN, HELLO_RETRY_RANDOM, KEY_FROM, KEY_LEN,
        RANDOM_AT, RandomKey, head_bucket_of,
    },
};

use crate::packet::Packet;

/// Flows whose head is being collected. LRU: a flow that never sends is evicted by newer ones.
#[map(name = "FLOW_HEADS")]
static FLOW_HEADS: LruHashMap<FlowKey, FlowHead> = LruHashMap::with_max_entries(65536, 0);

/// `FLOW_HEADS` entries per bucket of the 4-tuple (`head_bucket_of`): a segment of a flow in an
/// empty bucket skips the lookup, the common case once flows are past their hellos. Incremented
/// before an insert that adds an entry, decremented after a delete that removed one, so never
/// below the entries; an entry the LRU evicts leaves its count behind (the bucket then only
/// costs the lookup).
#[map(name = "HEAD_BUCKETS")]
static HEAD_BUCKETS: Array<u64> = Array::with_max_entries(HEAD_BUCKET_COUNT, 0);

const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

const TLS_HANDSHAKE: u8 = 0x16;
const TLS_CHANGE_CIPHER_SPEC: u8 = 0x14;
pub const CLIENT_HELLO: u8 = 1;
pub const SERVER_HELLO: u8 = 2;
/// A ChangeCipherSpec record, as TLS 1.3 middlebox compatibility sends it after a
/// HelloRetryRequest (`14 03 03 00 01 01`).
const CHANGE_CIPHER_SPEC: [u8; 6] = [TLS_CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1];
/// Payload offsets past this (from the frame start) are not read.
const MAX_OFFSET: usize = 1 << 16;

/// A data segment as the classifier sees it.
pub struct Data {
    /// Sequence number of its first payload byte.
    pub seq: u32,
    /// Offset of the payload in the frame, and the frame's length.
    pub payload: usize,
    pub end: usize,
}

/// A hello found at a stream head (or at the start of a segment). Written into the per-CPU
/// scratch map, not kept on the stack: every way of finding a hello then reaches the judge with
/// the same verifier state, so the judge (and its server-name walk) is verified once, not once
/// per way (18 s of verification otherwise).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Hello {
    /// `CLIENT_HELLO` or `SERVER_HELLO`.
    pub kind: u8,
    /// 1: the hello record starts at this segment's payload (its extensions can be read here).
    pub starts_here: u8,
    /// 1: a HelloRetryRequest not followed by a real ServerHello in time: nothing to look up.
    pub retry: u8,
    /// 1: judged now (the flow's first hello), set by the judge (`hello.rs`).
    pub fresh: u8,
    pub key: RandomKey,
    /// Sequence number of the hello record's first byte (set where known: a head's base, or
    /// the segment's when the hello starts there).
    pub seq: u32,
    /// The record header, handshake header and version (bytes 0..11), for the ClientHello
    /// reader (`offer.rs`) when the hello began in an earlier segment.
    pub header: [u8; RANDOM_AT],
    pub _pad: u8,
}

/// What the head of the flow says about this segment.
pub enum Head {
    /// The flow has no head: judge by the start of the segment.
    Untracked,
    /// More bytes are needed (or this segment added none).
    Waiting,
    /// The stream does not start with a hello: the head is dropped.
    NotHello,
    /// A hello, written to the caller's `Hello`.
    Hello,
}

/// The flow's SYN or SYN-ACK (sequence number `isn`) leaves: its stream starts at `isn + 1`.
#[inline(always)]
pub fn start(flow: &FlowKey, isn: u32) {
    let head = FlowHead {
        base: isn.wrapping_add(1),
        count: 0,
        retries: 0,
        _pad: [0; 3],
        bytes: [0; HEAD_BUFFER],
    };
    // Counted before the entry exists, so a segment never skips a present head. LRU: an insert
    // cannot fail for lack of room; one of a head already there (a retransmitted SYN) adds no
    // entry, so it is undone and the head replaced in place.
    count(flow, 1);
    if FLOW_HEADS.insert(flow, head, BPF_NOEXIST).is_err() {
        count(flow, u64::MAX);
        let _ = FLOW_HEADS.insert(flow, head, BPF_EXIST);
    }
}

/// Forgets the head of `flow` (connection closed, or judged).
#[inline(always)]
pub fn forget(flow: &FlowKey) {
    if FLOW_HEADS.remove(flow).is_ok() {
        count(flow, u64::MAX);
    }
}

#[inline(always)]
fn count(flow: &FlowKey, delta: u64) {
    if let Some(slot) = HEAD_BUCKETS.get_ptr_mut(head_bucket_of(flow)) {
        crate::atomic::add(slot, delta);
    }
}

/// Whether `FLOW_HEADS` may hold `flow` (its bucket counts an entry; unreadable counts as yes).
#[inline(always)]
fn may_hold(flow: &FlowKey) -> bool {
    HEAD_BUCKETS.get(head_bucket_of(flow)).copied().unwrap_or(1) != 0
}

/// Whether the flow's head is being collected (for the host layer's runs without scratch).
#[inline(always)]
pub fn collecting(flow: &FlowKey) -> bool {
    // SAFETY: only whether the entry exists is read.
    may_hold(flow) && unsafe { FLOW_HEADS.get(flow) }.is_some()
}

/// Adds the segment to the flow's head and says whether a hello is now complete.
#[inline(always)]
pub fn feed<P: Packet>(packet: &P, flow: &FlowKey, data: &Data, out: &mut Hello) -> Head {
    if !may_hold(flow) {
        return Head::Untracked;
    }
    let Some(head) = FLOW_HEADS.get_ptr_mut(flow) else {
        return Head::Untracked;
    };
    // SAFETY: map value pointer, valid for this program run.
    let head = unsafe { &mut *head };
    let plen = data.end.saturating_sub(data.payload);
    // Where the segment starts relative to the head's base (negative: it starts before).
    // One collect-and-look per segment: a second round in the same program run multiplies the
    // verifier's work (7 s instead of 1 to load), and nothing needs it (see `skip_retry`).
    let rel = data.seq.wrapping_sub(head.base) as i32 as i64;
    let starts_here = rel == 0 && head.count == 0;
    if !collect(packet, head, rel, data.payload, plen) {
        return Head::Waiting;
    }
    match look(head) {
        Look::Waiting => Head::Waiting,
        Look::Retry => {
            skip_change_cipher_spec(packet, head, data, plen);
            Head::Waiting
        }
        Look::NotHello => {
            forget(flow);
            Head::NotHello
        }
        Look::Hello => {
            out.kind = head.bytes[5];
            out.starts_here = starts_here as u8;
            out.retry = is_retry(head) as u8;
            out.key = key_at(&head.bytes);
            out.seq = head.base;
            out.header.copy_from_slice(&head.bytes[..RANDOM_AT]);
            forget(flow);
            Head::Hello
        }
    }
}

/// After a HelloRetryRequest, the head's base is the record that follows it: a ChangeCipherSpec
/// in this same segment is skipped here (one fixed load); one that starts a later segment is
/// skipped while collecting (`collect`). The real ServerHello always comes in a later flight,
/// after the client's second ClientHello.
#[inline(always)]
fn skip_change_cipher_spec<P: Packet>(packet: &P, head: &mut FlowHead, data: &Data, plen: usize) {
    let at = head.base.wrapping_sub(data.seq) as i32 as i64;
    if at < 0 || at + 6 > plen as i64 {
        return;
    }
    let offset = data.payload as i64 + at;
    if offset > MAX_OFFSET as i64 {
        return;
    }
    let mut record = [0u8; 6];
    if packet.load_bytes(offset as u32, record.as_mut_ptr(), 6) && record == CHANGE_CIPHER_SPEC {
        head.base = head.base.wrapping_add(6);
    }
}

/// Copies the bytes at head offsets `count..HEAD_LEN` that the segment carries; false if it
/// carries none of them (a gap before them, or only bytes already collected).
#[inline(always)]
fn collect<P: Packet>(
    packet: &P,
    head: &mut FlowHead,
    rel: i64,
    payload: usize,
    plen: usize,
) -> bool {
    let count = head.count as i64;
    if count >= HEAD_LEN as i64 {
        return true;
    }
    if rel > count || rel + (plen as i64) <= count {
        return false;
    }
    // Common case: the whole head in this segment, from its first byte: one load (not after a
    // HelloRetryRequest, where a ChangeCipherSpec may come first: the byte loop skips it).
    if count == 0 && rel == 0 && plen >= HEAD_LEN && head.retries == 0 {
        let mut bytes = [0u8; HEAD_LEN];
        if payload > MAX_OFFSET
            || !packet.load_bytes(payload as u32, bytes.as_mut_ptr(), HEAD_LEN as u32)
        {
            return false;
        }
        head.bytes[..HEAD_LEN].copy_from_slice(&bytes);
        head.count = HEAD_LEN as u32;
        return true;
    }
    // Split head: byte by byte (at most 43 loads, on a flow's first segments only).
    let from = payload as i64 + (count - rel);
    let mut added = false;
    for i in 0..HEAD_LEN {
        let at = head.count as usize;
        if at >= HEAD_LEN {
            break;
        }
        let offset = from + i as i64;
        if offset >= data_end(payload, plen) as i64 || offset < 0 || offset > MAX_OFFSET as i64 {
            break;
        }
        let mut byte = 0u8;
        if !packet.load_bytes(offset as u32, &mut byte, 1) {
            break;
        }
        // `at < HEAD_LEN` already, but LLVM folds that bound into its unrolled pointer
        // arithmetic, where the verifier loses it. A volatile read hides the value from LLVM, so
        // the mask (see `FlowHead::bytes`) stays on the very register that indexes.
        // SAFETY: reads a local.
        let at = unsafe { core::ptr::read_volatile(&at) } & (HEAD_BUFFER - 1);
        head.bytes[at] = byte;
        if head.retries > 0 && at == 5 && head.bytes[..6] == CHANGE_CIPHER_SPEC {
            // The ChangeCipherSpec after a HelloRetryRequest, at the start of a segment: the
            // hello is the record after it.
            head.base = head.base.wrapping_add(6);
            head.count = 0;
            added = true;
            continue;
        }
        head.count += 1;
        added = true;
    }
    added
}

#[inline(always)]
fn data_end(payload: usize, plen: usize) -> usize {
    payload + plen
}

enum Look {
    Waiting,
    Retry,
    NotHello,
    Hello,
}

/// What a complete head holds; moves the head past a HelloRetryRequest.
#[inline(always)]
fn look(head: &mut FlowHead) -> Look {
    if (head.count as usize) < HEAD_LEN {
        return Look::Waiting;
    }
    let b = &head.bytes;
    let kind = b[5];
    if b[0] != TLS_HANDSHAKE || b[1] != 3 || (kind != CLIENT_HELLO && kind != SERVER_HELLO) {
        return Look::NotHello;
    }
    let retry = kind == SERVER_HELLO && is_retry(head);
    if retry && head.retries == 0 {
        head.retries = 1;
        let record_len = u16::from_be_bytes([head.bytes[3], head.bytes[4]]) as u32;
        head.base = head.base.wrapping_add(5 + record_len);
        head.count = 0;
        return Look::Retry;
    }
    Look::Hello
}

/// Whether the head's random is the HelloRetryRequest's.
#[inline(always)]
fn is_retry(head: &FlowHead) -> bool {
    head.bytes[RANDOM_AT..RANDOM_AT + 32] == HELLO_RETRY_RANDOM
}

/// The lookup key of the random in a head (`hello::KEY_FROM..KEY_FROM + KEY_LEN` of it).
#[inline(always)]
fn key_at(bytes: &[u8; HEAD_BUFFER]) -> RandomKey {
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&bytes[RANDOM_AT + KEY_FROM..RANDOM_AT + KEY_FROM + KEY_LEN]);
    RandomKey(key)
}

/// The lookup key of a 32-byte random (`hello::KEY_FROM..KEY_FROM + KEY_LEN`).
#[inline(always)]
pub fn key_of(random: &[u8; 32]) -> RandomKey {
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&random[KEY_FROM..KEY_FROM + KEY_LEN]);
    RandomKey(key)
}
