//! `cargo xtask bench`: what enforcement costs, measured against a baseline (and a peer) in one
//! run, written to `bench/REPORT.md` and `bench/report.json`. Method: `docs/benchmarks.md`.
//!
//! Benchmarks are not tests: no figure fails on a slow number. The command fails only when
//! something is broken (a tool does not start, a program returns the wrong verdict); the other
//! figures still run and the report says which one could not be measured and why.

mod agent;
mod bpf;
mod env;
mod figures;
mod goals;
mod process;
mod report;

use std::{
    collections::BTreeSet,
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    progress::{self, Progress, say, say_err},
    require_root, root, setup, target_dir,
};
use report::{Figure, fmt_duration, fmt_num, median};

pub struct Options {
    /// Each figure once, small counts (does it still run?).
    pub quick: bool,
    /// Figures to run (1..=10); empty: all.
    pub only: Vec<u32>,
    /// Directory for REPORT.md and report.json. Default: `bench/` (full run) or
    /// `target/bench/quick/` (quick run, so the committed report is not overwritten).
    pub out: Option<PathBuf>,
    /// The enforcer binary. Default: build and use `target/release/enforcer`.
    pub enforcer: Option<PathBuf>,
}

pub fn run(opts: Options) -> Result<()> {
    require_root("bench")?;
    let started = Instant::now();
    for id in &opts.only {
        if !(1..=10).contains(id) {
            bail!("there is no figure {id} (figures are 1 to 10)");
        }
    }
    let enforcer = match &opts.enforcer {
        Some(p) => p.clone(),
        None => {
            setup::setup()?;
            crate::cargo(&["build", "--release", "-p", "enforcer"])?;
            target_dir().join("release/enforcer")
        }
    };
    if !enforcer.is_file() {
        bail!("{} does not exist", enforcer.display());
    }
    env::ensure_packages()?;
    let tlsperf = env::build_tlsperf()?;
    let bcc_src = env::bcc_kernel_source().map_err(|e| format!("{e:#}"));
    let ns = catch_unwind(enforcer_tests::NetNs::new)
        .map_err(|_| anyhow::anyhow!("cannot create the bench's network namespace"))?;
    let ctx = figures::Ctx {
        quick: opts.quick,
        enforcer: enforcer.clone(),
        tlsperf: tlsperf.clone(),
        ns,
        bcc_src,
    };
    let bpf_stats = env::BpfStatsOff::new();
    let mut machine = env::machine(&enforcer);
    machine.fields.push((
        "BPF run-time stats (kernel.bpf_stats_enabled)".into(),
        bpf_stats.describe(),
    ));
    let mut trap_ns = None;
    match figures::calibrate(&tlsperf) {
        Ok((sys, trap)) => {
            trap_ns = Some(trap);
            machine.fields.push((
                "trap costs (tlsperf calib)".into(),
                format!(
                    "syscall (getppid) {} ns; int3 breakpoint + SIGTRAP delivery {} ns",
                    fmt_num(sys),
                    fmt_num(trap)
                ),
            ));
        }
        Err(e) => eprintln!("bench: calibration failed: {e:#}"),
    }
    if let Err(e) = &ctx.bcc_src {
        machine
            .fields
            .push(("BCC kernel headers".into(), format!("none: {e}")));
    }
    let wanted = |id: u32| opts.only.is_empty() || opts.only.contains(&id);

    let mut figures: Vec<Figure> = vec![];
    let mut broken: Vec<String> = vec![];
    let jobs: Vec<Job> = jobs()
        .into_iter()
        .filter(|(ids, ..)| ids.iter().any(|&i| wanted(i)))
        .collect();
    // On a terminal, a bar over every step of the chosen figures; each figure group's steps
    // are one group of the bar, so a group that breaks early moves it to the group's end.
    let bar = Progress::steps(jobs.iter().map(|j| (j.3)(opts.quick)).sum(), "steps");
    for (ids, name, job, steps) in jobs {
        progress::group(steps(opts.quick));
        progress::set_message(format!("figure(s) {ids:?}: {name}"));
        say!("bench: === figure(s) {ids:?}: {name}");
        let t = Instant::now();
        agent::NOISY_BLOCKS.store(0, Ordering::Relaxed);
        let load0 = env::load_average();
        let watch = ForeignAgents::watch();
        let result = catch_unwind(AssertUnwindSafe(|| job(&ctx)));
        let foreign = watch.stop();
        let secs = t.elapsed().as_secs_f64();
        let noisy = agent::NOISY_BLOCKS.load(Ordering::Relaxed);
        let load = format!(
            "Load average (1 min) {load0:.1} at the start, {:.1} at the end (2 CPUs).",
            env::load_average()
        );
        match result {
            Ok(Ok(figs)) => {
                let n = figs.len().max(1) as f64;
                for mut f in figs.into_iter().filter(|f| wanted(f.id)) {
                    f.seconds = secs / n;
                    f.foreign_agents = foreign;
                    f.notes.push(load.clone());
                    if noisy > 0 {
                        f.notes.push(format!(
                            "{noisy} measurement block(s) started while another session's \
                             enforcer was still running after a 60 s wait."
                        ));
                    }
                    figures.push(f);
                }
            }
            Ok(Err(e)) => {
                let e = format!("{e:#}");
                say_err!("bench: figure(s) {ids:?} broken: {e}");
                broken.push(format!("{ids:?}: {e}"));
                for id in ids.into_iter().filter(|&i| wanted(i)) {
                    figures.push(Figure {
                        id,
                        title: name.into(),
                        error: Some(e.clone()),
                        seconds: secs,
                        foreign_agents: foreign,
                        ..Default::default()
                    });
                }
            }
            Err(_) => {
                broken.push(format!("{ids:?}: panicked (see above)"));
                for id in ids.into_iter().filter(|&i| wanted(i)) {
                    figures.push(Figure {
                        id,
                        title: name.into(),
                        error: Some("panicked; the message is in the bench's output".into()),
                        seconds: secs,
                        foreign_agents: foreign,
                        ..Default::default()
                    });
                }
            }
        }
    }
    drop(bar);
    drop(ctx);

    let out = opts.out.clone().unwrap_or_else(|| {
        if opts.quick {
            target_dir().join("bench/quick")
        } else {
            root().join("bench")
        }
    });
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut command = String::from("cargo xtask bench");
    if opts.quick {
        command.push_str(" --quick");
    }
    if !opts.only.is_empty() {
        let ids: Vec<String> = opts.only.iter().map(u32::to_string).collect();
        command.push_str(&format!(" --only {}", ids.join(",")));
    }
    let secs = started.elapsed().as_secs_f64();
    let goals = goals::goals(&figures, trap_ns);
    let json = report::to_json(&machine, &figures, &goals, opts.quick, &command, secs);
    fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    let md = report::to_markdown(
        &machine,
        &figures,
        &goals,
        opts.quick,
        &command,
        secs,
        &summary(&figures),
    );
    fs::write(out.join("REPORT.md"), &md)?;
    println!("{}", summary(&figures));
    println!(
        "bench: wrote {} and {} in {}",
        out.join("REPORT.md").display(),
        out.join("report.json").display(),
        fmt_duration(secs)
    );
    if !broken.is_empty() {
        bail!(
            "{} figure group(s) could not be measured: {}",
            broken.len(),
            broken.join("; ")
        );
    }
    Ok(())
}

/// (figures, name, the measurement, its steps for the progress bar in --quick or not: the lines
/// it prints as it goes from one round or configuration to the next).
type Job = (
    Vec<u32>,
    &'static str,
    Box<dyn Fn(&figures::Ctx) -> Result<Vec<Figure>>>,
    fn(bool) -> u64,
);

/// Every figure group, in the order they run.
fn jobs() -> Vec<Job> {
    vec![
        (
            vec![1, 2],
            "TLS over loopback",
            Box::new(|c| figures::tls_loopback(c).map(|(a, b)| vec![a, b])),
            figures::loopback_steps,
        ),
        (
            vec![3],
            "packets",
            Box::new(|c| figures::packets(c).map(|f| vec![f])),
            figures::packets_steps,
        ),
        (
            vec![4],
            "leak",
            Box::new(|c| figures::leak(c).map(|f| vec![f])),
            |_| 2,
        ),
        (
            vec![5],
            "churn",
            Box::new(|c| figures::churn(c).map(|f| vec![f])),
            figures::churn_steps,
        ),
        (
            vec![6],
            "start-up",
            Box::new(|c| figures::startup(c).map(|f| vec![f])),
            figures::startup_steps,
        ),
        (
            vec![7],
            "misattribution",
            Box::new(|c| figures::misattribution(c).map(|f| vec![f])),
            |_| 1,
        ),
        (
            vec![8],
            "filtered path, plain TCP, IPv6, 8 streams, map memory",
            Box::new(|c| figures::paths(c).map(|f| vec![f])),
            figures::paths_steps,
        ),
        (
            vec![9],
            "redis over TLS",
            Box::new(|c| figures::redis(c).map(|f| vec![f])),
            figures::redis_steps,
        ),
        (
            vec![10],
            "ring buffer overflow",
            Box::new(|c| figures::overflow(c).map(|f| vec![f])),
            |_| 1,
        ),
    ]
}

/// One line per (figure, metric, configuration): median and ratio; the report's overview.
fn summary(figures: &[Figure]) -> String {
    let mut s = String::from(
        "## Summary\n\n| figure | metric | configuration | median | ratio to baseline |\n\
         | --- | --- | --- | ---: | ---: |\n",
    );
    for f in figures {
        if let Some(e) = &f.error {
            s.push_str(&format!(
                "| {} | {} | could not be measured: {e} | | |\n",
                f.id, f.title
            ));
            continue;
        }
        for m in &f.metrics {
            for (i, r) in m.rows.iter().enumerate() {
                let med = median(&r.samples)
                    .map_or_else(|| "–".into(), |x| format!("{} {}", fmt_num(x), m.unit));
                let ratio = if m.baseline && i == 0 {
                    "baseline".into()
                } else {
                    m.ratio(r).map_or(String::new(), |x| format!("{x:.3}"))
                };
                s.push_str(&format!(
                    "| {} | {} | {} | {med} | {ratio} |\n",
                    f.id, m.name, r.config
                ));
            }
        }
    }
    s.push('\n');
    s
}

/// Samples, once a second, the `enforcer` processes that are not the bench's children.
struct ForeignAgents {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<u32>>>,
    thread: thread::JoinHandle<()>,
}

impl ForeignAgents {
    fn watch() -> ForeignAgents {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let me = std::process::id();
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for pid in agent::foreign_agents(&[]) {
                    let ppid = fs::read_to_string(format!("/proc/{pid}/status"))
                        .ok()
                        .and_then(|t| {
                            t.lines()
                                .find_map(|l| l.strip_prefix("PPid:"))
                                .and_then(|p| p.trim().parse::<u32>().ok())
                        });
                    if ppid.is_some_and(|p| p != me) {
                        v.lock().expect("not poisoned").insert(pid);
                    }
                }
                thread::sleep(Duration::from_secs(1));
            }
        });
        ForeignAgents { stop, seen, thread }
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.seen.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_once_and_the_bar_steps() {
        let jobs = jobs();
        let mut ids: Vec<u32> = jobs.iter().flat_map(|j| j.0.clone()).collect();
        ids.sort();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        let steps = |quick| -> Vec<u64> { jobs.iter().map(|j| (j.3)(quick)).collect() };
        // Figures 1-2: rounds x 6 configurations (5 in --quick: no BCC floor); 3: the veth
        // runs (baseline halves, XDP agent, tc agent); 4: 2 blocks; 5, 6, 8, 9: runs x 2
        // configurations; 7 and 10: one block each.
        assert_eq!(steps(false), [30, 15, 2, 6, 10, 1, 6, 6, 1]);
        assert_eq!(steps(true), [5, 3, 2, 2, 2, 1, 2, 2, 1]);
    }
}
