//! Loading the discovery programs and attaching them to a set of functions: one `uprobe_multi`
//! link per file and direction where the kernel has them (6.6+), else two perf-event uprobes per
//! function through aya. Every link is an fd (ours or aya's): dropping [`Attached`] (or the whole
//! `Ebpf`, or the process dying) removes the probes.

use std::{
    io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use enforcer_common::flow::SOCK_OFFSETS_GLOBAL;

use crate::datapath::{
    btf,
    hooks::{self, AttachedHook, HookChoice, HookSet},
    loader,
    uprobes::multi,
};

pub const ENTER: &str = "discover_enter";
pub const EXIT: &str = "discover_exit";

/// One function to probe: where, and its cookie (slot in the chunk, `COOKIE_EXPORTED`).
#[derive(Clone, Debug)]
pub struct Target {
    pub file: PathBuf,
    pub offset: u64,
    pub cookie: u64,
}

/// How probes are attached.
pub enum Backend {
    Multi { enter: OwnedFd, exit: OwnedFd },
    Perf,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Multi { .. } => "uprobe_multi links",
            Backend::Perf => "perf-event uprobes",
        }
    }
}

/// The loaded object, the kernel TCP hook, and how uprobes are attached.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub backend: Backend,
    pub hook: AttachedHook,
    /// Why `uprobe_multi` is not used, if it is not.
    pub multi_error: Option<String>,
}

/// Loads the object, attaches discover's own kernel TCP hook programs (`choice`: the form), and
/// loads the uprobe programs (and their `uprobe_multi` copies if the kernel takes them). The
/// agent's programs stay unloaded.
pub fn load(choice: HookChoice) -> anyhow::Result<Loaded> {
    let offsets = btf::sock_offsets()?;
    let mut ebpf = EbpfLoader::new()
        .override_global(SOCK_OFFSETS_GLOBAL, &offsets, true)
        .load(loader::OBJECT)?;
    let kernel_btf = Btf::from_sys_fs().ok();
    let hook = hooks::attach_set_choice(&mut ebpf, HookSet::Discover, choice, kernel_btf.as_ref())?;
    for name in [ENTER, EXIT] {
        uprobe(&mut ebpf, name)?.load()?;
    }
    let (backend, multi_error) = match multi::load_programs(&ebpf, loader::OBJECT, &[ENTER, EXIT]) {
        Ok(fds) => {
            let mut fds = fds.into_iter();
            match (fds.next(), fds.next()) {
                (Some(enter), Some(exit)) => (Backend::Multi { enter, exit }, None),
                _ => (Backend::Perf, Some("programs missing".to_owned())),
            }
        }
        Err(err) => (Backend::Perf, Some(err.to_string())),
    };
    Ok(Loaded {
        ebpf,
        backend,
        hook,
        multi_error,
    })
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> anyhow::Result<&'a mut UProbe> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("program {name} is missing from the eBPF object"))?;
    Ok(program.try_into()?)
}

/// Probes in place. Release with [`Attached::release`]; `uprobe_multi` links also go when
/// dropped, perf-event ones with the `Ebpf` object.
#[derive(Default)]
pub struct Attached {
    links: Vec<OwnedFd>,
    perf: Vec<(&'static str, UProbeLinkId)>,
}

impl Attached {
    pub fn extend(&mut self, other: Attached) {
        self.links.extend(other.links);
        self.perf.extend(other.perf);
    }

    pub fn release(self, ebpf: &mut Ebpf) {
        drop(self.links);
        for (name, id) in self.perf {
            if let Ok(p) = uprobe(ebpf, name) {
                let _ = p.detach(id);
            }
        }
    }
}

/// Why a set of functions could not be probed.
#[derive(Debug)]
pub struct AttachFailure {
    pub errno: Option<i32>,
    pub message: String,
}

impl AttachFailure {
    /// The kernel ran out of something (too many probes in one link, fds, memory): fewer at a
    /// time may work. Anything else is about the functions themselves.
    pub fn is_resource(&self) -> bool {
        matches!(
            self.errno,
            Some(libc::E2BIG | libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOSPC)
        )
    }
}

/// Entry and return probes on all `targets`, or none (whatever this call attached is released
/// on failure).
pub fn attach(loaded: &mut Loaded, targets: &[Target]) -> Result<Attached, AttachFailure> {
    let mut done = Attached::default();
    let result = match &loaded.backend {
        Backend::Multi { enter, exit } => attach_multi(enter, exit, targets, &mut done),
        Backend::Perf => attach_perf(&mut loaded.ebpf, targets, &mut done),
    };
    match result {
        Ok(()) => Ok(done),
        Err(failure) => {
            done.release(&mut loaded.ebpf);
            Err(failure)
        }
    }
}

fn attach_multi(
    enter: &OwnedFd,
    exit: &OwnedFd,
    targets: &[Target],
    done: &mut Attached,
) -> Result<(), AttachFailure> {
    let mut files: Vec<&Path> = targets.iter().map(|t| t.file.as_path()).collect();
    files.dedup();
    for file in files {
        let (offsets, cookies): (Vec<u64>, Vec<u64>) = targets
            .iter()
            .filter(|t| t.file == file)
            .map(|t| (t.offset, t.cookie))
            .unzip();
        for (prog, ret) in [(enter, false), (exit, true)] {
            let link = multi::link(prog, file, &offsets, &cookies, ret).map_err(|e| {
                let errno = match &e {
                    multi::MultiError::Link { source, .. } => source.raw_os_error(),
                    _ => None,
                };
                AttachFailure {
                    errno,
                    message: with_hint(e.to_string(), errno),
                }
            })?;
            done.links.push(link);
        }
    }
    Ok(())
}

fn attach_perf(
    ebpf: &mut Ebpf,
    targets: &[Target],
    done: &mut Attached,
) -> Result<(), AttachFailure> {
    for t in targets {
        for name in [ENTER, EXIT] {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(t.offset),
                cookie: Some(t.cookie),
            };
            let program = uprobe(ebpf, name).map_err(|e| AttachFailure {
                errno: None,
                message: e.to_string(),
            })?;
            match program.attach(point, &t.file, UProbeScope::AllProcesses) {
                Ok(id) => done.perf.push((name, id)),
                Err(err) => {
                    return Err(AttachFailure {
                        errno: errno_of(&err),
                        message: with_hint(
                            format!(
                                "{}: uprobe at offset {:#x}: {err}",
                                t.file.display(),
                                t.offset
                            ),
                            errno_of(&err),
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Linux's internal ENOTSUPP, which uprobe registration returns for an instruction it cannot
/// single-step or emulate.
const ENOTSUPP: i32 = 524;

fn with_hint(message: String, errno: Option<i32>) -> String {
    match errno {
        Some(ENOTSUPP) => {
            format!("{message}: the kernel cannot probe the first instruction of this function")
        }
        Some(libc::EINVAL) => format!("{message}: the kernel rejects this offset"),
        _ => message,
    }
}

/// The OS error somewhere in `err`'s chain of sources.
fn errno_of(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    for _ in 0..16 {
        let e = cur?;
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        cur = e.source();
    }
    None
}
