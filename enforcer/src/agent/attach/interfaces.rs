//! The blocklist filters on the interfaces: XDP on ingress (taking over an earlier run's pinned
//! link where there is one), the tc classifier on egress.

use std::{os::fd::AsFd, path::PathBuf};

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

use crate::datapath::{
    pin::PinDir,
    tc::{self, FILTER_NAME},
};

/// What this run put on the interfaces so far: undone by the caller if the start fails (the XDP
/// links that are not pinned belong to the object and go with it).
#[derive(Default)]
pub struct Attached {
    pub filters: Vec<tc::EgressFilter>,
    pub pinned: Vec<PathBuf>,
}

/// XDP on every interface; returns the loaded egress classifier for [`attach_tc`]. Synchronous:
/// the object is locked for it, and not across an `await`.
pub fn attach_xdp(
    ebpf: &mut Ebpf,
    ifaces: &[(String, u32)],
    pin: Option<&PinDir>,
    attached: &mut Attached,
) -> Result<ProgramFd> {
    let xdp = load_ingress(ebpf)?;
    for (name, index) in ifaces {
        if let Some(dir) = pin
            && dir.xdp_path(*index).exists()
        {
            // The earlier run's link: our program takes its place in it, atomically.
            let link = PinnedLink::from_pin(dir.xdp_path(*index))
                .with_context(|| format!("opening the pinned XDP link of {name}"))?;
            let link = XdpLink::try_from(FdLink::from(link))
                .with_context(|| format!("pinned XDP link of {name}"))?;
            xdp.attach_to_link(link).with_context(|| {
                format!("replacing the program of the pinned XDP link of {name}")
            })?;
            info!(iface = %name, "XDP: took over the pinned link");
            continue;
        }
        let id = match xdp.attach_to_if_index(*index, XdpMode::Default) {
            Ok(id) => id,
            Err(native) => xdp.attach_to_if_index(*index, XdpMode::Skb).with_context(|| {
                format!("attaching XDP to {name} failed (native: {native}); if another XDP program is attached, see `ip link show {name}`")
            })?,
        };
        if let Some(dir) = pin {
            let link: FdLink = xdp.take_link(id)?.try_into().with_context(|| {
                format!("XDP on {name} is not a bpf link (kernel < 5.9?): cannot pin it")
            })?;
            let path = dir.xdp_path(*index);
            // Pinned, the link outlives the fd we drop here.
            link.pin(&path)
                .with_context(|| format!("pinning the XDP link of {name} at {}", path.display()))?;
            attached.pinned.push(path);
        }
    }
    let classifier: &mut SchedClassifier = program(ebpf, "enforcer_egress")?;
    classifier.load()?;
    Ok(classifier.fd()?.try_clone()?)
}

/// The egress classifier `fd` on every interface (replacing our earlier run's filter when
/// pinned, else after removing filters a killed agent left).
pub async fn attach_tc(
    handle: &rtnetlink::Handle,
    ifaces: &[(String, u32)],
    fd: &ProgramFd,
    pinned: bool,
    attached: &mut Attached,
) -> Result<()> {
    for (name, index) in ifaces {
        if pinned {
            let filter = tc::replace_egress(handle, *index, fd.as_fd(), FILTER_NAME).await?;
            attached.filters.push(filter);
            info!(iface = %name, "XDP (ingress) and tc (egress) attached, pinned");
            continue;
        }
        let stale = tc::remove_stale(handle, *index, FILTER_NAME).await?;
        if stale > 0 {
            warn!(iface = %name, stale, "removed tc filters left by an earlier agent");
        }
        let filter = tc::attach_egress(handle, *index, fd.as_fd(), FILTER_NAME).await?;
        attached.filters.push(filter);
        info!(iface = %name, "XDP (ingress) and tc (egress) attached");
    }
    Ok(())
}

/// The frags-aware XDP program (`enforcer_ingress`), or on kernels that refuse
/// `BPF_F_XDP_HAS_FRAGS` (before 5.18) the same program without it.
fn load_ingress(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let frags = program::<Xdp>(ebpf, INGRESS)?.load();
    let name = match frags {
        Ok(()) => INGRESS,
        Err(err) => {
            warn!(
                "XDP without multi-buffer support ({err}; Linux 5.18+ has it): a veth whose peer \
                 gets this program turns GSO/TSO off on the peer"
            );
            let fallback: &mut Xdp = program(ebpf, INGRESS_NOFRAGS)?;
            fallback.load()?;
            INGRESS_NOFRAGS
        }
    };
    program(ebpf, name)
}

/// The XDP programs: frags-aware, and the fallback without.
pub const INGRESS: &str = "enforcer_ingress";
pub const INGRESS_NOFRAGS: &str = "enforcer_ingress_nofrags";

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let Some(program) = ebpf.program_mut(name) else {
        bail!("program {name} is missing from the eBPF object");
    };
    Ok(program.try_into()?)
}
