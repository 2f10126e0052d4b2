//! Rules scoped to who is talking (`executables`, `cgroups`, `users`): what the kernel records
//! about the process that sends on each flow, and the verdicts userspace gives back.
//!
//! The send hook (process context, before the data is pushed) records the sender of every TCP
//! send in `SENDERS`: the executable's inode (`task->mm->exe_file`), the cgroup v2 id and the
//! uid, all read by the kernel, none of them a name the process chose. At the hello, the egress
//! classifier looks the sender up in `WHO_CACHE` (the answer userspace gave for the same
//! identity and library under the same policy generation); on a miss it holds the hello (drops
//! it: TCP sends it again) and reports it (`verdict::PENDING_WHO`); userspace resolves the
//! identity to host names (the executable's host path, the cgroup's path), judges it, writes the
//! cache and, for a deny, blocklists the flow and aborts its socket at once. A hello still
//! unanswered after [`WHO_WAIT_NS`] is judged as if no scoped rule applied (fail closed).

use crate::watch::FileKey;

/// `LruHashMap<FlowKey, Sender>`: the last process that sent on each flow.
pub const SENDERS: &str = "SENDERS";
/// `LruHashMap<WhoKey, u8>`: userspace's verdict (`who_action::*`) for an identity and library.
pub const WHO_CACHE: &str = "WHO_CACHE";
/// `LruHashMap<FlowKey, u64>`: flows whose hello is held for a verdict → `bpf_ktime_get_ns` of
/// the first hold.
pub const WHO_WAIT: &str = "WHO_WAIT";
/// `HashMap<u32, u8>`: library ids (and `event::UNATTRIBUTED`) some scoped-by-who rule may apply
/// to; only their hellos are looked up.
pub const WHO_LIBS: &str = "WHO_LIBS";
/// `Array<WhoConfig>` of one element.
pub const WHO_CONFIG: &str = "WHO_CONFIG";

/// Capacity of `SENDERS` and `WHO_WAIT`.
pub const SENDERS_ENTRIES: u32 = 65536;
/// Capacity of `WHO_CACHE`.
pub const WHO_CACHE_ENTRIES: u32 = 16384;

/// How long a hello is held for userspace's verdict before it is judged without the scoped
/// rules (the `who` event was lost, or userspace is stalled).
pub const WHO_WAIT_NS: u64 = 2_000_000_000;

/// Value of a `WHO_CACHE` entry.
pub mod who_action {
    /// No scoped-by-who rule decides this identity's TLS with this library: the flow is judged
    /// as without them. The other values are `policy::action::*`.
    pub const NONE: u8 = 0xff;
}

/// The process that sent on a flow, as the kernel knows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sender {
    /// The executable (`task->mm->exe_file->f_inode`); all zero for a kernel thread.
    pub exe: FileKey,
    /// `bpf_get_current_cgroup_id`: the cgroup v2 id (the inode number of its directory).
    pub cgroup: u64,
    /// `bpf_get_current_uid_gid` (the real uid).
    pub uid: u32,
    pub tgid: u32,
}
const _: () = assert!(core::mem::size_of::<Sender>() == 32);

/// Key of `WHO_CACHE`: an identity (without the process id: the verdict is the identity's), the
/// library, and the policy generation it was judged under.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WhoKey {
    pub exe: FileKey,
    pub cgroup: u64,
    pub uid: u32,
    /// Library id, or `event::UNATTRIBUTED`.
    pub lib_id: u32,
    /// `WhoConfig::generation` when it was judged.
    pub generation: u64,
}
const _: () = assert!(core::mem::size_of::<WhoKey>() == 40);

impl WhoKey {
    pub const fn of(s: &Sender, lib_id: u32, generation: u64) -> WhoKey {
        WhoKey {
            exe: s.exe,
            cgroup: s.cgroup,
            uid: s.uid,
            lib_id,
            generation,
        }
    }
}

/// `WHO_CONFIG[0]`: switch, generation and the struct offsets (from the running kernel's BTF)
/// the send hook reads the executable with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WhoConfig {
    /// 1 when the policy has scoped-by-who rules: only then does the send hook record senders.
    pub enabled: u32,
    /// `task_struct.mm`, `mm_struct.exe_file`, `file.f_inode`, `inode.i_ino`, `inode.i_sb`,
    /// `inode.i_generation`, `super_block.s_dev`.
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_generation: u32,
    pub sb_dev: u32,
    /// Changes with every policy written: cache entries of an earlier policy are never hit.
    pub generation: u64,
}
const _: () = assert!(core::mem::size_of::<WhoConfig>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::Sender {}
    unsafe impl aya::Pod for super::WhoKey {}
    unsafe impl aya::Pod for super::WhoConfig {}
}
