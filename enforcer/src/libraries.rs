//! TLS library files on this host: find them, identify their family, resolve probe offsets, and
//! establish their identity (build-id, SHA-256, stated version).
//!
//! Candidates are shared-object-like files in the library directories plus every file-backed
//! executable mapping of every process, whatever its name. Each file (by device and inode, which
//! is what a uprobe attaches to) is identified once from its symbols against the catalog in force
//! (see [`crate::catalog`]), and the functions to probe are translated to file offsets.
//!
//! A family may name a **companion** file (OpenSSL's libcrypto for its version text, NSS's
//! libnspr4 for its I/O functions). The companion of a library is a file that defines every
//! companion symbol of its family and is, in this order of preference: mapped by the processes
//! that map the library (most shared processes first), in the library's own directory, or, when
//! [`identify_with`] looks at a single file, in that file's directory. See [`build`].
//!
//! Everything read here may be hostile or vanish at any moment; see [`elf`], [`identity`] and
//! [`procfs`] for how reading is bounded. A file that cannot be read or parsed is skipped with a
//! debug log: it must never fail a whole scan.

mod build;
mod elf;
/// Public for the fuzz targets (`fuzz/fuzz_targets/go_tables.rs`); not a stable interface.
#[doc(hidden)]
pub mod go;
mod identity;
pub mod jvm;
pub(crate) mod procfs;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_identity;
#[cfg(test)]
mod tests_rust;
pub mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::catalog::Catalog;
use crate::family::Family;

pub use identity::{MAX_HASH_BYTES, MAX_RODATA_BYTES};

/// One TLS library file. Its id (in uprobe cookies and events) is the datapath's to give: see
/// [`crate::datapath::Datapath::register`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    pub family: Family,
    /// A path that reaches the file: its real path when there is one, else a `/proc/<pid>/...`
    /// path that only lives as long as that process (deleted-but-mapped files, other mount
    /// namespaces).
    pub path: PathBuf,
    /// `st_dev` / `st_ino` of the file (uprobes attach to the inode, not the name).
    pub dev: u64,
    pub ino: u64,
    /// Where to probe it; empty only for a runtime's file (`abi: jvm`: a JVM, listed, never
    /// probed).
    pub probes: Vec<ProbeTarget>,
    /// Processes that had it mapped during the scan, ascending.
    pub pids: Vec<u32>,
    /// The names processes map it under (`/proc/<pid>/maps`, relative to each process's mount
    /// namespace), sorted, at most [`MAX_MAPPED_NAMES`].
    pub mapped_as: Vec<PathBuf>,
    pub identity: Identity,
    /// The companion file, if the family has one and it was found.
    pub companion: Option<FileRef>,
}

#[cfg(test)]
impl Library {
    /// A library of `family` at `path`, nothing else known (for tests).
    pub(crate) fn bare(family: &str, path: &str) -> Library {
        Library {
            family: Family::new(family).unwrap(),
            path: path.into(),
            dev: 0,
            ino: 0,
            probes: Vec::new(),
            pids: Vec::new(),
            mapped_as: Vec::new(),
            identity: Identity::default(),
            companion: None,
        }
    }
}

/// At most this many distinct mapped names are kept per library.
pub const MAX_MAPPED_NAMES: usize = 8;

/// What identifies a library file's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// Size in bytes when it was read.
    pub size: u64,
    /// GNU build-id, lowercase hex.
    pub build_id: Option<String>,
    /// SHA-256 of the contents, lowercase hex (`None` above [`MAX_HASH_BYTES`] or unreadable).
    pub sha256: Option<String>,
    /// The version the library states about itself (`3.0.15`, `1.1.1w`), if found.
    pub version: Option<String>,
}

/// A file by path and inode.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileRef {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

/// One function of a library to probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbeTarget {
    /// Symbol name without version (`SSL_write`).
    pub symbol: String,
    /// `enforcer_common::flow::op::*`.
    pub op: u8,
    /// Offset of the function's first instruction in the file, as a uprobe wants it.
    pub file_offset: u64,
    /// The function is in the library's companion file (NSS's `PR_Write` in libnspr4), not in
    /// the library itself.
    pub in_companion: bool,
    /// Empty: the exit is caught by a return probe (uretprobe). Otherwise (Go, see
    /// [`crate::catalog::Abi::Go`]) the file offsets of the function's return instructions,
    /// each of which gets a plain uprobe, and `file_offset` is the instruction after the
    /// function's stack check; calls are then tracked per goroutine.
    pub return_offsets: Vec<u64>,
    /// Session functions (`op::SESSION`) only: the executable segment around the function, from
    /// which the kernel learns where the library's code lies in each process that calls it.
    pub code: Option<enforcer_common::hello::CodeSpan>,
}

impl ProbeTarget {
    /// Probed the Go way: entry and return-instruction uprobes, keyed by goroutine.
    pub fn is_go(&self) -> bool {
        !self.return_offsets.is_empty()
    }

    /// Gets a return probe (uretprobe) beside its entry probe: every C-ABI function but the
    /// session functions, whose entry is all that is needed.
    pub fn wants_return(&self) -> bool {
        !self.is_go() && self.op != enforcer_common::flow::op::SESSION
    }
}

impl Library {
    /// Its hellos are attributed by the random it makes, asked for by its own code: it has a
    /// random source and a session function to probe (docs/architecture.md, "Content-bound
    /// attribution"). Its record calls (`op::READ`, `op::WRITE`) are then needed only where the
    /// thread that sends is the evidence wanted: see [`Library::split_record_probes`].
    pub fn binds_hellos(&self) -> bool {
        use enforcer_common::flow::op;
        self.probes.iter().any(|p| op::is_random(p.op))
            && self.probes.iter().any(|p| p.op == op::SESSION)
    }

    /// This library with its record calls (`SSL_read`, `SSL_write`, ...) and without, for
    /// probing them apart: an allowed library that binds its hellos needs no probe per record.
    pub fn split_record_probes(&self) -> (Library, Library) {
        use enforcer_common::flow::op;
        let is_record = |p: &ProbeTarget| !p.is_go() && (p.op == op::READ || p.op == op::WRITE);
        let (records, rest): (Vec<ProbeTarget>, Vec<ProbeTarget>) =
            self.probes.iter().cloned().partition(is_record);
        let with = |probes| Library {
            probes,
            ..self.clone()
        };
        (with(rest), with(records))
    }

    /// The file a probe goes into: the library, or its companion.
    pub fn probe_path(&self, target: &ProbeTarget) -> &Path {
        self.probe_file(target).0
    }

    /// [`Self::probe_path`] with the `st_dev` / `st_ino` the file was identified as.
    pub fn probe_file(&self, target: &ProbeTarget) -> (&Path, u64, u64) {
        match (&self.companion, target.in_companion) {
            (Some(c), true) => (&c.path, c.dev, c.ino),
            _ => (&self.path, self.dev, self.ino),
        }
    }
}

/// What [`identify`] found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identified {
    pub family: Family,
    /// Empty only for a runtime's file (`abi: jvm`).
    pub probes: Vec<ProbeTarget>,
    pub identity: Identity,
    pub companion: Option<FileRef>,
}

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} changed while it was read", path.display())]
    Changed { path: PathBuf },
    #[error("{}: malformed ELF: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot list processes in {}: {source}", path.display())]
    Proc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Identify one file with the embedded catalog: see [`identify_with`].
pub fn identify(path: &Path) -> Result<Option<Identified>, LibraryError> {
    identify_with(path, &Catalog::embedded())
}

/// Identify one file: its TLS family, where to probe it and its identity, or `None` if it is not
/// a TLS library (not ELF, not a regular file, no matching family, or nothing probe-able in it).
/// A companion is looked for in the file's directory.
pub fn identify_with(path: &Path, catalog: &Catalog) -> Result<Option<Identified>, LibraryError> {
    identify_at(path, path.parent(), None, catalog)
}

/// Like [`identify_with`], but the file is read through `open` (a `/proc/<pid>/fd/<n>` or
/// `/proc/<pid>/map_files/...` link reaches the very inode a process holds, whatever its name
/// points to now), its companion is looked for in `dir`, and unless it is the inode `key` (device,
/// inode) it is [`LibraryError::Changed`]: a file renamed over between the hook and the read is
/// never identified in the place of the one the process maps.
pub fn identify_at(
    open_path: &Path,
    dir: Option<&Path>,
    key: Option<(u64, u64)>,
    catalog: &Catalog,
) -> Result<Option<Identified>, LibraryError> {
    let (file, md) = open(open_path)?;
    if !md.is_file() {
        return Ok(None);
    }
    let found = (md.dev(), md.ino());
    if key.is_some_and(|k| k != found) {
        return Err(LibraryError::Changed {
            path: open_path.to_owned(),
        });
    }
    let Some(scanned) = build::scan(file, &md, open_path, catalog, false)? else {
        return Ok(None);
    };
    let wants_companion = scanned
        .family
        .is_some_and(|f| !catalog.families()[f].companion.is_empty());
    let mut files = vec![scanned];
    if wants_companion && let Some(dir) = dir {
        let mut extra = HashMap::new();
        scan_dir(dir, &mut extra);
        for (k, c) in extra {
            if k != found
                && let Ok(Some(s)) = build::scan_path(&c.path, k, catalog, true)
            {
                files.push(s);
            }
        }
    }
    Ok(build::libraries(files, catalog)
        .into_iter()
        .find(|l| (l.dev, l.ino) == found)
        .map(|l| Identified {
            family: l.family,
            probes: l.probes,
            identity: l.identity,
            companion: l.companion,
        }))
}

/// Opens for reading without following into FIFOs or devices that would block. Any size: only
/// the parts that identify a file are read, by offset (see [`elf`]).
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
    /// What identifies a TLS library (the embedded catalog, possibly extended by the policy).
    pub catalog: Arc<Catalog>,
}

impl Default for DiscoverOptions {
    /// `/lib`, `/lib64`, `/usr/lib`, `/usr/lib64`, `/usr/local/lib`, the same three plus the
    /// multiarch triplet of this build (`/usr/lib/x86_64-linux-gnu`, ...), then every directory
    /// named in `/etc/ld.so.conf` and its `include`s (read now, so the default reflects this
    /// host); `scan_proc` on; the embedded catalog. Missing directories are skipped at scan time.
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
            catalog: Catalog::embedded(),
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
    mapped_as: BTreeSet<PathBuf>,
}

/// Paths under `/proc` only live as long as a process; any other path is preferred.
fn is_proc_path(path: &Path) -> bool {
    path.starts_with("/proc")
}

/// Every TLS library file on this host that `opts` reaches, each once (by device and inode),
/// in path order, with its identity and companion. Fails only if `/proc` cannot be listed while
/// `scan_proc` is on; unreadable directories and files are skipped with a debug log.
pub fn discover(opts: &DiscoverOptions) -> Result<Vec<Library>, LibraryError> {
    discover_with_progress(opts, &mut |_, _| {})
}

/// [`discover`], calling `progress(examined, candidates)` as each candidate file is examined
/// (`enforcer libs` draws a progress bar with it).
pub fn discover_with_progress(
    opts: &DiscoverOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Library>, LibraryError> {
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
                mapped_as: BTreeSet::new(),
            });
            if is_proc_path(&c.path) && !is_proc_path(&r.path) {
                c.path = r.path;
            }
            c.pids.extend(group.iter().map(|m| m.pid));
            for m in group {
                if c.mapped_as.len() < MAX_MAPPED_NAMES {
                    c.mapped_as.insert(m.path.clone());
                }
            }
        }
    }
    let candidates = files.len();

    let catalog = &opts.catalog;
    let mut scanned = Vec::new();
    for (n, ((dev, ino), c)) in files.into_iter().enumerate() {
        progress(n, candidates);
        match build::scan_path(&c.path, (dev, ino), catalog, false) {
            Ok(Some(mut f)) => {
                f.pids = c.pids;
                f.mapped_as = c.mapped_as;
                scanned.push(f);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "not identified"),
        }
    }
    progress(candidates, candidates);
    let libraries = build::libraries(scanned, catalog);
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
                mapped_as: BTreeSet::new(),
            });
    }
}
