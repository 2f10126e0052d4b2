//! Where hello randoms are made: the random sources of the libraries (`RAND_bytes_ex`,
//! `RAND_bytes`, `gnutls_rnd`, from the catalog's `op: random` probes) record each output that
//! can be a ClientHello's or ServerHello's random, with the library and process that made it
//! (`HELLO_RANDOMS`). The egress classifier looks the random of every hello up (`hello.rs`).
//!
//! Which outputs count: 28 to 32 bytes (`hello::MIN_OUTPUT..=MAX_OUTPUT`), asked for by a thread
//! that is inside a probed TLS call of the same library (`call_stack`): that is where libssl
//! makes the random (`ssl_fill_hello_random`, reached from `SSL_connect`, `SSL_do_handshake`,
//! `SSL_read`, `SSL_write`, whatever BIO the application gave it) and GnuTLS too. Other callers
//! of the random source (key generation, nonces of unrelated code) are not recorded. Recording
//! a random that never appears in a hello (a session id, a ticket key) costs one LRU entry.
//!
//! The output is read at the return (`exit`): the buffer pointer and length are kept per thread
//! from the entry (`RANDOM_CALLS`). Fail-open: an output that cannot be read or recorded leaves
//! the hello unattributed, which the policy judges (`unattributed_tls`).

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_ktime_get_ns},
    },
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::ProbeContext,
};
use enforcer_common::{
    flow::{cookie, op},
    hello::{KEY_LEN, MAX_OUTPUT, MIN_OUTPUT, RandomKey, RandomOrigin, key_offset_in_output},
    stat::Stat,
};

use crate::{call_stack, stats};

/// Randoms made by probed libraries. LRU: a hello leaves within milliseconds of its random, so
/// the oldest entries are the ones no hello will ask for.
#[map(name = "HELLO_RANDOMS")]
pub static HELLO_RANDOMS: LruHashMap<RandomKey, RandomOrigin> =
    LruHashMap::with_max_entries(65536, 0);

/// Libraries whose random source is probed (id → 1): their hellos must carry a random they made.
#[map(name = "RANDOM_LIBS")]
static RANDOM_LIBS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// A random source call in progress whose output may be a hello random.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingRandom {
    buffer: u64,
    len: u32,
    lib_id: u32,
}

/// Thread id → its random source call in progress. LRU: a thread that dies inside the call
/// cannot fill it.
#[map(name = "RANDOM_CALLS")]
static RANDOM_CALLS: LruHashMap<u32, PendingRandom> = LruHashMap::with_max_entries(16384, 0);

/// Entry of a random source (`cookie`: library, and which argument is the buffer).
#[inline(always)]
pub fn enter(ctx: &ProbeContext, cookie: u64) {
    // All three arguments are read, then chosen: a register picked by a runtime index would
    // make LLVM compute the context offset, and the verifier rejects a modified ctx pointer.
    let (Some(a0), Some(a1), Some(a2)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return;
    };
    let (buffer, len) = match cookie::op(cookie) {
        op::RANDOM_BUFFER_ARG0 => (a0, a1),
        op::RANDOM_BUFFER_ARG1 => (a1, a2),
        _ => return,
    };
    if !(MIN_OUTPUT as u64..=MAX_OUTPUT as u64).contains(&len) || buffer == 0 {
        return;
    }
    let lib_id = cookie::lib_id(cookie);
    // Only randoms the library makes for its own TLS work: the thread is inside one of its calls.
    match call_stack::innermost_call() {
        Some(call) if cookie::lib_id(call) == lib_id => {}
        _ => return,
    }
    let pending = PendingRandom {
        buffer,
        len: len as u32,
        lib_id,
    };
    let _ = RANDOM_CALLS.insert(bpf_get_current_pid_tgid() as u32, pending, 0);
}

/// Return of a random source: records the output if the entry kept it.
#[inline(always)]
pub fn exit() {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out at once.
    let Some(pending) = (unsafe { RANDOM_CALLS.get(tid) }).copied() else {
        return;
    };
    let _ = RANDOM_CALLS.remove(tid);
    let from = key_offset_in_output(pending.len as usize) as u64;
    // SAFETY: reads user memory of the current task; a bad pointer is an error, not a fault.
    let Ok(key) = (unsafe { bpf_probe_read_user((pending.buffer + from) as *const [u8; KEY_LEN]) })
    else {
        stats::count(Stat::RandomsUnreadable);
        return;
    };
    let origin = RandomOrigin {
        // SAFETY: plain helper call.
        made_ns: unsafe { bpf_ktime_get_ns() },
        lib_id: pending.lib_id,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    let _ = HELLO_RANDOMS.insert(RandomKey(key), origin, 0);
    stats::count(Stat::RandomsRecorded);
}

/// Who made the random whose key is `key`.
#[inline(always)]
pub fn origin(key: &RandomKey) -> Option<RandomOrigin> {
    // SAFETY: copied out at once.
    unsafe { HELLO_RANDOMS.get(key) }.copied()
}

/// Whether `lib_id`'s hellos must carry a random it made.
#[inline(always)]
pub fn binds_hellos(lib_id: u32) -> bool {
    // SAFETY: only existence is checked.
    unsafe { RANDOM_LIBS.get(lib_id) }.is_some()
}

/// The attach cookie of the running uprobe or uretprobe.
#[inline(always)]
pub fn attach_cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: a probe context is a valid argument for this helper.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}
