//! Figure 3's host-layer rows (`--host-layer cgroup`): what the cgroup_skb egress program costs
//! per packet, against an empty cgroup_skb program measured in the same rounds. It runs for
//! every packet of every socket on the host, so its no-match path is the figure that matters.

use std::net::SocketAddr;

use anyhow::{Result, bail};

use super::Ctx;
use crate::bench::{
    agent::ENFORCE_OPENSSL_ONLY,
    bpf,
    report::{Better, Metric},
};

/// What a cgroup_skb program returns to let a packet go, and to drop it.
const PASS: u32 = 1;
const DROP: u32 = 0;

/// The rows, one metric per address family: an empty program, our no-match path with nothing
/// blocked, with the blocklist looked up, and the drop path.
pub fn host_layer(ctx: &Ctx, iface: &str, repeat: u32, runs: usize) -> Result<Vec<Metric>> {
    let agent = ctx.agent_with(&[iface], ENFORCE_OPENSSL_ONLY, &["--host-layer", "cgroup"])?;
    let held = bpf::held_by(agent.pid())?;
    let prog = held.prog_named(bpf::PROG_TYPE_CGROUP_SKB, "enforcer_cg_egr")?;
    let empty = bpf::Prog::trivial(bpf::PROG_TYPE_CGROUP_SKB, 1)?;
    let blocklist = held.blocklist()?;
    let blocklist_held = held.blocklist_held()?;
    let set_held = |on: u64| blocklist_held.insert(&1u32.to_ne_bytes(), &on.to_ne_bytes());
    let families: [(&str, SocketAddr, SocketAddr, SocketAddr); 2] = [
        (
            "IPv4",
            "192.0.2.1:40010".parse()?,
            "192.0.2.1:40011".parse()?,
            "198.51.100.1:443".parse()?,
        ),
        (
            "IPv6",
            "[2001:db8::1]:40010".parse()?,
            "[2001:db8::1]:40011".parse()?,
            "[2001:db8::2]:443".parse()?,
        ),
    ];
    for (_, local, _, remote) in &families {
        blocklist.insert(&bpf::flow_key(*local, *remote), &[1])?;
    }
    let result = (|| -> Result<Vec<Metric>> {
        let mut metrics = vec![];
        for (fam, local, other, remote) in &families {
            // cgroup_skb test runs take an Ethernet frame and start the program at its IP header.
            let no_match = bpf::tcp_frame(*other, *remote, 64);
            let drop = bpf::tcp_frame(*local, *remote, 64);
            let cases = [
                (&empty, &no_match, PASS, 0),
                (&prog, &no_match, PASS, 0),
                (&prog, &no_match, PASS, 1),
                (&prog, &drop, DROP, 1),
            ];
            let mut s = [vec![], vec![], vec![], vec![]];
            // Interleaved: every case once per round.
            for _ in 0..runs {
                for (i, (p, pkt, want, lookup)) in cases.iter().enumerate() {
                    set_held(*lookup)?;
                    let (rv, ns) = p.test_run(pkt, repeat)?;
                    if rv != *want {
                        bail!("cgroup_skb {fam}: case {i} returned {rv}, expected {want}");
                    }
                    s[i].push(f64::from(ns));
                }
            }
            let mut m = Metric::new(
                &format!("cgroup_skb host layer (egress), {fam}: time per packet"),
                "ns",
                Better::Lower,
                true,
            );
            let [a, b, c, d] = s;
            m.row("baseline: empty cgroup_skb program", a);
            m.row(super::packets::NO_MATCH_EMPTY, b);
            m.row(super::packets::NO_MATCH_HOLDING, c);
            m.row("enforcer, drop path (4-tuple in BLOCKLIST)", d);
            metrics.push(m);
        }
        Ok(metrics)
    })();
    // Back on for good, as the agent's own blocks would leave it (sticky).
    set_held(1)?;
    for (_, local, _, remote) in &families {
        let _ = blocklist.remove(&bpf::flow_key(*local, *remote));
    }
    agent.stop_timed(std::time::Duration::from_secs(600));
    result
}
