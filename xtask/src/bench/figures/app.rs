//! Figure 9: a real application over TLS, `redis-benchmark --tls` against Debian's redis-server
//! (both linked to the system libssl), baseline and agent rounds interleaved (ABAB).

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use enforcer_tests::Cert;

use super::Ctx;
use crate::bench::{
    agent::ENFORCE_OPENSSL_ONLY,
    process::{self},
    report::{Better, Figure, Metric},
};
use crate::progress::step;

const REDIS_PORT: u16 = 16390;
const BASE: &str = "baseline: no enforcer";
const AGENT: &str =
    "enforcer, enforce mode (OpenSSL allowed), filters on the veth (tc ingress, tc egress)";

const ROUNDS: usize = 3;

/// The progress bar's steps: rounds x (baseline, agent).
pub fn redis_steps(quick: bool) -> u64 {
    (2 * super::runs(quick, ROUNDS)) as u64
}

/// Figure 9.
pub fn redis(ctx: &Ctx) -> Result<Figure> {
    let rounds = ctx.runs(ROUNDS);
    let requests = if ctx.quick { 2_000 } else { 100_000 };
    let clients = 8;
    let ns = &ctx.ns;
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let mut server = ns.exec(
        "redis-server",
        [
            "--port",
            "0",
            "--tls-port",
            &REDIS_PORT.to_string(),
            "--bind",
            &peer.to_string(),
            "--tls-cert-file",
            &cert.cert_path().to_string_lossy(),
            "--tls-key-file",
            &cert.key_path().to_string_lossy(),
            "--tls-auth-clients",
            "no",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
    );
    server
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = process::spawn(server, "redis-server")?;
    let started = Instant::now();
    while std::net::TcpStream::connect((peer, REDIS_PORT)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!(
                "redis-server (Debian package redis-server) did not listen on {peer}:{REDIS_PORT}"
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    // ("SET" | "GET") → requests per second, p50 ms, p99 ms
    let bench = || -> Result<Vec<(String, f64, f64, f64)>> {
        let out = enforcer_tests::run_with_timeout(
            Command::new("redis-benchmark").args([
                "--tls",
                "--insecure",
                "-h",
                &peer.to_string(),
                "-p",
                &REDIS_PORT.to_string(),
                "-c",
                &clients.to_string(),
                "-n",
                &requests.to_string(),
                "-t",
                "set,get",
                "--csv",
            ]),
            b"",
            Duration::from_secs(300),
        );
        if !out.success() {
            bail!("redis-benchmark failed: {}", out.stderr_str().trim());
        }
        let mut rows = vec![];
        for l in out.stdout_str().lines().skip(1) {
            let v: Vec<String> = l
                .split(',')
                .map(|x| x.trim_matches('"').to_string())
                .collect();
            if v.len() >= 7 {
                let num = |i: usize| -> Result<f64> {
                    v[i].parse()
                        .with_context(|| format!("redis-benchmark printed {l:?}"))
                };
                rows.push((v[0].clone(), num(1)?, num(4)?, num(6)?));
            }
        }
        if rows.len() != 2 {
            bail!("redis-benchmark printed {:?}", out.stdout_str());
        }
        Ok(rows)
    };
    // [test][metric][config]
    let mut s: Vec<[[Vec<f64>; 2]; 3]> = vec![Default::default(), Default::default()];
    let put = |s: &mut Vec<[[Vec<f64>; 2]; 3]>, c: usize, rows: Vec<(String, f64, f64, f64)>| {
        for (i, (_, rps, p50, p99)) in rows.into_iter().enumerate().take(2) {
            s[i][0][c].push(rps);
            s[i][1][c].push(p50);
            s[i][2][c].push(p99);
        }
    };
    for r in 0..rounds {
        ctx.quiesce();
        step!("bench: figure 9, round {}/{rounds}: {BASE}", r + 1);
        put(&mut s, 0, bench()?);
        ctx.quiesce();
        step!("bench: figure 9, round {}/{rounds}: {AGENT}", r + 1);
        let agent = ctx.agent(&[&ns.host_if], ENFORCE_OPENSSL_ONLY)?;
        let rows = bench();
        agent.stop_timed(Duration::from_secs(600));
        put(&mut s, 1, rows?);
    }
    let mut fig = Figure {
        id: 9,
        title: "A real application: redis over TLS (redis-benchmark --tls)".into(),
        method: format!(
            "Debian's `redis-server` (TLS port only, no persistence) in the bench's namespace, \
             `redis-benchmark --tls -c {clients} -n {requests} -t set,get --csv` from the host \
             across the filtered veth; both link the system libssl, so the client's and the \
             server's TLS calls are the agent's probed OpenSSL. {rounds} rounds, each a \
             baseline run then an agent run (ABAB, the agent started for each). \
             redis-benchmark opens its {clients} connections once and pipelines nothing: every \
             request is one small TLS record each way."
        ),
        ..Default::default()
    };
    for (t, test) in ["SET", "GET"].iter().enumerate() {
        for (k, (what, unit, better)) in [
            ("requests per second", "1/s", Better::Higher),
            ("latency p50", "ms", Better::Lower),
            ("latency p99", "ms", Better::Lower),
        ]
        .into_iter()
        .enumerate()
        {
            let mut m = Metric::new(&format!("redis {test}: {what}"), unit, better, true);
            let [a, b] = std::mem::take(&mut s[t][k]);
            m.row(BASE, a);
            m.row(AGENT, b);
            fig.metrics.push(m);
        }
    }
    Ok(fig)
}
