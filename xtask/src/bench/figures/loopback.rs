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
use crate::progress::step;
use crate::root;

/// Request and response size of figure 1.
const RR_SIZE: u32 = 64;
/// SSL_write size of figure 2: one full TLS record.
const BULK_RECORD: u32 = 16384;

const BASE: &str = "baseline: no enforcer";
const AUDIT: &str = "enforcer, audit mode";
const ENFORCE: &str = "enforcer, enforce mode (OpenSSL allowed)";
const ENFORCE_LO: &str = "enforcer, enforce mode, filters also on lo (tc ingress, tc egress)";
const SNIFF: &str = "peer: sslsniff-bpfcc (output discarded)";
const FLOOR: &str = "reference: empty uprobe + uretprobe on SSL_read/SSL_write (BCC)";

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

/// The configurations, in the order of the table and of each round.
const CONFIGS: [&str; 6] = [BASE, AUDIT, ENFORCE, ENFORCE_LO, SNIFF, FLOOR];
/// 5 rounds: with 3, the bulk figure's spread (its min-max over runs, about 20 %) was ten times
/// the 2 % goal it is judged by; 5 makes the median steadier. Not more: the BCC tools compile
/// for ~20 s at each of their starts.
const ROUNDS: usize = 5;

/// The progress bar's steps: rounds x configurations (--quick skips the BCC floor).
pub fn loopback_steps(quick: bool) -> u64 {
    (super::runs(quick, ROUNDS) * (CONFIGS.len() - usize::from(quick))) as u64
}

/// Figures 1 (request/response) and 2 (bulk): loopback, OpenSSL client and server.
pub fn tls_loopback(ctx: &Ctx) -> Result<(Figure, Figure)> {
    let rounds = ctx.runs(ROUNDS);
    let rr_secs = if ctx.quick { 0.5 } else { 2.0 };
    let lat_n = if ctx.quick { 500 } else { 10_000 };
    let bulk_bytes: u64 = if ctx.quick { 32 << 20 } else { 512 << 20 };
    let cert = Cert::new(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let (_server, _, port) = process::tls_server(&ctx.tlsperf, None, "server", LOOPBACK, 0, &cert)?;
    let veth = ctx.ns.host_if.clone();

    let idx = |name: &str| {
        CONFIGS
            .iter()
            .position(|n| *n == name)
            .expect("known config")
    };
    // Per config: samples of [rr rate, bulk MB/s, rtt p50, rtt p99, write call p50, read call
    // p50], and why it could not run.
    let mut s: Vec<([Vec<f64>; 6], Option<String>)> =
        CONFIGS.iter().map(|_| (Default::default(), None)).collect();
    let measure = |v: &mut [Vec<f64>; 6]| -> Result<()> {
        v[0].push(rr_once(ctx, port, rr_secs)?);
        v[1].push(bulk_once(ctx, port, bulk_bytes)?);
        let l = process::run_json(
            ctx.tlsperf().args([
                "lat",
                LOOPBACK,
                &port.to_string(),
                &RR_SIZE.to_string(),
                &lat_n.to_string(),
            ]),
            Duration::from_secs(120),
        )?;
        v[2].push(f(&l, "rtt_p50_us")?);
        v[3].push(f(&l, "rtt_p99_us")?);
        v[4].push(f(&l, "write_call_p50_ns")?);
        v[5].push(f(&l, "read_call_p50_ns")?);
        Ok(())
    };

    // Rounds, each running every configuration once in the order of the table (ABAB…): every
    // agent and peer row is bracketed by baseline runs. The agent starts and stops for each
    // run (a few hundred ms each, figure 6); the BCC tools compile for ~20 s at each start.
    for r in 0..rounds {
        for name in CONFIGS {
            let i = idx(name);
            if s[i].1.is_some() {
                continue;
            }
            if ctx.quick && name == FLOOR {
                s[i].1 = Some("skipped in --quick (BCC compiles for ~20 s)".into());
                continue;
            }
            ctx.quiesce();
            step!("bench: figures 1-2, round {}/{rounds}: {name}", r + 1);
            let guard: Box<dyn std::any::Any> = match name {
                BASE => Box::new(()),
                AUDIT => Box::new(ctx.agent(&[&veth], AUDIT_OPENSSL_ONLY)?),
                ENFORCE => Box::new(ctx.agent(&[&veth], ENFORCE_OPENSSL_ONLY)?),
                ENFORCE_LO => Box::new(ctx.agent(&[&veth, "lo"], ENFORCE_OPENSSL_ONLY)?),
                SNIFF | FLOOR => {
                    let (script, args, ready) = if name == SNIFF {
                        ("sslsniff.py", &["--no-gnutls", "--no-nss"][..], "FUNC")
                    } else {
                        ("uprobe_floor.py", &[][..], "ready")
                    };
                    match bcc_tool(ctx, script, args, ready) {
                        Ok(tool) => Box::new(tool),
                        Err(e) => {
                            s[i].1 = Some(format!("could not run: {e:#}"));
                            continue;
                        }
                    }
                }
                _ => unreachable!("known config"),
            };
            let result = measure(&mut s[i].0);
            drop(guard);
            result?;
        }
    }
    let first_last = |k: usize| -> Option<f64> {
        let b = &s[idx(BASE)].0[k];
        Some((b.last()? / b.first()? - 1.0) * 100.0)
    };
    let drift_rr = first_last(0).filter(|_| rounds > 1);
    let drift_bulk = first_last(1).filter(|_| rounds > 1);

    let metric = |k: usize, name: &str, unit: &str, better: Better| -> Metric {
        let mut m = Metric::new(name, unit, better, true);
        for (c, (v, note)) in CONFIGS.iter().zip(&s) {
            let r = m.row(c, v[k].clone());
            if let Some(n) = note {
                r.note(n.clone());
            }
        }
        m
    };
    let m1 = metric(0, "round trips per second", "1/s", Better::Higher);
    let m2 = metric(1, "throughput", "MB/s (10^6 bytes)", Better::Higher);
    let lat_metrics = [
        metric(2, "round trip, p50 (tlsperf lat)", "µs", Better::Lower),
        metric(3, "round trip, p99 (tlsperf lat)", "µs", Better::Lower),
        metric(
            4,
            "client SSL_write call time, p50 (per-call latency, measured directly)",
            "ns",
            Better::Lower,
        ),
        metric(
            5,
            "client SSL_read call time, p50 (response already there)",
            "ns",
            Better::Lower,
        ),
    ];

    let mut fig1 = Figure {
        id: 1,
        title: "TLS request/response rate over loopback (small records, many round trips)".into(),
        method: format!(
            "`tlsperf rr` (bench/tlsperf.c, system OpenSSL on both sides, TLS 1.3, TCP_NODELAY): \
             one connection, {RR_SIZE}-byte request, {RR_SIZE}-byte response, as many round trips \
             as fit in {rr_secs} s; each round trip is 4 probed TLS calls (client SSL_write + \
             SSL_read, server SSL_read + SSL_write). The agent filters the bench's veth (not on \
             this path: the figure is the cost of the uprobes and the TCP hook), except in the \
             `also on lo` row, where the ingress and egress filters (tc: `--ingress auto` on loopback) also sit on the loopback path. \
             {rounds} rounds; each round runs every configuration once, in the order of the \
             table (interleaved: each agent and peer run sits between baseline runs of adjacent \
             rounds), starting the agent or the tool for the run and stopping it after. \
             Latency: `tlsperf lat`, {lat_n} round trips on one connection, each timed, and the \
             client's SSL_write and SSL_read calls timed on their own (clock_gettime around the \
             call; the read only once the response is in the socket): a probe on the call adds \
             its traps to that call's time, so the difference to the baseline is the added \
             latency per call, measured directly."
        ),
        metrics: [&[m1.clone()][..], &lat_metrics[..]].concat(),
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
            "Drift: the last round's baseline run is {d:+.1} % from the first's."
        ));
    }
    if let Some(d) = drift_bulk {
        fig2.notes.push(format!(
            "Drift: the last round's baseline run is {d:+.1} % from the first's."
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
    fig1.targets.push(Target {
        what: "request/response cost below the empty uprobe + uretprobe reference of the same run"
            .into(),
        met: enforce1.zip(floor1).map(|(e, f)| e < f),
        detail: match (enforce1, floor1) {
            (Some(e), Some(f)) => format!("enforcer {e:.1} % vs empty pair {f:.1} %"),
            _ => "the reference could not run: see its row".into(),
        },
    });
    // The direct per-call figure: SSL_write's p50 above the baseline's.
    let added = |name: &str| -> Option<f64> {
        let m = &lat_metrics[2];
        Some(median(&m.find(name)?.samples)? - median(&m.rows.first()?.samples)?)
    };
    let (call_e, call_f) = (added(ENFORCE), added(FLOOR));
    fig1.targets.push(Target {
        what: "added time per TLS call (SSL_write p50, measured directly) below the empty pair's"
            .into(),
        met: call_e.zip(call_f).map(|(e, f)| e < f),
        detail: match (call_e, call_f) {
            (Some(e), Some(f)) => format!("enforcer {e:+.0} ns vs empty pair {f:+.0} ns"),
            (Some(e), None) => format!("enforcer {e:+.0} ns; the reference could not run"),
            _ => "no number".into(),
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
