//! Figure 10: a forced ring-buffer overflow: the agent is stopped (SIGSTOP) while connections
//! are made, so the kernel's event ring fills; what is lost, what is counted, what the agent
//! says, and whether enforcement (a kernel verdict) still holds meanwhile.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use enforcer_common::stat::Stat;
use enforcer_tests::Cert;

use super::{Ctx, LOOPBACK, STATS_ENTRIES, f};
use crate::bench::{
    agent::ENFORCE_OPENSSL_ONLY,
    bpf,
    process::{self},
    report::{Better, Figure, Metric, Target},
};
use crate::progress::step;

/// SIGCONT on drop: the stopped agent is resumed whatever happens (while it is stopped, a
/// process mapping a new library file waits for it).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

/// How long a denied client may hang while the agent is stopped.
const DENIED_TIMEOUT: Duration = Duration::from_secs(5);

/// Figure 10.
pub fn overflow(ctx: &Ctx) -> Result<Figure> {
    let n: usize = if ctx.quick { 2_000 } else { 6_000 };
    let n_denied = if ctx.quick { 1 } else { 5 };
    let ns = &ctx.ns;
    let cert = Cert::new(&[IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(ns.peer_v4)]);
    let (_server, _, port) = process::tls_server(&ctx.tlsperf, None, "server", LOOPBACK, 0, &cert)?;
    let peer = ns.peer_v4.to_string();
    let (_tag, tag_lines, tag_port) =
        process::tls_server(&ctx.tlsperf, Some(&ns.name), "tag", &peer, 0, &cert)?;

    let mut agent = ctx.agent(&[&ns.host_if], ENFORCE_OPENSSL_ONLY)?;
    let socket = agent.ready["control_socket"]
        .as_str()
        .context("no control_socket in the ready event")?
        .to_string();
    let held = bpf::held_by(agent.pid())?;
    let stats = held.stats(STATS_ENTRIES)?;
    // Warm-up while the agent runs: a program file the agent has not seen yet pauses its
    // process until the agent has examined it (new library files, docs/architecture.md), which
    // a stopped agent never does; after one run each, both clients' files are known.
    process::run_json(
        ctx.tlsperf()
            .args(["churn", LOOPBACK, &port.to_string(), "4", "1", "32"]),
        Duration::from_secs(60),
    )?;
    let _ = enforcer_tests::run_with_timeout(
        Command::new("gnutls-cli").args(["--insecure", "--port", &tag_port.to_string(), &peer]),
        b"GET /warm-up HTTP/1.0\r\n\r\n",
        Duration::from_secs(15),
    );
    agent.settle(Duration::from_millis(300), Duration::from_secs(5));
    let _ = tag_lines.drain();
    let events0 = agent.inner.events().len();
    let lost0 = stats.percpu_sum(Stat::EventsLost as u32)?;
    let attr0 = stats.percpu_sum(Stat::FlowsAttributed as u32)?;

    step!("bench: figure 10, {n} connections with the agent stopped (SIGSTOP)");
    let mut denied_secs = vec![];
    let (made, denied_completed) = {
        let _stopped = Stopped::new(agent.pid());
        let v = process::run_json(
            ctx.tlsperf().args([
                "churn",
                LOOPBACK,
                &port.to_string(),
                &n.to_string(),
                "4",
                "32",
            ]),
            Duration::from_secs(120),
        )?;
        let made = f(&v, "connections")?;
        // Denied clients while nobody reads the ring: the verdict is the kernel's.
        for i in 0..n_denied {
            let o = enforcer_tests::run_with_timeout(
                Command::new("gnutls-cli").args([
                    "--insecure",
                    "--port",
                    &tag_port.to_string(),
                    &peer,
                ]),
                format!("GET /gnutls-stopped-{i} HTTP/1.0\r\n\r\n").as_bytes(),
                DENIED_TIMEOUT,
            );
            denied_secs.push(o.elapsed.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(300));
        let completed = tag_lines
            .drain()
            .iter()
            .filter(|l| l.starts_with("conn ") && l.split_whitespace().nth(2) == Some("1"))
            .count();
        (made, completed)
    };
    agent.settle(Duration::from_millis(800), Duration::from_secs(20));
    let lost = stats.percpu_sum(Stat::EventsLost as u32)? - lost0;
    let attributed = stats.percpu_sum(Stat::FlowsAttributed as u32)? - attr0;
    let received = agent.inner.events()[events0..]
        .iter()
        .filter(|v| v["type"] == "connection")
        .count();
    let status = Command::new(&ctx.enforcer)
        .args(["status", "--socket", &socket, "--json"])
        .output()
        .context("enforcer status")?;
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)
        .with_context(|| format!("enforcer status printed {:?}", status.stdout))?;
    let said = status["counters"]["events_lost"].as_u64();
    let stderr_mentions = agent
        .inner
        .stderr()
        .lines()
        .filter(|l| l.to_lowercase().contains("lost"))
        .count();
    agent.stop_timed(Duration::from_secs(600));
    if lost == 0 {
        bail!(
            "{made} connections with the agent stopped lost no event: the ring buffer was not \
             filled, the overflow was not forced"
        );
    }

    let mut m = Metric::new(
        "events while the ring buffer overflowed",
        "events",
        Better::Neither,
        false,
    );
    m.row("connections made (both ends OpenSSL)", vec![made]);
    m.row(
        "FLOWS_ATTRIBUTED (kernel: verdicts taken)",
        vec![attributed as f64],
    );
    m.row(
        "connection events received by the bench",
        vec![received as f64],
    );
    m.row(
        "EVENTS_LOST (kernel counter, read by the bench)",
        vec![lost as f64],
    );
    m.row(
        "events_lost as `enforcer status --json` says",
        vec![said.map_or(f64::NAN, |x| x as f64)],
    );
    let mut t = Metric::new(
        "denied gnutls-cli while the agent is stopped: spawn to exit",
        "s",
        Better::Neither,
        false,
    );
    t.row(
        &format!("each client (killed at {} s)", DENIED_TIMEOUT.as_secs()),
        denied_secs.clone(),
    );
    let mut fig = Figure {
        id: 10,
        title: "Forced ring-buffer overflow: what is lost, counted and reported".into(),
        method: format!(
            "The agent (enforce mode, OpenSSL allowed, on the veth) is stopped with SIGSTOP, so \
             nothing reads its 256 KiB event ring; `tlsperf churn` makes {n} OpenSSL connections \
             over loopback (2 connection events each, one per end), then {n_denied} denied \
             `gnutls-cli` connections go across the veth to a `tlsperf tag` peer. Then SIGCONT, \
             and the bench compares the kernel's counters (STATS, by map id) with the events \
             the agent printed and with `enforcer status`."
        ),
        metrics: vec![m, t],
        ..Default::default()
    };
    let accounted = received as u64 + lost;
    fig.targets.push(Target {
        what: "every verdict is either reported or counted as lost".into(),
        met: Some(accounted >= attributed && said == Some(lost + lost0)),
        detail: format!(
            "{attributed} verdicts, {received} events + {lost} lost = {accounted}; `enforcer \
             status` says events_lost {}",
            said.map_or("(missing)".into(), |x| x.to_string())
        ),
    });
    fig.targets.push(Target {
        what: "enforcement holds while no event is read (denied clients refused)".into(),
        met: Some(denied_completed == 0),
        detail: format!("{denied_completed} of {n_denied} denied gnutls-cli connections completed"),
    });
    fig.notes.push(format!(
        "What the agent says: `enforcer status` (and `/metrics`, \
         `enforcer_ring_buffer_lost_total`) report the counter; the agent's own log has {} \
         line(s) mentioning a loss.",
        stderr_mentions
    ));
    Ok(fig)
}
