//! Figure 6: time to `ready` and SIGTERM to exit.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::Ctx;
use crate::bench::{
    agent::ENFORCE_OPENSSL_ONLY,
    process::{self, Lines},
    report::{Better, Figure, Metric},
};
use crate::progress::step;
use crate::root;

const RUNS: usize = 5;

/// The progress bar's steps: runs x (host libraries, +copies); the +copies runs may stop
/// early, at the time budget.
pub fn startup_steps(quick: bool) -> u64 {
    (2 * super::runs(quick, RUNS)) as u64
}

/// Figure 6: spawn to `ready` with the host's libraries, and with 50 more distinct files; and
/// SIGTERM to exit, which turned out to be the slow part.
pub fn startup(ctx: &Ctx) -> Result<Figure> {
    let runs = ctx.runs(RUNS);
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
                step!("bench: figure 6, {label} run {}/{runs}", r + 1);
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
    let mut helper = process::spawn(cmd, "map_libs.py")?;
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
