//! `target/vm/report.md`: the kernels, every cell of the matrix, `check-kernel` in each VM and
//! the kernel options that decide it.

use std::{fmt::Write as _, time::Duration};

use super::{Outcome, Row, boot::KernelRun, count, short};
use crate::root;

pub fn report(runs: &[KernelRun], rows: &[Row], total: Duration) -> String {
    let mut r = String::new();
    let c = count(rows);
    let _ = writeln!(r, "# VM kernel matrix\n");
    let _ = writeln!(
        r,
        "{} passed, {} failed, {} unsupported; {:.0} s in all (`cargo xtask vm`, QEMU {}).\n",
        c.passed,
        c.failed,
        c.unsupported,
        total.as_secs_f64(),
        if std::env::var("ENFORCER_VM_ACCEL").is_ok_and(|a| a == "kvm") {
            "KVM"
        } else {
            "TCG"
        }
    );
    let _ = writeln!(
        r,
        "| kernel | package | boot to /init | VM wall time | log |"
    );
    let _ = writeln!(r, "| --- | --- | --- | --- | --- |");
    for k in runs {
        let _ = writeln!(
            r,
            "| {} | {} ({}) | {} | {:.0} s | {} |",
            k.series,
            k.package,
            k.origin,
            k.boot_s.map_or("-".into(), |s| format!("{s:.1} s")),
            k.wall_s,
            k.log.strip_prefix(root()).unwrap_or(&k.log).display()
        );
    }
    let _ = writeln!(r, "\n| kernel | hook | test | result | time / reason |");
    let _ = writeln!(r, "| --- | --- | --- | --- | --- |");
    for row in rows {
        let (result, note) = match &row.outcome {
            Outcome::Pass(s) => ("pass".to_string(), format!("{s:.1} s")),
            Outcome::Fail(why) => ("**FAIL**".to_string(), short(why, 200)),
            Outcome::Unsupported(why) => ("unsupported".to_string(), short(why, 200)),
        };
        let _ = writeln!(
            r,
            "| {} | {} | {} | {result} | {} |",
            row.kernel,
            row.form,
            row.test,
            note.replace('|', "\\|")
        );
    }
    let mut checks = String::new();
    for k in runs {
        for (form, line) in &k.checks {
            let _ = writeln!(
                checks,
                "- {} {form}: {}",
                k.series,
                short(line, 300).replace('|', "\\|")
            );
        }
        if let Some(e) = &k.error {
            let _ = writeln!(checks, "- {}: not run: {e}", k.series);
        }
    }
    if !checks.is_empty() {
        let _ = writeln!(r, "\n`enforcer check-kernel` in each VM:\n\n{checks}");
    }
    let with_config: Vec<&KernelRun> = runs.iter().filter(|k| !k.config.is_empty()).collect();
    if !with_config.is_empty() {
        let _ = write!(
            r,
            "\nKernel config (`y` built in, `m` module loaded from the package):\n\n| option |"
        );
        for k in &with_config {
            let _ = write!(r, " {} |", k.series);
        }
        let _ = write!(r, "\n| --- |");
        for _ in &with_config {
            let _ = write!(r, " --- |");
        }
        let _ = writeln!(r);
        for (i, (opt, _)) in with_config[0].config.iter().enumerate() {
            let _ = write!(r, "| {opt} |");
            for k in &with_config {
                let _ = write!(r, " {} |", k.config.get(i).map_or("?", |c| c.1.as_str()));
            }
            let _ = writeln!(r);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_every_cell() {
        let rows = vec![
            Row {
                kernel: "6.1".into(),
                form: "kprobe",
                test: "t1".into(),
                outcome: Outcome::Pass(12.0),
            },
            Row {
                kernel: "6.1".into(),
                form: "tracepoint",
                test: "t1".into(),
                outcome: Outcome::Unsupported("no tp | x".into()),
            },
            Row {
                kernel: "6.12".into(),
                form: "fentry",
                test: "t1".into(),
                outcome: Outcome::Fail("boom".into()),
            },
        ];
        let r = report(&[], &rows, Duration::from_secs(5));
        assert!(r.contains("1 passed, 1 failed, 1 unsupported"));
        assert!(r.contains("| 6.1 | kprobe | t1 | pass | 12.0 s |"));
        assert!(r.contains("| 6.1 | tracepoint | t1 | unsupported | no tp \\| x |"));
        assert!(r.contains("| 6.12 | fentry | t1 | **FAIL** | boom |"));
    }
}
