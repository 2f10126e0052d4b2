//! Taking over what an earlier run left pinned (`--pin DIR` used before).

use anyhow::Result;
use tracing::{info, warn};

use crate::datapath::{
    Datapath,
    pin::{self, PinDir},
    tc,
};

/// What an earlier run left pinned, read before this run attaches.
pub struct Earlier {
    links: Vec<pin::PinnedLink>,
}

impl Earlier {
    /// `max_lib_id`: the largest library id the earlier runs left (ours continue after it).
    pub fn read(dir: &PinDir, max_lib_id: u32) -> Result<Earlier> {
        let links = dir.pinned_links()?;
        if !links.is_empty() {
            info!(links = links.len(), max_lib_id, pin = %dir.root().display(), "taking over the state an earlier agent pinned");
        }
        Ok(Earlier { links })
    }

    /// Once this run is attached: the earlier run's links go (its XDP links, tcx links and tc
    /// ingress pins on our interfaces were taken over and stay; those on other interfaces go
    /// with their tc filters), and the policy of its libraries that no flow refers to any more
    /// (action, server-name scope).
    pub async fn retire(
        &self,
        dir: &PinDir,
        handle: &rtnetlink::Handle,
        ifaces: &[(String, u32)],
        datapath: &Datapath,
    ) {
        let mut removed = 0;
        for link in &self.links {
            // A tcx link on one of our interfaces is this run's now (taken over in place, or
            // released already if this run uses tc filters: `interfaces::attach_tc`).
            if let Some(ifindex) = link.tcx_ifindex
                && ifaces.iter().any(|(_, i)| *i == ifindex)
            {
                continue;
            }
            if let Some(ifindex) = link.xdp_ifindex.or(link.tc_ingress_ifindex) {
                if ifaces.iter().any(|(_, i)| *i == ifindex) {
                    continue;
                }
                for (hook, removed) in tc::remove_ours(handle, ifindex).await {
                    if let Err(err) = removed {
                        warn!(
                            ifindex,
                            hook = hook.name(),
                            "removing the earlier run's tc filter failed: {err}"
                        );
                    }
                }
            }
            match pin::unpin(&link.path) {
                Ok(()) => removed += 1,
                Err(err) => warn!("removing an earlier run's link failed: {err}"),
            }
        }
        datapath.retire_earlier();
        if removed > 0 {
            info!(links = removed, pin = %dir.root().display(), "the earlier run's links released");
        }
    }
}
