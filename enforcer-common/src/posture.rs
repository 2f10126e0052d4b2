//! Crypto posture: what each TLS connection negotiated, read from its ServerHello by the packet
//! programs (`enforcer-ebpf/src/posture.rs`, `server_hello.rs`), and the policy's rules on it
//! (`tls_versions`, `groups`, `cipher_suites`, host-wide and per library rule). A connection
//! that breaks a rule is dropped at its ServerHello, before any application byte, or reported
//! as `would-block` in audit mode. Names of the values: `iana`.

/// `LruHashMap<FlowKey, Posture>`: what each flow negotiated, once its ServerHello was read
/// (a retransmitted ServerHello is not judged or reported twice). `enforcer flows` reads it.
pub const POSTURES: &str = "POSTURES";
/// `HashMap<u32, PostureRule>`: key [`HOST_RULE`] for the host-wide keys, a library id for a
/// library rule's. Both apply to a flow of that library.
pub const POSTURE_RULES: &str = "POSTURE_RULES";
/// `Array<u32>` of one element: 1 when `POSTURE_RULES` holds a rule (a ServerHello is then
/// judged, else only read and reported).
pub const POSTURE_ENABLED: &str = "POSTURE_ENABLED";
/// Tail-call tables of the ServerHello reader (slot 0), one per kind of caller: the kernel
/// lets a program tail-call only programs of its own type and, for XDP, of its own frags
/// support. The reader is a program of its own so the verifier walks it once, not once per
/// path of the caller (`enforcer-ebpf/src/posture.rs`).
pub const POSTURE_TC: &str = "POSTURE_TC";
pub const POSTURE_XDP: &str = "POSTURE_XDP";
pub const POSTURE_XDP_NOFRAGS: &str = "POSTURE_XDP_NOFRAGS";
/// The host layer's (`--host-layer cgroup`: cgroup_skb egress).
pub const POSTURE_CG: &str = "POSTURE_CG";
/// The reader programs, by the table they go in.
pub const READER_TC: &str = "posture_tc";
pub const READER_XDP: &str = "posture_xdp";
pub const READER_XDP_NOFRAGS: &str = "posture_xdp_nofrags";
pub const READER_CG: &str = "posture_cg";

/// `LruHashMap<FlowKey, Ja4Verdict>`: which of the policy's JA4 patterns each flow's
/// ClientHello matched, written by userspace once it made the JA4 (`offered` event); the
/// ServerHello of a flow a `ja4` rule applies to waits for it (`enforcer-ebpf/src/posture.rs`).
pub const JA4_VERDICTS: &str = "JA4_VERDICTS";
/// Most distinct JA4 patterns one policy lists (each is a bit of `Ja4Verdict::matched`).
pub const MAX_JA4_PATTERNS: usize = 64;
/// How long a ServerHello waits for its flow's JA4 verdict (dropped meanwhile, so TCP sends it
/// again) before the flow is judged as if its JA4 broke the rule (fail closed: the `offered`
/// event was lost, or userspace is stalled).
pub const JA4_WAIT_NS: u64 = 2_000_000_000;

/// `POSTURE_RULES` key of the host-wide rule (library ids start at 1).
pub const HOST_RULE: u32 = 0;
/// Most groups or cipher suites one rule lists (a longer list is a policy error).
pub const MAX_LISTED: usize = 16;

/// Bits of `Posture::read`: which fields the ServerHello gave.
pub mod field {
    pub const VERSION: u8 = 1;
    pub const SUITE: u8 = 2;
    pub const GROUP: u8 = 4;
}

/// What one flow negotiated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Posture {
    /// The protocol version (`0x0304`: TLS 1.3, from `supported_versions`; else the
    /// ServerHello's own version field).
    pub version: u16,
    /// The cipher suite.
    pub suite: u16,
    /// The key-exchange group: TLS 1.3 `key_share`, or a TLS 1.2 ECDHE ServerKeyExchange in
    /// the ServerHello's packet (elsewhere `field::GROUP` is unset).
    pub group: u16,
    /// `field::*` bits of what was read. A field past the end of the ServerHello's segment is
    /// not read.
    pub read: u8,
    /// 1 if a HelloRetryRequest came first (its group is the one asked for).
    pub retried: u8,
}
const _: () = assert!(core::mem::size_of::<Posture>() == 8);

impl Posture {
    pub const fn has(&self, field: u8) -> bool {
        self.read & field != 0
    }
}

/// Bit of a protocol version in `PostureRule::versions` (TLS 1.0 = bit 0 .. TLS 1.3 = bit 3);
/// `None` for anything else (SSL 3.0, unknown), which no version rule allows.
pub const fn version_bit(version: u16) -> Option<u8> {
    match version {
        0x0301..=0x0304 => Some(1 << (version - 0x0301)),
        _ => None,
    }
}

/// One rule's requirements. An empty list (count 0, `versions` 0) requires nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostureRule {
    /// [`version_bit`]s of the versions allowed; 0: any.
    pub versions: u8,
    pub group_count: u8,
    pub suite_count: u8,
    pub _pad: u8,
    pub groups: [u16; MAX_LISTED],
    pub suites: [u16; MAX_LISTED],
    pub _pad2: [u8; 4],
    /// Bits of the policy's JA4 patterns (`Ja4Verdict::matched`) this rule allows: the flow's
    /// JA4 must match one when any is set.
    pub ja4_allow: u64,
    /// Bits of the patterns this rule denies: the flow's JA4 must match none.
    pub ja4_deny: u64,
}
const _: () = assert!(core::mem::size_of::<PostureRule>() == 88);

/// Which requirement a connection broke (`NegotiatedEvent::broken`).
pub mod broken {
    pub const NONE: u8 = 0;
    pub const VERSION: u8 = 1;
    pub const GROUP: u8 = 2;
    pub const SUITE: u8 = 3;
    pub const JA4: u8 = 4;
}

/// Whose rule it broke (`NegotiatedEvent::rule`).
pub mod rule {
    pub const HOST: u8 = 0;
    pub const LIBRARY: u8 = 1;
}

impl PostureRule {
    /// The first requirement `posture` breaks, or `broken::NONE`. A field the ServerHello did
    /// not give breaks a requirement on it (fail closed).
    pub fn broken_by(&self, posture: &Posture) -> u8 {
        if self.versions != 0 {
            let bit = match posture.has(field::VERSION) {
                true => version_bit(posture.version),
                false => None,
            };
            if bit.is_none_or(|b| self.versions & b == 0) {
                return broken::VERSION;
            }
        }
        if self.group_count != 0
            && !(posture.has(field::GROUP) && listed(&self.groups, self.group_count, posture.group))
        {
            return broken::GROUP;
        }
        if self.suite_count != 0
            && !(posture.has(field::SUITE) && listed(&self.suites, self.suite_count, posture.suite))
        {
            return broken::SUITE;
        }
        broken::NONE
    }
}

impl PostureRule {
    /// Whether the rule judges the flow's JA4 (it lists JA4 patterns).
    pub const fn needs_ja4(&self) -> bool {
        self.ja4_allow | self.ja4_deny != 0
    }

    /// Whether a JA4 that matched the patterns `matched` meets the rule's `ja4` lists.
    pub const fn ja4_met(&self, matched: u64) -> bool {
        matched & self.ja4_deny == 0 && (self.ja4_allow == 0 || matched & self.ja4_allow != 0)
    }
}

/// `Ja4Verdict::state`.
pub mod ja4_state {
    /// Put by the kernel when a ServerHello first waited for the verdict (`since_ns` is then).
    pub const WAITING: u8 = 0;
    /// Put by userspace: `matched` holds the patterns the flow's JA4 matched.
    pub const MATCHED: u8 = 1;
    /// Put by userspace: no JA4 could be made (a field it needs was not read), which breaks
    /// every `ja4` rule (fail closed).
    pub const UNREAD: u8 = 2;
}

/// A flow's JA4 against the policy's patterns (`JA4_VERDICTS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ja4Verdict {
    /// Bit `i`: pattern `i` of the policy's JA4 patterns matched.
    pub matched: u64,
    /// `bpf_ktime_get_ns` of the first wait (`ja4_state::WAITING`).
    pub since_ns: u64,
    /// `ja4_state::*`.
    pub state: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<Ja4Verdict>() == 24);

#[inline(always)]
fn listed(list: &[u16; MAX_LISTED], count: u8, value: u16) -> bool {
    let mut found = false;
    for (i, v) in list.iter().enumerate() {
        if i < count as usize && *v == value {
            found = true;
        }
    }
    found
}

/// Reported once per flow at its ServerHello: what it negotiated and how the rules judged it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NegotiatedEvent {
    /// `event::kind::NEGOTIATED`.
    pub header: crate::event::Header,
    /// From this host's side.
    pub flow: crate::flow::FlowKey,
    /// The flow's library (`event::UNATTRIBUTED`: none).
    pub lib_id: u32,
    /// `flow::verdict::*`: `ALLOWED`, `BLOCKED`, `WOULD_BLOCK` (or `BLOCKLIST_FULL`).
    pub verdict: u8,
    /// `flow::direction::RECV`: the ServerHello arrived (this host is the client); `SEND`: it
    /// left (the server).
    pub direction: u8,
    /// `broken::*`.
    pub broken: u8,
    /// `rule::*` (meaningful when `broken` is set).
    pub rule: u8,
    pub posture: Posture,
    /// 1: a `ja4` rule applies and the flow's verdict was not there yet (audit mode, which never
    /// waits): userspace judges it from the JA4 it made.
    pub ja4_pending: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<NegotiatedEvent>() == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, without implicit padding, valid for any bit pattern.
    unsafe impl aya::Pod for super::Posture {}
    unsafe impl aya::Pod for super::PostureRule {}
    unsafe impl aya::Pod for super::NegotiatedEvent {}
    unsafe impl aya::Pod for super::Ja4Verdict {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posture(version: u16, suite: u16, group: Option<u16>) -> Posture {
        Posture {
            version,
            suite,
            group: group.unwrap_or(0),
            read: field::VERSION | field::SUITE | if group.is_some() { field::GROUP } else { 0 },
            retried: 0,
        }
    }

    #[test]
    fn rules_break_on_the_first_unmet_requirement_and_on_what_was_not_read() {
        let mut rule = PostureRule {
            versions: version_bit(0x0304).unwrap(),
            ..Default::default()
        };
        assert_eq!(
            rule.broken_by(&posture(0x0304, 0x1301, Some(0x11ec))),
            broken::NONE
        );
        assert_eq!(
            rule.broken_by(&posture(0x0303, 0xc02f, None)),
            broken::VERSION
        );
        rule.groups[0] = 0x11ec;
        rule.group_count = 1;
        assert_eq!(
            rule.broken_by(&posture(0x0304, 0x1301, Some(0x001d))),
            broken::GROUP
        );
        assert_eq!(
            rule.broken_by(&posture(0x0304, 0x1301, None)),
            broken::GROUP
        );
        rule.suites[0] = 0x1302;
        rule.suite_count = 1;
        assert_eq!(
            rule.broken_by(&posture(0x0304, 0x1301, Some(0x11ec))),
            broken::SUITE
        );
        let unread = Posture::default();
        assert_eq!(PostureRule::default().broken_by(&unread), broken::NONE);
        assert_eq!(rule.broken_by(&unread), broken::VERSION);
        assert_eq!(version_bit(0x0300), None);
    }
}
