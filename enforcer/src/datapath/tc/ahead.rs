//! What runs before our programs on an interface's hooks, and can end a packet's way through
//! the hook before ours sees it (issue 16, item 3):
//!
//! - **tcx programs** (Linux 6.6+, `BPF_TCX_INGRESS` / `BPF_TCX_EGRESS` links, what Cilium
//!   attaches): the kernel runs every tcx program of a hook before any classic filter, and one
//!   that returns anything but `TCX_NEXT` ends the hook there (`sch_handle_egress`: `tcx_run`,
//!   then `tc_run` only on `TC_ACT_UNSPEC`). A tcx program that passes every packet therefore
//!   hides them all from our classic `cls_bpf` filter.
//! - **classic filters of a lower preference** (or of ours with another handle): they run
//!   first, and a direct-action program's verdict or a matching filter's action ends the chain.
//! - **an XDP program** on an interface whose ingress we filter in tc: XDP runs before the skb
//!   exists, so what it drops, redirects or passes after rewriting is its business.
//!
//! Nothing here changes the interface: it only reads (`BPF_PROG_QUERY`, rtnetlink dumps).

use std::collections::BTreeSet;

use aya::programs::{ProgramError, SchedClassifier, tc::TcAttachType};
use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkXdp};
use serde_json::{Value, json};

use super::{FILTER_HANDLE, FILTER_PRIORITY, Hook, TcError, bpf_name, dump_filters, netlink};
use crate::datapath::iface::netlink_io;

/// Where a program or filter that runs before ours is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AheadKind {
    Xdp,
    Tcx,
    Filter,
}

impl AheadKind {
    pub fn name(self) -> &'static str {
        match self {
            AheadKind::Xdp => "xdp",
            AheadKind::Tcx => "tcx",
            AheadKind::Filter => "tc filter",
        }
    }
}

/// One program or classic filter that runs before ours on a hook.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ahead {
    pub kind: AheadKind,
    /// The BPF program's name, else the classifier's kind (`u32`, `flower`, `matchall`, ...).
    pub name: String,
    /// The BPF program's id (`bpftool prog show id N`), where the kernel gives one.
    pub id: Option<u32>,
    /// A classic filter's preference (`tc filter show ... pref N`).
    pub pref: Option<u16>,
}

impl Ahead {
    pub fn to_json(&self) -> Value {
        json!({"kind": self.kind.name(), "name": self.name, "id": self.id, "pref": self.pref})
    }
}

/// Where our program is on a hook, for [`ahead_of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ours {
    /// Native or generic XDP: alone on its hook (ingress).
    Xdp,
    /// Our classic `cls_bpf` filter (pref [`FILTER_PRIORITY`]); on an ingress hook an XDP
    /// program of the interface runs before it.
    Filter,
    /// Our tcx link, with our program's id: only tcx programs before it in the hook's order
    /// run first (and an XDP program, on ingress).
    Tcx(u32),
}

/// What runs before our program on `hook` of interface `name` (index `ifindex`). A part that
/// cannot be read is an error naming it: the caller reports "unknown", never "nothing ahead".
pub async fn ahead_of(
    handle: &rtnetlink::Handle,
    name: &str,
    ifindex: u32,
    hook: Hook,
    ours: Ours,
) -> Result<Vec<Ahead>, TcError> {
    let ingress_tc = ours != Ours::Xdp;
    let mut found = BTreeSet::new();
    if hook == Hook::Ingress
        && ingress_tc
        && let Some((prog, id)) = xdp_program(handle, ifindex).await?
    {
        found.insert(Ahead {
            kind: AheadKind::Xdp,
            name: prog,
            id: Some(id),
            pref: None,
        });
    }
    if ours == Ours::Xdp {
        return Ok(found.into_iter().collect());
    }
    let tcx = tcx_programs(name, ifindex, hook)?;
    match ours {
        Ours::Tcx(id) => found.extend(tcx.into_iter().take_while(|p| p.id != Some(id))),
        _ => {
            found.extend(tcx);
            found.extend(filters_ahead(handle, ifindex, hook).await?);
        }
    }
    // Sorted by kind (XDP, tcx, filters: the order they run in), then name.
    Ok(found.into_iter().collect())
}

/// The tcx programs on `hook`, in the kernel's order. A kernel without tcx (before 6.6) has
/// none: the query's attach type is unknown to it (`EINVAL`).
fn tcx_programs(name: &str, ifindex: u32, hook: Hook) -> Result<Vec<Ahead>, TcError> {
    let attach = match hook {
        Hook::Egress => TcAttachType::Egress,
        Hook::Ingress => TcAttachType::Ingress,
    };
    let programs = match SchedClassifier::query_tcx(name, attach) {
        Ok((_, programs)) => programs,
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL) => {
            return Ok(vec![]);
        }
        Err(err) => {
            let err = std::io::Error::other(err.to_string());
            return Err(netlink("querying the tcx programs", ifindex)(err));
        }
    };
    Ok(programs
        .iter()
        .map(|p| Ahead {
            kind: AheadKind::Tcx,
            name: p.name_as_str().unwrap_or("?").to_owned(),
            id: Some(p.id()),
            pref: None,
        })
        .collect())
}

/// Classic filters that run before ours: a lower preference, or ours with another handle (the
/// order within one preference is the classifier's). Each filter once; the per-preference
/// header the dump also sends (handle 0) only stands for filters listed with it.
async fn filters_ahead(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    hook: Hook,
) -> Result<Vec<Ahead>, TcError> {
    let filters = dump_filters(handle, ifindex, hook.parent())
        .await
        .map_err(netlink("listing tc filters", ifindex))?;
    let mut out = vec![];
    for filter in &filters {
        let pref = (filter.header.info >> 16) as u16;
        let handle_of = u32::from(filter.header.handle);
        let ours = pref == FILTER_PRIORITY
            && handle_of == FILTER_HANDLE
            && bpf_name(filter) == Some(hook.filter_name());
        if ours || handle_of == 0 || pref > FILTER_PRIORITY {
            continue;
        }
        let kind = filter.attributes.iter().find_map(|a| match a {
            netlink_packet_route::tc::TcAttribute::Kind(k) => Some(k.as_str()),
            _ => None,
        });
        out.push(Ahead {
            kind: AheadKind::Filter,
            name: bpf_name(filter).or(kind).unwrap_or("?").to_owned(),
            id: None,
            pref: Some(pref),
        });
    }
    Ok(out)
}

/// The XDP program on `ifindex` (any mode), with its name.
async fn xdp_program(
    handle: &rtnetlink::Handle,
    ifindex: u32,
) -> Result<Option<(String, u32)>, TcError> {
    let mut links = handle.link().get().match_index(ifindex).execute();
    let link = links
        .try_next()
        .await
        .map_err(|e| netlink("reading the interface's XDP program", ifindex)(netlink_io(e)))?;
    let id = link
        .into_iter()
        .flat_map(|l| l.attributes)
        .find_map(|a| match a {
            LinkAttribute::Xdp(xdp) => xdp.into_iter().find_map(|x| match x {
                LinkXdp::ProgId(id) if id != 0 => Some(id),
                _ => None,
            }),
            _ => None,
        });
    Ok(id.map(|id| (program_name(id).unwrap_or_else(|| "?".to_owned()), id)))
}

/// The name of loaded program `id`, if it is still there.
fn program_name(id: u32) -> Option<String> {
    // Bounded: a host with more programs than this gets "?" for a name, never a long walk.
    aya::programs::loaded_programs()
        .take(4096)
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_the_name_status_prints() {
        let a = Ahead {
            kind: AheadKind::Tcx,
            name: "cil_to_netdev".into(),
            id: Some(42),
            pref: None,
        };
        assert_eq!(
            a.to_json(),
            json!({"kind": "tcx", "name": "cil_to_netdev", "id": 42, "pref": null})
        );
        assert_eq!(AheadKind::Filter.name(), "tc filter");
        assert_eq!(AheadKind::Xdp.name(), "xdp");
    }
}
