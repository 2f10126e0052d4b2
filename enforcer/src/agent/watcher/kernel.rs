//! The kernel half of the watcher: the offsets the hooks need (BTF and tracefs), the hooks
//! themselves, and how a file's identity in userspace (`stat`) maps to the key the hooks read.

use std::{fs, os::unix::fs::MetadataExt, path::Path};

use aya::{
    Ebpf,
    programs::{ProgramError, RawTracePoint, TracePoint},
};
use enforcer_common::watch::{self, FileKey, KnownKey, WatchConfig};
use tracing::{info, warn};

use crate::datapath::btf::{self, FieldSpec};

/// `syscalls:sys_enter_mmap`: every `mmap`, with its arguments, before it runs.
pub const MMAP_PROGRAM: &str = "watch_mmap";
pub const MMAP_CATEGORY: &str = "syscalls";
pub const MMAP_TRACEPOINT: &str = "sys_enter_mmap";
/// Raw tracepoint `sched_process_exec(p, old_pid, bprm)`.
pub const EXEC_PROGRAM: &str = "watch_exec";
pub const EXEC_TRACEPOINT: &str = "sched_process_exec";

/// Where tracefs may be mounted, in the order tried.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("kernel BTF: {0}")]
    Btf(#[from] btf::BtfError),
    #[error(
        "no tracefs with syscalls:{MMAP_TRACEPOINT} (tried {TRACEFS:?}; needs CONFIG_FTRACE_SYSCALLS and `mount -t tracefs nodev /sys/kernel/tracing`)"
    )]
    NoTracefs,
    #[error("{path}: field {field} missing or not 8 bytes")]
    Format { path: String, field: &'static str },
    #[error("{program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program {0} is missing from the eBPF object")]
    Missing(&'static str),
}

/// The struct members the hooks read, in the order `config` stores them.
const FIELDS: [FieldSpec; 11] = [
    spec("task_struct", "files", 8),
    spec("task_struct", "ptrace", 4),
    spec("files_struct", "fdt", 8),
    spec("fdtable", "max_fds", 4),
    spec("fdtable", "fd", 8),
    spec("file", "f_inode", 8),
    spec("inode", "i_ino", 8),
    spec("inode", "i_sb", 8),
    spec("inode", "i_generation", 4),
    spec("super_block", "s_dev", 4),
    spec("linux_binprm", "file", 8),
];

const fn spec(strukt: &'static str, field: &'static str, size: u64) -> FieldSpec {
    FieldSpec {
        strukt,
        field,
        size,
    }
}

/// Offsets of the tracepoint record fields the mmap hook reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapFormat {
    pub prot: u32,
    pub flags: u32,
    pub fd: u32,
}

/// The hooks' configuration for the running kernel, `enabled` and `pause` off. Without the
/// inode's `ctime` in the kernel's BTF it is still a configuration, without a change counter
/// (`change_counter` 0, warned): a file rewritten in place is then not reported again.
pub fn config() -> Result<WatchConfig, KernelError> {
    let o = btf::field_offsets(&FIELDS)?;
    let mmap = mmap_format()?;
    let ctime = match btf::inode_ctime_offsets() {
        Ok(Some(c)) => {
            info!(
                layout = c.layout,
                sec = c.sec,
                nsec = c.nsec,
                "inode ctime found: files rewritten in place are examined again"
            );
            Some(c)
        }
        Ok(None) => {
            warn!(
                "kernel BTF: struct inode has none of i_ctime_sec/i_ctime_nsec, __i_ctime, i_ctime: no change counter, a known file rewritten in place (same inode) is not examined again and keeps its probes"
            );
            None
        }
        Err(err) => {
            warn!(
                "kernel BTF: inode ctime not found ({err}): no change counter, a known file rewritten in place (same inode) is not examined again and keeps its probes"
            );
            None
        }
    };
    Ok(WatchConfig {
        change_counter: u32::from(ctime.is_some()),
        inode_ctime_sec: ctime.map_or(0, |c| c.sec),
        inode_ctime_nsec: ctime.map_or(0, |c| c.nsec),
        _pad: 0,
        enabled: 0,
        pause: 0,
        task_files: o[0],
        task_ptrace: o[1],
        files_fdt: o[2],
        fdt_max_fds: o[3],
        fdt_fd: o[4],
        file_inode: o[5],
        inode_ino: o[6],
        inode_sb: o[7],
        inode_generation: o[8],
        sb_dev: o[9],
        bprm_file: o[10],
        mmap_prot: mmap.prot,
        mmap_flags: mmap.flags,
        mmap_fd: mmap.fd,
    })
}

fn mmap_format() -> Result<MmapFormat, KernelError> {
    for root in TRACEFS {
        let path = format!("{root}/events/{MMAP_CATEGORY}/{MMAP_TRACEPOINT}/format");
        if let Ok(text) = fs::read_to_string(&path) {
            return parse_format(&text).map_err(|field| KernelError::Format { path, field });
        }
    }
    Err(KernelError::NoTracefs)
}

/// Reads `prot`, `flags` and `fd` from a tracefs `format` file; each must be 8 bytes (the
/// syscall tracepoints store every argument as `unsigned long`). Err: the first field missing.
pub fn parse_format(text: &str) -> Result<MmapFormat, &'static str> {
    let find = |name: &'static str| {
        text.lines()
            .find_map(|line| {
                let mut parts = line.trim().split(';').map(str::trim);
                let decl = parts.next()?.strip_prefix("field:")?;
                if decl.rsplit(' ').next()? != name {
                    return None;
                }
                let (mut offset, mut size) = (None, None);
                for p in parts {
                    if let Some(v) = p.strip_prefix("offset:") {
                        offset = v.parse::<u32>().ok();
                    } else if let Some(v) = p.strip_prefix("size:") {
                        size = v.parse::<u32>().ok();
                    }
                }
                (size? == 8).then_some(offset?)
            })
            .ok_or(name)
    };
    Ok(MmapFormat {
        prot: find("prot")?,
        flags: find("flags")?,
        fd: find("fd")?,
    })
}

/// Loads and attaches both hooks. On error nothing stays attached.
pub fn attach(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    let err = |program| move |source| KernelError::Program { program, source };
    let mmap: &mut TracePoint = ebpf
        .program_mut(MMAP_PROGRAM)
        .ok_or(KernelError::Missing(MMAP_PROGRAM))?
        .try_into()
        .map_err(err(MMAP_PROGRAM))?;
    mmap.load().map_err(err(MMAP_PROGRAM))?;
    mmap.attach(MMAP_CATEGORY, MMAP_TRACEPOINT)
        .map_err(err(MMAP_PROGRAM))?;
    let exec = ebpf
        .program_mut(EXEC_PROGRAM)
        .ok_or(KernelError::Missing(EXEC_PROGRAM))
        .and_then(|p| <&mut RawTracePoint>::try_from(p).map_err(err(EXEC_PROGRAM)))
        .and_then(|p| {
            p.load().map_err(err(EXEC_PROGRAM))?;
            p.attach(EXEC_TRACEPOINT).map_err(err(EXEC_PROGRAM))
        });
    if let Err(e) = exec {
        detach(ebpf);
        return Err(e);
    }
    Ok(())
}

/// Detaches and unloads both hooks (no-op for one that is not loaded).
pub fn detach(ebpf: &mut Ebpf) {
    if let Some(p) = ebpf.program_mut(MMAP_PROGRAM)
        && let Ok(p) = <&mut TracePoint>::try_from(p)
    {
        let _ = p.unload();
    }
    if let Some(p) = ebpf.program_mut(EXEC_PROGRAM)
        && let Ok(p) = <&mut RawTracePoint>::try_from(p)
    {
        let _ = p.unload();
    }
}

/// `FS_IOC_GETVERSION`: the inode generation (ext4, xfs, btrfs; not every filesystem has it).
const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;

/// The key the hooks would read for the file at `path`, as far as userspace can tell: the
/// device number re-encoded the kernel's way, and the generation from `FS_IOC_GETVERSION` (0
/// where the filesystem does not say). A wrong guess (btrfs subvolumes and overlayfs report
/// other devices than the inode's super block; tmpfs has no ioctl) only costs one pause the first
/// time a process maps the file, after which the exact key the hook saw is known.
///
/// With `change_counter` the key carries the file's `ctime` as `stat` says now, else 0 (as the
/// hooks read it).
pub fn key_of_path(path: &Path, change_counter: bool) -> Option<KnownKey> {
    let file = fs::File::open(path).ok()?;
    let md = file.metadata().ok()?;
    let key = key_from_stat(md.dev(), md.ino(), generation(&file).unwrap_or(0));
    Some(known_key(key, change_counter.then(|| ctime_of(&md))))
}

/// `ctime` of `md` as the hooks read it (seconds, nanoseconds).
pub fn ctime_of(md: &fs::Metadata) -> (i64, i64) {
    (md.ctime(), md.ctime_nsec())
}

/// `file` as of `ctime` (`None`: no change counter), in the hooks' encoding.
pub fn known_key(file: FileKey, ctime: Option<(i64, i64)>) -> KnownKey {
    KnownKey::new(file, ctime.map(|(sec, nsec)| (sec, nsec as u32)))
}

/// The inode generation of an open file (`FS_IOC_GETVERSION`), `None` where the filesystem does
/// not say. With the inode number it tells a file from a deleted one whose number was reused.
pub fn generation(file: &fs::File) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut generation: libc::c_long = 0;
    // SAFETY: FS_IOC_GETVERSION writes one int through the pointer (a long is larger).
    let ok = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETVERSION, &mut generation) } == 0;
    ok.then_some(generation as u32)
}

pub fn key_from_stat(st_dev: u64, ino: u64, generation: u32) -> FileKey {
    FileKey {
        dev: watch::kernel_dev(libc::major(st_dev), libc::minor(st_dev)),
        generation,
        ino,
    }
}
