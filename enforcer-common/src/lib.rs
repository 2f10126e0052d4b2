//! Types shared by the eBPF programs (`enforcer-ebpf`) and userspace (`enforcer`).
//!
//! Every struct here crosses the kernel/user boundary through a map or the ring buffer, so each is
//! `#[repr(C)]`, has explicit padding fields (the verifier rejects reads of uninitialised stack
//! bytes, and hash map keys must not carry garbage), and a compile-time size check.
#![no_std]

/// Map names, so both sides agree on them.
pub mod maps {
    /// `LruHashMap<FlowKey, FlowState>`: every TCP 4-tuple attributed to a TLS library.
    pub const FLOWS: &str = "FLOWS";
    /// `HashMap<FlowKey, u8>`: 4-tuples whose packets XDP and tc drop.
    pub const BLOCKLIST: &str = "BLOCKLIST";
    /// `HashMap<u32, u8>`: library id → `action::*`, written by userspace from the policy.
    pub const LIB_ACTIONS: &str = "LIB_ACTIONS";
    /// `Array<u32>` of one element: `mode::*`. A map rather than a global so it can change at run time.
    pub const MODE: &str = "MODE";
    /// `RingBuf` of `TlsEvent`.
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<u64>` indexed by `stat::*`.
    pub const STATS: &str = "STATS";
}

/// Name of the load-time global holding the `SockOffsets` (see `EbpfLoader::override_global`).
pub const SOCK_OFFSETS_GLOBAL: &str = "SOCK_OFFSETS";

/// Address family as stored in `FlowKey::family`.
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// A TCP connection seen from this host: local and remote end.
///
/// Ports are in host byte order. Addresses are in network byte order; an IPv4 address fills the
/// first four bytes and the rest stay zero. IPv4-mapped IPv6 sockets (`::ffff:a.b.c.d`) are
/// recorded as IPv4, because that is what their packets carry on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub local_port: u16,
    pub remote_port: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// What the library call was doing; part of the uprobe cookie.
pub mod op {
    pub const HANDSHAKE: u8 = 0;
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
}

/// Kernel TCP direction that revealed the 4-tuple.
pub mod direction {
    pub const SEND: u8 = 0;
    pub const RECV: u8 = 1;
}

/// What the policy says about one library (value of `LIB_ACTIONS`).
pub mod action {
    /// Connections are recorded, never blocked.
    pub const ALLOW: u8 = 0;
    /// Connections are blocked in enforce mode and reported as would-block in audit mode.
    pub const DENY: u8 = 1;
    /// Connections are reported at warn level but never blocked.
    pub const AUDIT: u8 = 2;
}

/// Agent-wide mode (value of `MODE[0]`).
pub mod mode {
    pub const AUDIT: u32 = 0;
    pub const ENFORCE: u32 = 1;
}

/// Outcome recorded for a flow and reported in its event.
pub mod verdict {
    pub const ALLOWED: u8 = 0;
    /// Denied library, enforce mode: the 4-tuple is in the blocklist.
    pub const BLOCKED: u8 = 1;
    /// Denied library, audit mode: reported only.
    pub const WOULD_BLOCK: u8 = 2;
    /// The library's rule says audit: reported only.
    pub const AUDITED: u8 = 3;
    /// The library id has no entry in `LIB_ACTIONS` (should not happen): let through, reported.
    pub const UNKNOWN_LIBRARY: u8 = 4;
    /// The blocklist was full: the flow could not be blocked (fail-open, reported loudly).
    pub const BLOCKLIST_FULL: u8 = 5;
}

/// Indices into the `STATS` per-CPU counters.
pub mod stat {
    pub const XDP_DROPS: u32 = 0;
    pub const TC_DROPS: u32 = 1;
    pub const EVENTS_LOST: u32 = 2;
    pub const FLOWS_ATTRIBUTED: u32 = 3;
    pub const BLOCKLIST_FULL: u32 = 4;
    pub const TLS_STACK_OVERFLOW: u32 = 5;
    pub const COUNT: u32 = 6;
}

/// The uprobe attach cookie: which library, and what the probed function does.
pub mod cookie {
    pub const fn encode(lib_id: u32, op: u8) -> u64 {
        ((op as u64) << 32) | lib_id as u64
    }
    pub const fn lib_id(cookie: u64) -> u32 {
        cookie as u32
    }
    pub const fn op(cookie: u64) -> u8 {
        (cookie >> 32) as u8
    }
}

/// One entry of `FLOWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub first_seen_ns: u64,
    pub lib_id: u32,
    pub verdict: u8,
    pub op: u8,
    pub direction: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FlowState>() == 16);

/// Reported once per (flow, library): the first time a library's call moves bytes on a 4-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub lib_id: u32,
    pub verdict: u8,
    pub op: u8,
    pub direction: u8,
    pub _pad: u8,
    pub comm: [u8; 16],
    pub flow: FlowKey,
}
const _: () = assert!(core::mem::size_of::<TlsEvent>() == 80);

/// Byte offsets of the `struct sock` fields the kernel hooks read, taken from the running
/// kernel's BTF at start (rustc emits no CO-RE relocations, so nothing here is compiled in).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `__sk_common.skc_family` (u16).
    pub family: u32,
    /// `__sk_common.skc_num` (u16, local port, host order).
    pub num: u32,
    /// `__sk_common.skc_dport` (__be16).
    pub dport: u32,
    /// `__sk_common.skc_rcv_saddr` (__be32).
    pub rcv_saddr: u32,
    /// `__sk_common.skc_daddr` (__be32).
    pub daddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr` (struct in6_addr).
    pub v6_rcv_saddr: u32,
    /// `__sk_common.skc_v6_daddr` (struct in6_addr).
    pub v6_daddr: u32,
    /// `sk_protocol` (u16).
    pub protocol: u32,
    /// `inet_sock.inet_sport` (__be16, local port). Unlike `skc_num` it is not cleared when the
    /// socket is unhashed, so it still names the flow when the socket reaches TCP_CLOSE.
    pub sport: u32,
}
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 36);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::TlsEvent {}
    unsafe impl aya::Pod for super::SockOffsets {}
}

/// Watching for executable files enforcer has not examined yet (`enforcer-ebpf/src/exec.rs`,
/// `enforcer/src/watcher.rs`): a process maps a file with `PROT_EXEC`, or executes one; if the
/// file is not in `KNOWN_FILES`, the thread is stopped (`SIGSTOP`) and userspace is told; it
/// identifies and probes the file, adds it to `KNOWN_FILES`, and resumes the process.
pub mod watch {
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
mod watch_pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::WatchConfig {}
    unsafe impl aya::Pod for super::NewFileEvent {}
}

/// TLS ClientHellos seen by the egress classifier (`enforcer-ebpf/src/tc.rs`,
/// `client_hello.rs`): the server name (SNI) of every connection, TLS on flows no probed library
/// claimed (`unattributed_tls` in the policy), and rules scoped by server name.
pub mod hello {
    /// `Array<HelloPolicy>` of one element, written by userspace from the policy.
    pub const HELLO_POLICY: &str = "HELLO_POLICY";
    /// `HashMap<u32, u8>`: library id → `action::*` for a ClientHello without a readable server
    /// name, present only for libraries that have rules with `server_names`. A flow of such a
    /// library is judged at its ClientHello, not at attribution.
    pub const SCOPED_LIBS: &str = "SCOPED_LIBS";
    /// `LpmTrie<ServerNameKey, u8>`: (library id, reversed server name) → `action::*`.
    pub const SERVER_NAME_RULES: &str = "SERVER_NAME_RULES";
    /// `LruHashMap<FlowKey, u32>`: flows whose ClientHello was judged, → its TCP sequence
    /// number (a retransmission is not reported twice).
    pub const HELLOS_SEEN: &str = "HELLOS_SEEN";

    /// Library id used in `HelloEvent::lib_id` for a flow no probed library claimed.
    pub const UNATTRIBUTED: u32 = u32::MAX;
    /// Longest server name kept: an LPM trie key holds at most 256 data bytes (kernel
    /// `LPM_DATA_SIZE_MAX`), 4 of which are the library id. DNS names are at most 253 bytes;
    /// a longer one is kept by its last 252 bytes, which is what a suffix match needs.
    pub const MAX_NAME: usize = 252;
    /// Byte after the reversed name in a key, so a pattern without `*` matches only itself.
    pub const NAME_END: u8 = 0;

    /// What the ClientHello said about the server name (`HelloEvent::sni`).
    pub mod sni {
        /// A `server_name` extension with a `host_name` entry: the name is in the event.
        pub const PRESENT: u8 = 0;
        /// The extension list was read to its end: the client sent no server name.
        pub const ABSENT: u8 = 1;
        /// The name could not be read: the ClientHello continues past this segment, the
        /// extension list is longer than the parser walks, or a length field is inconsistent.
        pub const UNREADABLE: u8 = 2;
    }
}

/// `HELLO_POLICY[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelloPolicy {
    /// `action::*` for a ClientHello on a flow no probed library claimed.
    pub unattributed: u8,
    /// 1 if any library has rules scoped by server name: only then does the classifier look up
    /// `FLOWS` for data packets that are not a ClientHello (a pending flow must not slip past).
    pub scoped: u8,
    /// 1 if the kernel hook attributes a send only after its packets left (`sock_send_length`):
    /// scoped libraries are then judged at attribution, without a name.
    pub late_attribution: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<HelloPolicy>() == 4);

/// Data of a `SERVER_NAME_RULES` key (the trie's key is `prefix_len: u32` followed by this;
/// aya's `lpm_trie::Key`). The prefix counts bits from `lib_id_be` on: 32 + 8 × the bytes of the
/// pattern. The id is big-endian so its bits come first in the trie's order. 256 bytes: the
/// kernel's limit for LPM trie data (`LPM_DATA_SIZE_MAX`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerNameKey {
    pub lib_id_be: u32,
    /// Lowercased and reversed (`elpmaxe.lanretni.` for `*.internal.example`), followed by
    /// `hello::NAME_END` for a name without `*`.
    pub name: [u8; hello::MAX_NAME],
}
const _: () = assert!(core::mem::size_of::<ServerNameKey>() == 256);

/// One event per ClientHello the egress classifier judged. Goes through the `EVENTS` ring
/// buffer next to `TlsEvent`; userspace tells them apart by size (asserted to differ).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HelloEvent {
    pub ts_ns: u64,
    pub flow: FlowKey,
    /// The library `FLOWS` holds for the flow, or `hello::UNATTRIBUTED`.
    pub lib_id: u32,
    /// `verdict::*` of the flow after this ClientHello.
    pub verdict: u8,
    /// `hello::sni::*`.
    pub sni: u8,
    /// Bytes of `name` in use.
    pub name_len: u16,
    /// As sent (not lowercased, not reversed); the last `MAX_NAME` bytes of a longer name.
    pub name: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<HelloEvent>() == 312);
const _: () = assert!(core::mem::size_of::<HelloEvent>() != core::mem::size_of::<TlsEvent>());

/// Verdicts added for ClientHello decisions (continue `verdict::*`).
pub mod hello_verdict {
    /// The flow's library has rules scoped by server name: it is judged at its ClientHello.
    pub const PENDING_SERVER_NAME: u8 = 6;
}

/// Counters added for ClientHellos (continue `stat::*`; `STATS` is sized by `HELLO_STAT_COUNT`).
pub mod hello_stat {
    /// ClientHellos parsed by the egress classifier.
    pub const HELLOS: u32 = 6;
    /// ClientHellos on flows no probed library claimed.
    pub const UNATTRIBUTED: u32 = 7;
    /// ClientHellos dropped by the classifier's own decision (unattributed or out of scope).
    pub const HELLO_DROPS: u32 = 8;
    pub const COUNT: u32 = 9;
}

#[cfg(feature = "user")]
mod hello_pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::HelloPolicy {}
    unsafe impl aya::Pod for super::ServerNameKey {}
    unsafe impl aya::Pod for super::HelloEvent {}
}
