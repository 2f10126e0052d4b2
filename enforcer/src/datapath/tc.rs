//! Attachment of a BPF classifier to a clsact hook (egress, and ingress for `--ingress tc`): a
//! `clsact` qdisc plus a direct-action `cls_bpf` filter, made over rtnetlink (neither aya's tc
//! helpers nor the `tc` command).
//!
//! The equivalent commands: `tc qdisc add dev X clsact` and
//! `tc filter add dev X egress pref 50 handle 1 protocol all bpf direct-action fd N name NAME`
//! (`ingress` in place of `egress` for the ingress hook).
//! netlink-packet-route 0.34 has typed `cls_bpf` options (`TcFilterBpfOption`), so no raw
//! `DefaultNla` is needed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpf, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};

use crate::datapath::iface::{describe, netlink_io};

mod ahead;
pub mod tcx;
pub use ahead::{Ahead, AheadKind, Ours, ahead_of};
pub use tcx::TcxLink;

/// Priority ("pref") of our filters, so they are easy to find:
/// `tc filter show dev X egress pref 50`. Lower runs first: this is below the priorities the
/// kernel hands out to filters added without one (from 0xC000 downwards), so we see packets
/// before them, and it stays clear of 1, which other BPF tools commonly take.
pub const FILTER_PRIORITY: u16 = 50;
/// Handle of our filter within [`FILTER_PRIORITY`].
pub const FILTER_HANDLE: u32 = 1;
/// Name of our egress filter; also the prefix [`remove_stale`] looks for after a SIGKILL.
pub const FILTER_NAME: &str = "enforcer_egress";
/// Name of our ingress filter (`--ingress tc`).
pub const INGRESS_FILTER_NAME: &str = "enforcer_ingress";

const ETH_P_ALL: u16 = 0x0003;
const CLSACT: &str = "clsact";
/// The clsact qdisc takes the ingress qdisc's place (parent ffff:fff1), with handle ffff:0.
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// Parents of the filters on clsact's two hooks: ffff:fff3 (egress) and ffff:fff2 (ingress).
const EGRESS: u32 = 0xffff_fff3;
const INGRESS: u32 = 0xffff_fff2;

/// One of clsact's two hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Egress,
    Ingress,
}

impl Hook {
    /// As `tc filter show dev X <hook>` names it.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Egress => "egress",
            Hook::Ingress => "ingress",
        }
    }
    /// The name our filter on this hook has.
    pub fn filter_name(self) -> &'static str {
        match self {
            Hook::Egress => FILTER_NAME,
            Hook::Ingress => INGRESS_FILTER_NAME,
        }
    }
    fn parent(self) -> u32 {
        match self {
            Hook::Egress => EGRESS,
            Hook::Ingress => INGRESS,
        }
    }
}

/// Why a tc operation failed. `iface` reads like `'eth0' (index 2)`.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("invalid tc filter name {0:?}: it must be non-empty and contain no NUL byte")]
    InvalidName(String),
    #[error(
        "interface {iface} has a classic 'ingress' qdisc, which has no egress hook and holds the \
         place of clsact: replace it with clsact (`tc qdisc del dev <iface> ingress`) and retry"
    )]
    IngressQdiscInTheWay { iface: String },
    #[error(
        "interface {iface} already has an {hook} filter pref {FILTER_PRIORITY} handle \
         {FILTER_HANDLE}: a previous agent left it behind; remove it (remove_stale) and retry"
    )]
    FilterExists { iface: String, hook: &'static str },
    #[error(
        "interface {iface}: this kernel has no tcx hooks (Linux 6.6+): use --tc-attach netlink"
    )]
    TcxUnsupported { iface: String },
    #[error("{action} on interface {iface} failed: {source}{}", hint(.source))]
    Netlink {
        action: &'static str,
        iface: String,
        #[source]
        source: io::Error,
    },
}

fn hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM) => " (needs CAP_NET_ADMIN: run as root)",
        Some(libc::ENODEV) => " (the interface is gone)",
        _ => "",
    }
}

fn netlink(action: &'static str, ifindex: u32) -> impl FnOnce(io::Error) -> TcError {
    move |source| TcError::Netlink {
        action,
        iface: describe(ifindex),
        source,
    }
}

/// Our filter on one hook of an interface. Dropping it leaves the filter in place (there is
/// no async drop): call [`Filter::detach`], or [`remove_stale`] at the next start.
#[derive(Debug)]
#[must_use = "the filter stays attached until detach() is called"]
pub struct Filter {
    ifindex: u32,
    hook: Hook,
    priority: u16,
    handle: u32,
    created_qdisc: bool,
}

impl Filter {
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    pub fn hook(&self) -> Hook {
        self.hook
    }
    /// `(priority, handle)` of the filter, as `tc filter show` prints `pref` and `handle`.
    pub fn id(&self) -> (u16, u32) {
        (self.priority, self.handle)
    }
    /// Whether [`attach`] created the clsact qdisc (and detach may remove it).
    pub fn created_qdisc(&self) -> bool {
        self.created_qdisc
    }

    /// Deletes our filter, then the clsact qdisc if we created it and no filter is left on
    /// either of its hooks. A filter already gone (interface or qdisc deleted) is not an error.
    pub async fn detach(self, handle: &rtnetlink::Handle) -> Result<(), TcError> {
        let msg = filter_msg(
            self.ifindex,
            self.hook,
            self.priority,
            self.handle,
            ETH_P_ALL,
        );
        match request(handle, RouteNetlinkMessage::DelTrafficFilter(msg), 0).await {
            Ok(()) => {}
            Err(e) if is_gone(handle, self.ifindex, &e).await => {
                tracing::warn!(iface = %describe(self.ifindex), hook = self.hook.name(), "tc filter was already gone");
                return Ok(());
            }
            Err(e) => return Err(netlink("deleting the tc filter", self.ifindex)(e)),
        }
        if !self.created_qdisc {
            return Ok(());
        }
        // Not atomic: a filter added by someone else right now would go with the qdisc.
        for hook in [EGRESS, INGRESS] {
            let left = dump_filters(handle, self.ifindex, hook).await;
            let left = left.map_err(netlink("listing filters", self.ifindex))?;
            if !left.is_empty() {
                tracing::info!(iface = %describe(self.ifindex), "other tc filters remain: keeping clsact");
                return Ok(());
            }
        }
        delete_clsact(handle, self.ifindex)
            .await
            .map_err(netlink("deleting the clsact qdisc", self.ifindex))
    }
}

/// Attaches `prog_fd` (a `BPF_PROG_TYPE_SCHED_CLS` program) to `hook` of `ifindex` as a
/// direct-action cls_bpf filter called `name`, at [`FILTER_PRIORITY`] / [`FILTER_HANDLE`], for
/// all protocols. Creates the clsact qdisc if the interface has none. Call [`remove_stale`] first.
pub async fn attach(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    hook: Hook,
    prog_fd: BorrowedFd<'_>,
    name: &str,
) -> Result<Filter, TcError> {
    add(
        handle,
        ifindex,
        hook,
        prog_fd,
        name,
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .await
}

/// Like [`attach`], but a filter already at our priority and handle (left by an earlier agent
/// that pinned its state) gets the new program in place, atomically (`NLM_F_REPLACE`): the hook
/// is never unfiltered in between. The returned filter does not own the qdisc.
pub async fn replace(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    hook: Hook,
    prog_fd: BorrowedFd<'_>,
    name: &str,
) -> Result<Filter, TcError> {
    let flags = NLM_F_CREATE | NLM_F_REPLACE;
    let mut filter = add(handle, ifindex, hook, prog_fd, name, flags).await?;
    filter.created_qdisc = false;
    Ok(filter)
}

/// Deletes our filters on both hooks of `ifindex` without a [`Filter`], egress then ingress:
/// what an agent killed with SIGKILL left, an earlier pinned run's, or what `enforcer detach`
/// removes (every filter named as ours, see [`remove_stale`]). One answer per hook, so a caller
/// may go on after one fails.
pub async fn remove_ours(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> [(Hook, Result<usize, TcError>); 2] {
    let egress = remove_stale(handle, ifindex, Hook::Egress, Hook::Egress.filter_name()).await;
    let ingress = remove_stale(handle, ifindex, Hook::Ingress, Hook::Ingress.filter_name()).await;
    [(Hook::Egress, egress), (Hook::Ingress, ingress)]
}

async fn add(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    hook: Hook,
    prog_fd: BorrowedFd<'_>,
    name: &str,
    flags: u16,
) -> Result<Filter, TcError> {
    if name.is_empty() || name.contains('\0') {
        return Err(TcError::InvalidName(name.to_owned()));
    }
    let created_qdisc = ensure_clsact(handle, ifindex).await?;
    let mut msg = filter_msg(ifindex, hook, FILTER_PRIORITY, FILTER_HANDLE, ETH_P_ALL);
    let fd = u32::try_from(prog_fd.as_raw_fd()).unwrap_or(u32::MAX); // fds are never negative
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(fd)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_owned())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    let add = RouteNetlinkMessage::NewTrafficFilter(msg);
    if let Err(e) = request(handle, add, flags).await {
        if created_qdisc {
            // Leave the interface as we found it.
            if let Err(undo) = delete_clsact(handle, ifindex).await {
                tracing::warn!(iface = %describe(ifindex), "could not remove our clsact qdisc: {undo}");
            }
        }
        return Err(match e.raw_os_error() {
            Some(libc::EEXIST) => TcError::FilterExists {
                iface: describe(ifindex),
                hook: hook.name(),
            },
            _ => netlink("adding the bpf filter", ifindex)(e),
        });
    }
    Ok(Filter {
        ifindex,
        hook,
        priority: FILTER_PRIORITY,
        handle: FILTER_HANDLE,
        created_qdisc,
    })
}

/// Deletes every cls_bpf filter on `hook` of `ifindex` whose name starts with `name_prefix`
/// (left behind by an agent killed with SIGKILL). Returns how many went.
/// An interface without a clsact qdisc has none: 0.
pub async fn remove_stale(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    hook: Hook,
    name_prefix: &str,
) -> Result<usize, TcError> {
    let filters = dump_filters(handle, ifindex, hook.parent()).await;
    let mut removed = 0;
    for filter in filters.map_err(netlink("listing tc filters", ifindex))? {
        // Handle 0 would make the kernel delete every filter of that priority.
        let ours = bpf_name(&filter).is_some_and(|n| n.starts_with(name_prefix));
        if !ours || u32::from(filter.header.handle) == 0 {
            continue;
        }
        let mut del = TcMessage::with_index(filter.header.index);
        del.header.parent = hook.parent().into();
        del.header.handle = filter.header.handle;
        del.header.info = filter.header.info; // priority << 16 | protocol, as dumped
        del.attributes
            .push(TcAttribute::Kind(TcFilterBpf::KIND.to_owned()));
        if let Some(chain) = filter.attributes.iter().find_map(|a| match a {
            TcAttribute::Chain(c) => Some(*c),
            _ => None,
        }) {
            del.attributes.push(TcAttribute::Chain(chain));
        }
        match request(handle, RouteNetlinkMessage::DelTrafficFilter(del), 0).await {
            Ok(()) => removed += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {} // someone else was faster
            Err(e) => return Err(netlink("deleting a stale tc filter", ifindex)(e)),
        }
    }
    Ok(removed)
}

/// `TCA_BPF_NAME` of a cls_bpf filter (the per-priority header the dump also sends has none).
fn bpf_name(filter: &TcMessage) -> Option<&str> {
    let options = filter.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(options) => Some(options),
        _ => None,
    })?;
    // netlink-packet-route parses options as `TcOption::Bpf` only for kind "bpf".
    options.iter().find_map(|o| match o {
        TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.as_str()),
        _ => None,
    })
}

/// A filter request on `hook`. `tcm_info` packs the priority (high 16 bits) and the
/// protocol (low 16 bits), which the kernel compares with `skb->protocol` and therefore wants in
/// network byte order (iproute2 does `htons(ETH_P_ALL)` too). On delete, the kind and the
/// protocol must match too, so another tool's filter at the same place is never removed.
fn filter_msg(ifindex: u32, hook: Hook, priority: u16, handle: u32, protocol: u16) -> TcMessage {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = hook.parent().into();
    msg.header.handle = handle.into();
    msg.header.info = (u32::from(priority) << 16) | u32::from(protocol.to_be());
    msg.attributes
        .push(TcAttribute::Kind(TcFilterBpf::KIND.to_owned()));
    msg
}

/// Creates the clsact qdisc; `Ok(false)` when a clsact qdisc was already there.
async fn ensure_clsact(handle: &rtnetlink::Handle, ifindex: u32) -> Result<bool, TcError> {
    let add = RouteNetlinkMessage::NewQueueDiscipline(clsact_msg(ifindex));
    let err = match request(handle, add, NLM_F_CREATE | NLM_F_EXCL).await {
        Ok(()) => return Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => e,
        Err(e) => return Err(netlink("creating the clsact qdisc", ifindex)(e)),
    };
    // EEXIST only says *a* qdisc holds ffff:, and a classic ingress qdisc holds it too.
    match existing_clsact_slot_kind(handle, ifindex).await {
        Ok(Some(kind)) if kind == CLSACT => Ok(false),
        Ok(Some(kind)) if kind == "ingress" => Err(TcError::IngressQdiscInTheWay {
            iface: describe(ifindex),
        }),
        Ok(_) => Err(netlink("creating the clsact qdisc", ifindex)(err)),
        Err(e) => Err(netlink("listing qdiscs", ifindex)(e)),
    }
}

/// Kind of the qdisc at ffff:fff1 (clsact or ingress) of `ifindex`, if any.
async fn existing_clsact_slot_kind(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> io::Result<Option<String>> {
    // The dump covers every interface unless the socket has strict checking on: filter here.
    let get = RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default());
    let all = dump(handle, get).await?;
    Ok(all
        .into_iter()
        .filter(|q| q.header.index == ifindex as i32 && q.header.parent == TcHandle::CLSACT)
        .find_map(|q| {
            q.attributes.into_iter().find_map(|a| match a {
                TcAttribute::Kind(kind) => Some(kind),
                _ => None,
            })
        }))
}

fn clsact_msg(ifindex: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = CLSACT_HANDLE.into();
    // With the kind set, the kernel refuses (EINVAL) to delete an ingress qdisc in its place.
    msg.attributes.push(TcAttribute::Kind(CLSACT.to_owned()));
    msg
}

async fn delete_clsact(handle: &rtnetlink::Handle, ifindex: u32) -> io::Result<()> {
    let del = RouteNetlinkMessage::DelQueueDiscipline(clsact_msg(ifindex));
    request(handle, del, 0).await
}

/// Whether a failed filter delete means our filter no longer exists: the interface (ENODEV),
/// the filter (ENOENT) or the clsact qdisc (EINVAL "parent qdisc doesn't exist") is gone.
async fn is_gone(handle: &rtnetlink::Handle, ifindex: u32, err: &io::Error) -> bool {
    match err.raw_os_error() {
        Some(libc::ENODEV | libc::ENOENT) => true,
        Some(libc::EINVAL) => {
            matches!(existing_clsact_slot_kind(handle, ifindex).await, Ok(k) if k.as_deref() != Some(CLSACT))
        }
        _ => false,
    }
}

/// All filters on one clsact hook of `ifindex`, every chain. Empty without a clsact qdisc.
async fn dump_filters(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    hook: u32,
) -> io::Result<Vec<TcMessage>> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = hook.into();
    dump(handle, RouteNetlinkMessage::GetTrafficFilter(msg)).await
}

async fn dump(handle: &rtnetlink::Handle, msg: RouteNetlinkMessage) -> io::Result<Vec<TcMessage>> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut replies = handle.clone().request(req).map_err(netlink_io)?;
    let mut out = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewTrafficFilter(m)
                | RouteNetlinkMessage::NewQueueDiscipline(m),
            ) => out.push(m),
            NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
            _ => {}
        }
    }
    Ok(out)
}

/// Sends one request with `NLM_F_ACK` and waits for the kernel's answer.
async fn request(
    handle: &rtnetlink::Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<()> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut replies = handle.clone().request(req).map_err(netlink_io)?;
    while let Some(reply) = replies.next().await {
        if let NetlinkPayload::Error(e) = reply.payload
            && e.code.is_some()
        {
            return Err(e.to_io());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
