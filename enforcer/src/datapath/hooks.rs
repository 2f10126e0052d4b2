//! The kernel TCP hook: three interchangeable forms, described as data. `auto` tries them from
//! the cheapest and keeps the first whose programs all load and attach.

use std::{fmt, path::Path};

use aya::{
    Btf, Ebpf,
    programs::{FEntry, KProbe, ProgramError, RawTracePoint},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookForm {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl HookForm {
    /// Cheapest first: this is the order `auto` tries.
    pub const ALL: [HookForm; 3] = [HookForm::Fentry, HookForm::Kprobe, HookForm::Tracepoint];

    pub fn name(self) -> &'static str {
        match self {
            HookForm::Fentry => "fentry",
            HookForm::Kprobe => "kprobe",
            HookForm::Tracepoint => "tracepoint",
        }
    }

    fn specs(self) -> &'static [HookProgram] {
        match self {
            HookForm::Fentry => &FENTRY,
            HookForm::Kprobe => &KPROBE,
            HookForm::Tracepoint => &TRACEPOINT,
        }
    }
}

impl fmt::Display for HookForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Fentry,
    Kprobe,
    RawTracepoint,
}

/// Whose TCP hooks: the agent's (attribution and verdict) or `enforcer discover`'s (its own
/// programs of the same forms, so the agent's hot path runs no discovery code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookSet {
    Agent,
    Discover,
}

/// One program of a form, and where it attaches: the first target that attaches wins (later
/// ones are fallbacks for kernels that lack the earlier).
struct HookProgram {
    /// The program's name in the agent's set and in discover's (`enforcer-ebpf/src/tcp.rs`).
    programs: [&'static str; 2],
    kind: Kind,
    targets: &'static [&'static str],
}

impl HookProgram {
    fn program(&self, set: HookSet) -> &'static str {
        self.programs[set as usize]
    }
}

const FENTRY: [HookProgram; 2] = [
    HookProgram {
        programs: ["fentry_tcp_sendmsg", "discover_fentry_send"],
        kind: Kind::Fentry,
        targets: &["tcp_sendmsg"],
    },
    HookProgram {
        programs: ["fentry_tcp_cleanup_rbuf", "discover_fentry_recv"],
        kind: Kind::Fentry,
        targets: &["tcp_cleanup_rbuf"],
    },
];
const KPROBE: [HookProgram; 2] = [
    HookProgram {
        programs: ["kprobe_tcp_sendmsg", "discover_kprobe_send"],
        kind: Kind::Kprobe,
        targets: &["tcp_sendmsg"],
    },
    HookProgram {
        programs: ["kprobe_tcp_cleanup_rbuf", "discover_kprobe_recv"],
        kind: Kind::Kprobe,
        targets: &["tcp_cleanup_rbuf"],
    },
];
const TRACEPOINT: [HookProgram; 2] = [
    HookProgram {
        programs: ["tp_tcp_send", "discover_tp_send"],
        kind: Kind::RawTracepoint,
        targets: &["tcp_sendmsg_locked", "sock_send_length"],
    },
    HookProgram {
        programs: ["tp_tcp_recv", "discover_tp_recv"],
        kind: Kind::RawTracepoint,
        targets: &["sock_recv_length", "tcp_rcv_space_adjust"],
    },
];

/// Tracepoints every form needs: connection close, thread exit and exec bookkeeping.
pub const ALWAYS: [(&str, &str); 3] = [
    ("tp_sock_state", "inet_sock_set_state"),
    ("tls_thread_exit", "sched_process_exit"),
    ("tls_process_exec", "sched_process_exec"),
];

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("program {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("{program}: loading failed: {source}{hint}")]
    Load {
        program: &'static str,
        source: Box<ProgramError>,
        hint: Hint,
    },
    #[error("{program}: attaching to {targets} failed: {source}{hint}")]
    Attach {
        program: &'static str,
        targets: String,
        source: Box<ProgramError>,
        hint: Hint,
    },
    #[error("no kernel hook form could be attached:\n  {}", .0.iter().map(|(f, e)| format!("{f}: {e}")).collect::<Vec<_>>().join("\n  "))]
    NoneWorked(Vec<(HookForm, HookError)>),
}

/// What to do about a failure, when we can tell.
#[derive(Debug, Default)]
pub struct Hint(Option<&'static str>);

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(text) => write!(f, " ({text})"),
            None => Ok(()),
        }
    }
}

fn hint_for(kind: Kind, stage: &str, err: &ProgramError) -> Hint {
    let errno = match err {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
        _ => None,
    };
    Hint(match (kind, stage) {
        (Kind::Kprobe, "attach") if !Path::new("/sys/bus/event_source/devices/kprobe").exists() => {
            Some(
                "this kernel has no kprobes (CONFIG_KPROBES is not set); use --kernel-hook tracepoint",
            )
        }
        (Kind::Fentry, "load") if errno == Some(libc::EPERM) => Some(
            "the kernel refused a BPF trampoline (EPERM: lockdown or no trampoline support); \
             use --kernel-hook kprobe or tracepoint",
        ),
        (Kind::Fentry, "load") if matches!(err, ProgramError::Btf(_)) => {
            Some("fentry needs kernel BTF at /sys/kernel/btf/vmlinux")
        }
        _ => None,
    })
}

/// Loads and attaches every program of `form`. On error, whatever this call attached is
/// detached again (programs are unloaded), so a failed form leaves nothing behind.
pub fn attach_form(
    ebpf: &mut Ebpf,
    form: HookForm,
    btf: Option<&Btf>,
) -> Result<Vec<String>, HookError> {
    attach_set_form(ebpf, HookSet::Agent, form, btf)
}

fn attach_set_form(
    ebpf: &mut Ebpf,
    set: HookSet,
    form: HookForm,
    btf: Option<&Btf>,
) -> Result<Vec<String>, HookError> {
    let mut attached = Vec::new();
    for spec in form.specs() {
        match attach_program(ebpf, spec, set, btf) {
            Ok(target) => attached.push(target),
            Err(err) => {
                detach_set_form(ebpf, set, form);
                return Err(err);
            }
        }
    }
    Ok(attached)
}

/// The kernel hook in place.
pub struct AttachedHook {
    pub form: HookForm,
    /// What each program attached to.
    pub targets: Vec<String>,
    /// With `auto`: the cheaper forms that did not work, and why.
    pub skipped: Vec<(HookForm, HookError)>,
}

/// `auto`: the first form that works, with the reasons the cheaper ones did not.
pub fn attach_choice(
    ebpf: &mut Ebpf,
    choice: HookChoice,
    btf: Option<&Btf>,
) -> Result<AttachedHook, HookError> {
    attach_set_choice(ebpf, HookSet::Agent, choice, btf)
}

/// [`attach_choice`] for the programs of `set`.
pub fn attach_set_choice(
    ebpf: &mut Ebpf,
    set: HookSet,
    choice: HookChoice,
    btf: Option<&Btf>,
) -> Result<AttachedHook, HookError> {
    let forms: Vec<HookForm> = match choice {
        HookChoice::Auto => HookForm::ALL.to_vec(),
        HookChoice::Fentry => vec![HookForm::Fentry],
        HookChoice::Kprobe => vec![HookForm::Kprobe],
        HookChoice::Tracepoint => vec![HookForm::Tracepoint],
    };
    let mut failures = Vec::new();
    for form in forms {
        match attach_set_form(ebpf, set, form, btf) {
            Ok(targets) => {
                return Ok(AttachedHook {
                    form,
                    targets,
                    skipped: failures,
                });
            }
            Err(err) if choice == HookChoice::Auto => failures.push((form, err)),
            Err(err) => return Err(err),
        }
    }
    Err(HookError::NoneWorked(failures))
}

fn attach_program(
    ebpf: &mut Ebpf,
    spec: &HookProgram,
    set: HookSet,
    btf: Option<&Btf>,
) -> Result<String, HookError> {
    let name = spec.program(set);
    let program = ebpf.program_mut(name).ok_or(HookError::Missing(name))?;
    let load_err = |source| HookError::Load {
        program: name,
        hint: hint_for(spec.kind, "load", &source),
        source: Box::new(source),
    };
    let mut last = None;
    match spec.kind {
        Kind::Fentry => {
            let p: &mut FEntry = program.try_into().map_err(load_err)?;
            let Some(btf) = btf else {
                return Err(load_err(ProgramError::UnexpectedProgramType));
            };
            p.load(spec.targets[0], btf).map_err(load_err)?;
            match p.attach() {
                Ok(_) => return Ok(spec.targets[0].to_string()),
                Err(e) => last = Some(e),
            }
        }
        Kind::Kprobe => {
            let p: &mut KProbe = program.try_into().map_err(load_err)?;
            p.load().map_err(load_err)?;
            for target in spec.targets {
                match p.attach(target, 0) {
                    Ok(_) => return Ok(target.to_string()),
                    Err(e) => last = Some(e),
                }
            }
        }
        Kind::RawTracepoint => {
            let p: &mut RawTracePoint = program.try_into().map_err(load_err)?;
            p.load().map_err(load_err)?;
            for target in spec.targets {
                match p.attach(target) {
                    Ok(_) => return Ok(target.to_string()),
                    Err(e) => last = Some(e),
                }
            }
        }
    }
    let source = last.unwrap_or(ProgramError::UnexpectedProgramType);
    Err(HookError::Attach {
        program: name,
        targets: spec.targets.join(" | "),
        hint: hint_for(spec.kind, "attach", &source),
        source: Box::new(source),
    })
}

/// Detaches and unloads every program of `form`.
pub fn detach_form(ebpf: &mut Ebpf, form: HookForm) {
    detach_set_form(ebpf, HookSet::Agent, form);
}

fn detach_set_form(ebpf: &mut Ebpf, set: HookSet, form: HookForm) {
    for spec in form.specs() {
        unload(ebpf, spec, set);
    }
}

fn unload(ebpf: &mut Ebpf, spec: &HookProgram, set: HookSet) {
    let Some(program) = ebpf.program_mut(spec.program(set)) else {
        return;
    };
    // Unloading detaches every link the program has; a program never loaded reports an error
    // we have nothing to do about.
    let _ = match spec.kind {
        Kind::Fentry => <&mut FEntry>::try_from(program).map(|p| p.unload()),
        Kind::Kprobe => <&mut KProbe>::try_from(program).map(|p| p.unload()),
        Kind::RawTracepoint => <&mut RawTracePoint>::try_from(program).map(|p| p.unload()),
    };
}

/// Attaches the bookkeeping tracepoints (`ALWAYS`).
pub fn attach_always(ebpf: &mut Ebpf) -> Result<(), HookError> {
    for (name, target) in ALWAYS {
        let program = ebpf.program_mut(name).ok_or(HookError::Missing(name))?;
        let load_err = |source| HookError::Load {
            program: name,
            source: Box::new(source),
            hint: Hint::default(),
        };
        let p: &mut RawTracePoint = program.try_into().map_err(load_err)?;
        p.load().map_err(load_err)?;
        p.attach(target).map_err(|source| HookError::Attach {
            program: name,
            targets: target.to_string(),
            source: Box::new(source),
            hint: Hint::default(),
        })?;
    }
    Ok(())
}
