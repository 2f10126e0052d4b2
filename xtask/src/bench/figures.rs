//! The six figures of issue 5. Each returns its `Figure`s or an error meaning "something is
//! broken" (a tool did not start, a path returned the wrong verdict); slow numbers are never an
//! error.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use enforcer_tests::{Cert, NetNs};

use super::{
    bpf,
    env::{self, AUDIT_OPENSSL_ONLY, Agent, ENFORCE_OPENSSL_ONLY, Lines, Proc},
    report::{Better, Figure, Metric, Target, fmt_num, median},
};
use crate::root;

/// Entries of the agent's `STATS` map (`enforcer_common::hello_stat::COUNT`).
const STATS_ENTRIES: u32 = 9;

/// Everything the figures share.
pub struct Ctx {
    pub quick: bool,
    pub enforcer: PathBuf,
    pub tlsperf: PathBuf,
    pub ns: NetNs,
    /// `BCC_KERNEL_SOURCE` for the BCC tools, or why there is none.
    pub bcc_src: Result<PathBuf, String>,
}

impl Ctx {
    fn runs(&self, full: usize) -> usize {
        if self.quick { 1 } else { full }
    }
    fn agent(&self, ifaces: &[&str], policy: &str) -> Result<Agent> {
        Agent::start(&self.enforcer, ifaces, policy)
    }
    /// Waits for other sessions' agents to go before a block (not in --quick: its numbers do
    /// not matter).
    fn quiesce(&self) {
        if !self.quick {
            env::quiesce(QUIESCE);
        }
    }
    fn tlsperf(&self) -> Command {
        Command::new(&self.tlsperf)
    }
}

const LOOPBACK: &str = "127.0.0.1";
const LEAK_PORT: u16 = 19443;
const IPERF_PORT: u16 = 19201;
/// Request and response size of figure 1.
const RR_SIZE: u32 = 64;
/// How long a measurement block waits for other sessions' agents to go.
const QUIESCE: Duration = Duration::from_secs(60);
/// SSL_write size of figure 2: one full TLS record.
const BULK_RECORD: u32 = 16384;

fn f(v: &serde_json::Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("no number {key:?} in {v}"))
}

fn rr_once(ctx: &Ctx, port: u16, secs: f64) -> Result<f64> {
    let v = env::run_json(
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
    let v = env::run_json(
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
    let mut p = env::spawn(cmd, script)?;
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
    let (_server, _, port) = env::tls_server(&ctx.tlsperf, None, "server", LOOPBACK, 0, &cert)?;
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

/// (hook, program, no-match frame, drop frame, pass / drop / empty-program return values)
type Case<'a> = (&'a str, &'a bpf::Prog, Vec<u8>, Vec<u8>, u32, u32, u32);

/// Figure 3: per-packet cost of the XDP and tc programs, and TCP throughput across the veth.
pub fn packets(ctx: &Ctx) -> Result<Figure> {
    let runs = ctx.runs(5);
    let repeat: u32 = if ctx.quick { 10_000 } else { 1_000_000 };
    let mut fig = Figure {
        id: 3,
        title: "Per-packet cost of XDP (ingress) and tc (egress), and TCP throughput across a veth"
            .into(),
        method: format!(
            "Per packet: `BPF_PROG_TEST_RUN` with repeat {repeat} on the programs the running \
             agent loaded (found through /proc/PID/fdinfo), 118-byte IPv4 / 138-byte IPv6 \
             TCP frames with 64 payload bytes. No-match path: a 4-tuple not in BLOCKLIST. Drop \
             path: its 4-tuple written into the agent's BLOCKLIST (TEST-NET addresses, removed \
             afterwards); the return values are checked (XDP_DROP, TC_ACT_SHOT). Baseline: an \
             empty program of the same type (`r0 = pass; exit`), i.e. what BPF_PROG_TEST_RUN and \
             any program cost. {runs} runs each. Throughput: iperf3 (Debian) over the veth pair \
             into the bench's network namespace, 1 stream, {} s per run, with no agent vs with the \
             agent (enforce mode) attached to the host end; egress = data leaves through tc, \
             ingress (`-R`) = data arrives through XDP. Blocks: half the baseline runs, then the \
             agent's runs (same agent as the per-packet runs), then the other half.",
            if ctx.quick { 1 } else { 2 }
        ),
        ..Default::default()
    };
    let ns = &ctx.ns;

    // --- veth throughput (set up first: its baseline half runs before any agent) ------------
    let secs = if ctx.quick { "1" } else { "2" };
    let peer = ns.peer_v4.to_string();
    let mut server = ns.exec(
        "iperf3",
        [
            "-s",
            "--forceflush",
            "-B",
            &peer,
            "-p",
            &IPERF_PORT.to_string(),
        ],
    );
    server
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = env::spawn(server, "iperf3 server")?;
    let lines = Lines::new(server.child.stdout.take().expect("piped"));
    lines.wait_for("listening", Duration::from_secs(10))?;
    let iperf = |reverse: bool| -> Result<f64> {
        let mut c = Command::new("iperf3");
        c.args(["-c", &peer, "-p", &IPERF_PORT.to_string(), "-t", secs, "-J"]);
        if reverse {
            c.arg("-R");
        }
        let v = env::run_json_doc(&mut c, Duration::from_secs(60))?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .context("iperf3 printed no end.sum_received.bits_per_second")
    };
    // Blocks (baseline, agent, baseline) rather than rounds: see figure 1 on agent restarts.
    // The agent block runs inside the per-packet section below.
    let mut s = [vec![], vec![], vec![], vec![]];
    let half = runs.div_ceil(2);
    ctx.quiesce();
    for r in 0..half {
        println!("bench: figure 3, veth baseline {}/{runs}", r + 1);
        s[0].push(iperf(false)?);
        s[2].push(iperf(true)?);
    }
    // --- per packet -------------------------------------------------------------------------
    {
        ctx.quiesce();
        let agent = ctx.agent(&[&ns.host_if], ENFORCE_OPENSSL_ONLY)?;
        let held = bpf::held_by(agent.pid())?;
        let xdp = held.prog(bpf::PROG_TYPE_XDP)?;
        let tc = held.prog(bpf::PROG_TYPE_SCHED_CLS)?;
        let blocklist = held.blocklist()?;
        let empty_xdp = bpf::Prog::trivial(bpf::PROG_TYPE_XDP, 2)?;
        let empty_tc = bpf::Prog::trivial(bpf::PROG_TYPE_SCHED_CLS, 0)?;
        let families: [(&str, SocketAddr, SocketAddr, SocketAddr); 2] = [
            (
                "IPv4",
                "192.0.2.1:40000".parse()?,
                "192.0.2.1:40001".parse()?,
                "198.51.100.1:443".parse()?,
            ),
            (
                "IPv6",
                "[2001:db8::1]:40000".parse()?,
                "[2001:db8::1]:40001".parse()?,
                "[2001:db8::2]:443".parse()?,
            ),
        ];
        for (_, local, _, remote) in &families {
            blocklist.insert(&bpf::flow_key(*local, *remote), &[1])?;
        }
        let result = (|| -> Result<Vec<Metric>> {
            let mut metrics = vec![];
            for (fam, local, other, remote) in &families {
                // Ingress frames come from the remote end; egress frames from us.
                let cases: [Case; 2] = [
                    (
                        "XDP (ingress)",
                        &xdp,
                        bpf::tcp_frame(*remote, *other, 64),
                        bpf::tcp_frame(*remote, *local, 64),
                        2,
                        1,
                        2,
                    ),
                    (
                        "tc (egress)",
                        &tc,
                        bpf::tcp_frame(*other, *remote, 64),
                        bpf::tcp_frame(*local, *remote, 64),
                        0,
                        2,
                        0,
                    ),
                ];
                for (hook, prog, nomatch, drop, pass_rv, drop_rv, empty_rv) in cases {
                    let empty = if hook.starts_with("XDP") {
                        &empty_xdp
                    } else {
                        &empty_tc
                    };
                    let mut s = [vec![], vec![], vec![]];
                    for _ in 0..runs {
                        for (i, (p, pkt, want)) in [
                            (empty, &nomatch, empty_rv),
                            (prog, &nomatch, pass_rv),
                            (prog, &drop, drop_rv),
                        ]
                        .into_iter()
                        .enumerate()
                        {
                            let (rv, ns) = p.test_run(pkt, repeat)?;
                            if rv != want {
                                bail!("{hook} {fam}: case {i} returned {rv}, expected {want}");
                            }
                            s[i].push(ns as f64);
                        }
                    }
                    let mut m = Metric::new(
                        &format!("{hook}, {fam}: time per packet"),
                        "ns",
                        Better::Lower,
                        true,
                    );
                    let [a, b, c] = s;
                    m.row("baseline: empty program", a);
                    m.row("enforcer, no-match path (passes)", b);
                    m.row("enforcer, drop path (4-tuple in BLOCKLIST)", c);
                    metrics.push(m);
                }
            }
            Ok(metrics)
        })();
        for (_, local, _, remote) in &families {
            let _ = blocklist.remove(&bpf::flow_key(*local, *remote));
        }
        fig.metrics.extend(result?);
        // The same agent for the veth runs: one agent start and exit per figure.
        for r in 0..runs {
            println!("bench: figure 3, veth with agent {}/{runs}", r + 1);
            s[1].push(iperf(false)?);
            s[3].push(iperf(true)?);
        }
        agent.stop_timed(Duration::from_secs(600));
    }

    ctx.quiesce();
    for r in half..runs {
        println!("bench: figure 3, veth baseline {}/{runs}", r + 1);
        s[0].push(iperf(false)?);
        s[2].push(iperf(true)?);
    }
    let [e0, e1, i0, i1] = s;
    let mut eg = Metric::new(
        "TCP throughput, egress (tc on the data path)",
        "Gbit/s",
        Better::Higher,
        true,
    );
    eg.row("baseline: no programs", e0);
    eg.row("agent attached (XDP + tc + TCP hook)", e1);
    let mut ing = Metric::new(
        "TCP throughput, ingress (XDP on the data path)",
        "Gbit/s",
        Better::Higher,
        true,
    );
    ing.row("baseline: no programs", i0);
    ing.row("agent attached (XDP + tc + TCP hook)", i1);
    fig.metrics.push(eg);
    fig.metrics.push(ing);
    drop(server);
    fig.notes.push(
        "Why the veth rows cost so much more than the per-packet figures suggest: the agent \
         attaches XDP in native mode, and a veth with a native XDP program that is not \
         frags-aware turns TSO off on its peer (checked by hand with `ethtool -k`: \
         tcp-segmentation-offload goes off on the namespace end when the agent attaches). The \
         namespace side then sends MTU-sized segments instead of 64 KiB super-packets, so the \
         ingress direction pays the whole stack per 1500 bytes, plus the XDP parse; the egress \
         direction loses less (only its ACKs come back through XDP)."
            .into(),
    );
    fig.notes.push(
        "The per-packet cost (~10x an empty program) is the parser: every header field is read \
         with a `bpf_xdp_load_bytes` / `bpf_skb_load_bytes` helper call (about a dozen per \
         frame, chosen in enforcer-ebpf/src/packet.rs to satisfy the verifier), then one hash \
         lookup with a 40-byte key; the drop path adds only a per-CPU counter."
            .into(),
    );
    Ok(fig)
}

/// Figure 4: bytes of denied (GnuTLS) connections that reach the peer.
pub fn leak(ctx: &Ctx) -> Result<Figure> {
    let n_denied = if ctx.quick { 20 } else { 1000 };
    let n_base = if ctx.quick { 3 } else { 20 };
    let workers = 8;
    let ns = &ctx.ns;
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let (_server, lines, _) = env::tls_server(
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

    println!("bench: figure 4, {n_base} GnuTLS connections without enforcer");
    let base_clients = clients(n_base);
    let base = collect(n_base)?;
    if base.iter().all(|c| c[2] == 0) {
        bail!(
            "without enforcer the peer received no application bytes over {} connections: the \
             measurement is broken",
            base.len()
        );
    }

    println!("bench: figure 4, {n_denied} GnuTLS connections denied by policy (enforce mode)");
    let mut agent = ctx.agent(&[&ns.host_if], ENFORCE_OPENSSL_ONLY)?;
    let held = bpf::held_by(agent.pid())?;
    let stats = held.stats(STATS_ENTRIES)?;
    let tc0 = stats.percpu_sum(1)?;
    let t0 = Instant::now();
    let denied_clients = clients(n_denied);
    let wall = t0.elapsed().as_secs_f64();
    let denied = collect(n_denied)?;
    agent.settle(Duration::from_millis(500), Duration::from_secs(10));
    let tc_drops = stats.percpu_sum(1)? - tc0;
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
         removes them; see figure 5 on why it does not).",
        denied.len()
    ));
    Ok(fig)
}

/// Figure 5: 10,000 TLS connections as fast as they go.
pub fn churn(ctx: &Ctx) -> Result<Figure> {
    let runs = ctx.runs(3);
    let n: usize = if ctx.quick { 300 } else { 10_000 };
    let threads = 4;
    let cert = Cert::new(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    let churn_once = |port: u16| -> Result<(f64, f64, f64)> {
        let v = env::run_json(
            ctx.tlsperf().args([
                "churn",
                LOOPBACK,
                &port.to_string(),
                &n.to_string(),
                &threads.to_string(),
                "32",
            ]),
            Duration::from_secs(600),
        )?;
        Ok((f(&v, "rate")?, f(&v, "connections")?, f(&v, "seconds")?))
    };
    // A fresh server (and port, picked by the kernel) per run: one run's closed 4-tuples never
    // collide with the next run's.
    let mut base_rate = vec![];
    ctx.quiesce();
    for r in 0..runs {
        println!("bench: figure 5, baseline run {}/{runs}", r + 1);
        let (_server, _, port) = env::tls_server(&ctx.tlsperf, None, "server", LOOPBACK, 0, &cert)?;
        base_rate.push(churn_once(port)?.0);
    }

    ctx.quiesce();
    let mut agent = ctx.agent(&[&ctx.ns.host_if], ENFORCE_OPENSSL_ONLY)?;
    let pid = agent.pid();
    let held = bpf::held_by(pid)?;
    let stats = held.stats(STATS_ENTRIES)?;
    let flows = held.flows()?;
    let mut flows_left = vec![];
    let (_, hwm_ready, rss_ready) = env::proc_usage(pid)?;
    let (mut rate, mut client_frac, mut server_frac) = (vec![], vec![], vec![]);
    let (mut lost, mut attributed, mut cpu_s, mut cpu_pct, mut hwm) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut seen = agent.connections().len();
    for r in 0..runs {
        println!("bench: figure 5, with enforcer run {}/{runs}", r + 1);
        let (_server, _, port) = env::tls_server(&ctx.tlsperf, None, "server", LOOPBACK, 0, &cert)?;
        let (cpu0, _, _) = env::proc_usage(pid)?;
        let lost0 = stats.percpu_sum(2)?;
        let attr0 = stats.percpu_sum(3)?;
        let t0 = Instant::now();
        let (rt, ok, _) = churn_once(port)?;
        agent.settle(Duration::from_millis(500), Duration::from_secs(15));
        let elapsed = t0.elapsed().as_secs_f64();
        let (cpu1, hwm1, _) = env::proc_usage(pid)?;
        flows_left.push(flows.count()? as f64);
        let events = agent.connections();
        let new = &events[seen..];
        seen = events.len();
        let client = new
            .iter()
            .filter(|v| v["comm"] == "tlsperf" && v["remote"]["port"] == port)
            .count();
        let server = new
            .iter()
            .filter(|v| v["comm"] == "tlsperf" && v["local"]["port"] == port)
            .count();
        rate.push(rt);
        client_frac.push(client as f64 / ok * 100.0);
        server_frac.push(server as f64 / ok * 100.0);
        lost.push((stats.percpu_sum(2)? - lost0) as f64);
        attributed.push((stats.percpu_sum(3)? - attr0) as f64);
        cpu_s.push(cpu1 - cpu0);
        cpu_pct.push((cpu1 - cpu0) / elapsed * 100.0);
        hwm.push(hwm1 as f64 / 1048576.0);
    }
    agent.stop_timed(Duration::from_secs(600));

    let mut m_rate = Metric::new(
        "TLS connections per second (full handshakes)",
        "1/s",
        Better::Higher,
        true,
    );
    m_rate.row("baseline: no enforcer", base_rate);
    m_rate.row("enforcer, enforce mode (OpenSSL allowed)", rate);
    let mut m_attr = Metric::new(
        "attributed fraction: connection events / connections made",
        "%",
        Better::Neither,
        false,
    );
    m_attr.row(
        "client side (event with remote port = server port)",
        client_frac,
    );
    m_attr.row(
        "server side (event with local port = server port)",
        server_frac,
    );
    let mut m_lost = Metric::new(
        "ring buffer and attribution counters (kernel STATS map)",
        "count per run",
        Better::Neither,
        false,
    );
    m_lost.row("EVENTS_LOST (ring buffer full)", lost);
    m_lost.row("FLOWS_ATTRIBUTED (events submitted or lost)", attributed);
    m_lost.row(
        "FLOWS entries after the run, all its connections closed (cumulative, 0 expected)",
        flows_left.clone(),
    );
    let mut m_cpu = Metric::new(
        "agent CPU time (user + system, /proc/PID/stat)",
        "s per run",
        Better::Neither,
        false,
    );
    m_cpu.row("CPU seconds per run", cpu_s);
    let mut m_share = Metric::new("agent CPU share", "% of one core", Better::Neither, false);
    m_share.row("over the run", cpu_pct);
    let mut m_mem = Metric::new("agent peak RSS (VmHWM)", "MiB", Better::Lower, true);
    m_mem.row("after ready (idle)", vec![hwm_ready as f64 / 1048576.0]);
    m_mem.row("after each churn run", hwm);
    let mut fig = Figure {
        id: 5,
        title: format!(
            "Churn: {} TLS connections at the highest sustainable rate",
            fmt_num(n as f64)
        ),
        method: format!(
            "`tlsperf churn` over loopback: {n} connections per run, {threads} client threads \
             back to back (closed loop: as fast as the 2 cores allow), each a full TLS 1.3 \
             handshake (no tickets, no resumption) with one 32-byte exchange and close_notify; \
             OpenSSL server. {runs} runs without and {runs} with the agent (enforce mode, \
             filtering the bench's veth; one agent for all runs). The agent does not expose its \
             STATS counters yet, so the bench reads the kernel map directly (by map id from \
             /proc/PID/fdinfo) and also counts the JSON events it receives against the \
             connections made. RSS after ready: {:.1} MiB.",
            rss_ready as f64 / 1048576.0
        ),
        metrics: vec![m_rate, m_attr, m_lost, m_cpu, m_share, m_mem],
        ..Default::default()
    };
    if median(&flows_left).is_some_and(|x| x > 0.0) {
        fig.notes.push(
            "Why the attributed fraction is below 100 %: entries of closed connections stay in \
             FLOWS (row above), and a new connection that reuses a closed one's 4-tuple (loopback \
             churn reuses ephemeral ports within seconds) finds the stale entry of the same \
             library and is neither attributed nor reported. The close hook \
             (`inet_sock_set_state` → TCP_CLOSE → `forget`) runs when the socket has already \
             been unhashed and its local port released (`inet_num`/`skc_num` is 0 by then), so \
             the key it builds matches nothing. The same leaves BLOCKLIST entries of denied \
             flows behind (figure 4)."
                .into(),
        );
    }
    fig.notes.push(
        "Each connection yields two events, one per end (client and server are both OpenSSL \
         and both probed); 100 % on both sides means every connection was attributed."
            .into(),
    );
    Ok(fig)
}

/// Figure 6: spawn to `ready` with the host's libraries, and with 50 more distinct files; and
/// SIGTERM to exit, which turned out to be the slow part.
pub fn startup(ctx: &Ctx) -> Result<Figure> {
    let runs = ctx.runs(5);
    // --quick: fewer copies, because an agent with many probes takes long to exit here.
    let copies: u64 = if ctx.quick { 2 } else { 50 };
    // The +50 case can take minutes per run to exit on a loaded host: runs stop once the
    // figure has spent this long (at least one run is always made).
    let budget = Duration::from_secs(if ctx.quick { 120 } else { 240 });
    let exit_cap = Duration::from_secs(if ctx.quick { 120 } else { 300 });
    let started = Instant::now();
    let iface = ctx.ns.host_if.clone();
    let mut waits: Vec<String> = vec![];
    let mut capped = 0;
    let mut measure =
        |label: &str, runs: usize, budget: Option<Duration>| -> Result<(Vec<f64>, Vec<f64>, u64)> {
            let (mut ready, mut exit) = (vec![], vec![]);
            let mut libs = 0;
            for r in 0..runs {
                if r > 0 && budget.is_some_and(|b| started.elapsed() > b) {
                    break;
                }
                ctx.quiesce();
                println!("bench: figure 6, {label} run {}/{runs}", r + 1);
                let agent = ctx.agent(&[&iface], ENFORCE_OPENSSL_ONLY)?;
                ready.push(agent.startup.as_secs_f64() * 1e3);
                libs = agent.ready["libraries"].as_u64().unwrap_or(0);
                let (took, wchan) = agent.stop_timed(exit_cap);
                match took {
                    Some(t) => exit.push(t.as_secs_f64() * 1e3),
                    None => capped += 1,
                }
                if !wchan.is_empty() {
                    waits.push(wchan);
                }
            }
            Ok((ready, exit, libs))
        };
    let (base, base_exit, base_libs) = measure("host libraries", runs, None)?;

    let dir = tempfile::Builder::new()
        .prefix("enforcer-bench-libs-")
        .tempdir()?;
    let libssl = find_libssl()?;
    let mut paths = vec![];
    for i in 0..copies {
        let p = dir.path().join(format!("libssl-copy-{i:02}.so.3"));
        std::fs::copy(&libssl, &p)?;
        paths.push(p);
    }
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(root().join("bench/map_libs.py"))
        .args(&paths)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut helper = env::spawn(cmd, "map_libs.py")?;
    Lines::new(helper.child.stdout.take().expect("piped"))
        .wait_for("loaded", Duration::from_secs(30))?;
    let (more, more_exit, more_libs) = measure("+copies", runs, Some(budget))?;
    drop(helper);
    // Other processes' libraries come and go (cargo's static OpenSSL): only a count below the
    // number of copies proves the copies were missed.
    if more_libs < copies {
        bail!(
            "with {copies} mapped copies of libssl the agent found {more_libs} libraries \
             (without: {base_libs}): the copies were not discovered"
        );
    }
    let host = format!("host libraries only ({base_libs} found)");
    let plus =
        format!("+ {copies} distinct copies of libssl.so.3 mapped by a helper ({more_libs} found)");
    let mut m = Metric::new(
        "spawn of `enforcer attach` to its ready line",
        "ms",
        Better::Lower,
        true,
    );
    m.row(&host, base);
    m.row(&plus, more);
    let mut x = Metric::new(
        "SIGTERM to process exit (links closed in the kernel)",
        "ms",
        Better::Lower,
        true,
    );
    x.row(&host, base_exit);
    x.row(&plus, more_exit);
    let mut fig = Figure {
        id: 6,
        title: "Start-up: from spawn to enforcing (and back)".into(),
        method: format!(
            "Time from spawning `enforcer attach --iface <veth> --policy <enforce, OpenSSL \
             only> --events json` to its `ready` line (XDP and tc attached, all libraries \
             probed), and from SIGTERM to the process's exit (it turns zombie once the kernel has \
             closed its links; capped at {} s). enforcer always scans the standard library \
             directories and /proc/*/maps, so the smallest case is this host's own TLS libraries \
             (count in the row; it includes libraries other running processes map, e.g. cargo's \
             static OpenSSL), not exactly 1. The second row adds {copies} byte-identical copies \
             of {} (distinct inodes, so {copies} more libraries to identify and up to 7 uprobe + \
             uretprobe pairs each), mapped by a python3 ctypes helper. {runs} runs each; the \
             second row stops early once the figure has run {} s.",
            exit_cap.as_secs(),
            libssl.display(),
            budget.as_secs()
        ),
        metrics: vec![m, x],
        ..Default::default()
    };
    if capped > 0 {
        fig.notes.push(format!(
            "{capped} exit(s) took longer than the {} s cap and are missing from the exit row.",
            exit_cap.as_secs()
        ));
    }
    waits.sort();
    waits.dedup();
    if !waits.is_empty() {
        fig.notes.push(format!(
            "While exiting, the agent mostly waited in the kernel in: {} (`/proc/PID/wchan`). \
             Each uprobe is a separate perf-event link, and closing one waits for an RCU grace \
             period before the next: hundreds of probes cost hundreds of grace periods, which on \
             a loaded 2-CPU guest are long.",
            waits.join(", ")
        ));
    }
    Ok(fig)
}

fn find_libssl() -> Result<PathBuf> {
    for p in [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
        "/usr/lib64/libssl.so.3",
        "/usr/lib/libssl.so.3",
    ] {
        if Path::new(p).exists() {
            return Ok(std::fs::canonicalize(p)?);
        }
    }
    bail!("libssl.so.3 not found")
}

/// What traps cost here: explains figures 1 and 2.
pub fn calibrate(tlsperf: &Path) -> Result<(f64, f64)> {
    let v = env::run_json(Command::new(tlsperf).arg("calib"), Duration::from_secs(60))?;
    Ok((f(&v, "syscall_ns")?, f(&v, "int3_sigtrap_ns")?))
}
