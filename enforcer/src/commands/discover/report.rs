//! What `enforcer discover` prints: progress on stderr, the candidates and the profile on stdout.

use std::{fmt::Write as _, time::Duration};

use super::{
    Scanned,
    analysis::{self, Role},
    probes::Loaded,
    profile::{self, ProfileInput, ProfileProbe},
    scan::PassResult,
    workload::Workload,
};

/// The rule, as printed and documented (docs/discover.md).
pub const RULE: &str = "\
Each kernel TCP send or receive made inside the library is credited to the outermost exported
library function on the thread's stack: the entry point the application called (inner functions,
such as the record layer or the transport callback at the top of the stack, are internal). An
entry point whose calls both sent and received is a handshake function, one whose calls only
sent a write function, one whose calls only received a read function (the role most of its calls
had). The profile keeps the exported entry points with at least 1/20 of the calls of the busiest
one of their role.";

pub fn header(scanned: &Scanned, loaded: &Loaded, workload: &Workload) {
    for (path, s) in scanned.files.iter().zip(&scanned.symbols) {
        let exported = s.functions.iter().filter(|f| f.exported).count();
        eprintln!(
            "[discover] {}: {} functions ({} exported, {} local{}); skipped {} indirect (ifunc), {} without code, {} aliases",
            path.display(),
            s.functions.len(),
            exported,
            s.functions.len() - exported,
            if s.has_symtab {
                " from .symtab"
            } else {
                "; no .symtab"
            },
            s.skipped_ifunc,
            s.skipped_no_code,
            s.aliases
        );
    }
    eprintln!(
        "[discover] kernel TCP hook: {} ({}); probes: {}{}",
        loaded.hook.form,
        loaded.hook.targets.join(", "),
        loaded.backend.name(),
        loaded
            .multi_error
            .as_ref()
            .map(|e| format!(" (no uprobe_multi: {e})"))
            .unwrap_or_default()
    );
    eprintln!("[discover] workload: {}", workload.describe());
}

pub struct Report<'a> {
    pub scanned: &'a Scanned,
    pub first: &'a PassResult,
    pub last: &'a PassResult,
    pub workload: &'a Workload,
    pub id: &'a str,
    pub elapsed: Duration,
    pub hook_form: &'static str,
    pub backend: &'static str,
    /// The final pass probed all candidates at once (else "outermost" is per chunk).
    pub single_chunk_final: bool,
}

pub struct Rendered {
    pub report: String,
    pub policy: String,
}

impl Report<'_> {
    fn name(&self, index: usize) -> String {
        let f = &self.scanned.functions[index];
        let file = if f.file == 1 { " (companion)" } else { "" };
        format!("{}{file}", f.function.name)
    }

    pub fn render(&self) -> anyhow::Result<Rendered> {
        let s = self.scanned;
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "enforcer discover: {}", s.files[0].display());
        if let Some(c) = s.files.get(1) {
            let _ = writeln!(w, "  companion: {}", c.display());
        }
        let total = s.functions.len();
        let exported = s.functions.iter().filter(|f| f.function.exported).count();
        let ifunc: usize = s.symbols.iter().map(|x| x.skipped_ifunc).sum();
        let no_code: usize = s.symbols.iter().map(|x| x.skipped_no_code).sum();
        let _ = writeln!(w, "  workload: {}", self.workload.describe());
        let runs = self.first.chunks + self.last.chunks;
        let mut bad = self.first.bad_runs.clone();
        bad.extend(self.last.bad_runs.iter().cloned());
        let _ = writeln!(
            w,
            "  runs: {runs} ({} scan chunks + {} final){}",
            self.first.chunks,
            self.last.chunks,
            if bad.is_empty() {
                String::new()
            } else {
                format!("; not clean: {}", bad.join(", "))
            }
        );
        let _ = writeln!(
            w,
            "  functions: {total} probed ({exported} exported, {} local); skipped: {ifunc} indirect (ifunc), {no_code} without code, {} not probeable",
            total - exported,
            self.first.unprobeable.len()
        );
        for (i, reason) in self.first.unprobeable.iter().take(20) {
            let _ = writeln!(w, "    not probeable: {} ({reason})", self.name(*i));
        }
        let _ = writeln!(
            w,
            "  kernel hook: {}; probes: {}; took {:.1} s",
            self.hook_form,
            self.backend,
            self.elapsed.as_secs_f64()
        );
        if self.first.overflow + self.last.overflow > 0 {
            let _ = writeln!(
                w,
                "  note: {} calls nested deeper than the recorded stack",
                self.first.overflow + self.last.overflow
            );
        }
        let _ = writeln!(w, "\nrule:\n{}", indent(RULE));

        let with_flag: Vec<_> = self
            .last
            .hits
            .iter()
            .map(|(i, h)| (*i, *h, s.functions[*i].function.exported))
            .collect();
        let entries = analysis::entries(&with_flag);
        let mut probes = Vec::new();
        for role in Role::ALL {
            let _ = writeln!(w, "\n{} candidates:", role.name());
            let mine: Vec<_> = entries.iter().filter(|e| e.role == role).collect();
            if mine.is_empty() {
                let _ = writeln!(w, "  (none)");
            }
            for e in mine {
                let (sends, recvs) = e.events();
                let h = &e.hits;
                let note = format!(
                    "{} calls: {} sent and received, {} sent, {} received; {sends} sends, {recvs} receives",
                    h.calls, h.calls_both, h.calls_send_only, h.calls_recv_only
                );
                let verdict = match (e.kept, e.exported) {
                    (true, _) => "profile",
                    (false, false) => "not exported: cannot be named in a profile",
                    (false, true) => "rare: left out",
                };
                let _ = writeln!(w, "  {:<28} {note}  [{verdict}]", self.name(e.index));
                if e.kept {
                    probes.push(ProfileProbe {
                        symbol: s.functions[e.index].function.name.clone(),
                        op: role.name(),
                        in_companion: s.functions[e.index].file == 1,
                        note: format!("{} of {} calls {}", role.calls(h), h.calls, describe(role)),
                    });
                }
            }
        }
        let mut inner: Vec<_> = self
            .last
            .hits
            .iter()
            .filter(|(_, h)| h.innermost[0] + h.innermost[1] > 0)
            .collect();
        inner.sort_by_key(|(i, h)| (std::cmp::Reverse(h.innermost[0] + h.innermost[1]), *i));
        let _ = writeln!(
            w,
            "\ninnermost probed functions at the TCP calls (internal):"
        );
        for (i, h) in inner.iter().take(8) {
            let _ = writeln!(
                w,
                "  {:<28} {} sends, {} receives",
                self.name(*i),
                h.innermost[0],
                h.innermost[1]
            );
        }
        let _ = writeln!(
            w,
            "\n{} functions enclosed TCP I/O in the scan; not seen: functions inlined into their callers, functions the workload never ran, the {} that could not be probed.",
            self.last.hits.len(),
            self.first.unprobeable.len() + ifunc
        );
        if !self.single_chunk_final {
            let _ = writeln!(
                w,
                "note: the final pass needed several chunks; roles are per chunk."
            );
        }
        if probes.is_empty() {
            anyhow::bail!("{out}\nno exported entry point was found: no profile can name one");
        }
        let header = vec![
            format!(
                "enforcer discover {} ({} functions, workload: {})",
                s.files[0].display(),
                total,
                self.workload.describe()
            ),
            format!("took {:.1} s", self.elapsed.as_secs_f64()),
        ];
        let lib_names = &s.symbols[0].exported_names;
        let catalog = profile::render(&ProfileInput {
            id: self.id,
            description: one_line(&format!(
                "discovered in {} by enforcer discover",
                s.files[0].display()
            )),
            lib_exported: lib_names,
            companion_exported: s.symbols.get(1).map(|c| c.exported_names.as_slice()),
            probes: &probes,
            header: &header,
        });
        let _ = writeln!(
            w,
            "\ncatalog profile (append to a policy; `enforcer policy check` accepts it):\n"
        );
        out.push_str(&catalog);
        let policy = format!(
            "# Audit-mode policy around the discovered profile: its family is allowed, the rest\n# of the built-in catalog still applies.\nmode: audit\ndefault: deny\nlibraries:\n  - family: {}\n    action: allow\n{catalog}",
            self.id
        );
        Ok(Rendered {
            report: out,
            policy,
        })
    }
}

fn describe(role: Role) -> &'static str {
    match role {
        Role::Handshake => "sent and received",
        Role::Write => "only sent",
        Role::Read => "only received",
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn one_line(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}
