//! Finding the file behind a hook's event, and the files the start-up sweep looks at.
//!
//! The event names a process, an fd (or "its new program") and the key the hook read from the
//! inode. While the process is paused its fd stays open and `/proc/<pid>/fd/<n>` (or
//! `/proc/<pid>/exe`) reaches the very file, wherever it lives (another mount namespace, deleted,
//! a memfd). The name the link shows is only trusted as a path when `stat` says it is that same
//! file.

use std::{
    collections::HashSet,
    fs,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use enforcer_common::watch::{FileKey, kind};

use crate::libraries::procfs;

/// A file to examine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Where to read it and attach probes: its real path when that reaches the same file, else
    /// a `/proc/<pid>/...` path (valid while that process lives).
    pub path: PathBuf,
    /// The name the process knows it by (the link's target, or the name in `maps`).
    pub name: PathBuf,
    /// Where to read it: the `/proc` magic link it was reached through (the process's fd or
    /// mapping: the very inode, whatever `path` names by then), else `path`.
    pub link: PathBuf,
    pub st_dev: u64,
    pub st_ino: u64,
    /// Inode generation, where the filesystem says (see [`super::kernel::generation`]).
    pub generation: Option<u32>,
    /// `ctime` (seconds, nanoseconds) when it was found: a file rewritten in place keeps its
    /// inode and generation but not this.
    pub ctime: Option<(i64, i64)>,
}

/// `ctime` of `md`, as [`Found::ctime`] keeps it.
pub fn ctime(md: &fs::Metadata) -> Option<(i64, i64)> {
    Some(super::kernel::ctime_of(md))
}

/// The file an event is about, `None` if the process is gone or the file cannot be reached.
pub fn find(proc_root: &Path, pid: u32, how: u8, fd: i32, key: &FileKey) -> Option<Found> {
    let dir = proc_root.join(pid.to_string());
    let link = match how {
        kind::EXEC => dir.join("exe"),
        _ => dir.join("fd").join(fd.to_string()),
    };
    if let Some(found) = reach(&dir, &link, key) {
        return Some(found);
    }
    // The fd was closed or reused by another thread meanwhile: look for the mapping instead.
    let maps = fs::read(dir.join("maps")).ok()?;
    procfs::parse_maps(pid, &maps)
        .into_iter()
        .filter(|m| m.inode == key.ino)
        .find_map(|m| {
            let link = dir
                .join("map_files")
                .join(format!("{:x}-{:x}", m.start, m.end));
            reach(&dir, &link, key)
        })
}

/// `link` (a `/proc` magic link) if it leads to a regular file with the key's inode number.
fn reach(pid_dir: &Path, link: &Path, key: &FileKey) -> Option<Found> {
    let md = fs::metadata(link).ok()?;
    if !md.is_file() || md.ino() != key.ino {
        return None;
    }
    let generation = generation_of(link, &md);
    let name = fs::read_link(link).unwrap_or_else(|_| link.to_owned());
    let same = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == (md.dev(), md.ino()))
    };
    let rooted = pid_dir
        .join("root")
        .join(name.strip_prefix("/").unwrap_or(&name));
    let path = if name.is_absolute() && same(&name) {
        name.clone()
    } else if name.is_absolute() && same(&rooted) {
        rooted
    } else {
        link.to_owned()
    };
    Some(Found {
        path,
        link: link.to_owned(),
        name,
        st_dev: md.dev(),
        st_ino: md.ino(),
        generation,
        ctime: ctime(&md),
    })
}

/// The generation of the regular file at `path`, if it is still the file `md` describes.
/// Opened non-blocking (a FIFO swapped in meanwhile must not block the caller).
pub fn generation_of(path: &Path, md: &fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let now = file.metadata().ok()?;
    ((now.dev(), now.ino()) == (md.dev(), md.ino()))
        .then(|| super::kernel::generation(&file))
        .flatten()
}

/// Every file executable-mapped by a process right now, once per (dev, ino).
pub fn mapped_now(proc_root: &Path) -> Vec<Found> {
    // An unreadable /proc means nothing is found, as for any single process that vanished.
    let mappings = procfs::exec_mappings(proc_root).unwrap_or_default();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in mappings {
        let dir = proc_root.join(m.pid.to_string());
        let link = dir
            .join("map_files")
            .join(format!("{:x}-{:x}", m.start, m.end));
        let key = FileKey {
            ino: m.inode,
            ..FileKey::default()
        };
        if let Some(found) = reach(&dir, &link, &key)
            && seen.insert((found.st_dev, found.st_ino))
        {
            out.push(found);
        }
    }
    out
}

/// Regular files in `dirs` (not recursive) that a process could map or run: shared objects
/// (`*.so`, `*.so.*`) and files with an execute bit. Once per (dev, ino), in `dirs` order.
pub fn in_dirs(dirs: &[PathBuf]) -> Vec<Found> {
    let mut seen_dirs = HashSet::new();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(real) = fs::canonicalize(dir) else {
            continue;
        };
        if !seen_dirs.insert(real.clone()) {
            continue;
        }
        let Ok(entries) = fs::read_dir(&real) else {
            continue;
        };
        let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for path in names {
            let Ok(md) = fs::metadata(&path) else {
                continue;
            };
            let file_name = path.file_name().map(OsStrExt::as_bytes).unwrap_or(b"");
            let shared = file_name.ends_with(b".so") || file_name.windows(4).any(|w| w == b".so.");
            if !md.is_file() || !(shared || md.mode() & 0o111 != 0) {
                continue;
            }
            if seen.insert((md.dev(), md.ino())) {
                let real = fs::canonicalize(&path).unwrap_or(path);
                out.push(Found {
                    generation: generation_of(&real, &md),
                    link: real.clone(),
                    name: real.clone(),
                    path: real,
                    st_dev: md.dev(),
                    st_ino: md.ino(),
                    ctime: ctime(&md),
                });
            }
        }
    }
    out
}
