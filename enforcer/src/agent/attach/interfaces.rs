//! The blocklist filters on the interfaces: on ingress XDP or the tc ingress classifier (chosen
//! per interface by `--ingress`, see [`IngressChoice`]; an earlier run's pinned form is taken
//! over as it is), the tc classifier on egress.

use std::{
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{
        ProgramFd, SchedClassifier, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use tracing::{info, warn};

use crate::{
    agent::layers,
    datapath::{
        offer_readers,
        pin::{self, PinDir},
        posture_readers,
        tc::{self, Hook, Ours},
    },
};

/// `--ingress`: where arriving packets of blocked flows are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressChoice {
    /// tc on virtual devices (veth, bridges, tunnels, loopback) and on NICs whose driver has no
    /// native XDP; native XDP on the others.
    Auto,
    /// XDP everywhere: native where the driver has it, else generic (skb) mode.
    Xdp,
    /// The tc ingress classifier everywhere.
    Tc,
}

/// How `enforcer status` names the egress (and tc ingress) classifier's attachment.
pub const NETLINK_FORM: &str = "tc cls_bpf (netlink)";
pub const TCX_FORM: &str = "tcx (first)";

/// `--tc-attach`: how the classifiers are put on their hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    /// A `cls_bpf` filter at preference 50 on a clsact qdisc, over rtnetlink: runs after every
    /// tcx program of the hook and after classic filters of a lower preference.
    Netlink,
    /// A tcx link (Linux 6.6+), first on the hook: before every other tcx program and every
    /// classic filter. Not with `--pin` yet.
    Tcx,
    /// tcx where the kernel has it, else netlink.
    Auto,
}

impl TcAttach {
    /// Whether the classifiers go on as tcx links, on this kernel and with `--pin` or not
    /// (`auto` keeps classic filters with `--pin`: the form a pinned run's successor finds).
    pub fn tcx(self, pinned: bool) -> Result<bool> {
        match self {
            TcAttach::Netlink => Ok(false),
            TcAttach::Tcx if !tc::tcx::supported() => bail!(
                "--tc-attach tcx: this kernel has no tcx hooks (Linux 6.6+); use --tc-attach netlink"
            ),
            TcAttach::Tcx => Ok(true),
            TcAttach::Auto => Ok(!pinned && tc::tcx::supported()),
        }
    }
}

/// How one interface's ingress is filtered, as `enforcer status` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressForm {
    /// An earlier run's pinned XDP link, our program swapped in (its mode is the earlier run's).
    XdpPinned,
    XdpNative,
    XdpGeneric,
    Tc,
}

impl IngressForm {
    pub fn name(self) -> &'static str {
        match self {
            IngressForm::XdpPinned => "xdp (pinned link)",
            IngressForm::XdpNative => "xdp native",
            IngressForm::XdpGeneric => "xdp generic",
            IngressForm::Tc => "tc",
        }
    }
}

/// What this run put on the interfaces so far: undone by the caller if the start fails (the XDP
/// links that are not pinned belong to the object and go with it).
#[derive(Default)]
pub struct Attached {
    pub filters: Vec<tc::Filter>,
    /// `--tc-attach tcx`: our links, detached when dropped.
    pub tcx: Vec<tc::TcxLink>,
    /// The classifiers as attached (set by [`attach_tc`]).
    pub classifiers: Option<Placed>,
    pub pinned: Vec<PathBuf>,
    /// The ingress form of each interface, in `--iface` order.
    pub ingress: Vec<(String, IngressForm)>,
}

/// The classifiers [`attach_tc`] puts on the interfaces.
pub struct Classifiers {
    egress: ProgramFd,
    /// Loaded only when some interface takes its ingress in tc.
    ingress: Option<ProgramFd>,
    /// The programs' ids (`bpftool prog show id N`): egress, then ingress.
    ids: (u32, Option<u32>),
}

/// Where the classifiers went: their program ids, and whether as tcx links.
#[derive(Clone, Copy, Debug)]
pub struct Placed {
    pub egress_id: u32,
    pub ingress_id: Option<u32>,
    pub tcx: bool,
}

/// XDP on the interfaces whose ingress is XDP; loads the classifiers for [`attach_tc`].
/// Synchronous: the object is locked for it, and not across an `await`.
pub fn attach_xdp(
    ebpf: &mut Ebpf,
    ifaces: &[(String, u32)],
    choice: IngressChoice,
    pin: Option<&PinDir>,
    attached: &mut Attached,
) -> Result<Classifiers> {
    let mut xdp_program: Option<&'static str> = None;
    for (name, index) in ifaces {
        let pinned = pinned_form(pin, *index);
        if let Some(form) = pinned
            && form_differs(choice, form)
        {
            warn!(iface = %name, ingress = form.name(), "ingress stays as the pinned earlier run has it; `enforcer detach --pin DIR` first to change it");
        }
        let tc = match pinned {
            Some(form) => form == IngressForm::Tc,
            None => {
                choice == IngressChoice::Tc || (choice == IngressChoice::Auto && is_virtual(name))
            }
        };
        if tc {
            attached.ingress.push((name.clone(), IngressForm::Tc));
            continue;
        }
        let loaded = match xdp_program {
            Some(loaded) => loaded,
            // Loaded once, for the first interface that takes it.
            None => {
                let loaded = load_ingress(ebpf)?;
                posture_readers::load_for(ebpf, loaded)?;
                offer_readers::load_for(ebpf, loaded)?;
                *xdp_program.insert(loaded)
            }
        };
        let form = attach_one(program(ebpf, loaded)?, name, *index, choice, pin, attached)?;
        attached.ingress.push((name.clone(), form));
    }
    let (egress, egress_id) = load_classifier(ebpf, EGRESS_TC)?;
    let (ingress, ingress_id) = match attached.ingress.iter().any(|(_, f)| *f == IngressForm::Tc) {
        true => {
            let (fd, id) = load_classifier(ebpf, INGRESS_TC)?;
            (Some(fd), Some(id))
        }
        false => (None, None),
    };
    Ok(Classifiers {
        egress,
        ingress,
        ids: (egress_id, ingress_id),
    })
}

/// One interface's XDP: the pinned link taken over, or native, then generic (`--ingress xdp`)
/// or nothing (`auto`: the tc classifier does it, see [`attach_tc`]).
fn attach_one(
    xdp: &mut Xdp,
    name: &str,
    index: u32,
    choice: IngressChoice,
    pin: Option<&PinDir>,
    attached: &mut Attached,
) -> Result<IngressForm> {
    if let Some(dir) = pin
        && dir.xdp_path(index).exists()
    {
        // The earlier run's link: our program takes its place in it, atomically.
        let link = PinnedLink::from_pin(dir.xdp_path(index))
            .with_context(|| format!("opening the pinned XDP link of {name}"))?;
        let link = XdpLink::try_from(FdLink::from(link))
            .with_context(|| format!("pinned XDP link of {name}"))?;
        xdp.attach_to_link(link)
            .with_context(|| format!("replacing the program of the pinned XDP link of {name}"))?;
        info!(iface = %name, "XDP: took over the pinned link");
        return Ok(IngressForm::XdpPinned);
    }
    let (id, form) = match xdp.attach_to_if_index(index, XdpMode::Driver) {
        Ok(id) => (id, IngressForm::XdpNative),
        Err(native) if choice == IngressChoice::Auto => {
            // Generic XDP runs on the skb like tc, after linearizing it: tc costs less there.
            info!(iface = %name, "no native XDP ({native}): ingress in tc");
            return Ok(IngressForm::Tc);
        }
        Err(native) => {
            let id = xdp.attach_to_if_index(index, XdpMode::Skb).with_context(|| {
                format!("attaching XDP to {name} failed (native: {native}); if another XDP program is attached, see `ip link show {name}`")
            })?;
            (id, IngressForm::XdpGeneric)
        }
    };
    if let Some(dir) = pin {
        let link: FdLink = xdp.take_link(id)?.try_into().with_context(|| {
            format!("XDP on {name} is not a bpf link (kernel < 5.9?): cannot pin it")
        })?;
        let path = dir.xdp_path(index);
        // Pinned, the link outlives the fd we drop here.
        link.pin(&path)
            .with_context(|| format!("pinning the XDP link of {name} at {}", path.display()))?;
        attached.pinned.push(path);
    }
    Ok(form)
}

/// The egress classifier on every interface, the ingress one where [`attach_xdp`] chose tc
/// (replacing our earlier run's filters when pinned, else after removing filters a killed agent
/// left); as tcx links first on their hooks when `tcx`.
pub async fn attach_tc(
    handle: &rtnetlink::Handle,
    ifaces: &[(String, u32)],
    classifiers: &Classifiers,
    pin: Option<&PinDir>,
    tcx: bool,
    attached: &mut Attached,
) -> Result<()> {
    attached.classifiers = Some(Placed {
        egress_id: classifiers.ids.0,
        ingress_id: classifiers.ids.1,
        tcx,
    });
    for (name, index) in ifaces {
        let form = attached
            .ingress
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f);
        let mut hooks = vec![(Hook::Egress, &classifiers.egress)];
        if let (Some(IngressForm::Tc), Some(fd)) = (form, classifiers.ingress.as_ref()) {
            hooks.push((Hook::Ingress, fd));
        }
        if pin.is_none() {
            // Both hooks, whatever this run's ingress form: a killed agent may have run the
            // other form (its tc ingress filter would stay beside our XDP program).
            for (hook, removed) in tc::remove_ours(handle, *index).await {
                let stale = removed?;
                if stale > 0 {
                    warn!(iface = %name, hook = hook.name(), stale, "removed tc filters left by an earlier agent");
                }
            }
        }
        for (hook, fd) in hooks.iter().copied() {
            if tcx {
                let link = tcx_link(fd.as_fd(), name, *index, hook, pin, attached)?;
                attached.tcx.push(link);
                continue;
            }
            let filter_name = hook.filter_name();
            let filter = match pin {
                Some(_) => tc::replace(handle, *index, hook, fd.as_fd(), filter_name).await?,
                None => tc::attach(handle, *index, hook, fd.as_fd(), filter_name).await?,
            };
            attached.filters.push(filter);
            if let (Hook::Ingress, Some(dir)) = (hook, pin) {
                // The mark `enforcer detach` finds the interface by (tc filters have no pin).
                let path = dir.pin_tc_ingress(*index, fd.as_fd())?;
                attached.pinned.push(path);
            }
        }
        if let Some(dir) = pin {
            // Ours are on: what an earlier run of the other form pinned goes now (no gap), or
            // both forms of our classifier would run.
            let held: Vec<Hook> = match tcx {
                true => hooks.iter().map(|(hook, _)| *hook).collect(),
                false => vec![],
            };
            switch_form(handle, dir, name, *index, &held).await;
        }
        let ingress = form.map_or("?", IngressForm::name);
        let egress = if tcx { TCX_FORM } else { NETLINK_FORM };
        info!(iface = %name, ingress, egress, pinned = pin.is_some(), "filters attached");
    }
    Ok(())
}

/// The classifier `prog` on `hook` of the interface as a tcx link first on the hook; with
/// `--pin`, the earlier run's pinned link taken over (else a new one pinned).
fn tcx_link(
    prog: BorrowedFd<'_>,
    name: &str,
    index: u32,
    hook: Hook,
    pin: Option<&PinDir>,
    attached: &mut Attached,
) -> Result<tc::tcx::TcxLink> {
    let Some(dir) = pin else {
        return Ok(tc::tcx::attach_first(prog, index, hook)?);
    };
    let path = dir.tcx_path(index, hook == Hook::Egress);
    if path.exists() {
        match tc::tcx::take_over(&path, prog, index, hook) {
            Ok(link) => {
                info!(iface = %name, hook = hook.name(), "tcx: took over the pinned link");
                return Ok(link);
            }
            // Defunct (its interface was deleted and made again) or not a link: a new one.
            Err(err) => {
                warn!(iface = %name, hook = hook.name(), "the pinned tcx link cannot be taken over ({err}): attaching a new one");
                pin::unpin(&path)?;
            }
        }
    }
    let link = tc::tcx::attach_first(prog, index, hook)?;
    link.pin(&path)?;
    attached.pinned.push(path);
    Ok(link)
}

/// With `--pin`, after ours are attached: removes what an earlier run left on the interface that
/// this run does not hold. `tcx_held`: the hooks this run holds tcx links on (none when it uses
/// classic filters). A tcx run removes the classic filters and the tc ingress program pin of an
/// earlier netlink run; any run unpins (detaches) the pinned tcx links of hooks it does not hold
/// (all of them after a switch to netlink, the ingress one after a switch to XDP ingress).
async fn switch_form(
    handle: &rtnetlink::Handle,
    dir: &PinDir,
    name: &str,
    index: u32,
    tcx_held: &[Hook],
) {
    if !tcx_held.is_empty() {
        for (hook, removed) in tc::remove_ours(handle, index).await {
            match removed {
                Ok(0) => {}
                Ok(n) => {
                    info!(iface = %name, hook = hook.name(), filters = n, "the earlier run's tc filters removed (this run is tcx)")
                }
                Err(err) => {
                    warn!(iface = %name, hook = hook.name(), "removing the earlier run's tc filter failed: {err}")
                }
            }
        }
        release(name, &dir.tc_ingress_path(index), "tc ingress program pin");
    }
    for hook in [Hook::Egress, Hook::Ingress] {
        if !tcx_held.contains(&hook) {
            release(name, &dir.tcx_path(index, hook == Hook::Egress), "tcx link");
        }
    }
}

/// Unpins what an earlier run left at `path`, if anything.
fn release(name: &str, path: &std::path::Path, what: &str) {
    if !path.exists() {
        return;
    }
    match pin::unpin(path) {
        Ok(()) => info!(iface = %name, path = %path.display(), "the earlier run's {what} released"),
        Err(err) => warn!(iface = %name, "releasing the earlier run's {what} failed: {err}"),
    }
}

impl Attached {
    /// What `enforcer status` reports of each hook, and where ours is on it.
    pub fn layer_specs(&self, ifaces: &[(String, u32)]) -> Vec<layers::Spec> {
        let Placed {
            egress_id,
            ingress_id,
            tcx,
        } = self.classifiers.unwrap_or(Placed {
            egress_id: 0,
            ingress_id: None,
            tcx: false,
        });
        let classifier = |id: Option<u32>| match (tcx, id) {
            (true, Some(id)) => Ours::Tcx(id),
            _ => Ours::Filter,
        };
        ifaces
            .iter()
            .map(|(name, index)| {
                let form = self
                    .ingress
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, f)| *f);
                let ingress = match form {
                    Some(IngressForm::Tc) => classifier(ingress_id),
                    _ => Ours::Xdp,
                };
                let mut ingress_form = form.map_or("?", IngressForm::name);
                if tcx && form == Some(IngressForm::Tc) {
                    ingress_form = TCX_FORM;
                }
                layers::Spec {
                    interface: name.clone(),
                    index: *index,
                    ingress_form,
                    ingress,
                    egress_form: if tcx { TCX_FORM } else { NETLINK_FORM },
                    egress: classifier(Some(egress_id)),
                }
            })
            .collect()
    }
}

/// The form an earlier run pinned on `ifindex`, if any.
fn pinned_form(pin: Option<&PinDir>, ifindex: u32) -> Option<IngressForm> {
    let dir = pin?;
    if dir.xdp_path(ifindex).exists() {
        return Some(IngressForm::XdpPinned);
    }
    // A tc ingress classifier: a netlink filter's program pin, or a tcx link.
    (dir.tc_ingress_path(ifindex).exists() || dir.tcx_path(ifindex, false).exists())
        .then_some(IngressForm::Tc)
}

fn form_differs(choice: IngressChoice, form: IngressForm) -> bool {
    match choice {
        IngressChoice::Auto => false,
        IngressChoice::Xdp => form == IngressForm::Tc,
        IngressChoice::Tc => form != IngressForm::Tc,
    }
}

/// A software device (veth, bridge, bond, tunnel, loopback): its sysfs entry is under
/// `/sys/devices/virtual`. On a veth, native XDP costs 81-86 % of TCP throughput (it copies
/// every cloned skb into an XDP buffer and turns GSO off on the peer; docs/benchmarks.md),
/// where the tc classifier costs a few per cent; the others have no native XDP at all.
fn is_virtual(name: &str) -> bool {
    std::fs::canonicalize(format!("/sys/class/net/{name}"))
        .is_ok_and(|p| p.starts_with("/sys/devices/virtual"))
}

/// Loads the frags-aware XDP program (`enforcer_ingress`), or on kernels that refuse
/// `BPF_F_XDP_HAS_FRAGS` (before 5.18) the same program without it; returns which.
fn load_ingress(ebpf: &mut Ebpf) -> Result<&'static str> {
    let Err(err) = program::<Xdp>(ebpf, INGRESS)?.load() else {
        return Ok(INGRESS);
    };
    warn!(
        "XDP without multi-buffer support ({err}; Linux 5.18+ has it): a veth whose peer \
         gets this program turns GSO/TSO off on the peer"
    );
    program::<Xdp>(ebpf, INGRESS_NOFRAGS)?.load()?;
    Ok(INGRESS_NOFRAGS)
}

/// Loads a classifier and the ServerHello reader it tail-calls; its fd and program id.
fn load_classifier(ebpf: &mut Ebpf, name: &str) -> Result<(ProgramFd, u32)> {
    let classifier: &mut SchedClassifier = program(ebpf, name)?;
    classifier.load()?;
    let fd = classifier.fd()?.try_clone()?;
    let id = classifier.info()?.id();
    posture_readers::load_for(ebpf, name)?;
    offer_readers::load_for(ebpf, name)?;
    Ok((fd, id))
}

/// The XDP programs: frags-aware, and the fallback without.
pub const INGRESS: &str = "enforcer_ingress";
pub const INGRESS_NOFRAGS: &str = "enforcer_ingress_nofrags";
/// The tc classifiers.
pub const EGRESS_TC: &str = "enforcer_egress";
pub const INGRESS_TC: &str = "enforcer_ingress_tc";

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let Some(program) = ebpf.program_mut(name) else {
        bail!("program {name} is missing from the eBPF object");
    };
    Ok(program.try_into()?)
}
