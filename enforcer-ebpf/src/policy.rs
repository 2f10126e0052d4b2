//! The policy as userspace wrote it into the kernel (`enforcer_common::policy`): each
//! library's action, the mode, and the ClientHello policy; and [`apply`], which turns an action
//! into the flow's verdict (blocklisting it when denied and enforcing).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
};
use enforcer_common::{
    flow::{FlowKey, verdict},
    policy::{HelloPolicy, ServerNameKey, action, mode},
    stat::Stat,
};

use crate::{flow, stats};

/// Library id → `action::*`, from the policy.
#[map(name = "LIB_ACTIONS")]
static LIB_ACTIONS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// `MODE[0]` = `mode::AUDIT` | `mode::ENFORCE`.
#[map(name = "MODE")]
static MODE: Array<u32> = Array::with_max_entries(1, 0);

/// Library id → action for a ClientHello without a readable server name; only libraries with
/// rules scoped by `server_names` are here, and their client flows are judged at the ClientHello
/// (`client_hello.rs`) rather than at attribution.
#[map(name = "SCOPED_LIBS")]
static SCOPED_LIBS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// `HELLO_POLICY[0]`: `unattributed_tls` and switches, from the policy and the hook form.
#[map(name = "HELLO_POLICY")]
static HELLO_POLICY: Array<HelloPolicy> = Array::with_max_entries(1, 0);

/// (library id, reversed server name) → `action::*`, from rules with `server_names`.
#[map(name = "SERVER_NAME_RULES")]
static SERVER_NAME_RULES: LpmTrie<ServerNameKey, u8> = LpmTrie::with_max_entries(4096, 0);

/// The action of library `lib_id` (`None`: not in the policy maps, which should not happen).
#[inline(always)]
pub fn library_action(lib_id: u32) -> Option<u8> {
    // SAFETY: copied out at once.
    unsafe { LIB_ACTIONS.get(lib_id) }.copied()
}

/// `Some(action for a nameless ClientHello)` if `lib_id` is scoped by server name.
#[inline(always)]
pub fn scoped_action(lib_id: u32) -> Option<u8> {
    // SAFETY: copied out at once.
    unsafe { SCOPED_LIBS.get(lib_id) }.copied()
}

/// The action of the longest server-name pattern of the key's library matching its name.
#[inline(always)]
pub fn name_rule(key: &Key<ServerNameKey>) -> Option<u8> {
    SERVER_NAME_RULES.get(key).copied()
}

/// Whether the agent enforces (`mode::ENFORCE`) rather than audits.
#[inline(always)]
pub fn enforcing() -> bool {
    MODE.get(0).copied() == Some(mode::ENFORCE)
}

#[inline(always)]
pub fn hello_policy() -> HelloPolicy {
    HELLO_POLICY.get(0).copied().unwrap_or_default()
}

/// The verdict for `lib_action` on `flow` in the current mode; blocklists the flow when denied
/// and enforcing. Used at attribution and at the ClientHello alike.
#[inline(always)]
pub fn apply(flow: &FlowKey, lib_action: Option<u8>) -> u8 {
    let enforcing = enforcing();
    match lib_action {
        Some(action::ALLOW) => verdict::ALLOWED,
        Some(action::AUDIT) => verdict::AUDITED,
        Some(action::DENY) if enforcing => match flow::block(flow) {
            flow::Blocked::Listed => verdict::BLOCKED,
            // Fail-closed: the flow is dropped through the overflow table all the same, and its
            // socket aborted by userspace; the verdict says where it went, the counter how often.
            flow::Blocked::Overflow => {
                stats::count(Stat::BlocklistFull);
                verdict::BLOCKLIST_FULL
            }
        },
        Some(action::DENY) => verdict::WOULD_BLOCK,
        _ => verdict::UNKNOWN_LIBRARY,
    }
}
