//! Figure 3: what the XDP and tc programs cost per packet, and TCP throughput across the veth.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::Ctx;
use crate::bench::{
    agent::ENFORCE_OPENSSL_ONLY,
    bpf,
    process::{self, Lines},
    report::{Better, Figure, Metric},
};
use crate::progress::step;

const IPERF_PORT: u16 = 19201;
/// The per-packet rows of the no-match path: nothing blocked (the `BLOCKLIST` lookup skipped),
/// flows the kernel blocked in other buckets of `BLOCKLIST_BUCKETS` (skipped too), and a
/// `BLOCKLIST` that may hold the packet's flow (looked up: its bucket counts an entry, or
/// userspace blocked something).
pub const NO_MATCH_EMPTY: &str = "enforcer, no-match path, nothing blocked (passes)";
pub const NO_MATCH_OTHER_BUCKETS: &str =
    "enforcer, no-match path, flows blocked in other buckets (passes)";
pub const NO_MATCH_HOLDING: &str = "enforcer, no-match path, blocklist holding entries (passes)";
/// A TLS 1.3 ServerHello of a flow whose hello the egress judge saw: the tail call to the
/// posture reader, the read, and the `POSTURES` lookup that finds it judged (passes).
pub const SERVER_HELLO_READ: &str =
    "enforcer, a ServerHello read by the posture reader (tail call; passes)";
/// A TLS 1.3 ClientHello arriving (a client of a server on this host), in one segment: the
/// tail call to the ClientHello reader, its field walk and the `offered` event (XDP only: on
/// egress a hello is read once, when it is judged, and a repeated run finds it judged).
pub const CLIENT_HELLO_READ: &str =
    "enforcer, a ClientHello arriving, read by the offer reader (tail call, offered event; passes)";
/// The throughput rows of the two ingress forms.
pub const AGENT_TC: &str = "agent attached, ingress in tc (--ingress auto, the default on a veth)";
pub const AGENT_XDP: &str = "agent attached, ingress in XDP (--ingress xdp)";

/// (hook, program, no-match frame, drop frame, pass / drop / empty-program return values)
type Case<'a> = (&'a str, &'a bpf::Prog, Vec<u8>, Vec<u8>, u32, u32, u32);

const RUNS: usize = 5;

/// The progress bar's steps: the veth throughput runs, i.e. the baseline's two halves and each
/// agent's runs (the per-packet part between them is not a step of its own).
pub fn packets_steps(quick: bool) -> u64 {
    (3 * super::runs(quick, RUNS)) as u64
}

/// Figure 3: per-packet cost of the XDP and tc programs, and TCP throughput across the veth.
pub fn packets(ctx: &Ctx) -> Result<Figure> {
    let runs = ctx.runs(RUNS);
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
             afterwards); the return values are checked (XDP_DROP, TC_ACT_SHOT). ServerHello row: a 122-byte TLS \
             1.3 ServerHello (X25519) on the no-match 4-tuple, written into HELLOS_SEEN as if \
             its ClientHello had left: the tail call to the posture reader and the read, the \
             first run recording it in POSTURES and every later one finding it judged. \
             ClientHello row (XDP only): a 240-byte TLS 1.3 ClientHello arriving on another \
             4-tuple, read in full by the offer reader each run (on egress a hello is read \
             once, when judged). Baseline: an \
             empty program of the same type (`r0 = pass; exit`), i.e. what BPF_PROG_TEST_RUN and \
             any program cost. {runs} runs each. Throughput: iperf3 (Debian) over the veth pair \
             into the bench's network namespace, 1 stream, {} s per run, with no agent vs with the \
             agent (enforce mode) attached to the host end, its ingress in XDP (`--ingress xdp`, \
             the agent of the per-packet runs) and in tc (`--ingress auto`, the default, which \
             takes tc on a veth); egress = data leaves through tc, ingress (`-R`) = data arrives \
             through the ingress filter. Blocks: half the baseline runs, then each agent's runs, \
             then the other half.",
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
    let mut server = process::spawn(server, "iperf3 server")?;
    let lines = Lines::new(server.child.stdout.take().expect("piped"));
    lines.wait_for("listening", Duration::from_secs(10))?;
    let iperf = |reverse: bool| -> Result<f64> {
        let mut c = Command::new("iperf3");
        c.args(["-c", &peer, "-p", &IPERF_PORT.to_string(), "-t", secs, "-J"]);
        if reverse {
            c.arg("-R");
        }
        let v = process::run_json_doc(&mut c, Duration::from_secs(60))?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .context("iperf3 printed no end.sum_received.bits_per_second")
    };
    // Blocks (baseline, agent, baseline) rather than rounds: see figure 1 on agent restarts.
    // The agent block runs inside the per-packet section below.
    // Egress (baseline, XDP agent, tc agent), then ingress in the same order.
    let mut s = [vec![], vec![], vec![], vec![], vec![], vec![]];
    // Rounds `rounds` of configuration `config` (0, 1, 2 as above): egress into `s[config]`,
    // ingress into `s[config + 3]`.
    let veth_runs =
        |s: &mut [Vec<f64>; 6], what: &str, rounds: std::ops::Range<usize>, config: usize| {
            for r in rounds {
                step!("bench: figure 3, veth {what} {}/{runs}", r + 1);
                s[config].push(iperf(false)?);
                s[config + 3].push(iperf(true)?);
            }
            anyhow::Ok(())
        };
    let half = runs.div_ceil(2);
    ctx.quiesce();
    veth_runs(&mut s, "baseline", 0..half, 0)?;
    // --- per packet -------------------------------------------------------------------------
    {
        ctx.quiesce();
        // XDP ingress, so that its program is there to measure.
        let agent = ctx.agent_with(&[&ns.host_if], ENFORCE_OPENSSL_ONLY, &["--ingress", "xdp"])?;
        let held = bpf::held_by(agent.pid())?;
        let xdp = held.prog(bpf::PROG_TYPE_XDP)?;
        let tc = held.prog(bpf::PROG_TYPE_SCHED_CLS)?;
        let blocklist = held.blocklist()?;
        let (hellos_seen, postures) = (held.hellos_seen()?, held.postures()?);
        // Slot 1 (userspace) of BLOCKLIST_HELD switches the programs' BLOCKLIST lookup on (1) or
        // off (0, the path of a host with nothing blocked); slot 0 counts the kernel's blocks.
        let blocklist_held = held.blocklist_held()?;
        let set_held = |on: u64| blocklist_held.insert(&1u32.to_ne_bytes(), &on.to_ne_bytes());
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
        for (_, local, other, remote) in &families {
            blocklist.insert(&bpf::flow_key(*local, *remote), &[1])?;
            // The no-match flow's hello "left": its ServerHello frames are read.
            hellos_seen.insert(&bpf::flow_key(*other, *remote), &0u32.to_ne_bytes())?;
        }
        // The buckets of the blocked 4-tuples (the drop frames'), counted up by one for the
        // "other buckets" case and put back as the agent had them afterwards.
        let buckets = held.blocklist_buckets()?;
        let drop_buckets: Vec<(u32, u64)> = families
            .iter()
            .map(|(_, local, _, remote)| {
                let b = bpf::bucket_of(*local, *remote);
                Ok((b, buckets.u64_at(b)?))
            })
            .collect::<Result<_>>()?;
        for (fam, _, other, remote) in &families {
            if drop_buckets
                .iter()
                .any(|(b, _)| *b == bpf::bucket_of(*other, *remote))
            {
                bail!("{fam}: the no-match frame's flow shares a bucket with a blocked one");
            }
        }
        let set_buckets = |raised: bool| -> Result<()> {
            for (b, was) in &drop_buckets {
                buckets.insert(&b.to_ne_bytes(), &(was + u64::from(raised)).to_ne_bytes())?;
            }
            Ok(())
        };
        let result = (|| -> Result<Vec<Metric>> {
            let mut metrics = vec![];
            for (fam, local, other, remote) in &families {
                // Ingress frames come from the remote end; egress frames from us.
                let hello = bpf::server_hello_record();
                let offer = bpf::client_hello_record();
                // Not the ServerHello row's 4-tuple: that flow's hello "left" (HELLOS_SEEN), and
                // a ClientHello arriving on it is not read.
                let offer_local = SocketAddr::new(other.ip(), 40002);
                let cases: [(Case, Vec<u8>, Option<Vec<u8>>); 2] = [
                    (
                        (
                            "XDP (ingress)",
                            &xdp,
                            bpf::tcp_frame(*remote, *other, 64),
                            bpf::tcp_frame(*remote, *local, 64),
                            2,
                            1,
                            2,
                        ),
                        bpf::tcp_frame_with(*remote, *other, &hello),
                        Some(bpf::tcp_frame_with(*remote, offer_local, &offer)),
                    ),
                    (
                        (
                            "tc (egress)",
                            &tc,
                            bpf::tcp_frame(*other, *remote, 64),
                            bpf::tcp_frame(*local, *remote, 64),
                            enforcer_common::tc_return::PASS_U32,
                            2,
                            0,
                        ),
                        bpf::tcp_frame_with(*other, *remote, &hello),
                        None,
                    ),
                ];
                for (
                    (hook, prog, nomatch, drop, pass_rv, drop_rv, empty_rv),
                    server_hello,
                    offer,
                ) in cases
                {
                    let empty = if hook.starts_with("XDP") {
                        &empty_xdp
                    } else {
                        &empty_tc
                    };
                    let mut s = [vec![], vec![], vec![], vec![], vec![], vec![], vec![]];
                    for _ in 0..runs {
                        let offer_case = offer.as_ref().map(|f| (prog, f, pass_rv, 0, false));
                        for (i, (p, pkt, want, lookup, raised)) in [
                            Some((empty, &nomatch, empty_rv, 0, false)),
                            Some((prog, &nomatch, pass_rv, 0, false)),
                            Some((prog, &nomatch, pass_rv, 0, true)),
                            Some((prog, &nomatch, pass_rv, 1, false)),
                            Some((prog, &drop, drop_rv, 1, false)),
                            Some((prog, &server_hello, pass_rv, 0, false)),
                            offer_case,
                        ]
                        .into_iter()
                        .enumerate()
                        .filter_map(|(i, c)| Some((i, c?)))
                        {
                            set_held(lookup)?;
                            set_buckets(raised)?;
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
                    let [a, b, c, d, e, f, g] = s;
                    m.row("baseline: empty program", a);
                    m.row(NO_MATCH_EMPTY, b);
                    m.row(NO_MATCH_OTHER_BUCKETS, c);
                    m.row(NO_MATCH_HOLDING, d);
                    m.row("enforcer, drop path (4-tuple in BLOCKLIST)", e);
                    m.row(SERVER_HELLO_READ, f);
                    if !g.is_empty() {
                        m.row(CLIENT_HELLO_READ, g);
                    }
                    metrics.push(m);
                }
            }
            Ok(metrics)
        })();
        // Back on for good, as the agent's own blocks would leave it (sticky).
        set_held(1)?;
        set_buckets(false)?;
        for (_, local, other, remote) in &families {
            let _ = blocklist.remove(&bpf::flow_key(*local, *remote));
            let _ = hellos_seen.remove(&bpf::flow_key(*other, *remote));
            let _ = postures.remove(&bpf::flow_key(*other, *remote));
        }
        fig.metrics.extend(result?);
        // The same agent for the veth runs: one agent start and exit per figure.
        veth_runs(&mut s, "with agent (XDP ingress)", 0..runs, 1)?;
        agent.stop_timed(Duration::from_secs(600));
    }
    ctx.quiesce();
    fig.metrics.extend(super::packets_host::host_layer(
        ctx,
        &ns.host_if,
        repeat,
        runs,
    )?);
    ctx.quiesce();
    let agent = ctx.agent(&[&ns.host_if], ENFORCE_OPENSSL_ONLY)?;
    veth_runs(&mut s, "with agent (tc ingress)", 0..runs, 2)?;
    agent.stop_timed(Duration::from_secs(600));

    ctx.quiesce();
    veth_runs(&mut s, "baseline", half..runs, 0)?;
    let [e0, e1, e2, i0, i1, i2] = s;
    let mut eg = Metric::new(
        "TCP throughput, egress (tc on the data path)",
        "Gbit/s",
        Better::Higher,
        true,
    );
    eg.row("baseline: no programs", e0);
    eg.row(AGENT_TC, e2);
    eg.row(AGENT_XDP, e1);
    let mut ing = Metric::new(
        "TCP throughput, ingress (the ingress filter on the data path)",
        "Gbit/s",
        Better::Higher,
        true,
    );
    ing.row("baseline: no programs", i0);
    ing.row(AGENT_TC, i2);
    ing.row(AGENT_XDP, i1);
    fig.metrics.push(eg);
    fig.metrics.push(ing);
    drop(server);
    fig.notes.push(
        "Why the XDP rows cost so much more than the per-packet figures suggest: a veth with a \
         native XDP program (frags-aware or not) turns GSO off on its peer and copies every \
         cloned skb into an XDP buffer, so the namespace side sends MTU-sized segments and \
         the ingress direction pays the whole stack per 1500 bytes plus a copy, where the tc \
         ingress classifier runs once per GRO-aggregated skb without a copy. This is why \
         `--ingress auto` (the default) takes tc on a veth; the egress direction loses less \
         under XDP (only its ACKs come back through it)."
            .into(),
    );
    fig.notes.push(
        "The per-packet cost: the headers are read with direct packet access, one bounds check \
         per header (enforcer-ebpf/src/packet/direct.rs; the load helpers only for headers past \
         the linear part), then one hash lookup with a 40-byte key; tc adds the ClientHello \
         check's two bpf_skb_load_bytes calls on a data segment; the drop path adds only a \
         per-CPU counter."
            .into(),
    );
    fig.notes.push(
        "The host layer (`--host-layer cgroup`, off by default) runs for every packet of every \
         socket on the host, on every interface: its rows are the cgroup_skb egress program \
         against an empty cgroup_skb program, in the same rounds. It reads the headers with direct \
         packet access from the IP header (where cgroup_skb starts) and checks the blocklist's \
         bucket."
            .into(),
    );
    Ok(fig)
}
