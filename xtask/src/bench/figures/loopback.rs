//! Figures 1 and 2: TLS request/response and bulk transfer over loopback, with the agent,
//! without it, and with the peers (sslsniff, a bare uprobe).

use std::{
    net::{IpAddr, Ipv4Addr},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use enforcer_tests::Cert;

use super::{Ctx, LOOPBACK, f};
use crate::bench::{
    agent::{AUDIT_OPENSSL_ONLY, ENFORCE_OPENSSL_ONLY},
    process::{self, Lines, Proc},
    report::{Better, Figure, Metric, Target, fmt_num, median},
};
use crate::root;

/// Request and response size of figure 1.
const RR_SIZE: u32 = 64;
/// SSL_write size of figure 2: one full TLS record.
const BULK_RECORD: u32 = 16384;

fn rr_once(ctx: &Ctx, port: u16, secs: f64) -> Result<f64> {
    let v = process::run_json(
        ctx.tlsperf().args([
            "rr",
            LOOPBACK,
            &port.to_string(),
            &RR_SIZE.to_string(),
            &secs.to_string(),
        ]),
        Duration::from_secs_f64(secs + 60.0),
    )?;
    f(&v, "rate")
}

fn bulk_once(ctx: &Ctx, port: u16, bytes: u64) -> Result<f64> {
    let v = process::run_json(
        ctx.tlsperf().args([
            "bulk",
            LOOPBACK,
            &port.to_string(),
            &BULK_RECORD.to_string(),
            &bytes.to_string(),
        ]),
        Duration::from_secs(180),
    )?;
    Ok(f(&v, "rate")? / 1e6)
}

/// A BCC-based tool (sslsniff, the uprobe floor) running until dropped; `ready` is a string its
/// stdout prints once the probes are attached.
fn bcc_tool(ctx: &Ctx, script: &str, args: &[&str], ready: &str) -> Result<Proc> {
    let src = ctx.bcc_src.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(root().join("bench").join(script))
        .args(args)
        .env("BCC_KERNEL_SOURCE", src)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut p = process::spawn(cmd, script)?;
    let out = p.child.stdout.take().expect("piped");
    let err = p.child.stderr.take().expect("piped");
    let errors = Lines::new(err);
    // Read until ready, then only drain (the tool's output is part of its cost, not ours).
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = ready.to_string();
    thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        let mut r = BufReader::with_capacity(1 << 16, out);
        let mut buf = Vec::new();
        let mut told = false;
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            if !told && String::from_utf8_lossy(&buf).contains(&needle) {
                let _ = tx.send(());
                told = true;
            }
            buf.clear();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            return Ok(p);
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            let log = errors.drain();
            let tail: Vec<&String> = log.iter().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().map(String::as_str).collect();
            bail!(
                "{script} exited ({status}) before attaching: {}",
                tail.join(" / ")
            );
        }
        if Instant::now() > deadline {
            bail!("{script} did not attach within 180 s");
        }
    }
}

/// Figures 1 (request/response) and 2 (bulk): loopback, OpenSSL client and server.
pub fn tls_loopback(ctx: &Ctx) -> Result<(Figure, Figure)> {
    let rounds = ctx.runs(5);
    let rr_secs = if ctx.quick { 0.5 } else { 2.0 };
    let bulk_bytes: u64 = if ctx.quick { 32 << 20 } else { 512 << 20 };
    let cert = Cert::new(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let (_server, _, port) = process::tls_server(&ctx.tlsperf, None, "server", LOOPBACK, 0, &cert)?;
    let veth = ctx.ns.host_if.clone();

    const BASE: &str = "baseline: no enforcer";
    const AUDIT: &str = "enforcer, audit mode";
    const ENFORCE: &str = "enforcer, enforce mode (OpenSSL allowed)";
    const ENFORCE_LO: &str = "enforcer, enforce mode, XDP + tc also on lo";
    const SNIFF: &str = "peer: sslsniff-bpfcc (output discarded)";
    const FLOOR: &str = "reference: empty uprobe + uretprobe on SSL_read/SSL_write (BCC)";
    let agent_configs: [(&str, &str, Vec<&str>); 3] = [
        (AUDIT, AUDIT_OPENSSL_ONLY, vec![veth.as_str()]),
        (ENFORCE, ENFORCE_OPENSSL_ONLY, vec![veth.as_str()]),
        (ENFORCE_LO, ENFORCE_OPENSSL_ONLY, vec![veth.as_str(), "lo"]),
    ];
    let mut rr: Vec<(String, Vec<f64>, Option<String>)> = vec![];
    let mut bulk: Vec<(String, Vec<f64>, Option<String>)> = vec![];
    for name in [BASE, AUDIT, ENFORCE, ENFORCE_LO, SNIFF, FLOOR] {
        rr.push((name.into(), vec![], None));
        bulk.push((name.into(), vec![], None));
    }
    let idx = |name: &str| {
        [BASE, AUDIT, ENFORCE, ENFORCE_LO, SNIFF, FLOOR]
            .iter()
            .position(|n| *n == name)
            .expect("known config")
    };

    // One block of `rounds` runs per configuration, agent started once per block: an agent's
    // exit takes seconds to minutes here (see figure 6), too slow to restart it every round.
    // The baseline runs twice, first and after the agent blocks, to show drift on a shared host.
    let block = |name: &str,
                 rr: &mut Vec<(String, Vec<f64>, Option<String>)>,
                 bulk: &mut Vec<(String, Vec<f64>, Option<String>)>|
     -> Result<()> {
        ctx.quiesce();
        println!("bench: figures 1-2, {name}");
        for _ in 0..rounds {
            rr[idx(name)].1.push(rr_once(ctx, port, rr_secs)?);
            bulk[idx(name)].1.push(bulk_once(ctx, port, bulk_bytes)?);
        }
        Ok(())
    };
    block(BASE, &mut rr, &mut bulk)?;
    for (name, policy, ifaces) in &agent_configs {
        let agent = ctx.agent(ifaces, policy)?;
        block(name, &mut rr, &mut bulk)?;
        agent.stop_timed(Duration::from_secs(600));
    }
    let first_rr = rr[idx(BASE)].1.clone();
    let first_bulk = bulk[idx(BASE)].1.clone();
    block(BASE, &mut rr, &mut bulk)?;
    let drift = |all: &[f64], first: &[f64]| -> Option<f64> {
        let a = median(first)?;
        let b = median(&all[first.len()..])?;
        Some((b / a - 1.0) * 100.0)
    };
    let drift_rr = drift(&rr[idx(BASE)].1, &first_rr);
    let drift_bulk = drift(&bulk[idx(BASE)].1, &first_bulk);
    // BCC tools compile for ~20 s at start: one block each.
    for (name, script, args, ready) in [
        (
            SNIFF,
            "sslsniff.py",
            &["--no-gnutls", "--no-nss"][..],
            "FUNC",
        ),
        (FLOOR, "uprobe_floor.py", &[][..], "ready"),
    ] {
        if ctx.quick && name == FLOOR {
            let why = "skipped in --quick (BCC compiles for ~20 s)".to_string();
            rr[idx(name)].2 = Some(why.clone());
            bulk[idx(name)].2 = Some(why);
            continue;
        }
        match bcc_tool(ctx, script, args, ready) {
            Ok(tool) => {
                block(name, &mut rr, &mut bulk)?;
                drop(tool);
            }
            Err(e) => {
                let why = format!("could not run: {e:#}");
                rr[idx(name)].2 = Some(why.clone());
                bulk[idx(name)].2 = Some(why);
            }
        }
    }

    let mut m1 = Metric::new("round trips per second", "1/s", Better::Higher, true);
    for (name, s, note) in rr {
        let r = m1.row(&name, s);
        if let Some(n) = note {
            r.note(n);
        }
    }
    let mut m2 = Metric::new("throughput", "MB/s (10^6 bytes)", Better::Higher, true);
    for (name, s, note) in bulk {
        let r = m2.row(&name, s);
        if let Some(n) = note {
            r.note(n);
        }
    }

    let mut fig1 = Figure {
        id: 1,
        title: "TLS request/response rate over loopback (small records, many round trips)".into(),
        method: format!(
            "`tlsperf rr` (bench/tlsperf.c, system OpenSSL on both sides, TLS 1.3, TCP_NODELAY): \
             one connection, {RR_SIZE}-byte request, {RR_SIZE}-byte response, as many round trips \
             as fit in {rr_secs} s; each round trip is 4 probed TLS calls (client SSL_write + \
             SSL_read, server SSL_read + SSL_write). The agent filters the bench's veth (not on \
             this path: the figure is the cost of the uprobes and the TCP hook), except in the \
             `also on lo` row, where XDP (generic mode) and tc also sit on the loopback path. \
             {rounds} runs per configuration, one block each, in the order of the table; the \
             baseline block runs twice (before and after the agent blocks) and its row holds \
             both."
        ),
        metrics: vec![m1.clone()],
        ..Default::default()
    };
    let mut fig2 = Figure {
        id: 2,
        title: "Bulk TLS throughput over loopback (large records)".into(),
        method: format!(
            "`tlsperf bulk`: one connection, {} MiB sent in {BULK_RECORD}-byte SSL_write calls \
             (one full TLS record each); the OpenSSL server reads with {BULK_RECORD}-byte \
             SSL_read calls and acknowledges the last byte; rate = bytes / (first write to the \
             ack). Same configurations and rounds as figure 1 (measured right after it in each \
             round).",
            bulk_bytes >> 20
        ),
        metrics: vec![m2.clone()],
        ..Default::default()
    };

    if let Some(d) = drift_rr {
        fig1.notes.push(format!(
            "Drift: the second baseline block's median is {d:+.1} % from the first's."
        ));
    }
    if let Some(d) = drift_bulk {
        fig2.notes.push(format!(
            "Drift: the second baseline block's median is {d:+.1} % from the first's."
        ));
    }
    let cost = |m: &Metric, name: &str| m.find(name).and_then(|r| m.cost_pct(r));
    let enforce1 = cost(&m1, ENFORCE);
    let sniff1 = cost(&m1, SNIFF);
    let floor1 = cost(&m1, FLOOR);
    fig1.targets.push(Target {
        what: "enforcer (enforce mode) costs < 5 % of the request/response rate".into(),
        met: enforce1.map(|c| c < 5.0),
        detail: enforce1.map_or("no number".into(), |c| format!("cost {c:.1} %")),
    });
    fig1.targets.push(Target {
        what: "enforcer costs less than the peer (sslsniff-bpfcc)".into(),
        met: enforce1.zip(sniff1).map(|(e, s)| e < s),
        detail: match (enforce1, sniff1) {
            (Some(e), Some(s)) => format!("enforcer {e:.1} % vs sslsniff {s:.1} %"),
            _ => "sslsniff could not run: see its row".into(),
        },
    });
    let enforce2 = cost(&m2, ENFORCE);
    fig2.targets.push(Target {
        what: "enforcer (enforce mode) costs < 2 % of bulk throughput".into(),
        met: enforce2.map(|c| c < 2.0),
        detail: enforce2.map_or("no number".into(), |c| format!("cost {c:.1} %")),
    });

    // Per-call arithmetic, so the cost can be compared with what a bare uprobe costs here.
    let per = |m: &Metric, name: &str, calls: f64, unit_per_sec: f64| -> Option<f64> {
        let b = median(&m.rows.first()?.samples)?;
        let x = median(&m.find(name)?.samples)?;
        Some((1.0 / x - 1.0 / b) * unit_per_sec / calls)
    };
    if let (Some(e), Some(fl)) = (per(&m1, ENFORCE, 4.0, 1e6), per(&m1, FLOOR, 4.0, 1e6)) {
        fig1.notes.push(format!(
            "Added time per probed TLS call: enforcer {} µs, empty uprobe + uretprobe {} µs \
             (from the medians: (1/rate − 1/baseline) / 4 calls per round trip). The cost is \
             the uprobe mechanism itself on this machine, see the trap costs under Machine.",
            fmt_num(e),
            fmt_num(fl)
        ));
    }
    if let Some(c) = floor1 {
        fig1.notes.push(format!(
            "Any uprobe-based observer pays at least the reference row here: {c:.1} % with empty \
             programs."
        ));
    }
    // MB/s → µs per record is 16384 / rate.
    let record_us = per(&m2, ENFORCE, 2.0, BULK_RECORD as f64);
    if let Some(us) = record_us {
        fig2.notes.push(format!(
            "Added time per 16 KiB record: {} µs per probed call (client SSL_write + server \
             SSL_read), against roughly {} µs of crypto and copying per record in the baseline.",
            fmt_num(us),
            fmt_num(median(&m2.rows[0].samples).map_or(0.0, |b| BULK_RECORD as f64 / b))
        ));
    }
    Ok((fig1, fig2))
}
