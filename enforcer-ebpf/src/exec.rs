//! New executable files: the moment a process maps a file with `PROT_EXEC` (`mmap`, which is how
//! the dynamic loader brings in `libssl.so` at start and on `dlopen`) or executes one (`execve`,
//! for TLS linked into the program itself), the file is looked up in `KNOWN_FILES`. A file
//! userspace has already examined costs one hash lookup. The key includes the inode's `ctime`
//! (`KnownKey`), which every write sets: a known file rewritten in place is unknown again. An
//! unknown one is reported on `NEW_FILES` and the thread is stopped with `SIGSTOP` before it
//! runs another user instruction (the signal is taken on the way out of the syscall), so the
//! library's code cannot run before userspace has identified the file, probed it, added it to
//! `KNOWN_FILES` and sent `SIGCONT`.
//!
//! Fail-open everywhere: a hook that cannot read the file, reserve an event or record the pause
//! lets the process go on unpaused (its first TLS calls may then go unattributed; the file is
//! still probed as soon as userspace learns of it). It never pauses a process it cannot report,
//! since nobody would resume it.
//!
//! Field offsets (`task_struct`, `files_struct`, `fdtable`, `file`, `inode`, `super_block`,
//! `linux_binprm`) and the tracepoint record layout come from userspace (`WATCH_CONFIG`), taken
//! from the running kernel's BTF and tracefs: rustc emits no CO-RE relocations.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task, bpf_ktime_get_ns, bpf_send_signal_thread},
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use enforcer_common::watch::{FileKey, KnownKey, NewFileEvent, WatchConfig, kind, pause, stat};

use crate::stats;

/// Files userspace has examined, each as of its `ctime` then. Written by userspace only.
#[map(name = "KNOWN_FILES")]
static KNOWN_FILES: LruHashMap<KnownKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// One `NewFileEvent` per unknown file mapped or executed.
#[map(name = "NEW_FILES")]
static NEW_FILES: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// tgid → time of the last stop, for processes stopped and not yet resumed. Userspace removes
/// the entry when it resumes the process; a helper resumes what is left if the agent dies.
#[map(name = "PAUSED")]
static PAUSED: HashMap<u32, u64> = HashMap::with_max_entries(16384, 0);

#[map(name = "WATCH_CONFIG")]
static WATCH_CONFIG: Array<WatchConfig> = Array::with_max_entries(1, 0);

#[map(name = "WATCH_STATS")]
static WATCH_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

const PROT_EXEC: u64 = 0x4;
const MAP_ANONYMOUS: u64 = 0x20;
const SIGSTOP: u32 = 19;

#[inline(always)]
fn bump(index: u32) {
    stats::bump(&WATCH_STATS, index);
}

#[inline(always)]
fn config() -> Option<WatchConfig> {
    let cfg = WATCH_CONFIG.get(0).copied()?;
    (cfg.enabled != 0).then_some(cfg)
}

#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates bad pointers (returns an error).
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// `syscalls:sys_enter_mmap`. Runs for every `mmap`; leaves at once unless the mapping is
/// executable and file-backed.
#[tracepoint]
pub fn watch_mmap(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else {
        return 0;
    };
    // SAFETY: offsets from the tracepoint's own format file; read_at checks nothing else.
    let prot: u64 = unsafe { ctx.read_at(cfg.mmap_prot as usize) }.unwrap_or(0);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let flags: u64 = unsafe { ctx.read_at(cfg.mmap_flags as usize) }.unwrap_or(MAP_ANONYMOUS);
    let fd: u64 = unsafe { ctx.read_at(cfg.mmap_fd as usize) }.unwrap_or(u64::MAX);
    let fd = fd as i64;
    if flags & MAP_ANONYMOUS != 0 || !(0..=i32::MAX as i64).contains(&fd) {
        return 0;
    }
    match file_of_fd(&cfg, fd as u32) {
        Some(file) => check(&cfg, file, kind::MMAP, fd as i32),
        None => bump(stat::UNREADABLE),
    }
    0
}

/// `current->files->fdt->fd[fd]`. In the syscall the fd table cannot shrink under us (only this
/// process's threads change it); a concurrent resize is a failed read, i.e. fail-open.
#[inline(always)]
fn file_of_fd(cfg: &WatchConfig, fd: u32) -> Option<u64> {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, cfg.task_files)?;
    let fdt: u64 = read(files, cfg.files_fdt)?;
    let max_fds: u32 = read(fdt, cfg.fdt_max_fds)?;
    if fd >= max_fds {
        return None;
    }
    let array: u64 = read(fdt, cfg.fdt_fd)?;
    let file: u64 = read(array, fd * 8)?;
    (file != 0).then_some(file)
}

/// `sched_process_exec(p, old_pid, bprm)`: the new program, once it replaced the old one and
/// before it runs its first instruction.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn watch_exec(ctx: RawTracePointContext) -> i32 {
    let Some(cfg) = config() else {
        return 0;
    };
    let bprm: u64 = ctx.arg(2);
    match read::<u64>(bprm, cfg.bprm_file) {
        Some(file) if file != 0 => check(&cfg, file, kind::EXEC, -1),
        _ => bump(stat::UNREADABLE),
    }
    0
}

/// Bit 31 of `i_ctime_nsec` is a flag from Linux 6.13 (`I_CTIME_QUERIED`, multigrain
/// timestamps: set once the `ctime` was read by `stat`); nanoseconds are below 2^30.
const NSEC_MASK: u32 = 0x3fff_ffff;

#[inline(always)]
fn key_of(cfg: &WatchConfig, file: u64) -> Option<KnownKey> {
    let inode: u64 = read(file, cfg.file_inode)?;
    let sb: u64 = read(inode, cfg.inode_sb)?;
    let file = FileKey {
        dev: read(sb, cfg.sb_dev)?,
        generation: read(inode, cfg.inode_generation)?,
        ino: read(inode, cfg.inode_ino)?,
    };
    let (ctime_sec, ctime_nsec) = if cfg.change_counter != 0 {
        let nsec: u32 = read(inode, cfg.inode_ctime_nsec)?;
        (read(inode, cfg.inode_ctime_sec)?, nsec & NSEC_MASK)
    } else {
        (0, 0)
    };
    Some(KnownKey {
        file,
        ctime_sec,
        ctime_nsec,
        _pad: 0,
    })
}

#[inline(always)]
fn check(cfg: &WatchConfig, file: u64, how: u8, fd: i32) {
    let Some(key) = key_of(cfg, file) else {
        bump(stat::UNREADABLE);
        return;
    };
    // SAFETY: only existence is checked.
    if unsafe { KNOWN_FILES.get(key) }.is_some() {
        return;
    }
    // Reserve first: a thread is only stopped if its event is sure to reach userspace.
    let Some(mut entry) = NEW_FILES.reserve::<NewFileEvent>(0) else {
        bump(stat::EVENTS_LOST);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let outcome = if cfg.pause == 0 {
        pause::OFF
    } else {
        pause_current(cfg, tgid, now)
    };
    entry.write(NewFileEvent {
        ts_ns: now,
        key,
        pid: tgid,
        tid: pid_tgid as u32,
        fd,
        kind: how,
        pause: outcome,
        _pad: [0; 2],
        comm: bpf_get_current_comm().unwrap_or_default(),
    });
    // Submitted after the signal was queued: userspace's SIGCONT always comes after our SIGSTOP
    // (and cancels it if the thread has not stopped yet), never before.
    entry.submit(0);
}

/// Stops the current thread (and with it its whole thread group: SIGSTOP is a group stop) on its
/// way back to user mode. Not for ptraced processes: the tracer would see the stop.
#[inline(always)]
fn pause_current(cfg: &WatchConfig, tgid: u32, now: u64) -> u8 {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    if read::<u32>(task, cfg.task_ptrace).unwrap_or(1) != 0 {
        bump(stat::NOT_PAUSED);
        return pause::TRACED;
    }
    // Recorded before the stop, so a helper that outlives a dead agent can resume it.
    if PAUSED.insert(tgid, now, 0).is_err() {
        bump(stat::NOT_PAUSED);
        return pause::FAILED;
    }
    // SAFETY: plain helper call; the signal goes to the current thread only.
    // On failure the PAUSED entry stays (another thread of the process may be stopped too);
    // userspace removes it once nothing of the process is pending.
    if unsafe { bpf_send_signal_thread(SIGSTOP) } != 0 {
        bump(stat::NOT_PAUSED);
        return pause::FAILED;
    }
    bump(stat::STOPPED);
    pause::STOPPED
}
