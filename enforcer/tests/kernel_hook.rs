//! The kernel TCP hook (`tp_tcp_send`, the raw-tracepoint form) on a socket it cannot read, run
//! in the kernel through `BPF_PROG_TEST_RUN` on this very thread: inside a TLS call, the failed
//! read is counted in `STATS` (`Stat::SockReadFailures`, what `enforcer status` and `/metrics`
//! show as `sock_read_failures`) and attributes nothing; outside a TLS call the socket is not
//! read at all.
//!
//! Root only, and deliberately not skipped otherwise: a run that cannot load the program fails.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun},
};
use enforcer_common::{
    flow::{FlowKey, FlowState, cookie, op},
    maps,
    stat::Stat,
};

const SEND_HOOK: &str = "tp_tcp_send";
/// The per-thread TLS call stacks (`enforcer-ebpf/src/call_stack.rs`).
const TLS_CALLS: &str = "TLS_CALLS";
/// Open calls per bucket of the thread id (same file).
const CALLS_OPEN: &str = "CALLS_OPEN";
/// `CallStack` as call_stack.rs lays it out: `cookies: [u64; 5]` (slot 0 unused), `depth: u32`,
/// padding. The map's value size is checked against it.
const CALL_STACK_BYTES: usize = 48;
/// An address no kernel maps: `bpf_probe_read_kernel` faults on it.
const UNREADABLE_SOCK: u64 = 0x10;

fn load() -> Ebpf {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "kernel_hook loads eBPF programs and needs root: run `sudo -E cargo test -p enforcer --test kernel_hook`"
    );
    let offsets =
        enforcer::datapath::btf::sock_offsets().expect("reading struct sock offsets from BTF");
    let mut ebpf = enforcer::datapath::loader::load(&offsets).expect("loading the eBPF object");
    let hook: &mut RawTracePoint = ebpf
        .program_mut(SEND_HOOK)
        .expect("send hook missing")
        .try_into()
        .expect("not a raw tracepoint");
    hook.load().expect("loading the send hook (verifier)");
    ebpf
}

/// Runs the send hook once, in this thread, on socket pointer `sk`.
fn send_on(ebpf: &mut Ebpf, sk: u64) {
    let hook: &mut RawTracePoint = ebpf.program_mut(SEND_HOOK).unwrap().try_into().unwrap();
    let mut opts = RawTracePointRunOptions::new();
    opts.args[0] = sk;
    hook.test_run(opts)
        .expect("BPF_PROG_TEST_RUN of the send hook");
}

/// Puts this thread inside a TLS library call (library `lib_id`, a write).
fn enter_tls_call(ebpf: &mut Ebpf, lib_id: u32) {
    let map = ebpf.map_mut(TLS_CALLS).expect("TLS_CALLS map");
    let mut calls: HashMap<_, u32, [u8; CALL_STACK_BYTES]> =
        HashMap::try_from(map).expect("TLS_CALLS type (a value size other than CallStack's?)");
    let mut stack = [0u8; CALL_STACK_BYTES];
    stack[8..16].copy_from_slice(&cookie::encode(lib_id, op::WRITE).to_ne_bytes());
    stack[40..44].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    calls.insert(tid, stack, 0).expect("writing TLS_CALLS");
    // The hooks read TLS_CALLS only for a thread whose bucket counts an open call (as
    // `thread_enter` counts it): the bucket is the thread id's low 10 bits.
    let mut open: Array<_, u64> =
        Array::try_from(ebpf.map_mut(CALLS_OPEN).expect("CALLS_OPEN map"))
            .expect("CALLS_OPEN type");
    open.set(tid & 1023, 1, 0).expect("writing CALLS_OPEN");
}

fn stat(ebpf: &Ebpf, which: Stat) -> u64 {
    let stats: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(ebpf.map(maps::STATS).expect("STATS map")).expect("STATS type");
    stats
        .get(&which.index(), 0)
        .expect("reading STATS")
        .iter()
        .sum()
}

fn flows(ebpf: &Ebpf) -> usize {
    let flows: HashMap<&MapData, FlowKey, FlowState> =
        HashMap::try_from(ebpf.map(maps::FLOWS).expect("FLOWS map")).expect("FLOWS type");
    flows.keys().count()
}

#[test]
fn an_unreadable_socket_inside_a_tls_call_is_counted() {
    let mut ebpf = load();
    // Outside any TLS call the hook leaves at once: nothing read, nothing counted.
    send_on(&mut ebpf, UNREADABLE_SOCK);
    assert_eq!(stat(&ebpf, Stat::SockReadFailures), 0);

    enter_tls_call(&mut ebpf, 7);
    send_on(&mut ebpf, UNREADABLE_SOCK);
    assert_eq!(
        stat(&ebpf, Stat::SockReadFailures),
        1,
        "the failed read is counted"
    );
    assert_eq!(
        stat(&ebpf, Stat::FlowsAttributed),
        0,
        "and attributes nothing"
    );
    assert_eq!(flows(&ebpf), 0);
    send_on(&mut ebpf, UNREADABLE_SOCK);
    assert_eq!(stat(&ebpf, Stat::SockReadFailures), 2);
}
