//! tcx links (Linux 6.6+, `--tc-attach tcx`): a classifier attached as a BPF link to an
//! interface's tcx hook, first in the hook's order (`BPF_F_BEFORE` naming no program to be
//! before): ahead of every tcx program already there (Cilium's among them) and of every classic
//! filter, which the kernel runs only after the tcx programs pass with `TCX_NEXT`. Ours returns
//! `TCX_NEXT` for what it lets through (`enforcer_common::tc_return::PASS`), so those programs
//! still see every packet. The link lives as long as its fd: it goes when the agent exits,
//! whatever way, SIGKILL included, unless it is pinned (`--pin`): then the next agent swaps its
//! program into the pinned link ([`take_over`]).

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya::programs::{SchedClassifier, tc::TcAttachType};

use super::{Hook, TcError, netlink};
use crate::datapath::{
    iface::describe,
    pin::{bpf, obj_get, obj_pin},
};

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_F_BEFORE: u32 = 1 << 3;

/// `union bpf_attr` for `BPF_LINK_CREATE` of a tcx link.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    /// `relative_fd` / `relative_id`: none, so `BPF_F_BEFORE` means "first".
    relative: u32,
    _pad: u32,
    expected_revision: u64,
}

/// `union bpf_attr` for `BPF_LINK_UPDATE`: no flags, so the old program is not checked.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Our classifier on one tcx hook of an interface; detached when dropped (unless pinned).
#[derive(Debug)]
pub struct TcxLink {
    _fd: OwnedFd,
    ifindex: u32,
    hook: Hook,
}

impl TcxLink {
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Pins the link at `path`: it then outlives this agent.
    pub fn pin(&self, path: &Path) -> Result<(), TcError> {
        obj_pin(self._fd.as_fd(), path).map_err(netlink("pinning the tcx link", self.ifindex))
    }
}

/// The tcx link an earlier run pinned at `path`, with `prog` swapped into it atomically: the
/// hook never runs without our classifier, and ours keeps its place in the hook's order. Fails
/// if the pin is not a link, or its interface went away (`ENOLINK`: the link is defunct).
pub fn take_over(
    path: &Path,
    prog: BorrowedFd<'_>,
    ifindex: u32,
    hook: Hook,
) -> Result<TcxLink, TcError> {
    let fd = obj_get(path).map_err(netlink("opening the pinned tcx link", ifindex))?;
    let mut attr = LinkUpdateAttr {
        link_fd: fd.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        ..LinkUpdateAttr::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map_err(netlink(
        "replacing the program of the pinned tcx link",
        ifindex,
    ))?;
    Ok(TcxLink {
        _fd: fd,
        ifindex,
        hook,
    })
}

/// Attaches `prog` (a `SCHED_CLS` program) first on `hook` of `ifindex`.
pub fn attach_first(prog: BorrowedFd<'_>, ifindex: u32, hook: Hook) -> Result<TcxLink, TcError> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: match hook {
            Hook::Egress => BPF_TCX_EGRESS,
            Hook::Ingress => BPF_TCX_INGRESS,
        },
        flags: BPF_F_BEFORE,
        ..LinkCreateAttr::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) if !supported() => TcError::TcxUnsupported {
            iface: describe(ifindex),
        },
        _ => netlink("attaching the tcx link", ifindex)(e),
    })?;
    // SAFETY: a fresh link fd, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok(TcxLink {
        _fd: fd,
        ifindex,
        hook,
    })
}

/// Whether this kernel has tcx hooks: a query of loopback's egress hook succeeds (before 6.6
/// the attach type is unknown: `EINVAL`).
pub fn supported() -> bool {
    SchedClassifier::query_tcx("lo", TcAttachType::Egress).is_ok()
}
