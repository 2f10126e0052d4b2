//! `enforcer policy explain`, for a policy with rules scoped to who is talking: which rule each
//! running process hits, for its unattributed TLS and for each TLS library it maps. The facts are
//! resolved as the agent resolves a sender's (`crate::speakers`): the executable's host path
//! (checked to be the file the process runs), its cgroup v2 path, its uid.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::libraries::Library;
use crate::policy::who::{Speaker, name_of};
use crate::policy::{Action, Policy, subject};

/// One running process and what decides its TLS.
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub speaker: Speaker,
    /// Unattributed TLS, then each library it maps: (what, action, deciding rule line (`None`:
    /// not a scoped rule), why).
    pub decisions: Vec<Decided>,
}

pub struct Decided {
    /// `unattributed TLS`, or the library's path and family.
    pub what: String,
    pub action: Action,
    pub scoped_line: Option<usize>,
    pub why: String,
}

impl Process {
    /// True if a rule scoped to who is talking decides any of its TLS.
    pub fn scoped(&self) -> bool {
        self.decisions.iter().any(|d| d.scoped_line.is_some())
    }
}

/// Every running process, judged (`/proc`, in pid order).
pub fn processes(libs: &[Library], policy: &Policy) -> Vec<Process> {
    let root = crate::speakers::cgroup2_root();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let want_sha = policy.who_needs_sha256();
    let runtimes = policy.has_runtime_rules().then(|| policy.catalog.clone());
    pids.into_iter()
        .filter_map(|pid| {
            let (speaker, comm) =
                crate::speakers::of_process(pid, want_sha, root.as_deref(), runtimes.as_deref())?;
            let mut decisions = vec![match policy.decide_who(None, &speaker) {
                Some(d) => by_scoped_rule(
                    match (&speaker.runtime, d.runtime) {
                        (Some(r), true) => format!(
                            "TLS no native library made, as {} ({})",
                            r.path.display(),
                            r.family
                        ),
                        _ => "unattributed TLS".into(),
                    },
                    policy,
                    d.index,
                    d.line,
                    d.action,
                    &d.reasons,
                ),
                None => Decided {
                    what: "unattributed TLS".into(),
                    action: policy.unattributed_tls,
                    scoped_line: None,
                    why: "unattributed_tls".into(),
                },
            }];
            for lib in libs.iter().filter(|l| l.pids.contains(&pid)) {
                let s = subject(lib);
                let what = format!("{} ({})", lib.path.display(), lib.family);
                decisions.push(match policy.decide_who(Some(&s), &speaker) {
                    Some(d) => by_scoped_rule(what, policy, d.index, d.line, d.action, &d.reasons),
                    None => {
                        let base = policy.decide_subject(&s);
                        Decided {
                            what,
                            action: base.action,
                            scoped_line: None,
                            why: base
                                .rule_line
                                .map_or("default".into(), |l| format!("rule at line {l}")),
                        }
                    }
                });
            }
            Some(Process {
                pid,
                comm,
                speaker,
                decisions,
            })
        })
        .collect()
}

/// What a scoped rule (`policy.libraries[index]`, at `line`) decided for `what`.
fn by_scoped_rule(
    what: String,
    policy: &Policy,
    index: usize,
    line: usize,
    action: Action,
    reasons: &[String],
) -> Decided {
    Decided {
        what,
        action,
        scoped_line: Some(line),
        why: format!(
            "rule at line {line} ({}): {}",
            policy.libraries[index].describe(),
            reasons.join("; ")
        ),
    }
}

fn facts(s: &Speaker) -> String {
    let exe = s
        .exe
        .as_ref()
        .map_or("executable without a host path".to_owned(), |p| {
            p.display().to_string()
        });
    let cgroup = s.cgroup.as_deref().unwrap_or("unknown");
    let user = match s.uid {
        Some(uid) => match name_of(uid) {
            Some(name) => format!("{name} ({uid})"),
            None => uid.to_string(),
        },
        None => "unknown".into(),
    };
    format!("{exe}, cgroup {cgroup}, user {user}")
}

/// The text section: each process a scoped rule decides anything of, in full; the others
/// counted.
pub fn text(out: &mut String, procs: &[Process], policy: &Policy) {
    let scoped: Vec<&Process> = procs.iter().filter(|p| p.scoped()).collect();
    let _ = writeln!(
        out,
        "\nrunning processes: {} of {} hit a rule scoped to who is talking",
        scoped.len(),
        procs.len()
    );
    for p in &scoped {
        let _ = writeln!(out, "  pid {} {} ({})", p.pid, p.comm, facts(&p.speaker));
        for d in &p.decisions {
            let _ = writeln!(out, "    {} -> {}: {}", d.what, d.action, d.why);
        }
    }
    let _ = writeln!(
        out,
        "  every other process: unattributed TLS -> {} (unattributed_tls); its libraries as above",
        policy.unattributed_tls
    );
}

/// The JSON array: every process.
pub fn json(procs: &[Process]) -> Value {
    Value::Array(
        procs
            .iter()
            .map(|p| {
                json!({
                    "pid": p.pid,
                    "comm": p.comm,
                    "executable": p.speaker.exe.as_ref().map(|e| e.display().to_string()),
                    "cgroup": p.speaker.cgroup,
                    "uid": p.speaker.uid,
                    "decisions": p.decisions.iter().map(|d| json!({
                        "what": d.what,
                        "action": d.action.name(),
                        "scoped_rule_line": d.scoped_line,
                        "why": d.why,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}
