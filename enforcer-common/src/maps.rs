//! Names of the datapath's maps, so both sides agree on them, and which of them `--pin` keeps
//! (`PINNED`). The watcher's and `enforcer discover`'s maps are named in `watch` and `discover`;
//! none of them is pinned (they are per run).

/// `LruHashMap<FlowKey, FlowState>`: every TCP 4-tuple attributed to a TLS library.
pub const FLOWS: &str = "FLOWS";
/// `HashMap<FlowKey, u8>`: 4-tuples whose packets XDP and tc drop.
pub const BLOCKLIST: &str = "BLOCKLIST";
/// `LruHashMap<FlowKey, u32>`: flows whose ClientHello was judged, → its TCP sequence number
/// (a retransmission is not judged or reported twice).
pub const HELLOS_SEEN: &str = "HELLOS_SEEN";
/// `HashMap<u32, u8>`: library id → `policy::action::*`, written by userspace from the policy.
pub const LIB_ACTIONS: &str = "LIB_ACTIONS";
/// `Array<u32>` of one element: `policy::mode::*`. A map rather than a global so it can change
/// at run time.
pub const MODE: &str = "MODE";
/// `Array<HelloPolicy>` of one element, written by userspace from the policy.
pub const HELLO_POLICY: &str = "HELLO_POLICY";
/// `HashMap<u32, u8>`: library id → `policy::action::*` for a ClientHello without a readable
/// server name, present only for libraries that have rules with `server_names`. A flow of such
/// a library is judged at its ClientHello, not at attribution.
pub const SCOPED_LIBS: &str = "SCOPED_LIBS";
/// `LpmTrie<ServerNameKey, u8>`: (library id, reversed server name) → `policy::action::*`.
pub const SERVER_NAME_RULES: &str = "SERVER_NAME_RULES";
/// `RingBuf` of `event::*` records.
pub const EVENTS: &str = "EVENTS";
/// `PerCpuArray<u64>` indexed by `stat::Stat`.
pub const STATS: &str = "STATS";

/// Maps shared by every agent run that uses the same pin directory: the flow state (so blocked
/// flows stay blocked, a judged ClientHello is not judged again, a hello being collected or a
/// random made meanwhile is still known), the policy maps (in force
/// while no agent runs; the next agent rewrites them), the counters and the event ring (events
/// of the time without an agent are read by the next one).
///
/// Not pinned: the per-thread and per-goroutine call stacks (`TLS_CALLS`, `GO_CALLS`: a stack
/// shared by an old and a new copy of the uprobes would be pushed twice and popped once while
/// both are attached), scratch space, and the watcher's and `enforcer discover`'s maps.
pub const PINNED: [&str; 15] = [
    FLOWS,
    BLOCKLIST,
    HELLOS_SEEN,
    crate::hello::FLOW_HEADS,
    crate::hello::HELLO_RANDOMS,
    crate::hello::RANDOM_LIBS,
    crate::hello::LIB_CODE,
    crate::hello::CODE_RANGES,
    LIB_ACTIONS,
    MODE,
    HELLO_POLICY,
    SCOPED_LIBS,
    SERVER_NAME_RULES,
    STATS,
    EVENTS,
];
