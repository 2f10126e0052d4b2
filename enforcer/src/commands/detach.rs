//! `enforcer detach --pin DIR`: removes what an agent run with `--pin DIR` left in force: its
//! pinned links (XDP, uprobes, kernel hooks: detached as their pins go), its tc filters (on the
//! interfaces of its pinned XDP links and tc ingress classifiers, and on any `--iface` given:
//! egress, and ingress), and its pinned maps
//! (blocklist, flows, ...). Run it after stopping the agent; a running agent keeps its own fds.

use std::path::Path;

use anyhow::{Context, Result};

use crate::datapath::{iface, pin, tc};

pub async fn run(dir: &Path, extra_ifaces: &[String]) -> Result<()> {
    let pin_dir = pin::PinDir::open(dir)?;
    let removed = pin::remove_all(&pin_dir)?;
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    let mut ifindexes = removed.xdp_ifindexes.clone();
    ifindexes.extend(&removed.tc_ingress_ifindexes);
    for name in extra_ifaces {
        ifindexes.push(iface::ifindex(name)?);
    }
    ifindexes.sort_unstable();
    ifindexes.dedup();
    let mut filters = 0;
    for ifindex in ifindexes {
        // An interface deleted since is not an error: its filters went with it.
        for (hook, removed) in tc::remove_ours(&handle, ifindex).await {
            match removed {
                Ok(n) => filters += n,
                Err(err) => {
                    tracing::warn!(ifindex, hook = hook.name(), "removing the tc filter: {err}")
                }
            }
        }
    }
    println!(
        "removed {} pinned links, {} pinned maps, {} tc filters; {} is gone",
        removed.links,
        removed.maps,
        filters,
        dir.display()
    );
    Ok(())
}
