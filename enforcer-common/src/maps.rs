//! Names of the datapath's maps, so both sides agree on them, and which of them `--pin` keeps
//! (`PINNED`). The watcher's and `enforcer discover`'s maps are named in `watch` and `discover`;
//! none of them is pinned (they are per run).

/// `LruHashMap<FlowKey, FlowState>`: every TCP 4-tuple attributed to a TLS library.
pub const FLOWS: &str = "FLOWS";
/// `HashMap<FlowKey, u8>`: 4-tuples whose packets XDP and tc drop → `flow::block::*`.
pub const BLOCKLIST: &str = "BLOCKLIST";
/// `LruHashMap<FlowKey, u8>`: blocks that did not fit in `BLOCKLIST`, and those the agent's
/// sweep found without a local socket; dropped like `BLOCKLIST`'s.
pub const BLOCKLIST_OVERFLOW: &str = "BLOCKLIST_OVERFLOW";
/// `Array<u32>` of one element: 1 once `BLOCKLIST_OVERFLOW` was used (the packet programs look
/// it up only then).
pub const OVERFLOW_IN_USE: &str = "OVERFLOW_IN_USE";
/// `Array<u64>` of two elements (`flow::held::*`): the kernel's count of its `BLOCKLIST`
/// entries, and userspace's flag (set: the packet programs always look `BLOCKLIST` up).
pub const BLOCKLIST_HELD: &str = "BLOCKLIST_HELD";
/// `Array<u64>` of `flow::held::BUCKETS` elements: the kernel's `BLOCKLIST` entries per bucket of
/// the 4-tuple, so a packet of a flow in an empty bucket skips the lookup while others are
/// blocked.
pub const BLOCKLIST_BUCKETS: &str = "BLOCKLIST_BUCKETS";
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
/// `RingBuf` of connection records (`event::TlsEvent`): what the agent aborts sockets from.
pub const EVENTS: &str = "EVENTS";
/// `RingBuf` of hello records (`event::HelloEvent`), apart from `EVENTS` so that a flood of
/// hellos cannot crowd out connection events.
pub const HELLO_EVENTS: &str = "HELLO_EVENTS";
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
pub const PINNED: [&str; 21] = [
    FLOWS,
    BLOCKLIST,
    BLOCKLIST_OVERFLOW,
    OVERFLOW_IN_USE,
    BLOCKLIST_HELD,
    BLOCKLIST_BUCKETS,
    HELLOS_SEEN,
    crate::hello::FLOW_HEADS,
    crate::hello::HEAD_BUCKETS,
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
    HELLO_EVENTS,
];
