//! Perf-event uprobes through aya: for each library file, an entry and a return probe on each of
//! its TLS functions, with the library id and call kind as the attach cookie. The fallback where
//! `uprobe_multi` is missing (kernels before 6.6), and the loader of aya's copies of the programs
//! (which `uprobe_multi` needs too, for their maps).

use aya::{
    Ebpf,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use enforcer_common::flow::cookie;

use super::target_file::TargetFile;
use crate::libraries::Library;

pub(super) const ENTRY: &str = "tls_enter";
pub(super) const RETURN: &str = "tls_exit";
/// Go functions: entry (after the stack check) and each `RET`, both plain uprobes.
pub(super) const GO_ENTRY: &str = "go_enter";
pub(super) const GO_RETURN: &str = "go_exit";

#[derive(Debug, thiserror::Error)]
pub enum UprobeError {
    #[error("program {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("loading {program} failed: {source}")]
    Load {
        program: &'static str,
        source: Box<ProgramError>,
    },
    #[error("{path}: attaching to {symbol} (file offset {offset:#x}) failed: {source}")]
    Attach {
        path: String,
        symbol: String,
        offset: u64,
        source: BoxError,
    },
}

/// Why an attach failed: the file could not be opened as the identified one, or aya's error.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Loads the four programs. Called once, before any `attach_library`.
pub fn load(ebpf: &mut Ebpf) -> Result<(), UprobeError> {
    for name in [ENTRY, RETURN, GO_ENTRY, GO_RETURN] {
        program(ebpf, name)?
            .load()
            .map_err(|source| UprobeError::Load {
                program: name,
                source: Box::new(source),
            })?;
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, UprobeError> {
    let program = ebpf.program_mut(name).ok_or(UprobeError::Missing(name))?;
    program.try_into().map_err(|source| UprobeError::Load {
        program: name,
        source: Box::new(source),
    })
}

/// A perf-event uprobe attached: the program it runs and aya's id of its link (the link
/// belongs to the object).
pub type PerfLink = (&'static str, UProbeLinkId);

/// Attaches entry and return probes to every probe target of `lib`, library `id`; returns the
/// links. All or nothing: a half-probed library would be attributed only some of the time,
/// so on failure the probes already attached to it are detached and the caller reports the
/// library as not covered.
///
/// Cost: each probe is a perf-event link; the kernel serialises uprobe (un)registration behind a
/// grace period (about 0.15 s per probe on 6.18), which is why `Prober` prefers `uprobe_multi`.
pub fn attach_library(
    ebpf: &mut Ebpf,
    id: u32,
    lib: &Library,
) -> Result<Vec<PerfLink>, UprobeError> {
    let mut links = Vec::new();
    for target in &lib.probes {
        let value = cookie::encode(id, target.op);
        // C ABI: entry and return probe (uretprobe) on the function. Go: entry probe, and a
        // plain uprobe on each return instruction.
        let points: Vec<(&'static str, u64)> = if target.is_go() {
            let exits = target.return_offsets.iter().map(|&o| (GO_RETURN, o));
            [(GO_ENTRY, target.file_offset)]
                .into_iter()
                .chain(exits)
                .collect()
        } else if target.wants_return() {
            vec![(ENTRY, target.file_offset), (RETURN, target.file_offset)]
        } else {
            vec![(ENTRY, target.file_offset)]
        };
        for (name, offset) in points {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(offset),
                cookie: Some(value),
            };
            let (file, dev, ino) = lib.probe_file(target);
            // By the opened inode, not the name (`target_file.rs`).
            let attached: Result<_, BoxError> = match TargetFile::open(file, dev, ino) {
                Ok(opened) => program(ebpf, name)?
                    .attach(point, opened.path(), UProbeScope::AllProcesses)
                    .map_err(Into::into),
                Err(err) => Err(err.into()),
            };
            match attached {
                Ok(link) => links.push((name, link)),
                Err(source) => {
                    detach(ebpf, links);
                    return Err(UprobeError::Attach {
                        path: file.display().to_string(),
                        symbol: target.symbol.clone(),
                        offset,
                        source,
                    });
                }
            }
        }
    }
    Ok(links)
}

/// Detaches perf-event uprobes (each waits a grace period in the kernel).
pub fn detach(ebpf: &mut Ebpf, links: Vec<PerfLink>) {
    for (name, link) in links {
        if let Ok(p) = program(ebpf, name) {
            let _ = p.detach(link);
        }
    }
}
