//! Figures, their statistics (median, min–max, ratio to the baseline), and the two report files.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// Which direction is good for a metric (decides how the cost is signed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Neither: reported, no cost computed.
    Neither,
}

/// One configuration measured several times.
#[derive(Clone, Debug)]
pub struct Row {
    pub config: String,
    pub samples: Vec<f64>,
    /// Why there is no number (the configuration could not run), or a remark.
    pub note: Option<String>,
}

/// One quantity, measured in several configurations; `rows[0]` is the baseline when
/// `baseline` is set.
#[derive(Clone, Debug)]
pub struct Metric {
    pub name: String,
    pub unit: String,
    pub better: Better,
    pub baseline: bool,
    pub rows: Vec<Row>,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub what: String,
    /// None: could not be judged (a number is missing).
    pub met: Option<bool>,
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
pub struct Figure {
    pub id: u32,
    pub title: String,
    pub method: String,
    pub metrics: Vec<Metric>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
    /// The figure could not be measured (something is broken).
    pub error: Option<String>,
    pub seconds: f64,
    /// Other enforcer processes seen on the host while this figure ran (their uprobes and
    /// hooks are global, so they add to every configuration).
    pub foreign_agents: usize,
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn min_max(v: &[f64]) -> Option<(f64, f64)> {
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

impl Metric {
    pub fn new(name: &str, unit: &str, better: Better, baseline: bool) -> Metric {
        Metric {
            name: name.into(),
            unit: unit.into(),
            better,
            baseline,
            rows: vec![],
        }
    }

    pub fn row(&mut self, config: &str, samples: Vec<f64>) -> &mut Row {
        self.rows.push(Row {
            config: config.into(),
            samples,
            note: None,
        });
        self.rows.last_mut().expect("just pushed")
    }

    /// The row's median divided by the baseline's median.
    pub fn ratio(&self, row: &Row) -> Option<f64> {
        if !self.baseline {
            return None;
        }
        let base = median(&self.rows.first()?.samples)?;
        let value = median(&row.samples)?;
        (base != 0.0).then(|| value / base)
    }

    /// Cost in percent (positive = worse than the baseline).
    pub fn cost_pct(&self, row: &Row) -> Option<f64> {
        let r = self.ratio(row)?;
        match self.better {
            Better::Higher => Some((1.0 - r) * 100.0),
            Better::Lower => Some((r - 1.0) * 100.0),
            Better::Neither => None,
        }
    }

    pub fn find(&self, config: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.config == config)
    }
}

impl Row {
    pub fn note(&mut self, note: impl Into<String>) -> &mut Row {
        self.note = Some(note.into());
        self
    }
}

/// 3 significant digits, thousands grouped, no exponent.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let a = x.abs();
    let decimals = if a == 0.0 || a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    let s = format!("{:.*}", decimals, x);
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

pub struct Machine {
    pub fields: Vec<(String, String)>,
}

pub fn to_json(
    machine: &Machine,
    figures: &[Figure],
    goals: &[Target],
    quick: bool,
    command: &str,
    seconds: f64,
) -> Value {
    let figs: Vec<Value> = figures
        .iter()
        .map(|f| {
            let metrics: Vec<Value> = f
                .metrics
                .iter()
                .map(|m| {
                    let rows: Vec<Value> = m
                        .rows
                        .iter()
                        .map(|r| {
                            let mm = min_max(&r.samples);
                            json!({
                                "config": r.config,
                                "samples": r.samples,
                                "median": median(&r.samples),
                                "min": mm.map(|x| x.0),
                                "max": mm.map(|x| x.1),
                                "ratio": m.ratio(r),
                                "cost_pct": m.cost_pct(r),
                                "note": r.note,
                            })
                        })
                        .collect();
                    json!({
                        "name": m.name,
                        "unit": m.unit,
                        "better": format!("{:?}", m.better).to_lowercase(),
                        "first_row_is_baseline": m.baseline,
                        "rows": rows,
                    })
                })
                .collect();
            let targets: Vec<Value> = f
                .targets
                .iter()
                .map(|t| json!({"what": t.what, "met": t.met, "detail": t.detail}))
                .collect();
            json!({
                "id": f.id,
                "title": f.title,
                "method": f.method,
                "metrics": metrics,
                "targets": targets,
                "notes": f.notes,
                "error": f.error,
                "seconds": f.seconds,
                "foreign_agents": f.foreign_agents,
            })
        })
        .collect();
    let machine: serde_json::Map<String, Value> = machine
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let goals: Vec<Value> = goals
        .iter()
        .map(|t| json!({"what": t.what, "met": t.met, "detail": t.detail}))
        .collect();
    json!({
        "schema": 1,
        "quick": quick,
        "command": command,
        "seconds": seconds,
        "machine": machine,
        "goals": goals,
        "figures": figs,
    })
}

pub fn to_markdown(
    machine: &Machine,
    figures: &[Figure],
    goals: &[Target],
    quick: bool,
    command: &str,
    seconds: f64,
    preamble: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# enforcer benchmark report\n");
    if quick {
        let _ = writeln!(
            s,
            "**Quick run** (`--quick`): every figure once with small counts, to check that the \
             benchmarks still run. These numbers are not meaningful.\n"
        );
    }
    let _ = writeln!(
        s,
        "Written by `{command}` in {}. Method and caveats: `docs/benchmarks.md`.\n",
        fmt_duration(seconds)
    );
    s.push_str(preamble);
    let _ = writeln!(s, "## Machine\n\n| | |\n| --- | --- |");
    for (k, v) in &machine.fields {
        let _ = writeln!(s, "| {k} | {} |", v.replace('|', "\\|"));
    }
    s.push('\n');

    let met = |t: &Target| match t.met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not judged",
    };
    let _ = writeln!(
        s,
        "## Targets\n\nThe goals of issue 14 (and issue 13's misattribution count), judged from \
         this run; for a goal not met, the measured breakdown.\n\n| goal | met | measured |\n\
         | --- | --- | --- |"
    );
    for t in goals {
        let _ = writeln!(s, "| {} | {} | {} |", t.what, met(t), t.detail);
    }
    let _ = writeln!(
        s,
        "\n### Targets by figure\n\n| figure | target | met | detail |\n| --- | --- | --- | --- |"
    );
    for f in figures {
        for t in &f.targets {
            let _ = writeln!(s, "| {} | {} | {} | {} |", f.id, t.what, met(t), t.detail);
        }
    }
    s.push('\n');

    for f in figures {
        let _ = writeln!(s, "## {}. {}\n", f.id, f.title);
        let _ = writeln!(s, "{}\n", f.method);
        if let Some(e) = &f.error {
            let _ = writeln!(s, "**Could not be measured:** {e}\n");
        }
        for m in &f.metrics {
            let _ = writeln!(s, "**{}** ({})\n", m.name, m.unit);
            let _ = writeln!(
                s,
                "| configuration | median | min – max | runs | ratio | cost |\n| --- | ---: | ---: | ---: | ---: | ---: |"
            );
            for (i, r) in m.rows.iter().enumerate() {
                let med = median(&r.samples).map_or("–".into(), fmt_num);
                let spread = min_max(&r.samples).map_or("–".into(), |(a, b)| {
                    format!("{} – {}", fmt_num(a), fmt_num(b))
                });
                let ratio = if m.baseline && i == 0 {
                    "baseline".into()
                } else {
                    m.ratio(r).map_or("".into(), |x| format!("{x:.3}"))
                };
                let cost = if m.baseline && i == 0 {
                    String::new()
                } else {
                    m.cost_pct(r).map_or("".into(), |x| format!("{x:+.1} %"))
                };
                let mut config = r.config.clone();
                if let Some(n) = &r.note {
                    let _ = write!(config, " — {n}");
                }
                let _ = writeln!(
                    s,
                    "| {config} | {med} | {spread} | {} | {ratio} | {cost} |",
                    r.samples.len()
                );
            }
            s.push('\n');
        }
        if f.foreign_agents > 0 {
            let _ = writeln!(
                s,
                "- Noise: {} other enforcer process(es) (other sessions' tests) ran on the host \
                 during this figure; their uprobes are global and add to every configuration.",
                f.foreign_agents
            );
        }
        for n in &f.notes {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(s, "- Took {}.\n", fmt_duration(f.seconds));
    }
    s
}

pub fn fmt_duration(secs: f64) -> String {
    if secs >= 60.0 {
        format!("{}m{:02.0}s", (secs / 60.0).floor(), secs % 60.0)
    } else {
        format!("{secs:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_ratios_costs() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let mut m = Metric::new("rate", "1/s", Better::Higher, true);
        m.row("baseline", vec![100.0, 110.0, 90.0]);
        m.row("with", vec![95.0]);
        let with = m.rows[1].clone();
        assert_eq!(m.ratio(&with), Some(0.95));
        assert!((m.cost_pct(&with).unwrap() - 5.0).abs() < 1e-9);
        let mut l = Metric::new("ns", "ns", Better::Lower, true);
        l.row("empty", vec![10.0]);
        l.row("prog", vec![15.0]);
        let prog = l.rows[1].clone();
        assert!((l.cost_pct(&prog).unwrap() - 50.0).abs() < 1e-9);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(1234567.8), "1,234,568");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(0.5), "0.500");
        assert_eq!(fmt_num(-1500.0), "-1,500");
        assert_eq!(fmt_num(0.0), "0");
    }
}
