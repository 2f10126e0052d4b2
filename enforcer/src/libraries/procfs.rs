//! Executable file mappings of running processes, from `/proc/<pid>/maps`.
//!
//! Every file-backed executable mapping is a candidate, whatever its name: a renamed or vendored
//! `libssl`, a `memfd`, or a library deleted (upgraded) on disk but still mapped.
//!
//! Which path reaches the mapped file? The name in `maps` is only a hint: it is relative to the
//! process's mount namespace, it may carry ` (deleted)`, newlines are escaped, and after a package
//! upgrade the same name refers to a *new* file while the process still runs the old one. So the
//! ground truth is `/proc/<pid>/map_files/<start>-<end>`, a link to the very file that is mapped
//! (following it needs `CAP_SYS_ADMIN`, which the agent has; without it the device and inode
//! printed in `maps` serve as the truth instead). A path is accepted only if `stat` says it is
//! that same file, tried in this order: the name as printed (a real, stable path), the name under
//! `/proc/<pid>/root` (the process's root: containers, chroots), and finally the `map_files` link
//! itself. The last two only live as long as the process.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::LibraryError;

/// One executable, file-backed mapping of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExecMapping {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    /// `major:minor` of the device, as printed in `maps`.
    pub dev: (u32, u32),
    pub inode: u64,
    /// The name printed in `maps` (unescaped as far as the kernel allows; only a hint).
    pub path: PathBuf,
}

impl ExecMapping {
    /// Identity as printed in `maps`: same key, same file.
    pub fn maps_key(&self) -> ((u32, u32), u64) {
        (self.dev, self.inode)
    }
}

/// A path that reaches a mapped file, and that file's identity as `stat` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Resolved {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

/// Executable file mappings of every process in `proc_root` (normally `/proc`). Processes that
/// exit while being read are skipped silently; unreadable ones with a debug log.
pub(crate) fn exec_mappings(proc_root: &Path) -> Result<Vec<ExecMapping>, LibraryError> {
    let entries = fs::read_dir(proc_root).map_err(|source| LibraryError::Proc {
        path: proc_root.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let maps = entry.path().join("maps");
        match fs::read(&maps) {
            Ok(text) => out.extend(parse_maps(pid, &text)),
            Err(e) if vanished(&e) => tracing::trace!(pid, "process exited while scanning"),
            Err(e) => tracing::debug!(pid, error = %e, "cannot read {}: skipped", maps.display()),
        }
    }
    Ok(out)
}

/// ENOENT / ESRCH: the process is gone. Normal on a busy host.
pub(super) fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// The executable, file-backed mappings in the text of one `/proc/<pid>/maps`.
pub(crate) fn parse_maps(pid: u32, text: &[u8]) -> Vec<ExecMapping> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| parse_line(pid, line))
        .collect()
}

// `7f3c1a21f000-7f3c1a27c000 r-xp 0001f000 fe:01 1234567     /usr/lib/x86_64-linux-gnu/libssl.so.3`
fn parse_line(pid: u32, line: &[u8]) -> Option<ExecMapping> {
    let mut rest = line;
    let range = field(&mut rest);
    let perms = field(&mut rest);
    let _offset = field(&mut rest);
    let dev = field(&mut rest);
    let inode = field(&mut rest);
    let path = trim_start(rest);
    if perms.get(2) != Some(&b'x') || path.first() != Some(&b'/') {
        return None; // not executable; anonymous, [vdso], [stack], ...
    }
    let inode: u64 = std::str::from_utf8(inode).ok()?.parse().ok()?;
    if inode == 0 {
        return None;
    }
    let (start, end) = split2(range, b'-')?;
    let (major, minor) = split2(dev, b':')?;
    Some(ExecMapping {
        pid,
        start: hex(start)?,
        end: hex(end)?,
        dev: (
            u32::try_from(hex(major)?).ok()?,
            u32::try_from(hex(minor)?).ok()?,
        ),
        inode,
        path: PathBuf::from(std::ffi::OsStr::from_bytes(path)),
    })
}

fn trim_start(s: &[u8]) -> &[u8] {
    let skip = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[skip..]
}

fn field<'a>(rest: &mut &'a [u8]) -> &'a [u8] {
    let s = trim_start(rest);
    let end = s
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let (f, r) = s.split_at(end);
    *rest = r;
    f
}

fn split2(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|&b| b == sep)?;
    Some((&s[..at], &s[at + 1..]))
}

fn hex(s: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// A path to the file behind a group of mappings that share one `maps_key` (see the module
/// docs). Tries a few of the mapping processes, since any of them may have exited meanwhile.
pub(super) fn resolve(group: &[&ExecMapping]) -> Option<Resolved> {
    for m in group.iter().take(8) {
        let map_files = PathBuf::from(format!(
            "/proc/{}/map_files/{:x}-{:x}",
            m.pid, m.start, m.end
        ));
        let truth = fs::metadata(&map_files)
            .ok()
            .filter(|md| md.is_file())
            .map(|md| (md.dev(), md.ino()));
        let same_file = |md: &fs::Metadata| match truth {
            Some(t) => (md.dev(), md.ino()) == t,
            None => {
                let dev = md.dev();
                md.ino() == m.inode && (libc::major(dev), libc::minor(dev)) == m.dev
            }
        };
        let rooted = Path::new(&format!("/proc/{}/root", m.pid))
            .join(m.path.strip_prefix("/").unwrap_or(&m.path));
        for candidate in [&m.path, &rooted] {
            match fs::metadata(candidate) {
                Ok(md) if md.is_file() && same_file(&md) => {
                    return Some(Resolved {
                        path: candidate.clone(),
                        dev: md.dev(),
                        ino: md.ino(),
                    });
                }
                _ => {}
            }
        }
        if let Some((dev, ino)) = truth {
            return Some(Resolved {
                path: map_files,
                dev,
                ino,
            });
        }
    }
    let m = group.first()?;
    tracing::debug!(pid = m.pid, path = %m.path.display(), "mapped file not reachable (process gone, or no CAP_SYS_ADMIN for map_files): skipped");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let text = b"\
55d0c0a00000-55d0c0a22000 r--p 00000000 fe:01 131090                     /usr/bin/python3.11
55d0c0a22000-55d0c0c00000 r-xp 00022000 fe:01 131090                     /usr/bin/python3.11
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon
7f3c1a21f000-7f3c1a27c000 r-xp 0001f000 fe:01 1234567                    /tmp/dir with space/libfoo.so.9
7f3c1a300000-7f3c1a301000 r-xp 00000000 00:01 2048                       /memfd:tls (deleted)
7f3c1a400000-7f3c1a401000 r-xp 00000000 00:00 0 
7ffd4d5f0000-7ffd4d5f2000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
garbage
7f3c1a21f000-7f3c1a27c000 r-xp zz fe:01 notanumber /x
";
        let got = parse_maps(7, text);
        let paths: Vec<_> = got.iter().map(|m| m.path.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/usr/bin/python3.11",
                "/usr/bin/dbus-daemon",
                "/tmp/dir with space/libfoo.so.9",
                "/memfd:tls (deleted)"
            ]
        );
        assert_eq!(
            got[1],
            ExecMapping {
                pid: 7,
                start: 0x400000,
                end: 0x452000,
                dev: (8, 2),
                inode: 173521,
                path: "/usr/bin/dbus-daemon".into()
            }
        );
        assert_eq!(got[2].dev, (0xfe, 1));
        assert_eq!(got[2].start, 0x7f3c1a21f000);
    }

    #[test]
    fn resolves_own_libc_to_its_real_path() {
        let text = fs::read("/proc/self/maps").unwrap();
        let me = std::process::id();
        let maps = parse_maps(me, &text);
        let libc = maps
            .iter()
            .find(|m| m.path.to_string_lossy().contains("libc.so"))
            .expect("libc mapped");
        let r = resolve(&[libc]).expect("resolvable");
        assert_eq!(
            r.path, libc.path,
            "a real path is preferred over /proc ones"
        );
        let md = fs::metadata(&libc.path).unwrap();
        assert_eq!((r.dev, r.ino), (md.dev(), md.ino()));
    }
}
