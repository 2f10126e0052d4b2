//! TLS library files on this host: find them, identify their family, resolve probe offsets.
//!
//! Candidates are shared-object-like files in the library directories plus every file-backed
//! executable mapping of every process, whatever its name. Each file (by device and inode, which
//! is what a uprobe attaches to) is identified once from its symbols (see [`crate::catalog`]), and
//! the functions to probe are translated to file offsets.
//!
//! Everything read here may be hostile or vanish at any moment; see [`elf`] and [`procfs`] for how
//! reading is bounded. A file that cannot be read or parsed is skipped with a debug log: it must
//! never fail a whole scan.

mod elf;
mod procfs;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::family::Family;

/// One TLS library file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    /// 1, 2, ... in the order of `path`; the library id in uprobe cookies and events.
    pub id: u32,
    pub family: Family,
    /// A path that reaches the file: its real path when there is one, else a `/proc/<pid>/...`
    /// path that only lives as long as that process (deleted-but-mapped files, other mount
    /// namespaces).
    pub path: PathBuf,
    /// `st_dev` / `st_ino` of the file (uprobes attach to the inode, not the name).
    pub dev: u64,
    pub ino: u64,
    /// Where to probe it; never empty.
    pub probes: Vec<ProbeTarget>,
    /// Processes that had it mapped during the scan, ascending.
    pub pids: Vec<u32>,
}

/// One function of a library to probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbeTarget {
    /// Symbol name without version (`SSL_write`).
    pub symbol: String,
    /// `enforcer_common::op::*`.
    pub op: u8,
    /// Offset of the function's first instruction in the file, as a uprobe wants it.
    pub file_offset: u64,
}

/// What [`identify`] found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identified {
    pub family: Family,
    /// Never empty.
    pub probes: Vec<ProbeTarget>,
}

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is {size} bytes, more than the {limit} bytes enforcer reads of an ELF file", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{}: malformed ELF: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot list processes in {}: {source}", path.display())]
    Proc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Identify one file: its TLS family and where to probe it, or `None` if it is not a TLS library
/// (not ELF, not a regular file, no matching profile, or nothing probe-able in it).
pub fn identify(path: &Path) -> Result<Option<Identified>, LibraryError> {
    let (file, md) = open(path)?;
    if !md.is_file() {
        return Ok(None);
    }
    elf::identify_file(file, md.len(), path)
}

/// Opens for reading without following into FIFOs or devices that would block, and checks the
/// size limit.
fn open(path: &Path) -> Result<(File, fs::Metadata), LibraryError> {
    let io_err = |source| LibraryError::Io {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err)?;
    let md = file.metadata().map_err(io_err)?;
    if md.is_file() && md.len() > elf::MAX_FILE_SIZE {
        return Err(LibraryError::TooLarge {
            path: path.to_owned(),
            size: md.len(),
            limit: elf::MAX_FILE_SIZE,
        });
    }
    Ok((file, md))
}

/// Where [`discover`] looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// Directories whose `*.so` / `*.so.*` files are candidates. Not recursive: a library in a
    /// subdirectory is not on the dynamic linker's search path unless `ld.so.conf` names that
    /// directory (then it is listed here by [`Default`]), and plug-in trees such as `gconv/` or
    /// `perl5/` hold hundreds of irrelevant objects. Libraries elsewhere (vendored, `/opt`, a
    /// container) are found through the mappings of the processes that use them.
    pub library_dirs: Vec<PathBuf>,
    /// Also consider every file-backed executable mapping in `/proc/*/maps`.
    pub scan_proc: bool,
}

impl Default for DiscoverOptions {
    /// `/lib`, `/lib64`, `/usr/lib`, `/usr/lib64`, `/usr/local/lib`, the same three plus the
    /// multiarch triplet of this build (`/usr/lib/x86_64-linux-gnu`, ...), then every directory
    /// named in `/etc/ld.so.conf` and its `include`s (read now, so the default reflects this
    /// host); `scan_proc` on. Missing directories are skipped at scan time.
    fn default() -> Self {
        let mut library_dirs: Vec<PathBuf> =
            ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"]
                .iter()
                .map(PathBuf::from)
                .collect();
        if let Some(triplet) = MULTIARCH {
            for base in ["/lib", "/usr/lib", "/usr/local/lib"] {
                library_dirs.push(Path::new(base).join(triplet));
            }
        }
        ld_so_conf_dirs(Path::new("/etc/ld.so.conf"), 0, &mut library_dirs);
        let mut seen = BTreeSet::new();
        library_dirs.retain(|d| seen.insert(d.clone()));
        DiscoverOptions {
            library_dirs,
            scan_proc: true,
        }
    }
}

/// Debian/Ubuntu multiarch directory name of the architecture this binary runs on.
const MULTIARCH: Option<&str> = if cfg!(target_arch = "x86_64") {
    Some("x86_64-linux-gnu")
} else if cfg!(target_arch = "aarch64") {
    Some("aarch64-linux-gnu")
} else if cfg!(target_arch = "x86") {
    Some("i386-linux-gnu")
} else if cfg!(target_arch = "riscv64") {
    Some("riscv64-linux-gnu")
} else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
    Some("powerpc64le-linux-gnu")
} else if cfg!(target_arch = "s390x") {
    Some("s390x-linux-gnu")
} else {
    None
};

/// Directories listed in an `ld.so.conf` file, following `include` globs (a `*` in the last
/// path component only, which is what distributions use) up to a few levels deep.
fn ld_so_conf_dirs(conf: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    let Ok(text) = fs::read_to_string(conf) else {
        return;
    };
    if depth > 4 {
        return;
    }
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(patterns) = line
            .strip_prefix("include")
            .filter(|r| r.starts_with(char::is_whitespace))
        {
            for pattern in patterns.split_whitespace() {
                let pattern = conf.parent().unwrap_or(Path::new("/")).join(pattern);
                for file in glob_last_component(&pattern) {
                    ld_so_conf_dirs(&file, depth + 1, out);
                }
            }
        } else if line.starts_with('/') {
            // Old `dir=TYPE` syntax: the type is ignored.
            out.push(PathBuf::from(line.split('=').next().unwrap_or(line)));
        }
    }
}

fn glob_last_component(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (
        pattern.parent(),
        pattern.file_name().and_then(|n| n.to_str()),
    ) else {
        return Vec::new();
    };
    let Some((prefix, suffix)) = name.split_once('*') else {
        return vec![pattern.to_owned()];
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.len() >= prefix.len() + suffix.len() && n.starts_with(prefix) && n.ends_with(suffix)
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// `libssl.so`, `libssl.so.3`, `libfoo.so.9.1`.
fn looks_like_shared_object(name: &[u8]) -> bool {
    name.ends_with(b".so") || name.windows(4).any(|w| w == b".so.")
}

/// A file to identify, keyed by (dev, ino) in [`discover`].
struct Candidate {
    path: PathBuf,
    pids: BTreeSet<u32>,
}

/// Paths under `/proc` only live as long as a process; any other path is preferred.
fn is_proc_path(path: &Path) -> bool {
    path.starts_with("/proc")
}

/// Every TLS library file on this host that `opts` reaches, each once (by device and inode),
/// with ids 1, 2, ... in path order. Fails only if `/proc` cannot be listed while `scan_proc`
/// is on; unreadable directories and files are skipped with a debug log.
pub fn discover(opts: &DiscoverOptions) -> Result<Vec<Library>, LibraryError> {
    let started = Instant::now();
    let mut files: HashMap<(u64, u64), Candidate> = HashMap::new();

    // Directories first: their (real) paths win over /proc ones for the same file.
    let mut seen_dirs = BTreeSet::new();
    for dir in &opts.library_dirs {
        let Ok(real) = fs::canonicalize(dir) else {
            tracing::debug!(dir = %dir.display(), "library directory missing: skipped");
            continue;
        };
        if seen_dirs.insert(real.clone()) {
            scan_dir(&real, &mut files);
        }
    }
    let from_dirs = files.len();

    let mut mappings = 0;
    if opts.scan_proc {
        let all = procfs::exec_mappings(Path::new("/proc"))?;
        mappings = all.len();
        let mut groups: BTreeMap<_, Vec<&procfs::ExecMapping>> = BTreeMap::new();
        for m in &all {
            groups.entry(m.maps_key()).or_default().push(m);
        }
        for group in groups.values() {
            let Some(r) = procfs::resolve(group) else {
                continue;
            };
            let c = files.entry((r.dev, r.ino)).or_insert_with(|| Candidate {
                path: r.path.clone(),
                pids: BTreeSet::new(),
            });
            if is_proc_path(&c.path) && !is_proc_path(&r.path) {
                c.path = r.path;
            }
            c.pids.extend(group.iter().map(|m| m.pid));
        }
    }
    let candidates = files.len();

    let mut libraries = Vec::new();
    for ((dev, ino), c) in files {
        let (file, md) = match open(&c.path) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "skipped");
                continue;
            }
        };
        if !md.is_file() || (md.dev(), md.ino()) != (dev, ino) {
            tracing::debug!(path = %c.path.display(), "file replaced while scanning: skipped");
            continue;
        }
        match elf::identify_file(file, md.len(), &c.path) {
            Ok(Some(id)) => libraries.push(Library {
                id: 0,
                family: id.family,
                path: c.path,
                dev,
                ino,
                probes: id.probes,
                pids: c.pids.into_iter().collect(),
            }),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "not identified"),
        }
    }
    libraries.sort_by(|a, b| {
        a.path
            .cmp(&b.path)
            .then((a.dev, a.ino).cmp(&(b.dev, b.ino)))
    });
    for (i, lib) in libraries.iter_mut().enumerate() {
        lib.id = u32::try_from(i + 1).unwrap_or(u32::MAX);
    }
    tracing::debug!(
        from_dirs, mappings, candidates, libraries = libraries.len(), elapsed = ?started.elapsed(),
        "TLS library discovery done"
    );
    Ok(libraries)
}

/// Adds the shared objects of one directory (not recursive) to `files`.
fn scan_dir(dir: &Path, files: &mut HashMap<(u64, u64), Candidate>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot list library directory: skipped");
            return;
        }
    };
    for entry in entries.flatten() {
        use std::os::unix::ffi::OsStrExt;
        if !looks_like_shared_object(entry.file_name().as_bytes()) {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: `libssl.so` → `libssl.so.3` is one file.
        let Ok(md) = fs::metadata(&path) else {
            continue; // dangling symlink, or gone
        };
        if !md.is_file() {
            continue;
        }
        files
            .entry((md.dev(), md.ino()))
            .or_insert_with(|| Candidate {
                path: fs::canonicalize(&path).unwrap_or(path),
                pids: BTreeSet::new(),
            });
    }
}
