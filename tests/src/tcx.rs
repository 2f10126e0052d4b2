//! A stand-in for another tool's tcx program (Cilium attaches its classifiers as tcx links):
//! `r0 = 0 (TCX_PASS); exit`, which ends the hook for every packet it sees. Loaded and attached
//! with raw bpf(2): the image's bpftool (7.1) cannot attach tcx links.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_F_BEFORE: u32 = 1 << 3;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i32> {
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr`, valid for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as i32)
}

/// Another program on an interface's tcx egress hook; detached when dropped.
pub struct OtherTcx {
    _link: OwnedFd,
    _prog: OwnedFd,
    /// Its program id (`bpftool prog show id N`).
    pub id: u32,
    pub name: &'static str,
}

impl OtherTcx {
    /// Attached first on `ifindex`'s tcx egress hook (before whatever is there).
    pub fn attach_first(ifindex: u32, name: &'static str) -> io::Result<OtherTcx> {
        assert!(name.len() < 16, "program names have 15 bytes");
        let mut prog_name = [0u8; 16];
        prog_name[..name.len()].copy_from_slice(name.as_bytes());
        // BPF_ALU64|BPF_MOV|BPF_K r0, 0 ; BPF_JMP|BPF_EXIT
        let insns: [u64; 2] = [0xb7, 0x95];
        #[repr(C)]
        #[derive(Default)]
        struct Load {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log: [u32; 4],
            kern_version: u32,
            prog_flags: u32,
            prog_name: [u8; 16],
        }
        let mut load = Load {
            prog_type: 3, // BPF_PROG_TYPE_SCHED_CLS
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: c"GPL".as_ptr() as u64,
            prog_name,
            ..Load::default()
        };
        // SAFETY: a fresh fd owned by nobody else.
        let prog = unsafe { OwnedFd::from_raw_fd(bpf(BPF_PROG_LOAD, &mut load)?) };
        #[repr(C)]
        #[derive(Default)]
        struct Link {
            prog_fd: u32,
            ifindex: u32,
            attach_type: u32,
            flags: u32,
            relative: u32,
            _pad: u32,
            expected_revision: u64,
        }
        let mut link = Link {
            prog_fd: prog.as_raw_fd() as u32,
            ifindex,
            attach_type: BPF_TCX_EGRESS,
            flags: BPF_F_BEFORE,
            ..Link::default()
        };
        // SAFETY: as above.
        let link = unsafe { OwnedFd::from_raw_fd(bpf(BPF_LINK_CREATE, &mut link)?) };
        // The first fields of `struct bpf_prog_info`: type, id (the kernel copies what fits).
        let mut info = [0u32; 2];
        #[repr(C)]
        struct Info {
            fd: u32,
            len: u32,
            info: u64,
        }
        bpf(
            BPF_OBJ_GET_INFO_BY_FD,
            &mut Info {
                fd: prog.as_raw_fd() as u32,
                len: 8,
                info: info.as_mut_ptr() as u64,
            },
        )?;
        Ok(OtherTcx {
            _link: link,
            _prog: prog,
            id: info[1],
            name,
        })
    }

    /// How many packets it ran on (`run_cnt`; counted while `kernel.bpf_stats_enabled` is 1).
    pub fn run_count(&self) -> u64 {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &self.id.to_string()])
            .output()
            .expect("run bpftool");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["run_cnt"].as_u64().unwrap_or(0)
    }
}

/// `kernel.bpf_stats_enabled` on while it lives, then as it was.
pub struct BpfStats(String);

impl BpfStats {
    pub fn enable() -> BpfStats {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let was = std::fs::read_to_string(path).expect("read bpf_stats_enabled");
        std::fs::write(path, "1").expect("enable bpf stats");
        BpfStats(was.trim().to_owned())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// The ids of the programs on `ifindex`'s tcx egress hook, in the order they run.
pub fn egress_programs(ifindex: u32) -> Vec<u32> {
    hook_links(ifindex, true)
        .into_iter()
        .map(|(_, prog)| prog)
        .collect()
}

/// Whether this kernel has tcx hooks (Linux 6.6+): a query of loopback's egress hook works
/// (before 6.6 the attach type is unknown: `EINVAL`). Any other error fails the test.
pub fn supported() -> bool {
    match query(ifindex("lo"), true) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
        Err(e) => panic!("BPF_PROG_QUERY of lo's tcx egress hook: {e}"),
    }
}

/// (link id, program id) of each program on `ifindex`'s tcx egress (or ingress) hook, in the
/// order they run (`BPF_PROG_QUERY`; link id 0 for a program attached without a link).
pub fn hook_links(ifindex: u32, egress: bool) -> Vec<(u32, u32)> {
    query(ifindex, egress).expect("BPF_PROG_QUERY tcx")
}

fn query(ifindex: u32, egress: bool) -> io::Result<Vec<(u32, u32)>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        count: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let mut progs = [0u32; 64];
    let mut links = [0u32; 64];
    let mut q = Query {
        ifindex,
        attach_type: if egress {
            BPF_TCX_EGRESS
        } else {
            BPF_TCX_INGRESS
        },
        prog_ids: progs.as_mut_ptr() as u64,
        link_ids: links.as_mut_ptr() as u64,
        count: progs.len() as u32,
        ..Query::default()
    };
    bpf(BPF_PROG_QUERY, &mut q)?;
    let n = (q.count as usize).min(progs.len());
    Ok(links[..n]
        .iter()
        .copied()
        .zip(progs[..n].iter().copied())
        .collect())
}

/// The tcx links on `iface`: (link id, program id, hook), egress first, each hook in run order.
pub fn links_on(iface: &str) -> Vec<(u32, u32, &'static str)> {
    let ifindex = ifindex(iface);
    let mut out = Vec::new();
    for (egress, hook) in [(true, "egress"), (false, "ingress")] {
        out.extend(
            hook_links(ifindex, egress)
                .into_iter()
                .map(|(link, prog)| (link, prog, hook)),
        );
    }
    out
}

/// The index of interface `name`.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(index != 0, "no interface {name}");
    index
}
