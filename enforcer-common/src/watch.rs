//! Watching for executable files enforcer has not examined yet (`enforcer-ebpf/src/exec.rs`,
//! `enforcer/src/watcher.rs`): a process maps a file with `PROT_EXEC`, or executes one; if the
//! file is not in `KNOWN_FILES`, the thread is stopped (`SIGSTOP`) and userspace is told; it
//! identifies and probes the file, adds it to `KNOWN_FILES`, and resumes the process.

/// `LruHashMap<FileKey, u8>`: files userspace has examined (TLS library or not). Written by
/// userspace only; LRU so a full map costs a repeated (cached, short) pause, never an error.
pub const KNOWN_FILES: &str = "KNOWN_FILES";
/// `RingBuf` of `NewFileEvent`.
pub const NEW_FILES: &str = "NEW_FILES";
/// `HashMap<u32, u64>`: tgid → `bpf_ktime_get_ns` of the last stop, for every process the
/// hooks stopped and userspace has not resumed yet. Lets a helper resume them if the agent dies.
pub const PAUSED: &str = "PAUSED";
/// `Array<WatchConfig>` of one element, written by userspace before the hooks attach.
pub const WATCH_CONFIG: &str = "WATCH_CONFIG";
/// `PerCpuArray<u64>` indexed by `watch::stat::*`.
pub const WATCH_STATS: &str = "WATCH_STATS";

/// How the file came into the process (`NewFileEvent::kind`).
pub mod kind {
    /// `mmap(..., PROT_EXEC, ..., fd, ...)`: the fd is in `NewFileEvent::fd`.
    pub const MMAP: u8 = 0;
    /// `execve`: the new program (`/proc/<pid>/exe`).
    pub const EXEC: u8 = 1;
}

/// What the hook did to the thread (`NewFileEvent::pause`).
pub mod pause {
    /// Pausing is off (`WatchConfig::pause` = 0): reported only.
    pub const OFF: u8 = 0;
    /// `SIGSTOP` sent to the thread: it stops before it runs another user instruction.
    pub const STOPPED: u8 = 1;
    /// Not paused: the process is being ptraced (a debugger would see our SIGSTOP).
    pub const TRACED: u8 = 2;
    /// Not paused: `bpf_send_signal_thread` failed (global init, exiting task) or `PAUSED`
    /// was full.
    pub const FAILED: u8 = 3;
}

/// Indices into `WATCH_STATS`.
pub mod stat {
    /// An unknown file was mapped but the event could not be reserved: not paused, not
    /// reported (fail-open).
    pub const EVENTS_LOST: u32 = 0;
    /// Threads stopped.
    pub const STOPPED: u32 = 1;
    /// Unknown file, process not paused (traced, signal failed, `PAUSED` full).
    pub const NOT_PAUSED: u32 = 2;
    /// The mapped file could not be read from the task (fd table, inode): ignored.
    pub const UNREADABLE: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// The kernel's `dev_t` (`MKDEV`), as the hooks read it from `super_block::s_dev`; `stat`
/// reports it re-encoded (use `libc::major` / `minor` on `st_dev`, then this).
pub const fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// A file as the kernel hooks see it. `generation` (`inode::i_generation`, random per inode on
/// ext4, xfs, btrfs, tmpfs) tells a new file from a deleted one whose inode number was reused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// Kernel `dev_t` of the inode's super block (see `watch::kernel_dev`).
    pub dev: u32,
    pub generation: u32,
    pub ino: u64,
}
const _: () = assert!(core::mem::size_of::<FileKey>() == 16);

/// Offsets and switches for the new-file hooks (`WATCH_CONFIG[0]`). Struct field offsets come
/// from the running kernel's BTF, tracepoint field offsets from its tracefs `format` file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchConfig {
    /// 0: the hooks return at once (not configured yet, or shutting down).
    pub enabled: u32,
    /// 1: stop the thread that maps an unknown file until userspace resumes it.
    pub pause: u32,
    /// `task_struct.files`, `task_struct.ptrace`.
    pub task_files: u32,
    pub task_ptrace: u32,
    /// `files_struct.fdt`, `fdtable.max_fds`, `fdtable.fd`.
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    /// `file.f_inode`, `inode.i_ino`, `inode.i_sb`, `inode.i_generation`, `super_block.s_dev`.
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_generation: u32,
    pub sb_dev: u32,
    /// `linux_binprm.file`.
    pub bprm_file: u32,
    /// Offsets of `prot`, `flags` and `fd` in the `syscalls:sys_enter_mmap` record.
    pub mmap_prot: u32,
    pub mmap_flags: u32,
    pub mmap_fd: u32,
}
const _: () = assert!(core::mem::size_of::<WatchConfig>() == 64);

/// An executable file the hooks did not find in `KNOWN_FILES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NewFileEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC), taken before the thread was signalled.
    pub ts_ns: u64,
    pub key: FileKey,
    pub pid: u32,
    pub tid: u32,
    /// The mapped fd (`watch::kind::MMAP`), else -1.
    pub fd: i32,
    /// `watch::kind::*`.
    pub kind: u8,
    /// `watch::pause::*`.
    pub pause: u8,
    pub _pad: [u8; 2],
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<NewFileEvent>() == 56);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::WatchConfig {}
    unsafe impl aya::Pod for super::NewFileEvent {}
}
