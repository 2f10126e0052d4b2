//! Watching for executable files enforcer has not examined yet (`enforcer-ebpf/src/exec.rs`,
//! `enforcer/src/watcher.rs`): a process maps a file with `PROT_EXEC`, or executes one; if the
//! file is not in `KNOWN_FILES`, the thread is stopped (`SIGSTOP`) and userspace is told; it
//! identifies and probes the file, adds it to `KNOWN_FILES`, and resumes the process.

/// `LruHashMap<KnownKey, u8>`: files userspace has examined (TLS library or not), each as it was
/// then (its `ctime`): a file rewritten in place is a new key. Written by userspace only; LRU so a
/// full map costs a repeated (cached, short) pause, never an error.
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

/// A file *and its version*, as the new-file hooks look it up in `KNOWN_FILES`: the file
/// ([`FileKey`]) and the inode's `ctime`, which every write, truncation, `chmod` or `chown` sets.
/// A file rewritten in place (`cp other.so over` opens it `O_TRUNC`, `dd conv=notrunc`) keeps its
/// inode and generation but not its `ctime`, so its next mapping is reported again and its new
/// content examined. The `ctime` is 0 (seconds and nanoseconds) where the running kernel's BTF
/// did not say where `struct inode` keeps it (`WatchConfig::change_counter` = 0): userspace then
/// writes its keys with 0 too, and a rewrite in place goes unseen (warned at start).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KnownKey {
    pub file: FileKey,
    /// `inode->i_ctime` seconds (`timespec64::tv_sec`, `i_ctime_sec` from Linux 6.11).
    pub ctime_sec: i64,
    /// `inode->i_ctime` nanoseconds.
    pub ctime_nsec: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<KnownKey>() == 32);

impl KnownKey {
    /// `file` as of `ctime` (seconds, nanoseconds); `None` is the "no change counter" key.
    pub const fn new(file: FileKey, ctime: Option<(i64, u32)>) -> KnownKey {
        let (ctime_sec, ctime_nsec) = match ctime {
            Some(c) => c,
            None => (0, 0),
        };
        KnownKey {
            file,
            ctime_sec,
            ctime_nsec,
            _pad: 0,
        }
    }

    /// The `ctime` of the key, `None` if the hooks read none (no change counter).
    pub const fn ctime(&self) -> Option<(i64, u32)> {
        if self.ctime_sec == 0 && self.ctime_nsec == 0 {
            None
        } else {
            Some((self.ctime_sec, self.ctime_nsec))
        }
    }
}

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
    /// 1: the hooks read the inode's `ctime` into `KnownKey` (at the two offsets below); 0: the
    /// running kernel's `struct inode` layout was not found, `KnownKey`'s `ctime` stays 0.
    pub change_counter: u32,
    /// Where `struct inode` keeps the `ctime` seconds (8 bytes) and nanoseconds (read as 4
    /// bytes, little-endian): `i_ctime.tv_sec`/`.tv_nsec` up to Linux 6.5, `__i_ctime.*` in
    /// 6.6 to 6.10, `i_ctime_sec`/`i_ctime_nsec` from 6.11.
    pub inode_ctime_sec: u32,
    pub inode_ctime_nsec: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<WatchConfig>() == 80);

/// An executable file the hooks did not find in `KNOWN_FILES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NewFileEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC), taken before the thread was signalled.
    pub ts_ns: u64,
    /// The file and its `ctime` as the hook read them.
    pub key: KnownKey,
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
const _: () = assert!(core::mem::size_of::<NewFileEvent>() == 72);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::KnownKey {}
    unsafe impl aya::Pod for super::WatchConfig {}
    unsafe impl aya::Pod for super::NewFileEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_key_without_ctime_is_zero() {
        let file = FileKey {
            dev: kernel_dev(8, 1),
            generation: 7,
            ino: 42,
        };
        let none = KnownKey::new(file, None);
        assert_eq!((none.ctime_sec, none.ctime_nsec), (0, 0));
        assert_eq!(none.ctime(), None);
        let some = KnownKey::new(file, Some((1_700_000_000, 5)));
        assert_eq!(some.ctime(), Some((1_700_000_000, 5)));
        assert_ne!(none, some, "a rewritten file is another key");
        assert_eq!(some.file, file);
    }
}
