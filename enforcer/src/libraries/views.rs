//! Both names of a library file that a process in another mount namespace (a container) maps:
//! the path inside that namespace (what the process, its image and its operator call it) and a
//! path the agent's own namespace reaches it at.
//!
//! A library found through a container process is known by `/proc/<pid>/root/<path inside>`
//! (see [`super::procfs`]), which lives only as long as that process. The host usually mounts the
//! container's root somewhere of its own (Docker's and containerd's overlay `merged` directory,
//! CRI-O's too): the mount of the same filesystem (`major:minor` in `mountinfo`) whose root covers
//! the file gives a path that lives as long as the container does. It counts only if `stat` says
//! it is the very same file. An agent that runs in a container of its own (a DaemonSet) sees the
//! host's mounts only if they are mounted into it: otherwise the `/proc` path is all there is.
//!
//! `mountinfo` is hostile input (a container can mount anything anywhere, with any name):
//! reads are bounded ([`MAX_MOUNTINFO`], [`MAX_CANDIDATES`]), names are unescaped and never
//! trusted beyond the `stat` check, and nothing here decides a verdict.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use super::Library;

/// Longest `mountinfo` read (a node with thousands of mounts stays well under it).
const MAX_MOUNTINFO: u64 = 4 << 20;
/// Host mounts of the container's filesystem tried at most.
const MAX_CANDIDATES: usize = 16;

/// The two names of a library file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Views {
    /// The path inside the mount namespace of the process that maps it, when that is not the
    /// agent's (`None`: a host library).
    pub container: Option<PathBuf>,
    /// A path the agent's mount namespace reaches it at: a stable one when one was found, else
    /// the library's own path (which may be a `/proc/<pid>/...` path).
    pub host: PathBuf,
}

/// Both names of `lib`.
pub fn views(lib: &Library) -> Views {
    let host = lib.path.clone();
    let Some((pid, rest)) = proc_path(&lib.path) else {
        // A host path; a container maps it under another name only through a bind mount.
        let container = lib.mapped_as.iter().find(|n| **n != lib.path).cloned();
        return Views { container, host };
    };
    match rest.strip_prefix("root") {
        Ok(inner) => {
            let inner = Path::new("/").join(inner);
            let host = stable(pid, &inner, lib.dev, lib.ino).unwrap_or(host);
            Views {
                container: Some(inner),
                host,
            }
        }
        // `/proc/<pid>/map_files/...`: the name inside is the one it is mapped under.
        Err(_) => Views {
            container: lib.mapped_as.first().cloned(),
            host,
        },
    }
}

/// `/proc/<pid>/<rest>` → (pid, rest).
fn proc_path(path: &Path) -> Option<(u32, &Path)> {
    let rest = path.strip_prefix("/proc").ok()?;
    let pid = rest
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .parse()
        .ok()?;
    Some((pid, rest.strip_prefix(pid.to_string()).ok()?))
}

/// A path in the agent's mount namespace to the file `inner` names inside process `pid`'s root,
/// that `stat` says is the file `(dev, ino)`.
fn stable(pid: u32, inner: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    let theirs = read_mountinfo(&format!("/proc/{pid}/mountinfo"))?;
    // The mount `inner` is on: the longest mount point above it, the last one mounted there.
    let (mount, below) = theirs
        .iter()
        .filter_map(|m| Some((m, inner.strip_prefix(&m.point).ok()?)))
        .max_by_key(|(m, _)| m.point.components().count())?;
    let in_fs = mount.root.join(below);
    let ours = read_mountinfo("/proc/self/mountinfo")?;
    ours.iter()
        .filter(|m| m.dev == mount.dev)
        .filter_map(|m| Some(m.point.join(in_fs.strip_prefix(&m.root).ok()?)))
        .filter(|p| !p.components().any(|c| c == Component::ParentDir))
        .take(MAX_CANDIDATES)
        .find(|p| std::fs::metadata(p).is_ok_and(|md| (md.dev(), md.ino()) == (dev, ino)))
}

/// One line of `mountinfo`: the filesystem (`major:minor`), the directory of it mounted, and
/// where.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    dev: String,
    root: PathBuf,
    point: PathBuf,
}

fn read_mountinfo(path: &str) -> Option<Vec<Mount>> {
    let mut text = Vec::new();
    File::open(path)
        .ok()?
        .take(MAX_MOUNTINFO)
        .read_to_end(&mut text)
        .ok()?;
    Some(parse_mountinfo(&text))
}

/// Lines that do not parse are skipped; a line cut by the read bound is too.
fn parse_mountinfo(text: &[u8]) -> Vec<Mount> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut fields = line.split(|&b| b == b' ');
            let (_id, _parent) = (fields.next()?, fields.next()?);
            let dev = std::str::from_utf8(fields.next()?).ok()?.to_owned();
            let root = unescape(fields.next()?)?;
            let point = unescape(fields.next()?)?;
            // A complete line has its optional fields and the `-` separator after these.
            fields.any(|f| f == b"-").then_some(())?;
            Some(Mount { dev, root, point })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash). Only absolute paths count.
fn unescape(field: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        match field[i] {
            b'\\' => {
                let digits = field.get(i + 1..i + 4)?;
                let value = std::str::from_utf8(digits).ok()?;
                out.push(u8::from_str_radix(value, 8).ok()?);
                i += 4;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    (out.first() == Some(&b'/')).then(|| PathBuf::from(std::ffi::OsString::from_vec(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_and_hostile_ones_are_skipped() {
        let text = b"22 1 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
            25 1 0:40 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw,lowerdir=x\n\
            26 1 8:1 /srv/a\\040b /mnt/with\\040space rw - ext4 /dev/sda1 rw\n\
            27 1 8:1 / relative rw - ext4 /dev/sda1 rw\n\
            28 1 8:1 /bad\\9 /x rw - ext4 /dev/sda1 rw\n\
            29 1 8:1 / /cut rw";
        let mounts = parse_mountinfo(text);
        assert_eq!(
            mounts,
            [
                Mount {
                    dev: "0:21".into(),
                    root: "/".into(),
                    point: "/sys".into()
                },
                Mount {
                    dev: "0:40".into(),
                    root: "/".into(),
                    point: "/var/lib/docker/overlay2/abc/merged".into()
                },
                Mount {
                    dev: "8:1".into(),
                    root: "/srv/a b".into(),
                    point: "/mnt/with space".into()
                },
            ]
        );
        assert!(parse_mountinfo(&[0xff; 64]).is_empty());
        assert!(parse_mountinfo(b"\\\\\\ \\1 \\ - -").is_empty());
    }

    #[test]
    fn proc_paths_name_their_process() {
        assert_eq!(
            proc_path(Path::new("/proc/42/root/usr/lib/libssl.so.3")),
            Some((42, Path::new("root/usr/lib/libssl.so.3")))
        );
        assert_eq!(proc_path(Path::new("/proc/self/root/x")), None);
        assert_eq!(proc_path(Path::new("/usr/lib/libssl.so.3")), None);
    }

    /// A library of this very process seen "through a container": `/proc/<self>/root/...`
    /// names it inside, and the host path found is its real one.
    #[test]
    fn a_rooted_path_has_both_views() {
        let exe = std::env::current_exe().expect("own executable");
        let exe = exe.canonicalize().expect("canonical");
        let md = std::fs::metadata(&exe).expect("stat");
        let rooted = PathBuf::from(format!("/proc/{}/root", std::process::id()))
            .join(exe.strip_prefix("/").expect("absolute"));
        let mut lib = Library::bare("openssl", "/");
        (lib.path, lib.dev, lib.ino) = (rooted, md.dev(), md.ino());
        let views = views(&lib);
        assert_eq!(views.container.as_deref(), Some(exe.as_path()));
        assert_eq!(views.host, exe);

        let host = Library::bare("openssl", "/usr/lib/libssl.so.3");
        assert_eq!(
            super::views(&host),
            Views {
                container: None,
                host: "/usr/lib/libssl.so.3".into()
            }
        );
    }
}
