//! Rules scoped to who is talking (`enforcer_common::who`): the send hook records each flow's
//! sender; the hello judge asks what userspace said about that sender.
//!
//! The sender is read in the sending thread's own context (the send hook runs inside
//! `tcp_sendmsg`, before the data is pushed), from kernel objects only: the executable's inode
//! (`task->mm->exe_file`, what was executed after every symlink was followed, whatever the
//! process is called or renamed to), the cgroup v2 id and the uid. The classifier itself cannot
//! know the process (it may run in softirq), so it reads the record.
//!
//! Cost: nothing on the packet path of a policy without such rules (`WhoConfig::enabled`, read
//! once per hello and once per send); with them, one `SENDERS` lookup per send (a write when the
//! sender changed), and per hello of a library such a rule may apply to, a `SENDERS` and a
//! `WHO_CACHE` lookup.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
    generated::{bpf_get_current_cgroup_id, bpf_get_current_task},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use enforcer_common::{
    flow::FlowKey,
    watch::FileKey,
    who::{SENDERS_ENTRIES, Sender, WHO_CACHE_ENTRIES, WHO_WAIT_NS, WhoConfig, WhoKey, who_action},
};

use crate::{policy, sock};

/// Flow → the last process that sent on it.
#[map(name = "SENDERS")]
static SENDERS: LruHashMap<FlowKey, Sender> = LruHashMap::with_max_entries(SENDERS_ENTRIES, 0);

/// (identity, library, generation) → `who_action::*`, written by userspace.
#[map(name = "WHO_CACHE")]
static WHO_CACHE: LruHashMap<WhoKey, u8> = LruHashMap::with_max_entries(WHO_CACHE_ENTRIES, 0);

/// Flows whose hello is held for userspace's verdict → when it was first held.
#[map(name = "WHO_WAIT")]
static WHO_WAIT: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(SENDERS_ENTRIES, 0);

/// Library ids (and `UNATTRIBUTED`) a scoped-by-who rule may apply to.
#[map(name = "WHO_LIBS")]
static WHO_LIBS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

#[map(name = "WHO_CONFIG")]
static WHO_CONFIG: Array<WhoConfig> = Array::with_max_entries(1, 0);

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn config() -> Option<WhoConfig> {
    let cfg = WHO_CONFIG.get(0).copied()?;
    (cfg.enabled != 0).then_some(cfg)
}

/// True if a scoped-by-who rule may decide `lib_id`'s flows (their judgement then waits for
/// the hello, where the sender is known).
#[inline(always)]
pub fn applies(lib_id: u32) -> bool {
    // SAFETY: only existence is checked.
    config().is_some() && unsafe { WHO_LIBS.get(lib_id) }.is_some()
}

#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates bad pointers (returns an error).
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
}

/// `current->mm->exe_file`'s inode; all zero without one (a kernel thread, an unreadable
/// field), which is no rule's executable.
#[inline(always)]
fn current_exe(cfg: &WhoConfig) -> FileKey {
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let read_key = || {
        let mm: u64 = read(task, cfg.task_mm)?;
        let file: u64 = read(mm, cfg.mm_exe_file)?;
        let inode: u64 = read(file, cfg.file_inode)?;
        let sb: u64 = read(inode, cfg.inode_sb)?;
        Some(FileKey {
            dev: read(sb, cfg.sb_dev)?,
            generation: read(inode, cfg.inode_generation)?,
            ino: read(inode, cfg.inode_ino)?,
        })
    };
    read_key().unwrap_or_default()
}

/// Send hook, every TCP send: records the sending process of `sk`'s flow. Fail-open here: a
/// socket that cannot be read records nothing, and its hello is then judged as if no
/// scoped-by-who rule applied (which, under `default: deny`, is the closed side).
#[inline(always)]
pub fn record_sender(sk: *const u8) {
    let Some(cfg) = config() else {
        return;
    };
    let Ok(flow) = sock::flow_of(sk) else {
        return;
    };
    let sender = Sender {
        exe: current_exe(&cfg),
        // SAFETY: plain helper call.
        cgroup: unsafe { bpf_get_current_cgroup_id() },
        uid: bpf_get_current_uid_gid() as u32,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
    };
    // SAFETY: copied out at once.
    if unsafe { SENDERS.get(flow) }.copied() != Some(sender) {
        let _ = SENDERS.insert(flow, sender, 0);
    }
}

/// What the scoped-by-who rules say about a hello of `lib_id` on `flow`.
pub enum Who {
    /// `Some(action)`: a scoped rule decides; `None`: none applies (or the sender is unknown,
    /// or userspace did not answer in time): the flow is judged without them.
    Rule(Option<u8>),
    /// Enforcing, and userspace has not judged this sender yet: drop the hello (TCP sends it
    /// again); `report`: the first hold, which asks userspace.
    Hold { report: bool },
    /// Auditing, and userspace has not judged this sender yet: judged without the scoped rules
    /// here, reported so that userspace judges (and caches) it.
    Ask,
}

#[inline(always)]
pub fn judge(flow: &FlowKey, lib_id: u32, now: u64) -> Who {
    let Some(cfg) = config() else {
        return Who::Rule(None);
    };
    // SAFETY: only existence is checked.
    if unsafe { WHO_LIBS.get(lib_id) }.is_none() {
        return Who::Rule(None);
    }
    // SAFETY: copied out at once.
    let Some(sender) = (unsafe { SENDERS.get(flow) }).copied() else {
        // Fail closed: nobody known to except (the send hook ran after the packet left, or
        // the entry was evicted).
        return Who::Rule(None);
    };
    let key = WhoKey::of(&sender, lib_id, cfg.generation);
    // SAFETY: copied out at once.
    if let Some(answer) = unsafe { WHO_CACHE.get(key) }.copied() {
        let _ = WHO_WAIT.remove(flow);
        return Who::Rule((answer != who_action::NONE).then_some(answer));
    }
    if !policy::enforcing() {
        return Who::Ask;
    }
    // SAFETY: copied out at once.
    match unsafe { WHO_WAIT.get(flow) }.copied() {
        // Fail closed: userspace did not answer in time.
        Some(since) if now.wrapping_sub(since) > WHO_WAIT_NS => {
            let _ = WHO_WAIT.remove(flow);
            Who::Rule(None)
        }
        Some(_) => Who::Hold { report: false },
        None => {
            let _ = WHO_WAIT.insert(flow, now, BPF_NOEXIST);
            Who::Hold { report: true }
        }
    }
}

/// Forgets `flow`'s hold (its socket closed). Its sender stays until the LRU evicts it: the
/// agent may read it after a short connection closed (audit mode lets the hello through before
/// the agent has judged it), and a later connection of the same 4-tuple records its own sender
/// at its first send, before its hello.
#[inline(always)]
pub fn forget(flow: &FlowKey) {
    let _ = WHO_WAIT.remove(flow);
}
