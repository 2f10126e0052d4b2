//! Figure 4: how many bytes of a denied connection reach the peer.

use std::{
    net::IpAddr,
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use enforcer_common::stat::Stat;
use enforcer_tests::Cert;

use super::{Ctx, STATS_ENTRIES};
use crate::bench::{
    agent::ENFORCE_OPENSSL_ONLY,
    bpf,
    process::{self},
    report::{Better, Figure, Metric, Target},
};
use crate::progress::step;

const LEAK_PORT: u16 = 19443;

/// Figure 4: bytes of denied (GnuTLS) connections that reach the peer.
pub fn leak(ctx: &Ctx) -> Result<Figure> {
    let n_denied = if ctx.quick { 20 } else { 1000 };
    let n_base = if ctx.quick { 3 } else { 20 };
    let workers = 8;
    let ns = &ctx.ns;
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let (_server, lines, _) = process::tls_server(
        &ctx.tlsperf,
        Some(&ns.name),
        "count",
        &peer.to_string(),
        LEAK_PORT,
        &cert,
    )?;
    let marker: Vec<u8> =
        b"LEAK-MARKER-application-data-that-must-never-reach-the-peer-0123\n".to_vec();

    // (client elapsed seconds, client succeeded)
    let clients = |n: usize| -> Vec<(f64, bool)> {
        let next = AtomicUsize::new(0);
        let out = Mutex::new(vec![]);
        thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let o = enforcer_tests::run_with_timeout(
                            Command::new("gnutls-cli").args([
                                "--insecure",
                                "--port",
                                &LEAK_PORT.to_string(),
                                &peer.to_string(),
                            ]),
                            &marker,
                            Duration::from_secs(15),
                        );
                        out.lock()
                            .expect("not poisoned")
                            .push((o.elapsed.as_secs_f64(), o.success()));
                    }
                });
            }
        });
        out.into_inner().expect("not poisoned")
    };
    // "conn <raw_handshake> <raw_after> <app> <ok>" lines of the peer, `n` of them.
    let collect = |n: usize| -> Result<Vec<[u64; 4]>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = vec![];
        while got.len() < n && Instant::now() < deadline {
            for l in lines.drain() {
                let v: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if l.starts_with("conn ") && v.len() == 4 {
                    got.push([v[0], v[1], v[2], v[3]]);
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(got)
    };

    step!("bench: figure 4, {n_base} GnuTLS connections without enforcer");
    let base_clients = clients(n_base);
    let base = collect(n_base)?;
    if base.iter().all(|c| c[2] == 0) {
        bail!(
            "without enforcer the peer received no application bytes over {} connections: the \
             measurement is broken",
            base.len()
        );
    }

    step!("bench: figure 4, {n_denied} GnuTLS connections denied by policy (enforce mode)");
    let mut agent = ctx.agent(&[&ns.host_if], ENFORCE_OPENSSL_ONLY)?;
    let held = bpf::held_by(agent.pid())?;
    let stats = held.stats(STATS_ENTRIES)?;
    let tc0 = stats.percpu_sum(Stat::TcDrops as u32)?;
    let t0 = Instant::now();
    let denied_clients = clients(n_denied);
    let wall = t0.elapsed().as_secs_f64();
    let denied = collect(n_denied)?;
    agent.settle(Duration::from_millis(500), Duration::from_secs(10));
    let tc_drops = stats.percpu_sum(Stat::TcDrops as u32)? - tc0;
    // Every denied connection is closed by now: the close hook should have emptied BLOCKLIST.
    let blocklist_left = held.blocklist()?.count()?;
    let events = agent.connections();
    let blocked = events
        .iter()
        .filter(|v| {
            v["comm"] == "gnutls-cli"
                && v["verdict"] == "blocked"
                && v["remote"]["port"] == LEAK_PORT
        })
        .count();
    let aborted = events
        .iter()
        .filter(|v| v["comm"] == "gnutls-cli" && v["socket_aborted"] == true)
        .count();
    agent.stop_timed(Duration::from_secs(600));

    let col = |v: &[[u64; 4]], i: usize| -> Vec<f64> { v.iter().map(|c| c[i] as f64).collect() };
    let app_total: u64 = denied.iter().map(|c| c[2] + c[1]).sum();
    let hs_total: u64 = denied.iter().map(|c| c[0]).sum();
    let mut app = Metric::new(
        "application data at the peer, per connection (TLS record bytes after the handshake)",
        "bytes",
        Better::Neither,
        true,
    );
    app.row("baseline: no enforcer", col(&base, 1));
    app.row(
        "enforcer, enforce mode, GnuTLS denied",
        denied.iter().map(|c| (c[1] + c[2]) as f64).collect(),
    );
    let mut plain = Metric::new(
        "decrypted application bytes at the peer, per connection",
        "bytes",
        Better::Neither,
        true,
    );
    plain.row("baseline: no enforcer", col(&base, 2));
    plain.row("enforcer, enforce mode, GnuTLS denied", col(&denied, 2));
    let mut hs = Metric::new(
        "TLS handshake bytes at the peer, per connection",
        "bytes",
        Better::Neither,
        true,
    );
    hs.row("baseline: no enforcer", col(&base, 0));
    hs.row("enforcer, enforce mode, GnuTLS denied", col(&denied, 0));
    let mut time = Metric::new(
        "gnutls-cli run time (spawn to exit)",
        "ms",
        Better::Neither,
        true,
    );
    time.row(
        "baseline: no enforcer (completes)",
        base_clients.iter().map(|c| c.0 * 1e3).collect(),
    );
    time.row(
        "enforcer, enforce mode (refused)",
        denied_clients.iter().map(|c| c.0 * 1e3).collect(),
    );

    let succeeded = denied_clients.iter().filter(|c| c.1).count();
    let mut fig = Figure {
        id: 4,
        title: "Leak: bytes of denied connections that reach the peer".into(),
        method: format!(
            "`gnutls-cli --insecure` (GnuTLS, denied by an OpenSSL-only policy in enforce mode) \
             connects {n_denied} times from the root namespace across the veth to a counting TLS \
             peer in the bench's namespace (`tlsperf count`, OpenSSL), {workers} clients at a \
             time, each writing a {}-byte marker on stdin. The peer counts, per accepted TCP \
             connection, the raw bytes read from the socket during the TLS handshake and after \
             it, and the decrypted application bytes (a connection that never completes the \
             handshake reports everything it read as handshake bytes, and anything read after \
             the handshake failed as application data). Baseline: {n_base} connections with no \
             agent, which complete and deliver the marker.",
            marker.len()
        ),
        metrics: vec![app, plain, hs, time],
        ..Default::default()
    };
    fig.targets.push(Target {
        what: "zero application bytes of denied connections reach the peer".into(),
        met: Some(app_total == 0 && denied.len() == n_denied),
        detail: format!(
            "{app_total} application bytes over {} connections the peer saw ({n_denied} made)",
            denied.len()
        ),
    });
    fig.notes.push(format!(
        "Totals over {n_denied} denied connections: {} TCP connections accepted by the peer (the \
         TCP handshake happens in connect(), before any TLS call, and is not blocked), {hs_total} \
         TLS handshake bytes and {app_total} application bytes received; {succeeded} clients \
         completed; {blocked} `blocked` events and {aborted} aborted sockets reported by the \
         agent; {tc_drops} packets dropped by tc (STATS[TC_DROPS]); wall time {wall:.1} s. BLOCKLIST entries left \
         after every denied connection had closed: {blocklist_left} (0 expected: the close hook \
         removes them).",
        denied.len()
    ));
    Ok(fig)
}
