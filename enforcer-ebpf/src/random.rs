//! Where hello randoms are made: the random sources of the libraries (`RAND_bytes_ex`,
//! `RAND_bytes`, `gnutls_rnd`, from the catalog's `op: random` probes) record each output that
//! can be a ClientHello's or ServerHello's random, with the library and process that made it
//! (`HELLO_RANDOMS`). The egress classifier looks the random of every hello up (`hello.rs`).
//!
//! Which outputs count: 28 to 32 bytes (`hello::MIN_OUTPUT..=MAX_OUTPUT`) whose caller is the
//! library's own code. The caller is the return address, read at the return probe (where the
//! kernel has put it back in the instruction pointer). Where the library's code lies in the
//! calling process is learned when the process starts a session of it (`op::SESSION`:
//! `SSL_new`, `gnutls_init`, which every connection calls before its handshake): the session
//! function's address, plus the extent of its executable segment that userspace read from the
//! file (`LIB_CODE`), gives the range (`CODE_RANGES`). So libssl's `ssl_fill_hello_random` counts
//! wherever the application drives it from (`SSL_connect`, `SSL_read`, a `BIO_f_ssl`, an event
//! loop), while the same `RAND_bytes` called by another library in the process, from inside an
//! allowed TLS call (a BIO callback) or not, does not. Key generation and nonces libssl makes
//! with the same function are recorded too: an entry no hello asks for costs one LRU slot.
//!
//! A process with no range for the library (its sessions started before the probes attached)
//! falls back to the earlier rule: the thread is inside a probed TLS call of the same library
//! (`call_stack`).
//!
//! The buffer pointer and length are kept per thread and library from the entry
//! (`RANDOM_CALLS`); a library's companion shared with another library (one libcrypto under two
//! libssl copies) fires each library's probe, each judged by its own code range. Fail-open: an
//! output that cannot be read or recorded leaves the hello unattributed, which the policy judges
//! (`unattributed_tls`). Code in the process that forges a return address into the library's
//! code defeats the check: same-process code is trusted that far (docs/architecture.md).

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_ktime_get_ns},
    },
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use enforcer_common::{
    flow::{cookie, op},
    hello::{
        CODE_SLOTS, CodeRange, CodeSpan, KEY_LEN, MAX_OUTPUT, MIN_OUTPUT, ProcessCode, RandomKey,
        RandomOrigin, key_offset_in_output,
    },
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

/// (thread id << 32 | library id) → its random source call in progress. LRU: a thread that dies
/// inside the call cannot fill it.
#[map(name = "RANDOM_CALLS")]
static RANDOM_CALLS: LruHashMap<u64, PendingRandom> = LruHashMap::with_max_entries(16384, 0);

/// Library id → its code around its session function. Written by userspace.
#[map(name = "LIB_CODE")]
static LIB_CODE: HashMap<u32, CodeSpan> = HashMap::with_max_entries(4096, 0);

/// tgid → where the libraries it has sessions of lie in its address space. LRU: a process that
/// exits leaves its entry behind; `forget_process` removes it at exec and at the leader's exit
/// so a later process with the same tgid starts without one.
#[map(name = "CODE_RANGES")]
static CODE_RANGES: LruHashMap<u32, ProcessCode> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn call_key(lib_id: u32) -> u64 {
    (bpf_get_current_pid_tgid() << 32) | lib_id as u64
}

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
    let pending = PendingRandom {
        buffer,
        len: len as u32,
        lib_id,
    };
    let _ = RANDOM_CALLS.insert(call_key(lib_id), pending, 0);
}

/// Return of a random source: records the output if the entry kept it and the library's own
/// code called it. A call from elsewhere leaves the entry: it may be nested in one from the
/// library (`RAND_bytes` calls `RAND_bytes_ex` on the same buffer), whose return comes next.
#[inline(always)]
pub fn exit(ctx: &RetProbeContext, cookie: u64) {
    let key = call_key(cookie::lib_id(cookie));
    // SAFETY: copied out at once.
    let Some(pending) = (unsafe { RANDOM_CALLS.get(key) }).copied() else {
        return;
    };
    if !called_by_library(pending.lib_id, return_address(ctx)) {
        return;
    }
    let _ = RANDOM_CALLS.remove(key);
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
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    let _ = HELLO_RANDOMS.insert(RandomKey(key), origin, 0);
    stats::count(Stat::RandomsRecorded);
}

/// Where the running random source returns to: at a return probe the kernel has already put the
/// caller's address back in the instruction pointer (`regs.rs`).
#[inline(always)]
fn return_address(ctx: &RetProbeContext) -> u64 {
    // SAFETY: the context of a return probe is its pt_regs, readable directly.
    let regs = unsafe { &*ctx.regs };
    crate::regs::instruction_pointer(regs)
}

/// Whether `caller` is `lib_id`'s code in the current process, or, where the process has no
/// range for it, whether the thread is inside one of the library's probed TLS calls.
#[inline(always)]
fn called_by_library(lib_id: u32, caller: u64) -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    if let Some(code) = unsafe { CODE_RANGES.get(tgid) }.copied() {
        for slot in code.slots {
            if slot.lib_id == lib_id {
                return slot.start <= caller && caller < slot.end;
            }
        }
    }
    matches!(call_stack::innermost_call(), Some(call) if cookie::lib_id(call) == lib_id)
}

/// Entry of a library's session function (`op::SESSION`): records where the library's code lies
/// in this process, from the function's address and the library's `LIB_CODE`.
#[inline(always)]
pub fn session(ctx: &ProbeContext, cookie: u64) {
    let lib_id = cookie::lib_id(cookie);
    // SAFETY: copied out at once.
    let Some(span) = (unsafe { LIB_CODE.get(lib_id) }).copied() else {
        return;
    };
    // SAFETY: the context of a uprobe is its pt_regs, readable directly. At an entry probe the
    // instruction pointer is the probed address, the function's first instruction.
    let at = crate::regs::instruction_pointer(unsafe { &*ctx.regs });
    let range = CodeRange {
        start: at.saturating_sub(span.before),
        end: at.saturating_add(span.after),
        lib_id,
        _pad: 0,
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let mut code = unsafe { CODE_RANGES.get(tgid) }
        .copied()
        .unwrap_or_default();
    let mut at_slot = CODE_SLOTS;
    for (i, slot) in code.slots.iter().enumerate() {
        if slot.lib_id == lib_id || (slot.lib_id == 0 && at_slot == CODE_SLOTS) {
            at_slot = i;
            if slot.lib_id == lib_id {
                break;
            }
        }
    }
    if at_slot == CODE_SLOTS {
        at_slot = code.next as usize % CODE_SLOTS;
        code.next = code.next.wrapping_add(1);
    }
    if let Some(slot) = code.slots.get_mut(at_slot) {
        if *slot == range {
            return; // the common case: nothing new
        }
        *slot = range;
    }
    let _ = CODE_RANGES.insert(tgid, code, 0);
}

/// The process's code ranges are its image's: forget them when it executes another program or
/// its leader exits.
#[inline(always)]
pub fn forget_process() {
    let id = bpf_get_current_pid_tgid();
    let _ = CODE_RANGES.remove((id >> 32) as u32);
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
