//! The goals of issue 14 (and issue 13's misattribution count), judged from the figures of the
//! same run: one row each, met / not met, and for a goal not met the measured breakdown.

use super::report::{Figure, Metric, Target, fmt_num, median};

fn metric<'a>(figs: &'a [Figure], id: u32, name: &str) -> Option<&'a Metric> {
    figs.iter()
        .find(|f| f.id == id)?
        .metrics
        .iter()
        .find(|m| m.name.starts_with(name))
}

fn med(m: Option<&Metric>, config: &str) -> Option<f64> {
    median(&m?.find(config)?.samples)
}

fn cost(m: Option<&Metric>, config: &str) -> Option<f64> {
    let m = m?;
    m.cost_pct(m.find(config)?)
}

fn ratio(m: Option<&Metric>, config: &str) -> Option<f64> {
    let m = m?;
    m.ratio(m.find(config)?)
}

fn target(figs: &[Figure], id: u32, what: &str) -> Option<Target> {
    figs.iter()
        .find(|f| f.id == id)?
        .targets
        .iter()
        .find(|t| t.what.starts_with(what))
        .cloned()
}

/// `what`, judged by `met` on a number; "not measured" when the number is missing.
fn judge(what: &str, value: Option<f64>, met: impl Fn(f64) -> bool, detail: String) -> Target {
    Target {
        what: what.into(),
        met: value.map(met),
        detail: if value.is_some() {
            detail
        } else {
            format!("not measured in this run ({detail})")
        },
    }
}

const ENFORCE: &str = "enforcer, enforce mode (OpenSSL allowed)";
const FLOOR: &str = "reference: empty uprobe + uretprobe on SSL_read/SSL_write (BCC)";
const BASE: &str = "baseline: no enforcer";

/// Every goal of issue 14's table, plus issue 13's misattribution count. `trap_ns`: one int3
/// trap on this machine (`tlsperf calib`), for the breakdowns.
pub fn goals(figs: &[Figure], trap_ns: Option<f64>) -> Vec<Target> {
    let mut out = vec![];
    let trap = trap_ns.map_or(String::new(), |t| {
        format!("; one int3 trap costs {} ns here (a uprobe hit is one trap, a uretprobe adds a second)", fmt_num(t))
    });
    // Figure 1: request/response.
    let rr = metric(figs, 1, "round trips per second");
    let (e, f) = (cost(rr, ENFORCE), cost(rr, FLOOR));
    out.push(judge(
        "TLS 64-byte request/response, enforce mode: cost below the empty uprobe + uretprobe pair of the same run",
        e.zip(f).map(|(e, f)| f - e),
        |d| d > 0.0,
        format!(
            "enforcer {} vs empty pair {}{trap}",
            e.map_or("–".into(), |c| format!("{c:.1} %")),
            f.map_or("–".into(), |c| format!("{c:.1} %"))
        ),
    ));
    out.push(judge(
        "TLS 64-byte request/response, enforce mode: < 5 %",
        e,
        |c| c < 5.0,
        format!(
            "cost {}; audit mode {}, with the filters on lo {}",
            e.map_or("–".into(), |c| format!("{c:.1} %")),
            cost(rr, "enforcer, audit mode").map_or("–".into(), |c| format!("{c:.1} %")),
            cost(
                rr,
                "enforcer, enforce mode, filters also on lo (tc ingress, tc egress)"
            )
            .map_or("–".into(), |c| format!("{c:.1} %")),
        ),
    ));
    let call = metric(figs, 1, "client SSL_write call time");
    let added = |c: &str| Some(med(call, c)? - med(call, BASE)?);
    let (ce, cf) = (added(ENFORCE), added(FLOOR));
    out.push(judge(
        "added time per TLS call (measured directly) below the empty pair's",
        ce.zip(cf).map(|(e, f)| f - e),
        |d| d > 0.0,
        format!(
            "SSL_write p50 above the baseline: enforcer {} ns, empty pair {} ns; round trip p50 / \
             p99: baseline {} / {} µs, enforcer {} / {} µs{trap}",
            ce.map_or("–".into(), fmt_num),
            cf.map_or("–".into(), fmt_num),
            med(metric(figs, 1, "round trip, p50"), BASE).map_or("–".into(), fmt_num),
            med(metric(figs, 1, "round trip, p99"), BASE).map_or("–".into(), fmt_num),
            med(metric(figs, 1, "round trip, p50"), ENFORCE).map_or("–".into(), fmt_num),
            med(metric(figs, 1, "round trip, p99"), ENFORCE).map_or("–".into(), fmt_num),
        ),
    ));
    // Figure 2: bulk.
    let bulk = metric(figs, 2, "throughput");
    let b = cost(bulk, ENFORCE);
    out.push(judge(
        "bulk TLS, 16 KiB records: < 2 %",
        b,
        |c| c < 2.0,
        format!(
            "cost {}; empty pair {}",
            b.map_or("–".into(), |c| format!("{c:.1} %")),
            cost(bulk, FLOOR).map_or("–".into(), |c| format!("{c:.1} %"))
        ),
    ));
    // Figure 3: per packet and veth.
    for (hook, short) in [("XDP (ingress)", "XDP"), ("tc (egress)", "tc")] {
        for fam in ["IPv4", "IPv6"] {
            let m = metric(figs, 3, &format!("{hook}, {fam}: time per packet"));
            use crate::bench::figures::packets::{
                NO_MATCH_EMPTY, NO_MATCH_HOLDING, NO_MATCH_OTHER_BUCKETS,
            };
            let r = ratio(m, NO_MATCH_EMPTY);
            out.push(judge(
                &format!("{short} no-match per packet, {fam}: ≤ 2× an empty program"),
                r,
                |r| r <= 2.0,
                format!(
                    "nothing blocked {} ns vs empty {} ns ({}×); flows blocked in other \
                     buckets {} ns; the packet's bucket holding entries {} ns (one hash lookup \
                     of a 40-byte key); drop path {} ns",
                    med(m, NO_MATCH_EMPTY).map_or("–".into(), fmt_num),
                    med(m, "baseline: empty program").map_or("–".into(), fmt_num),
                    r.map_or("–".into(), |r| format!("{r:.1}")),
                    med(m, NO_MATCH_OTHER_BUCKETS).map_or("–".into(), fmt_num),
                    med(m, NO_MATCH_HOLDING).map_or("–".into(), fmt_num),
                    med(m, "enforcer, drop path (4-tuple in BLOCKLIST)")
                        .map_or("–".into(), fmt_num),
                ),
            ));
        }
    }
    for (dir, name) in [
        ("egress", "TCP throughput, egress"),
        ("ingress", "TCP throughput, ingress"),
    ] {
        let m = metric(figs, 3, name);
        let c = cost(m, crate::bench::figures::packets::AGENT_TC);
        let xdp = cost(m, crate::bench::figures::packets::AGENT_XDP);
        let v6 = cost(
            metric(
                figs,
                8,
                &format!("IPv6 TCP throughput across the veth, {dir}"),
            ),
            "enforcer, enforce mode, filters on the veth (tc ingress, tc egress)",
        );
        let p8 = cost(
            metric(
                figs,
                8,
                &format!("TCP throughput, 8 parallel streams (IPv4), {dir}"),
            ),
            "enforcer, enforce mode, filters on the veth (tc ingress, tc egress)",
        );
        let pct = |x: Option<f64>| x.map_or("–".into(), |c| format!("{c:.1} %"));
        out.push(judge(
            &format!("TCP across the filtered veth, {dir}: < 3 %"),
            c,
            |c| c < 3.0,
            format!(
                "IPv4 1 stream {} (figure 3; with XDP ingress {}), IPv6 {} and 8 streams {} \
                 (figure 8)",
                pct(c),
                pct(xdp),
                pct(v6),
                pct(p8)
            ),
        ));
    }
    // Figure 5: memory and attribution.
    let rss = metric(figs, 5, "agent peak RSS");
    let after = rss
        .and_then(|m| m.find("after each churn run"))
        .and_then(|r| r.samples.iter().copied().reduce(f64::max));
    out.push(judge(
        "agent RSS after 3×10,000 connections: < 50 MiB",
        after,
        |x| x < 50.0,
        format!(
            "peak {} MiB after the churn runs, {} MiB idle after ready",
            after.map_or("–".into(), fmt_num),
            med(rss, "after ready (idle)").map_or("–".into(), fmt_num)
        ),
    ));
    let attr = metric(figs, 5, "attributed fraction");
    let least = attr.and_then(|m| {
        m.rows
            .iter()
            .flat_map(|r| r.samples.iter().copied())
            .reduce(f64::min)
    });
    out.push(judge(
        "100 % attribution kept under churn",
        least,
        |x| x >= 100.0,
        format!(
            "lowest attributed fraction {} %",
            least.map_or("–".into(), fmt_num)
        ),
    ));
    match target(figs, 4, "zero application bytes") {
        Some(t) => out.push(Target {
            what: "zero leaked bytes (figure 4)".into(),
            ..t
        }),
        None => out.push(judge(
            "zero leaked bytes (figure 4)",
            None,
            |_| true,
            "figure 4".into(),
        )),
    }
    match target(figs, 7, "0 misattributions") {
        Some(t) => out.push(Target {
            what: "0 misattributions over 10,000 mixed real clients (issue 13, figure 7)".into(),
            ..t
        }),
        None => out.push(judge(
            "0 misattributions over 10,000 mixed real clients (issue 13, figure 7)",
            None,
            |_| true,
            "figure 7".into(),
        )),
    }
    out
}
