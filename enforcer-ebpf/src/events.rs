//! The ring buffers for userspace: `EVENTS`, one `TlsEvent` per newly attributed (flow,
//! library), and `HELLO_EVENTS`, one `HelloEvent` per judged hello, each record behind an
//! `event::Header` naming its kind. Two rings, so that hellos anyone can send in bulk (an
//! unprobed process's ClientHellos) never take the room of the connection events userspace
//! aborts sockets from; each ring's losses are counted apart.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::map,
    maps::RingBuf,
};
use enforcer_common::{
    event::{Header, HelloEvent, QuicEvent, TlsEvent, kind},
    flow::{FlowKey, FlowState},
    hello::RandomOrigin,
    offer::OfferedEvent,
    posture::NegotiatedEvent,
    stat::Stat,
};

use crate::stats;

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// 1 MiB: about 2,900 `HelloEvent`s (352 bytes and the ring's 8-byte header each); a
/// ClientHello that passes also has its `OfferedEvent` (408 bytes): about 1,350 such hellos.
#[map(name = "HELLO_EVENTS")]
static HELLO_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Reports that the current task's library call attributed `flow` (`state`, taken at `now`).
#[inline(always)]
pub fn attributed(flow: &FlowKey, state: &FlowState, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<TlsEvent>(0) else {
        stats::count(Stat::EventsLost);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    entry.write(TlsEvent {
        header: Header::new(kind::TLS, now),
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        lib_id: state.lib_id,
        verdict: state.verdict,
        op: state.op,
        direction: state.direction,
        evidence: state.evidence,
        comm: bpf_get_current_comm().unwrap_or_default(),
        flow: *flow,
    });
    entry.submit(0);
}

/// Reports that the egress classifier attributed `flow` to the library that made its hello's
/// random, in process `producer` (this runs in softirq context: no current task to name).
#[inline(always)]
pub fn attributed_by_random(flow: &FlowKey, state: &FlowState, producer: &RandomOrigin, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<TlsEvent>(0) else {
        stats::count(Stat::EventsLost);
        return;
    };
    entry.write(TlsEvent {
        header: Header::new(kind::TLS, now),
        pid: producer.tgid,
        tid: 0,
        lib_id: state.lib_id,
        verdict: state.verdict,
        op: state.op,
        direction: state.direction,
        evidence: state.evidence,
        comm: producer.comm,
        flow: *flow,
    });
    entry.submit(0);
}

/// Reports a judged QUIC Initial (`quic.rs`), on the hello ring: anyone can send UDP in bulk.
#[inline(always)]
pub fn quic(event: &QuicEvent, now: u64) {
    let mut event = *event;
    event.header = Header::new(kind::QUIC, now);
    if HELLO_EVENTS.output::<QuicEvent>(&event, 0).is_err() {
        stats::count(Stat::HelloEventsLost);
    }
}

/// Reports a judged ClientHello. The event is built in per-CPU scratch (it is larger than the
/// 512-byte eBPF stack), so it is copied (`output`) rather than reserved; its header is set here.
#[inline(always)]
pub fn hello(event: &mut HelloEvent, now: u64) {
    event.header = Header::new(kind::HELLO, now);
    if HELLO_EVENTS.output::<HelloEvent>(event, 0).is_err() {
        stats::count(Stat::HelloEventsLost);
    }
}

/// Reports what a flow negotiated (`posture.rs`): on `EVENTS` when the flow was dropped for it
/// (userspace aborts its socket from there), else on the hello ring (servers on this host
/// answer anyone's ClientHello).
#[inline(always)]
pub fn negotiated(event: &NegotiatedEvent, now: u64, dropped: bool) {
    let mut event = *event;
    event.header = Header::new(kind::NEGOTIATED, now);
    let (ring, lost) = match dropped {
        true => (&EVENTS, Stat::EventsLost),
        false => (&HELLO_EVENTS, Stat::HelloEventsLost),
    };
    if ring.output::<NegotiatedEvent>(&event, 0).is_err() {
        stats::count(lost);
    }
}

/// Reports what a client offered (`offer.rs`), on the hello ring: anyone can send
/// ClientHellos in bulk. Built in per-CPU scratch (larger than the stack): copied, its header
/// set here.
#[inline(always)]
pub fn offered(event: &mut OfferedEvent, now: u64) {
    event.header = Header::new(kind::OFFERED, now);
    if HELLO_EVENTS.output::<OfferedEvent>(event, 0).is_err() {
        stats::count(Stat::HelloEventsLost);
    }
}
