//! Figure 8: the filtered path (TLS request/response across the veth with the agent's filters on it, IPv6
//! and 8-stream throughput), the kernel TCP hook on plain TCP, and the agent's BPF map memory;
//! baseline and agent rounds interleaved (ABAB).

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use enforcer_tests::Cert;

use super::{Ctx, LOOPBACK, f};
use crate::bench::{
    agent::ENFORCE_OPENSSL_ONLY,
    process::{self, Lines},
    report::{Better, Figure, Metric},
};
use crate::progress::step;

const IPERF_PORT: u16 = 19202;
const BASE: &str = "baseline: no enforcer";
const AGENT: &str = "enforcer, enforce mode, filters on the veth (tc ingress, tc egress)";

/// (total bytes, distinct maps, the largest as (bytes, shape)).
pub type MapMemory = (u64, usize, Vec<(u64, String)>);

/// The agent's BPF map memory: the sum of `memlock` over the distinct maps it holds
/// (`/proc/PID/fdinfo`), and the largest maps as (bytes, "type/key/value/entries").
pub fn map_memory(pid: u32) -> Result<MapMemory> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut maps: BTreeMap<u32, (u64, String)> = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<&str> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let (Some(id), Some(mem)) = (field("map_id:"), field("memlock:")) else {
            continue;
        };
        let (Ok(id), Ok(mem)) = (id.parse::<u32>(), mem.parse::<u64>()) else {
            continue;
        };
        let shape = format!(
            "type {} key {} value {} entries {}",
            field("map_type:").unwrap_or("?"),
            field("key_size:").unwrap_or("?"),
            field("value_size:").unwrap_or("?"),
            field("max_entries:").unwrap_or("?")
        );
        maps.insert(id, (mem, shape));
    }
    let total = maps.values().map(|m| m.0).sum();
    let mut top: Vec<(u64, String)> = maps.values().cloned().collect();
    top.sort_by_key(|m| std::cmp::Reverse(m.0));
    top.truncate(5);
    Ok((total, maps.len(), top))
}

const ROUNDS: usize = 3;

/// The progress bar's steps: rounds x (baseline, agent).
pub fn paths_steps(quick: bool) -> u64 {
    (2 * super::runs(quick, ROUNDS)) as u64
}

/// Figure 8.
pub fn paths(ctx: &Ctx) -> Result<Figure> {
    let rounds = ctx.runs(ROUNDS);
    let secs = if ctx.quick { 0.5 } else { 2.0 };
    let lat_n = if ctx.quick { 500 } else { 10_000 };
    let ns = &ctx.ns;
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer, IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let (_tls, _, tls_port) = process::tls_server(
        &ctx.tlsperf,
        Some(&ns.name),
        "server",
        &peer.to_string(),
        0,
        &cert,
    )?;
    let mut echo = ctx.tlsperf();
    echo.args(["tcpecho", LOOPBACK, "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut echo = process::spawn(echo, "tlsperf tcpecho")?;
    let echo_lines = Lines::new(echo.child.stdout.take().expect("piped"));
    let echo_port: u16 = echo_lines
        .wait_for("listening", Duration::from_secs(10))?
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .context("tcpecho printed no port")?;
    // One iperf3 server (all addresses, IPv4 and IPv6) in the namespace.
    let mut iperf_server = ns.exec(
        "iperf3",
        ["-s", "--forceflush", "-p", &IPERF_PORT.to_string()],
    );
    iperf_server
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut iperf_server = process::spawn(iperf_server, "iperf3 server")?;
    let il = Lines::new(iperf_server.child.stdout.take().expect("piped"));
    il.wait_for("listening", Duration::from_secs(10))?;
    let isecs = if ctx.quick { "1" } else { "2" };
    let iperf = |to: &str, streams: u32, reverse: bool| -> Result<f64> {
        let mut c = Command::new("iperf3");
        c.args(["-c", to, "-p", &IPERF_PORT.to_string(), "-t", isecs, "-J"])
            .args(["-P", &streams.to_string()]);
        if reverse {
            c.arg("-R");
        }
        let v = process::run_json_doc(&mut c, Duration::from_secs(60))?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .context("iperf3 printed no end.sum_received.bits_per_second")
    };
    let peer6 = ns.peer_v6.to_string();
    let peer4 = ns.peer_v4.to_string();

    // (metric name, unit, better) and samples per config.
    let specs: [(&str, &str, Better); 11] = [
        (
            "TLS request/response across the filtered veth (64 B)",
            "1/s",
            Better::Higher,
        ),
        (
            "TLS round trip across the filtered veth, p50",
            "µs",
            Better::Lower,
        ),
        (
            "TLS round trip across the filtered veth, p99",
            "µs",
            Better::Lower,
        ),
        (
            "plain TCP request/response over loopback (64 B, no TLS: the TCP hook only)",
            "1/s",
            Better::Higher,
        ),
        (
            "plain TCP round trip over loopback, p50",
            "µs",
            Better::Lower,
        ),
        (
            "plain TCP round trip over loopback, p99",
            "µs",
            Better::Lower,
        ),
        (
            "IPv6 TCP throughput across the veth, egress",
            "Gbit/s",
            Better::Higher,
        ),
        (
            "IPv6 TCP throughput across the veth, ingress",
            "Gbit/s",
            Better::Higher,
        ),
        (
            "TCP throughput, 8 parallel streams (IPv4), egress",
            "Gbit/s",
            Better::Higher,
        ),
        (
            "TCP throughput, 8 parallel streams (IPv4), ingress",
            "Gbit/s",
            Better::Higher,
        ),
        (
            "TCP throughput, 1 stream (IPv4), ingress (same rounds)",
            "Gbit/s",
            Better::Higher,
        ),
    ];
    let mut samples: Vec<[Vec<f64>; 2]> = specs.iter().map(|_| [vec![], vec![]]).collect();
    let mut memory: Vec<f64> = vec![];
    let mut mem_detail = String::new();
    let measure = |s: &mut Vec<[Vec<f64>; 2]>, c: usize| -> Result<()> {
        let v = process::run_json(
            ctx.tlsperf()
                .args(["rr", &peer4, &tls_port.to_string(), "64", &secs.to_string()]),
            Duration::from_secs(60),
        )?;
        s[0][c].push(f(&v, "rate")?);
        let v = process::run_json(
            ctx.tlsperf().args([
                "lat",
                &peer4,
                &tls_port.to_string(),
                "64",
                &lat_n.to_string(),
            ]),
            Duration::from_secs(120),
        )?;
        s[1][c].push(f(&v, "rtt_p50_us")?);
        s[2][c].push(f(&v, "rtt_p99_us")?);
        let v = process::run_json(
            ctx.tlsperf().args([
                "tcprr",
                LOOPBACK,
                &echo_port.to_string(),
                "64",
                &secs.to_string(),
            ]),
            Duration::from_secs(60),
        )?;
        s[3][c].push(f(&v, "rate")?);
        s[4][c].push(f(&v, "rtt_p50_us")?);
        s[5][c].push(f(&v, "rtt_p99_us")?);
        s[6][c].push(iperf(&peer6, 1, false)?);
        s[7][c].push(iperf(&peer6, 1, true)?);
        s[8][c].push(iperf(&peer4, 8, false)?);
        s[9][c].push(iperf(&peer4, 8, true)?);
        s[10][c].push(iperf(&peer4, 1, true)?);
        Ok(())
    };
    for r in 0..rounds {
        ctx.quiesce();
        step!("bench: figure 8, round {}/{rounds}: {BASE}", r + 1);
        measure(&mut samples, 0)?;
        ctx.quiesce();
        step!("bench: figure 8, round {}/{rounds}: {AGENT}", r + 1);
        let agent = ctx.agent(&[&ns.host_if], ENFORCE_OPENSSL_ONLY)?;
        let (bytes, n, top) = map_memory(agent.pid())?;
        memory.push(bytes as f64 / 1024.0);
        if mem_detail.is_empty() {
            mem_detail = format!(
                "{n} maps; the largest: {}",
                top.iter()
                    .map(|(b, s)| format!("{} KiB ({s})", b / 1024))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        measure(&mut samples, 1)?;
        agent.stop_timed(Duration::from_secs(600));
    }
    drop(echo);
    drop(iperf_server);

    let mut fig = Figure {
        id: 8,
        title: "The filtered path, plain TCP, IPv6 and parallel streams, BPF map memory".into(),
        method: format!(
            "{rounds} rounds, each a baseline run then an agent run (ABAB; the agent, enforce \
             mode, OpenSSL allowed, filtering the bench's veth, is started for each agent run and \
             stopped after it). TLS: `tlsperf rr` ({secs} s) and `tlsperf lat` ({lat_n} timed \
             round trips) from the host to a `tlsperf server` in the namespace, across the veth \
             (tc on egress, tc on ingress by `--ingress auto` on a veth, and the uprobes and TCP hook on the client). Plain \
             TCP: `tlsperf tcprr` against `tlsperf tcpecho` over loopback ({secs} s, 64-byte \
             messages): no TLS library is involved, so only the kernel TCP hook (which sees every \
             send on the host) is on the path. Throughput: iperf3 across the veth, IPv6 with one \
             stream and IPv4 with 8 parallel streams (`-P 8`), {isecs} s per run, egress = data \
             leaves through tc, ingress (`-R`) = data arrives through the tc ingress classifier. Map memory: the sum \
             of `memlock` over the distinct maps in the agent's /proc/PID/fdinfo, right after \
             ready, default sizes."
        ),
        ..Default::default()
    };
    for (i, (name, unit, better)) in specs.iter().enumerate() {
        let mut m = Metric::new(name, unit, *better, true);
        let [a, b] = std::mem::take(&mut samples[i]);
        m.row(BASE, a);
        m.row(AGENT, b);
        fig.metrics.push(m);
    }
    let mut mem = Metric::new(
        "BPF map memory of the agent (sum of memlock, fdinfo)",
        "KiB",
        Better::Lower,
        false,
    );
    mem.row("at default map sizes, after ready", memory);
    fig.metrics.push(mem);
    if !mem_detail.is_empty() {
        fig.notes.push(format!("Map memory: {mem_detail}."));
    }
    Ok(fig)
}
