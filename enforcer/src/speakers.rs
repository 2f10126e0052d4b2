//! Who is talking, in host terms: the facts rules scoped to who is talking match
//! (`policy::who::Speaker`), resolved from what the kernel recorded about a sender
//! (`enforcer_common::who::Sender`: executable inode, cgroup v2 id, uid) or, for `policy
//! explain`, from a running process.
//!
//! Nothing the process says about itself is taken: the executable's name is the link
//! `/proc/PID/exe`, kept only if that name, looked up in the agent's own mount namespace, is the
//! very file the kernel saw run (device and inode), so a name from another mount namespace
//! (a bind mount in a user namespace), a deleted or replaced file, or a reused pid names
//! nothing. The cgroup's path is checked the same way: the directory under the cgroup v2 mount
//! must be the cgroup of that id (a cgroup v2 id is its directory's inode number).

use std::collections::HashMap;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use enforcer_common::watch::{FileKey, kernel_dev};
use enforcer_common::who::Sender;
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;
use crate::policy::who::Speaker;

/// Directories walked at most to find a cgroup by id when the process's own view fails.
const MAX_CGROUP_WALK: usize = 65536;
/// Largest executable hashed for a `sha256` entry.
const MAX_HASHED: u64 = 1 << 30;

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on a pure-v2 host, `/sys/fs/cgroup/unified` on
/// a hybrid one), from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_root_in(&text)
}

/// [`cgroup2_root`] from a mountinfo text: the first `cgroup2` mount's mount point.
pub fn cgroup2_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        let fstype = rest.split_whitespace().next()?;
        let mount_point = fields.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |c: &u8| (b'0'..=b'7').contains(c);
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(octal) {
            let n = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(n as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The facts about the process the kernel recorded as `sender`. `want_sha256`: hash the
/// executable (a rule pins one's contents). The flag says whether they are complete: the
/// process was still there, running that executable, when they were read. Facts a gone process
/// left unknown are not facts about its identity, and a verdict on them must not be kept for it.
/// `runtimes`: look for the runtime the process maps (a JVM) with this catalog (a rule names a
/// runtime family).
pub fn resolve(sender: &Sender, want_sha256: bool, runtimes: Option<&Catalog>) -> (Speaker, bool) {
    let exe = exe_name(sender.tgid, &sender.exe);
    let exe_sha256 = match (&exe, want_sha256) {
        (Some(path), true) => sha256_of(path, &sender.exe),
        _ => None,
    };
    let speaker = Speaker {
        pid: Some(sender.tgid),
        exe,
        exe_sha256,
        cgroup: cgroup2_root().and_then(|root| cgroup_path(&root, sender.cgroup, sender.tgid)),
        uid: Some(sender.uid),
        runtime: runtimes.and_then(|c| crate::libraries::jvm::of_process(sender.tgid, c)),
    };
    // Read after the facts: the process was there throughout.
    let there = fs::metadata(format!("/proc/{}/exe", sender.tgid))
        .is_ok_and(|md| same_file(&md, &sender.exe));
    (speaker, there)
}

/// A running process's facts and command name (`policy explain`), if it is there.
pub fn of_process(
    pid: u32,
    want_sha256: bool,
    root: Option<&Path>,
    runtimes: Option<&Catalog>,
) -> Option<(Speaker, String)> {
    let md = fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    let key = FileKey {
        dev: dev_of(&md),
        generation: 0,
        ino: md.ino(),
    };
    let uid = real_uid(pid)?;
    let id = root.and_then(|root| {
        let own = own_cgroup(pid)?;
        let md = fs::metadata(root.join(own.trim_start_matches('/'))).ok()?;
        Some(md.ino())
    });
    let exe = exe_name(pid, &key);
    let exe_sha256 = match (&exe, want_sha256) {
        (Some(path), true) => sha256_of(path, &key),
        _ => None,
    };
    let cgroup = match (root, id) {
        (Some(root), Some(id)) => cgroup_path(root, id, pid),
        _ => None,
    };
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    Some((
        Speaker {
            pid: Some(pid),
            exe,
            exe_sha256,
            cgroup,
            uid: Some(uid),
            runtime: runtimes.and_then(|c| crate::libraries::jvm::of_process(pid, c)),
        },
        comm.trim_end().to_owned(),
    ))
}

/// Process `pid`'s real uid (`Uid:` in `/proc/PID/status`), as the kernel records a sender's.
fn real_uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `st_dev` as the kernel's `dev_t` (`super_block::s_dev`), which the hooks record.
fn dev_of(md: &fs::Metadata) -> u32 {
    let dev = md.dev();
    kernel_dev(libc::major(dev), libc::minor(dev))
}

fn same_file(md: &fs::Metadata, key: &FileKey) -> bool {
    dev_of(md) == key.dev && md.ino() == key.ino
}

/// The host's name of process `pid`'s executable, if it still is `key`.
fn exe_name(pid: u32, key: &FileKey) -> Option<PathBuf> {
    if key.ino == 0 {
        return None;
    }
    let link = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    if !link.is_absolute() || link.starts_with("/proc") {
        return None;
    }
    // A deleted file's link ends in " (deleted)": it looks nothing up, or something else.
    let md = fs::metadata(&link).ok()?;
    (md.is_file() && same_file(&md, key)).then_some(link)
}

/// The SHA-256 of the file at `path`, read from the very file `key` (checked on the open
/// descriptor, so a file swapped in after the check is not the one hashed).
fn sha256_of(path: &Path, key: &FileKey) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let md = file.metadata().ok()?;
    if !same_file(&md, key) || md.len() > MAX_HASHED {
        return None;
    }
    // Hashed once per file version: the same inode, size and change time.
    let version = (md.dev(), md.ino(), md.len(), md.ctime(), md.ctime_nsec());
    let cache = HASHES.get_or_init(Mutex::default);
    if let Some(hash) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&version)
    {
        return Some(hash.clone());
    }
    let hash = hash_file(&mut file)?;
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= MAX_HASHES {
        cache.clear();
    }
    cache.insert(version, hash.clone());
    Some(hash)
}

/// (device, inode, size, ctime) → SHA-256 of the executables hashed so far.
type HashCache = HashMap<(u64, u64, u64, i64, i64), String>;
static HASHES: OnceLock<Mutex<HashCache>> = OnceLock::new();
/// Hashes remembered at most.
const MAX_HASHES: usize = 1024;

fn hash_file(file: &mut fs::File) -> Option<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return None,
        }
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Process `pid`'s cgroup v2 path as it says (`0::/path` in `/proc/PID/cgroup`).
fn own_cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The path below `root` of cgroup `id`: the process's own view when it checks out, else a
/// bounded walk of the hierarchy.
fn cgroup_path(root: &Path, id: u64, pid: u32) -> Option<String> {
    if id == 0 {
        return None;
    }
    let is_it = |rel: &str| {
        fs::metadata(root.join(rel.trim_start_matches('/')))
            .is_ok_and(|md| md.is_dir() && md.ino() == id)
    };
    if let Some(own) = own_cgroup(pid)
        && is_it(&own)
    {
        return Some(own);
    }
    let mut stack = vec![PathBuf::from("/")];
    let mut seen = 0;
    while let Some(rel) = stack.pop() {
        seen += 1;
        if seen > MAX_CGROUP_WALK {
            return None;
        }
        let dir = root.join(rel.strip_prefix("/").unwrap_or(&rel));
        let Ok(md) = fs::metadata(&dir) else { continue };
        if md.ino() == id {
            return Some(rel.display().to_string());
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(rel.join(e.file_name()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_pure_and_hybrid_hosts() {
        let pure = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_root_in(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "\
25 23 0:22 / /sys/fs/cgroup ro,nosuid shared:4 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw,nosuid shared:6 - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_root_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_root_in("27 25 0:24 / /x rw - cgroup cgroup rw\n"),
            None
        );
        let spaced = "26 25 0:23 / /mnt/c\\040g rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root_in(spaced), Some(PathBuf::from("/mnt/c g")));
        assert_eq!(cgroup2_root_in("garbage\n\n - \n"), None);
    }

    #[test]
    fn this_process_resolves_to_its_own_executable() {
        let pid = std::process::id();
        let (speaker, _) = of_process(pid, true, cgroup2_root().as_deref(), None).expect("self");
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(speaker.exe.as_deref(), Some(exe.as_path()));
        assert_eq!(speaker.exe_sha256.as_ref().map(String::len), Some(64));
        // A key that is not the file: no name.
        let wrong = FileKey {
            dev: 1,
            generation: 0,
            ino: 1,
        };
        assert_eq!(exe_name(pid, &wrong), None);
        assert_eq!(exe_name(pid, &FileKey::default()), None);
    }
}
