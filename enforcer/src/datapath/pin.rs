//! `--pin DIR`: the agent's maps and links pinned in bpffs, so enforcement outlives the agent.
//!
//! Layout under `DIR` (a directory on a bpffs mount, created if missing):
//! - `maps/<NAME>`: the maps a restarted agent reuses (`enforcer_common::maps::PINNED`): the
//!   blocklist and the flow state (so blocked flows stay blocked), the policy maps (library
//!   actions, mode, the ClientHello policy and server-name scopes), the statistics and the event
//!   ring (events of the time the agent was down are read by the next one).
//! - `links/xdp_<ifindex>`: the XDP link of each filtered interface. A restarted agent swaps
//!   its own program into this very link (`bpf_link_update`), so the interface never runs
//!   without our XDP program and never gets a second one.
//! - `links/tcin_<ifindex>`: the tc ingress classifier of each interface whose ingress is in tc
//!   (`--ingress`): not a link (a tc filter has none) but the program itself, pinned so that
//!   `enforcer detach` and the next run know the interface; the filter holds the program too.
//! - `links/tcxeg_<ifindex>`, `links/tcxin_<ifindex>`: the classifiers' tcx links
//!   (`--tc-attach tcx`), egress and ingress. Taken over like the XDP link: a restarted agent
//!   swaps its program into the very link (`BPF_LINK_UPDATE`), so the hook never runs without
//!   ours and keeps its place first on it.
//! - `links/link_<id>`: every other link of the datapath: TLS uprobes (perf-event and
//!   `uprobe_multi`), the kernel TCP hook and the connection-close tracepoint. A restarted
//!   agent attaches its own, then removes these (the old programs and their per-run maps go
//!   with them).
//!
//! The new-file hooks of the watcher are never pinned: they pause processes, and only a running
//! agent resumes them. The tc egress filter is a netlink object that stays without pinning; a
//! restarted agent replaces it in place (`NLM_F_REPLACE`), and the ingress one likewise. `enforcer detach --pin DIR` removes
//! everything (see [`remove_all`]).
//!
//! bpffs holds only bpf objects and directories, so nothing else is stored here.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const XDP_PREFIX: &str = "xdp_";
const LINK_PREFIX: &str = "link_";
const TC_INGRESS_PREFIX: &str = "tcin_";
const TCX_EGRESS_PREFIX: &str = "tcxeg_";
const TCX_INGRESS_PREFIX: &str = "tcxin_";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{0} is not on a bpffs mount: pin under /sys/fs/bpf (mount it with `mount -t bpf bpf /sys/fs/bpf`)"
    )]
    NotBpffs(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A pin directory.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

/// A link pinned by an earlier run.
#[derive(Debug)]
pub struct PinnedLink {
    pub path: PathBuf,
    /// `Some(ifindex)` for an interface's XDP link.
    pub xdp_ifindex: Option<u32>,
    /// `Some(ifindex)` for an interface's tc ingress classifier (a program, not a link).
    pub tc_ingress_ifindex: Option<u32>,
    /// `Some(ifindex)` for one of an interface's tcx links (egress or ingress).
    pub tcx_ifindex: Option<u32>,
}

impl PinDir {
    /// Checks that `root` is on bpffs (its nearest existing ancestor, if it does not exist yet)
    /// and creates `root/maps` and `root/links`.
    pub fn create(root: &Path) -> Result<PinDir, PinError> {
        let mut probe = root;
        while !probe.exists() {
            probe = probe.parent().unwrap_or(Path::new("/"));
        }
        if !is_bpffs(probe).map_err(io_err(probe))? {
            return Err(PinError::NotBpffs(root.to_path_buf()));
        }
        let dir = PinDir {
            root: root.to_path_buf(),
        };
        for sub in [dir.maps(), dir.links()] {
            std::fs::create_dir_all(&sub).map_err(io_err(&sub))?;
        }
        Ok(dir)
    }

    /// An existing pin directory (for `enforcer detach`); not created.
    pub fn open(root: &Path) -> Result<PinDir, PinError> {
        if !is_bpffs(root).map_err(io_err(root))? {
            return Err(PinError::NotBpffs(root.to_path_buf()));
        }
        Ok(PinDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Where map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Where the XDP link of `ifindex` is pinned.
    pub fn xdp_path(&self, ifindex: u32) -> PathBuf {
        self.links().join(format!("{XDP_PREFIX}{ifindex}"))
    }

    /// Where the tc ingress classifier of `ifindex` is pinned.
    pub fn tc_ingress_path(&self, ifindex: u32) -> PathBuf {
        self.links().join(format!("{TC_INGRESS_PREFIX}{ifindex}"))
    }

    /// Pins the tc ingress classifier `fd` of `ifindex`, in place of an earlier run's (whose
    /// program then goes with its filter, replaced already). Returns the path.
    pub fn pin_tc_ingress(&self, ifindex: u32, fd: BorrowedFd<'_>) -> Result<PathBuf, PinError> {
        let path = self.tc_ingress_path(ifindex);
        unpin(&path)?;
        obj_pin(fd, &path).map_err(io_err(&path))?;
        Ok(path)
    }

    /// Whether map `name` was pinned by an earlier run.
    pub fn has_map(&self, name: &str) -> bool {
        self.map_path(name).exists()
    }

    /// Links pinned so far, in name order.
    pub fn pinned_links(&self) -> Result<Vec<PinnedLink>, PinError> {
        let dir = self.links();
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ifindex = |prefix: &str| name.strip_prefix(prefix).and_then(|n| n.parse().ok());
            out.push(PinnedLink {
                path: entry.path(),
                xdp_ifindex: ifindex(XDP_PREFIX),
                tc_ingress_ifindex: ifindex(TC_INGRESS_PREFIX),
                tcx_ifindex: ifindex(TCX_EGRESS_PREFIX).or_else(|| ifindex(TCX_INGRESS_PREFIX)),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Pins the link `link_id` (looked up by id) as `links/link_<id>`, unless pinned already.
    /// Returns whether it pinned it now.
    pub fn pin_link_id(&self, link_id: u32) -> Result<bool, PinError> {
        let path = self.links().join(format!("{LINK_PREFIX}{link_id}"));
        if path.exists() {
            return Ok(false);
        }
        let fd = link_fd_by_id(link_id).map_err(io_err(&path))?;
        obj_pin(fd.as_fd(), &path).map_err(io_err(&path))?;
        Ok(true)
    }

    /// Where the tcx link of `ifindex`'s egress (or ingress) hook is pinned.
    pub fn tcx_path(&self, ifindex: u32, egress: bool) -> PathBuf {
        let prefix = if egress {
            TCX_EGRESS_PREFIX
        } else {
            TCX_INGRESS_PREFIX
        };
        self.links().join(format!("{prefix}{ifindex}"))
    }

    /// Pins an XDP link fd as `links/xdp_<ifindex>`.
    pub fn pin_xdp(&self, ifindex: u32, fd: BorrowedFd<'_>) -> Result<(), PinError> {
        let path = self.xdp_path(ifindex);
        obj_pin(fd, &path).map_err(io_err(&path))
    }
}

/// Removes a pinned link file: the link goes once nothing else holds it (detached).
pub fn unpin(path: &Path) -> Result<(), PinError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// What [`remove_all`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: usize,
    pub maps: usize,
    /// Interfaces that had an XDP link pinned (their tc filters are the caller's to remove).
    pub xdp_ifindexes: Vec<u32>,
    /// Interfaces whose tc ingress classifier was pinned (the caller removes their filters).
    pub tc_ingress_ifindexes: Vec<u32>,
}

/// Unpins every link and map under `dir` and removes the directories.
pub fn remove_all(dir: &PinDir) -> Result<Removed, PinError> {
    let mut removed = Removed::default();
    for link in dir.pinned_links()? {
        unpin(&link.path)?;
        removed.links += 1;
        removed.xdp_ifindexes.extend(link.xdp_ifindex);
        removed.tc_ingress_ifindexes.extend(link.tc_ingress_ifindex);
    }
    let maps = dir.maps();
    if let Ok(entries) = std::fs::read_dir(&maps) {
        for entry in entries.flatten() {
            unpin(&entry.path())?;
            removed.maps += 1;
        }
    }
    for sub in [dir.links(), maps, dir.root.clone()] {
        match std::fs::remove_dir(&sub) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&sub)(e)),
        }
    }
    Ok(removed)
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = cstring(path)?;
    // SAFETY: statfs writes into the zeroed struct; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type is i64 on x86_64, other widths elsewhere"
    )]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `union bpf_attr` for `BPF_OBJ_PIN` / `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_LINK_GET_FD_BY_ID`.
#[repr(C)]
#[derive(Default)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
    _pad: u32,
}

pub(crate) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr`, valid for the call; its size is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// `BPF_OBJ_PIN`: pins the bpf object behind `fd` (map, program or link) at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = cstring(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..ObjAttr::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `BPF_OBJ_GET`: a new fd for the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..ObjAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = IdAttr {
        id,
        ..IdAttr::default()
    };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The kernel id of the bpf object (link or program) behind `fd` (`BPF_OBJ_GET_INFO_BY_FD`):
/// `struct bpf_link_info` and `struct bpf_prog_info` both start with `type`, `id`.
fn obj_id_of(fd: BorrowedFd<'_>) -> io::Result<u32> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// The first 8 bytes of either info struct; the kernel copies at most `info_len` bytes.
    #[repr(C)]
    #[derive(Default)]
    struct Head {
        kind: u32,
        id: u32,
    }
    #[repr(C)]
    #[derive(Default)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut head = Head::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<Head>() as u32,
        info: &mut head as *mut Head as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(head.id)
}

pub fn link_id_of(fd: BorrowedFd<'_>) -> io::Result<u32> {
    obj_id_of(fd)
}

pub fn prog_id_of(fd: BorrowedFd<'_>) -> io::Result<u32> {
    obj_id_of(fd)
}

/// Programs whose links `--pin` keeps: every loaded program of the object except XDP (its link
/// is pinned per interface), tc (a netlink filter, no link) and the watcher's new-file hooks
/// (they pause processes; only a running agent resumes them), plus `extra` (the `uprobe_multi`
/// copies of the TLS programs).
pub fn datapath_programs(ebpf: &aya::Ebpf, extra: &[BorrowedFd<'_>]) -> Vec<u32> {
    // The host layer's cgroup links go with the agent (docs/architecture.md, "What runs before
    // our programs"), like the new-file hooks.
    const NOT_PINNED: [&str; 8] = [
        "enforcer_ingress",
        "enforcer_ingress_nofrags",
        "enforcer_egress",
        "enforcer_ingress_tc",
        "watch_mmap",
        "watch_exec",
        "enforcer_cg_egress",
        "enforcer_cg_ingress",
    ];
    let mut ids: Vec<u32> = ebpf
        .programs()
        .filter(|(name, _)| !NOT_PINNED.contains(name))
        .filter_map(|(_, p)| p.info().ok())
        .map(|info| info.id())
        .collect();
    ids.extend(extra.iter().filter_map(|fd| prog_id_of(*fd).ok()));
    ids
}

/// Pins every link of `programs` not pinned yet; returns how many it pinned now.
pub fn sweep(dir: &PinDir, programs: &[u32]) -> Result<usize, PinError> {
    let mut pinned = 0;
    for id in links_of_programs(programs) {
        if dir.pin_link_id(id)? {
            pinned += 1;
        }
    }
    Ok(pinned)
}

/// Ids of every link in the kernel whose program is one of `program_ids`.
pub fn links_of_programs(program_ids: &[u32]) -> Vec<u32> {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| program_ids.contains(&l.program_id()))
        .map(|l| l.id())
        .collect()
}
