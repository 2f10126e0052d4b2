//! The `STATS` counters (a `PerCpuArray<u64>`, userspace sums the CPUs): one enumeration. The
//! eBPF side sizes the map by `COUNT` and bumps `Stat::X as u32`; userspace reads `COUNT` entries
//! and reports each under its `name` (`enforcer status`) and `metric` (`/metrics`).

/// One counter of `STATS`; the discriminant is its index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Packets XDP dropped (ingress, blocklisted flow).
    XdpDrops = 0,
    /// Packets tc dropped (egress: blocklisted flow, or a ClientHello the policy denies).
    TcDrops = 1,
    /// Connection events the kernel could not queue on `EVENTS` (ring buffer full).
    EventsLost = 2,
    /// Flows the kernel hook tied to a TLS library (every verdict).
    FlowsAttributed = 3,
    /// Denied flows that did not fit in `BLOCKLIST`: put in `BLOCKLIST_OVERFLOW` (still dropped).
    BlocklistFull = 4,
    /// TLS calls nested deeper than the call stack keeps.
    TlsStackOverflow = 5,
    /// ClientHellos parsed by the egress classifier.
    ClientHellos = 6,
    /// ClientHellos on flows no probed library claimed.
    UnattributedHellos = 7,
    /// ClientHellos dropped by the classifier's own decision (unattributed or out of scope).
    ClientHelloDrops = 8,
    /// A kernel hook could not read a socket's fields: inside a TLS call the flow went
    /// unattributed; at close its entries stay until evicted. Non-zero means the socket offsets
    /// are not what this kernel has.
    SockReadFailures = 9,
    /// Outputs of a probed random source recorded as possible hello randoms.
    RandomsRecorded = 10,
    /// Outputs of a probed random source that could not be read at its return.
    RandomsUnreadable = 11,
    /// Hellos (Client or Server) whose random a probed library made: attributed by content.
    HellosByRandom = 12,
    /// Hellos whose first 43 bytes came in more than one segment (collected by `FLOW_HEADS`).
    HellosSplit = 13,
    /// Hello events the kernel could not queue on `HELLO_EVENTS` (ring buffer full).
    HelloEventsLost = 14,
    /// Packets the tc ingress classifier dropped (`--ingress tc`, or `auto` where XDP costs
    /// more: blocklisted flow, denied QUIC Initial).
    TcIngressDrops = 15,
    /// ServerHellos dropped while their flow's JA4 verdict was not there yet (a `ja4` rule
    /// applies, enforce mode): TCP sends them again.
    ServerHellosHeld = 16,
    /// Packets the host-wide layer dropped (`--host-layer cgroup`: cgroup_skb on the root cgroup,
    /// every interface and network namespace): blocklisted flows, hellos the policy denies.
    CgroupDrops = 17,
    /// Segments the host layer's egress judge dropped unjudged because another run of it was in
    /// progress on the same CPU (a softirq's transmit inside a process's): segments that could
    /// be part of a hello not judged yet. TCP sends them again.
    HostNestedDrops = 18,
}

/// Entries of `STATS`.
pub const COUNT: u32 = 19;

/// Every counter, in index order.
pub const ALL: [Stat; COUNT as usize] = [
    Stat::XdpDrops,
    Stat::TcDrops,
    Stat::EventsLost,
    Stat::FlowsAttributed,
    Stat::BlocklistFull,
    Stat::TlsStackOverflow,
    Stat::ClientHellos,
    Stat::UnattributedHellos,
    Stat::ClientHelloDrops,
    Stat::SockReadFailures,
    Stat::RandomsRecorded,
    Stat::RandomsUnreadable,
    Stat::HellosByRandom,
    Stat::HellosSplit,
    Stat::HelloEventsLost,
    Stat::TcIngressDrops,
    Stat::ServerHellosHeld,
    Stat::CgroupDrops,
    Stat::HostNestedDrops,
];
const _: () = {
    let mut i = 0;
    while i < ALL.len() {
        assert!(ALL[i] as u32 == i as u32, "ALL is in index order");
        i += 1;
    }
};

/// How a counter is shown: its key under `counters` in `enforcer status`, and its Prometheus
/// series (family and labels) with the family's help text.
pub struct Shown {
    pub name: &'static str,
    pub metric: &'static str,
    pub labels: &'static str,
    pub help: &'static str,
}

impl Stat {
    pub const fn index(self) -> u32 {
        self as u32
    }

    pub const fn shown(self) -> Shown {
        const DROPS: &str =
            "Packets dropped, by program (xdp: ingress, tc: egress, tc_ingress: ingress in tc).";
        let (name, metric, labels, help) = match self {
            Stat::XdpDrops => (
                "xdp_drops",
                "enforcer_drops_total",
                "{program=\"xdp\"}",
                DROPS,
            ),
            Stat::TcDrops => (
                "tc_drops",
                "enforcer_drops_total",
                "{program=\"tc\"}",
                DROPS,
            ),
            Stat::EventsLost => (
                "events_lost",
                "enforcer_ring_buffer_lost_total",
                "",
                "Connection events the kernel could not queue (ring buffer full).",
            ),
            Stat::FlowsAttributed => (
                "flows_attributed",
                "enforcer_flows_attributed_total",
                "",
                "Flows the kernel tied to a TLS library (every verdict).",
            ),
            Stat::BlocklistFull => (
                "blocklist_full",
                "enforcer_blocklist_insert_failures_total",
                "",
                "Denied flows that did not fit in the blocklist (dropped through the overflow table).",
            ),
            Stat::TlsStackOverflow => (
                "tls_stack_overflow",
                "enforcer_tls_stack_overflows_total",
                "",
                "TLS calls nested deeper than the per-thread call stack keeps.",
            ),
            Stat::ClientHellos => (
                "client_hellos",
                "enforcer_client_hellos_total",
                "",
                "TLS ClientHellos parsed by the egress classifier.",
            ),
            Stat::UnattributedHellos => (
                "unattributed_hellos",
                "enforcer_unattributed_client_hellos_total",
                "",
                "ClientHellos on connections no probed TLS library claimed.",
            ),
            Stat::ClientHelloDrops => (
                "client_hello_drops",
                "enforcer_client_hello_drops_total",
                "",
                "ClientHellos dropped by the egress classifier (unattributed or out of scope).",
            ),
            Stat::SockReadFailures => (
                "sock_read_failures",
                "enforcer_sock_read_failures_total",
                "",
                "Sockets a kernel hook could not read (inside a TLS call: left unattributed).",
            ),
            Stat::RandomsRecorded => (
                "randoms_recorded",
                "enforcer_hello_randoms_recorded_total",
                "",
                "Outputs of the libraries' random sources recorded as possible hello randoms.",
            ),
            Stat::RandomsUnreadable => (
                "randoms_unreadable",
                "enforcer_hello_randoms_unreadable_total",
                "",
                "Outputs of the libraries' random sources that could not be read.",
            ),
            Stat::HellosByRandom => (
                "hellos_by_random",
                "enforcer_hellos_attributed_by_random_total",
                "",
                "TLS hellos attributed to a library by the random it made.",
            ),
            Stat::HellosSplit => (
                "hellos_split",
                "enforcer_hellos_split_total",
                "",
                "TLS hellos whose first 43 bytes came in more than one segment.",
            ),
            Stat::HelloEventsLost => (
                "hello_events_lost",
                "enforcer_hello_events_lost_total",
                "",
                "Hello events the kernel could not queue (hello ring buffer full).",
            ),
            Stat::TcIngressDrops => (
                "tc_ingress_drops",
                "enforcer_drops_total",
                "{program=\"tc_ingress\"}",
                DROPS,
            ),
            Stat::ServerHellosHeld => (
                "server_hellos_held",
                "enforcer_server_hellos_held_total",
                "",
                "ServerHellos dropped to wait for their flow's JA4 verdict (sent again by TCP).",
            ),
            Stat::CgroupDrops => (
                "cgroup_drops",
                "enforcer_drops_total",
                "{program=\"cgroup\"}",
                DROPS,
            ),
            Stat::HostNestedDrops => (
                "host_nested_drops",
                "enforcer_host_nested_drops_total",
                "",
                "Segments the host layer dropped unjudged while another run of its judge was in \
                 progress on the CPU (sent again by TCP).",
            ),
        };
        Shown {
            name,
            metric,
            labels,
            help,
        }
    }
}
