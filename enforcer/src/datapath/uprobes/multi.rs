//! Probing a library with two `uprobe_multi` links (Linux 6.6+) instead of two perf-event uprobes
//! per function.
//!
//! Why: closing a perf-event uprobe holds the kernel's global `event_mutex` across an
//! RCU-tasks-trace grace period (`perf_uprobe_destroy` → `tracepoint_synchronize_unregister`):
//! measured here, 0.1 to 0.2 s per uprobe, one after the other machine-wide, and every uprobe
//! attach anywhere waits behind it. A library has 2 × (3 to 8) of them, so an agent that probed
//! 100 new libraries needed five minutes to exit, and stalled every other uprobe user meanwhile.
//! A `uprobe_multi` link carries all the functions of one file (each with its own cookie) and is
//! released with one grace period, without `event_mutex`: releases from several threads overlap.
//!
//! The programs are ones aya already loaded as plain uprobes (`tls_enter` / `tls_exit` of
//! `enforcer-ebpf/src/tls.rs`, `go_enter` / `go_exit` of `go.rs`, or any other), loaded a second time with the attach type
//! `uprobe_multi` needs (aya 0.14 cannot load that type). They use the maps aya created (found
//! through the ids of aya's own copies of the programs), so both copies share their maps.
//!
//! [`load_programs`] and [`link`] are the general pieces; [`TlsPrograms`] applies them to a
//! library's probe targets.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::{Ebpf, maps::MapData};
use aya_obj::{Object, generated::bpf_insn};
use enforcer_common::flow::cookie;

use super::target_file::TargetFile;
use crate::libraries::Library;

use super::perf::{ENTRY, GO_ENTRY, GO_RETURN, RETURN};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error("program {0} (aya's copy) is not loaded")]
    NotLoaded(&'static str),
    #[error("reading aya's {0}: {1}")]
    Info(&'static str, String),
    #[error("parsing the eBPF object: {0}")]
    Parse(String),
    #[error("relocating {0}: {1}")]
    Relocate(&'static str, String),
    #[error("loading {program} as uprobe_multi: {source}{log}")]
    Load {
        program: &'static str,
        source: io::Error,
        log: String,
    },
    #[error("{path}: uprobe_multi link: {source}")]
    Link { path: String, source: io::Error },
}

/// Loads the programs `names` of `object` (the eBPF object `ebpf` was loaded from) for
/// `uprobe_multi` links, in the order given. Aya's own copies of them must be loaded already:
/// they tell which maps to share.
pub fn load_programs(
    ebpf: &Ebpf,
    object: &[u8],
    names: &[&'static str],
) -> Result<Vec<OwnedFd>, MultiError> {
    let maps = shared_maps(ebpf, names)?;
    let mut obj = Object::parse(object).map_err(|e| MultiError::Parse(e.to_string()))?;
    obj.programs
        .retain(|name, _| names.contains(&name.as_str()));
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    // Maps the two programs do not use get an invalid fd: if they did use one, loading fails
    // (and the caller falls back to perf-event uprobes), it never points at a wrong map.
    let objmaps: Vec<(String, RawFd, aya_obj::Map)> = obj
        .maps
        .iter()
        .map(|(name, map)| {
            let fd = maps
                .get(name.as_str())
                .map_or(-1, |m| m.fd().as_fd().as_raw_fd());
            (name.clone(), fd, map.clone())
        })
        .collect();
    obj.relocate_maps(
        objmaps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
        &text_sections,
    )
    .map_err(|e| MultiError::Relocate("maps", e.to_string()))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| MultiError::Relocate("calls", e.to_string()))?;
    let load = |name: &'static str| {
        let program = obj.programs.get(name).ok_or(MultiError::NotLoaded(name))?;
        let function = obj
            .functions
            .get(&program.function_key())
            .ok_or(MultiError::NotLoaded(name))?;
        load_program(name, &function.instructions, &program.license)
    };
    names.iter().map(|name| load(name)).collect()
}

/// One `uprobe_multi` link of `prog` on `offsets` of `file`, each with its cookie; `ret`: return
/// probes (`BPF_F_UPROBE_MULTI_RETURN`). All offsets attach or none do.
pub fn link(
    prog: &OwnedFd,
    file: &Path,
    offsets: &[u64],
    cookies: &[u64],
    ret: bool,
) -> Result<OwnedFd, MultiError> {
    let flags = if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 };
    link_create(prog, file, offsets, cookies, flags).map_err(|source| MultiError::Link {
        path: file.display().to_string(),
        source,
    })
}

/// `tls_enter` / `tls_exit` and `go_enter` / `go_exit`, loaded for `uprobe_multi` links.
pub struct TlsPrograms {
    enter: OwnedFd,
    exit: OwnedFd,
    go_enter: OwnedFd,
    go_exit: OwnedFd,
}

impl TlsPrograms {
    /// Every program of this set (for finding their links).
    pub fn fds(&self) -> [std::os::fd::BorrowedFd<'_>; 4] {
        [
            self.enter.as_fd(),
            self.exit.as_fd(),
            self.go_enter.as_fd(),
            self.go_exit.as_fd(),
        ]
    }

    /// Aya's own copies of the four programs must be loaded (`uprobes::load`).
    pub fn load(ebpf: &Ebpf, object: &[u8]) -> Result<TlsPrograms, MultiError> {
        let mut fds =
            load_programs(ebpf, object, &[ENTRY, RETURN, GO_ENTRY, GO_RETURN])?.into_iter();
        match (fds.next(), fds.next(), fds.next(), fds.next()) {
            (Some(enter), Some(exit), Some(go_enter), Some(go_exit)) => Ok(TlsPrograms {
                enter,
                exit,
                go_enter,
                go_exit,
            }),
            _ => Err(MultiError::NotLoaded(ENTRY)),
        }
    }

    /// Entry and return links on every probe target of `lib`, library `id` (one pair per file: the library,
    /// and its companion if some functions live there). All or nothing, like
    /// `uprobes::attach_library`.
    ///
    /// Go functions (`ProbeTarget::is_go`) get a `go_enter` link on their entries and a `go_exit`
    /// link (entry-type, not return) on all their return instructions.
    pub fn attach(&self, id: u32, lib: &Library) -> Result<Vec<OwnedFd>, MultiError> {
        // Programs by index, and whether their links are return probes.
        let programs = [
            (&self.enter, false),
            (&self.exit, true),
            (&self.go_enter, false),
            (&self.go_exit, false),
        ];
        // (file, program index) → offsets and cookies; the file with the device and inode it
        // was identified as.
        type File<'a> = (&'a Path, u64, u64);
        let mut groups: Vec<(File<'_>, usize, Vec<u64>, Vec<u64>)> = Vec::new();
        let mut add = |file, prog: usize, offset: u64, cookie: u64| {
            let at = match groups.iter().position(|g| g.0 == file && g.1 == prog) {
                Some(at) => at,
                None => {
                    groups.push((file, prog, Vec::new(), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[at].2.push(offset);
            groups[at].3.push(cookie);
        };
        for target in &lib.probes {
            let file = lib.probe_file(target);
            let value = cookie::encode(id, target.op);
            if target.is_go() {
                add(file, 2, target.file_offset, value);
                for &r in &target.return_offsets {
                    add(file, 3, r, value);
                }
            } else {
                add(file, 0, target.file_offset, value);
                if target.wants_return() {
                    add(file, 1, target.file_offset, value);
                }
            }
        }
        let mut links = Vec::new();
        for ((path, dev, ino), prog, offsets, cookies) in &groups {
            let (fd, ret) = programs[*prog];
            // By the opened inode, not the name (`target_file.rs`).
            let file = TargetFile::open(path, *dev, *ino).map_err(|source| MultiError::Link {
                path: path.display().to_string(),
                source,
            })?;
            links.push(link(fd, file.path(), offsets, cookies, ret)?);
        }
        Ok(links)
    }
}

/// The maps aya's own copies of `names` use, by name.
fn shared_maps(
    ebpf: &Ebpf,
    names: &[&'static str],
) -> Result<HashMap<String, MapData>, MultiError> {
    let mut maps = HashMap::new();
    for &name in names {
        let program = ebpf.program(name).ok_or(MultiError::NotLoaded(name))?;
        let info = program
            .info()
            .map_err(|e| MultiError::Info(name, e.to_string()))?;
        let ids = info
            .map_ids()
            .map_err(|e| MultiError::Info(name, e.to_string()))?
            .unwrap_or_default();
        for id in ids {
            let map = MapData::from_id(id).map_err(|e| MultiError::Info(name, e.to_string()))?;
            let info = map
                .info()
                .map_err(|e| MultiError::Info(name, e.to_string()))?;
            let Some(map_name) = info.name_as_str().map(str::to_owned) else {
                continue;
            };
            maps.insert(map_name, map);
        }
    }
    Ok(maps)
}

/// The prefix of `union bpf_attr` that `BPF_PROG_LOAD` reads (the kernel zero-fills the rest).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

fn load_program(
    name: &'static str,
    insns: &[bpf_insn],
    license: &CString,
) -> Result<OwnedFd, MultiError> {
    let mut prog_name = [0u8; 16];
    for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let attempt = |log: &mut [u8]| {
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_KPROBE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name,
            prog_ifindex: 0,
            expected_attach_type: BPF_TRACE_UPROBE_MULTI,
        };
        bpf(BPF_PROG_LOAD, &attr)
    };
    match attempt(&mut []) {
        Ok(fd) => Ok(fd),
        Err(source) => {
            // Again with the verifier's log, for the error message.
            let mut log = vec![0u8; 64 * 1024];
            let _ = attempt(&mut log);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let log = match tail.is_empty() {
                true => String::new(),
                false => format!(
                    " (verifier: {})",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                ),
            };
            Err(MultiError::Load {
                program: name,
                source,
                log,
            })
        }
    }
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with `BPF_TRACE_UPROBE_MULTI`.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}

fn link_create(
    prog: &OwnedFd,
    file: &Path,
    offsets: &[u64],
    cookies: &[u64],
    flags: u32,
) -> io::Result<OwnedFd> {
    let path = CString::new(file.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_UPROBE_MULTI,
        flags: 0,
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        ref_ctr_offsets: 0,
        cookies: cookies.as_ptr() as u64,
        cnt: offsets.len() as u32,
        multi_flags: flags,
        pid: 0,
        _pad: 0,
    };
    bpf(BPF_LINK_CREATE, &attr)
}

/// `bpf(2)` returning a new fd.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix for `cmd`, and every pointer in
    // it refers to memory that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
