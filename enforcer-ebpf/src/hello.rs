//! The egress judge of TLS hellos: every ClientHello (this host is the client) and ServerHello
//! (this host is the server) leaving an enforced interface is attributed to the library that made
//! its random (`random.rs`), whichever thread, process or relay sends it, and judged by that
//! library's rule; a hello no probed library made is unattributed TLS (`unattributed_tls`).
//! Hellos split over segments are collected first (`flow_head.rs`). Called by `tc.rs` for every
//! segment the blocklist lets through, and by the host layer's egress program (`cgroup.rs`) for
//! every local socket's.
//!
//! Evidence order: a found random decides the flow's library (`evidence::RANDOM`). Without one,
//! a flow a thread of a library attributed (`verdict.rs`) keeps that verdict, unless the library
//! makes its own randoms (`RANDOM_LIBS`): then the hello on its socket is not its own (an
//! allowed `SSL_read` on the socket, then someone else's ClientHello) and is unattributed.
//!
//! Cost on a segment that is not a flow's first: one 10-byte read of the TCP header (sequence
//! number, data offset, flags; a plain load from the linear head), one `HEAD_BUCKETS` read (the
//! `FLOW_HEADS` lookup only when the flow's bucket counts a head), and on a flow without a head
//! one 11-byte read at the payload start (`packet::read`: a plain load where
//! the payload is linear, the helper where it sits in page fragments, as the local TCP stack
//! builds it).

use aya_ebpf::{EbpfContext, helpers::generated::bpf_ktime_get_ns};
use enforcer_common::{
    event::{self, UNATTRIBUTED, hello as hello_kind},
    flow::{FlowKey, FlowState, direction, op, verdict},
    hello::{HEAD_LEN, HELLO_RETRY_RANDOM, RANDOM_AT, evidence},
    stat::Stat,
};

use crate::{
    client_hello::{self, HELLO_SCRATCH, Outcome, Scratch, load},
    events, flow,
    flow_head::{self, CLIENT_HELLO, Data, Head, Hello},
    offer,
    packet::{self, Frame, Linear, Packet},
    policy::{self, apply},
    posture::{self, Caller},
    random, stats, who,
};

const TCP_FLAG_SYN: u8 = 0x02;
const TLS_HANDSHAKE: u8 = 0x16;
/// Record header (5), handshake header (4), the hello's version (2).
const HEADER_BEFORE_RANDOM: usize = RANDOM_AT;
/// A TLS record's largest length (2^14 plus the expansion RFC 5246 allows).
const MAX_RECORD: u16 = (1 << 14) + 2048;

/// What an egress program (`tc.rs`, the host layer's `cgroup.rs`) does with a TCP segment of
/// `flow` the blocklist let through: `judge`s it, and hands a hello it let through to the
/// ClientHello or ServerHello reader of `caller`'s kind (a tail call: on success control does
/// not come back, the reader's verdict is the program's). True: drop the segment.
#[inline(always)]
pub fn judge_egress<C: EbpfContext + Frame>(
    ctx: &C,
    l4: usize,
    flow: &FlowKey,
    len: usize,
    caller: Caller,
) -> bool {
    match judge(ctx, l4, flow, len) {
        Outcome::Pass => false,
        Outcome::ClientHelloContinues => {
            offer::hand_off(ctx, caller, offer::mode::CONTINUE_SEND);
            false
        }
        Outcome::ClientHello => {
            offer::hand_off(ctx, caller, offer::mode::START_SEND);
            false
        }
        Outcome::ServerHello => {
            if let Some(payload) = packet::payload_after(ctx, l4) {
                let args = posture::Args {
                    flow: *flow,
                    payload: payload as u32,
                    direction: direction::SEND,
                    _pad: [0; 3],
                };
                posture::read(ctx, caller, args);
            }
            false
        }
        Outcome::Drop => true,
    }
}

/// Judges an egress TCP segment of `flow` (its TCP header at `l4`) that the blocklist let
/// through. `len` is the frame's length. Fail-open where nothing is known (not a hello, scratch
/// missing), fail-closed where the policy asks for a decision it cannot take (an unattributed
/// hello, a nameless scoped one).
#[inline(always)]
pub fn judge<P: Packet + Linear>(packet: &P, l4: usize, flow: &FlowKey, len: usize) -> Outcome {
    // Sequence number (4), acknowledgment (4), data offset (1), flags (1): in the linear head.
    let Some(tcp) = packet::read::<[u8; 10], P>(packet, l4 + 4) else {
        return Outcome::Pass;
    };
    let seq = u32::from_be_bytes([tcp[0], tcp[1], tcp[2], tcp[3]]);
    let syn = tcp[9] & TCP_FLAG_SYN != 0;
    if syn {
        flow_head::start(flow, seq);
    }
    let payload = l4 + ((tcp[8] >> 4) as usize) * 4;
    if payload >= len {
        return Outcome::Pass; // no data: SYN, ACK, FIN
    }
    let data = Data {
        // A SYN's data (TCP Fast Open) starts after the SYN's own sequence number.
        seq: seq.wrapping_add(syn as u32),
        payload,
        end: len,
    };
    let Some(scratch) = HELLO_SCRATCH.get_ptr_mut(0) else {
        return Outcome::Pass;
    };
    // SAFETY: per-CPU map value, valid for this run; nothing else on this CPU uses it meanwhile.
    let scratch = unsafe { &mut *scratch };
    let found = match flow_head::feed(packet, flow, &data, &mut scratch.hello) {
        Head::Untracked => at_segment_start(packet, payload, len, &mut scratch.hello),
        Head::Waiting => return Outcome::Pass,
        // The stream did not start with a hello; this segment may still begin one (STARTTLS:
        // "STARTTLS\r\n" and the ClientHello completed the head together).
        Head::NotHello => at_segment_start(packet, payload, len, &mut scratch.hello),
        Head::Hello => true,
    };
    if found {
        if scratch.hello.starts_here != 0 {
            scratch.hello.seq = data.seq;
        }
        scratch.hello.fresh = 0;
        let hello = scratch.hello;
        match judge_hello(packet, flow, scratch, payload, len) {
            Outcome::Pass if hello.kind == flow_head::SERVER_HELLO && hello.starts_here != 0 => {
                Outcome::ServerHello
            }
            // Judged now and let through: its fields are read (`offer.rs`).
            Outcome::Pass if hello.kind == CLIENT_HELLO && scratch.hello.fresh != 0 => {
                Outcome::ClientHello
            }
            outcome => outcome,
        }
    } else {
        match not_a_hello(flow) {
            // Maybe the rest of a ClientHello being read (`offer.rs`). Asked here, on the few
            // paths that end in a segment that is no hello, not after every outcome of the
            // judge: there it multiplied the verifier's work (6.1: past its 1M instructions).
            Outcome::Pass if offer::pending(flow) => Outcome::ClientHelloContinues,
            outcome => outcome,
        }
    }
}

/// A hello at the start of this segment's payload, for flows without a head (their SYN left
/// before the agent attached, or another way) and after a stream head that was not a hello
/// (STARTTLS). Where in the stream the segment lies is unknown, so a ciphertext segment could
/// begin with any bytes: all eleven header bytes before the random must be a hello's (record
/// type and version, a record length, the message type, a handshake length OpenSSL accepts, at
/// most 192 KiB, the hello's version), which random data matches about once in 2^45 segments,
/// not the once in 2^23 of the record type, version and message type alone. A segment shorter
/// than that is not judged on such a flow (a flow with a head is judged however it is split).
#[inline(always)]
fn at_segment_start<P: Packet + Linear>(
    packet: &P,
    payload: usize,
    len: usize,
    out: &mut Hello,
) -> bool {
    let Some(start) = packet::read::<[u8; HEADER_BEFORE_RANDOM], P>(packet, payload) else {
        return false; // shorter than the header: not judged without a head
    };
    let kind = start[5];
    let record_len = u16::from_be_bytes([start[3], start[4]]);
    if start[0] != TLS_HANDSHAKE
        || start[1] != 3
        || start[2] > 4
        || !(1..=MAX_RECORD).contains(&record_len)
        || (kind != CLIENT_HELLO && kind != flow_head::SERVER_HELLO)
        || start[6] > 2
        || start[9] != 3
        || start[10] > 4
    {
        return false;
    }
    // The random, if this segment holds it (else the hello is judged without it: unattributed
    // unless a thread attributed the flow).
    let random = if payload + HEAD_LEN <= len {
        load::<[u8; 32], P>(packet, payload + RANDOM_AT)
    } else {
        None
    };
    out.kind = kind;
    out.starts_here = 1;
    out.header = start;
    match random {
        Some(r) if r != HELLO_RETRY_RANDOM => {
            out.retry = 0;
            out.key = flow_head::key_of(&r);
        }
        _ => out.retry = 1,
    }
    true
}

/// A segment that is not a hello: a flow waiting for its ClientHello's server name sent
/// something else first, and is judged nameless.
#[inline(always)]
fn not_a_hello(flow: &FlowKey) -> Outcome {
    if policy::hello_policy().scoped == 0 {
        return Outcome::Pass;
    }
    match flow::state(flow) {
        Some(state) if state.verdict == verdict::PENDING_SERVER_NAME => {
            let decided = client_hello::decide_scoped(flow, &state, None);
            client_hello::settle(flow, state, decided)
        }
        _ => Outcome::Pass,
    }
}

#[inline(always)]
fn judge_hello<P: Packet>(
    packet: &P,
    flow: &FlowKey,
    scratch: &mut Scratch,
    payload: usize,
    len: usize,
) -> Outcome {
    let hello = scratch.hello;
    // Only the first hello of a flow is judged: a retransmission (or anything later that
    // happens to look like one) passes; a blocked flow's never gets here (the blocklist drops it).
    if flow::hello_seen(flow) {
        return Outcome::Pass;
    }
    scratch.hello.fresh = 1;
    let client = hello.kind == CLIENT_HELLO;
    let (sni, name_len) = if client && hello.starts_here != 0 {
        client_hello::read_server_name(packet, payload, len, &mut scratch.event.name)
    } else if client {
        (event::sni::UNREADABLE, 0) // began in an earlier segment
    } else {
        (event::sni::ABSENT, 0)
    };
    if client {
        stats::count(Stat::ClientHellos);
    }
    if hello.starts_here == 0 {
        stats::count(Stat::HellosSplit);
    }
    let named = (sni == event::sni::PRESENT)
        .then(|| client_hello::reverse_into(&scratch.event.name, &mut scratch.key, name_len));
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let policy = policy::hello_policy();
    let origin = if hello.retry != 0 {
        None
    } else {
        random::origin(&hello.key)
    };
    // A flag and a zeroed value, not an `Option` (`flow::state_found`).
    let (found, stored) = flow::state_found(flow);
    // Rules scoped to who is talking (`who.rs`): `ask` is set when userspace is to judge the
    // sender; a verdict of `PENDING_WHO` means the hello is held (dropped, nothing recorded).
    let mut ask = false;
    let (lib_id, new_verdict, outcome) = match origin {
        Some(origin) => {
            let mut state = FlowState {
                first_seen_ns: now,
                lib_id: origin.lib_id,
                verdict: verdict::ALLOWED,
                op: op::HANDSHAKE,
                direction: direction::SEND,
                evidence: evidence::RANDOM,
            };
            let scoped = client && policy.late_attribution == 0;
            let action = if scoped && policy::scoped_action(origin.lib_id).is_some() {
                client_hello::scoped_action(&state, named.map(|()| &mut scratch.key))
            } else {
                policy::library_action(origin.lib_id)
            };
            let v = apply_who(flow, origin.lib_id, action, now, &mut ask);
            if v != verdict::PENDING_WHO {
                stats::count(Stat::HellosByRandom);
                state.verdict = v;
                flow::record(flow, &state);
                if !found || stored.lib_id != origin.lib_id {
                    stats::count(Stat::FlowsAttributed);
                    events::attributed_by_random(flow, &state, &origin, now);
                }
            }
            (origin.lib_id, v, client_hello::outcome_of(v))
        }
        // The library that claimed the socket makes its own randoms, and did not make this one.
        None if found && random::binds_hellos(stored.lib_id) && hello.retry == 0 => {
            unattributed(flow, policy.unattributed, client, now, &mut ask)
        }
        None if found && stored.verdict == verdict::PENDING_SERVER_NAME => {
            let action = client_hello::scoped_action(&stored, named.map(|()| &mut scratch.key));
            let v = apply_who(flow, stored.lib_id, action, now, &mut ask);
            let outcome = match v {
                verdict::PENDING_WHO => client_hello::outcome_of(v),
                _ => client_hello::settle(flow, stored, v),
            };
            (stored.lib_id, v, outcome)
        }
        // Judged at attribution already: the hello only adds the name.
        None if found => (stored.lib_id, stored.verdict, Outcome::Pass),
        // A hello no probed library made, on a flow no thread attributed: a library enforcer
        // does not probe, or one whose probes it dodged.
        None => unattributed(flow, policy.unattributed, client, now, &mut ask),
    };
    if new_verdict == verdict::PENDING_WHO {
        // Held: judged again when TCP sends it again; only the first hold is reported.
        if !ask {
            return Outcome::Drop;
        }
    } else {
        flow::mark_hello_seen(flow, 0);
    }
    // A ServerHello is reported as the flow's connection (`attributed_by_random`, or the thread
    // attribution before); an event of its own only when it is unattributed, or userspace is
    // to judge its sender.
    if !client && lib_id != UNATTRIBUTED && !ask {
        return outcome;
    }
    // Userspace judges the sender of a reported pending hello, whatever the kernel applied.
    let new_verdict = if ask {
        verdict::PENDING_WHO
    } else {
        new_verdict
    };
    scratch.event.hello = if client {
        hello_kind::CLIENT
    } else {
        hello_kind::SERVER
    };
    scratch.event.evidence = if origin.is_some() {
        evidence::RANDOM
    } else {
        evidence::THREAD
    };
    scratch.event.producer_pid = origin.map_or(0, |o| o.tgid);
    scratch.event.producer_comm = origin.map_or([0; 16], |o| o.comm);
    scratch.event.flow_since_ns = if found { stored.first_seen_ns } else { 0 };
    scratch.event.flow = *flow;
    scratch.event.lib_id = lib_id;
    scratch.event.verdict = new_verdict;
    scratch.event.sni = sni;
    scratch.event.name_len = name_len as u16;
    events::hello(&mut scratch.event, now);
    outcome
}

/// A hello no probed library made: judged by `unattributed_tls`, unless a rule scoped to who
/// is talking decides. Counted when it is a ClientHello (`unattributed_hellos`); an unattributed
/// ServerHello has its `client_hello` event (`hello: server`).
#[inline(always)]
fn unattributed(
    flow: &FlowKey,
    action: u8,
    client: bool,
    now: u64,
    ask: &mut bool,
) -> (u32, u8, Outcome) {
    let v = apply_who(flow, UNATTRIBUTED, Some(action), now, ask);
    if client && v != verdict::PENDING_WHO {
        stats::count(Stat::UnattributedHellos);
    }
    (UNATTRIBUTED, v, client_hello::outcome_of(v))
}

/// `action` for a hello of `lib_id`, or the action of the rule scoped to who is talking that
/// decides its sender, applied (`policy::apply`). `PENDING_WHO`: held, not applied (`ask`: the
/// first hold, to be reported). In audit mode a sender not judged yet gets `action` and `ask`.
#[inline(always)]
fn apply_who(flow: &FlowKey, lib_id: u32, action: Option<u8>, now: u64, ask: &mut bool) -> u8 {
    match who::judge(flow, lib_id, now) {
        who::Who::Rule(Some(decided)) => apply(flow, Some(decided)),
        who::Who::Rule(None) => apply(flow, action),
        who::Who::Ask => {
            *ask = true;
            apply(flow, action)
        }
        who::Who::Hold { report } => {
            *ask = report;
            verdict::PENDING_WHO
        }
    }
}
