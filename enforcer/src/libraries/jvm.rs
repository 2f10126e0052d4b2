//! Java's JVM, the file of a runtime family (`abi: jvm`, the catalog's `java`): the version its
//! JDK's `release` file states, and the JVM a running process maps.
//!
//! JSSE is Java code the JIT compiles, so a JVM's TLS has no native function to probe: what
//! makes TLS Java's is the process that sends it mapping a real JVM (docs/policy.md, "Java").
//! Which file that is comes from `/proc/<pid>/maps` (only a hint: names are the process's own)
//! and is then the very mapped inode, identified by its symbols like any library: a file merely
//! named `libjvm.so` that does not define the JVM's symbols is not a JVM.
//!
//! Both inputs are hostile: `maps` and `release` are read with a size cap, at most
//! [`MAX_CANDIDATES`] mappings are looked at, and nothing in them can make this panic.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};

use super::{Identified, Library, identify_at, identity, looks_like_shared_object, procfs};
use crate::catalog::Catalog;

/// Largest `release` file read (a JDK's is about 1 KiB).
pub const MAX_RELEASE_BYTES: u64 = 64 << 10;
/// Most of `/proc/<pid>/maps` read (a JVM's is some 100 KiB).
pub const MAX_MAPS_BYTES: u64 = 8 << 20;
/// Most mappings named like a JVM looked at per process.
pub const MAX_CANDIDATES: usize = 4;
/// Identified files remembered at most.
const MAX_REMEMBERED: usize = 256;

/// `JAVA_VERSION` of the `release` file of the JDK that `libjvm` (`<home>/lib/server/libjvm.so`)
/// belongs to, if there is one that says.
pub fn release_version(libjvm: &Path) -> Option<String> {
    let home = libjvm.parent()?.parent()?.parent()?;
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(home.join("release"))
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = Vec::new();
    (&mut file)
        .take(MAX_RELEASE_BYTES)
        .read_to_end(&mut text)
        .ok()?;
    parse_release(&text)
}

/// The version in a `release` text's `JAVA_VERSION="17.0.15"` line.
pub fn parse_release(text: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"JAVA_VERSION=\"";
    text.split(|&b| b == b'\n')
        .filter(|line| line.starts_with(KEY))
        .find_map(|line| identity::find_version(line, KEY, true))
}

/// The JVM process `pid` maps, if it maps one: a mapped file named like a JVM (`libjvm.so`) that
/// the catalog identifies as a runtime family's. `None` when it maps none, is gone, or its
/// mappings cannot be read.
pub fn of_process(pid: u32, catalog: &Catalog) -> Option<Library> {
    let mut text = Vec::new();
    fs::File::open(format!("/proc/{pid}/maps"))
        .ok()?
        .take(MAX_MAPS_BYTES)
        .read_to_end(&mut text)
        .ok()?;
    let mut seen = Vec::new();
    for m in procfs::parse_maps(pid, &text) {
        if seen.len() >= MAX_CANDIDATES {
            break;
        }
        if !named_like_a_jvm(&m.path) || seen.contains(&m.maps_key()) {
            continue;
        }
        seen.push(m.maps_key());
        let Some(r) = procfs::resolve(&[&m]) else {
            continue;
        };
        if let Some(found) = identified(&r.path, (r.dev, r.ino), catalog) {
            return Some(Library {
                family: found.family,
                path: r.path,
                dev: r.dev,
                ino: r.ino,
                probes: Vec::new(),
                pids: vec![pid],
                mapped_as: vec![m.path.clone()],
                identity: found.identity,
                companion: None,
            });
        }
    }
    None
}

/// `libjvm.so` (and `libjvm.so.1`, a renamed `libjvm-17.so`): the name a launcher loads a JVM by.
fn named_like_a_jvm(path: &Path) -> bool {
    let name = path.file_name().map_or(&[][..], |n| n.as_bytes());
    name.starts_with(b"libjvm") && looks_like_shared_object(name)
}

/// (device, inode, size, change time, the catalog) → what the file was identified as.
type Key = (u64, u64, u64, i64, i64, usize);
static IDENTIFIED: OnceLock<Mutex<HashMap<Key, Option<Identified>>>> = OnceLock::new();

/// `path` (the inode `key`) identified as a runtime family's file, once per file version and
/// catalog: the hash of a 20 MiB JVM is not made again for each process that maps it.
fn identified(path: &Path, key: (u64, u64), catalog: &Catalog) -> Option<Identified> {
    let md = fs::metadata(path).ok()?;
    if (md.dev(), md.ino()) != key {
        return None;
    }
    let version = (
        key.0,
        key.1,
        md.len(),
        md.ctime(),
        md.ctime_nsec(),
        std::ptr::from_ref(catalog) as usize,
    );
    let cache = IDENTIFIED.get_or_init(Mutex::default);
    if let Some(known) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&version)
    {
        return known.clone();
    }
    let found = match identify_at(path, path.parent(), Some(key), catalog) {
        Ok(Some(id))
            if catalog
                .family(id.family.name())
                .is_some_and(|f| f.is_runtime()) =>
        {
            Some(id)
        }
        Ok(_) => None,
        // Changed while read, or unreadable: not remembered, looked at again next time.
        Err(err) => {
            tracing::debug!(path = %path.display(), %err, "mapped JVM not identified");
            return None;
        }
    };
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= MAX_REMEMBERED {
        cache.clear();
    }
    cache.insert(version, found.clone());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_file_states_the_java_version() {
        let debian = b"IMPLEMENTOR=\"Debian\"\nJAVA_RUNTIME_VERSION=\"17.0.15+6-Debian-1deb12u1\"\nJAVA_VERSION=\"17.0.15\"\nJAVA_VERSION_DATE=\"2025-04-15\"\n";
        assert_eq!(parse_release(debian).as_deref(), Some("17.0.15"));
        assert_eq!(
            parse_release(b"JAVA_VERSION=\"25\"\n").as_deref(),
            Some("25")
        );
        // Hostile or broken: no panic, no version.
        for bad in [
            &b""[..],
            b"JAVA_VERSION=17.0.1\n",
            b"JAVA_VERSION=\"\"\n",
            b"JAVA_VERSION=\"x17\"\n",
            b"XJAVA_VERSION=\"17.0.1\"\n",
            b"JAVA_VERSION=\"99999999999999999999999999999999999999.1\"\n",
            b"\xff\xfe\x00JAVA_VERSION=\"1\"",
        ] {
            assert_eq!(
                parse_release(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A long file is read only so far, and a line cut short is no version.
        let mut long = vec![b'#'; MAX_RELEASE_BYTES as usize * 2];
        long.extend_from_slice(b"\nJAVA_VERSION=\"17\"\n");
        assert_eq!(parse_release(&long[..MAX_RELEASE_BYTES as usize]), None);
    }

    #[test]
    fn a_release_file_is_found_beside_the_jdk_of_the_jvm() {
        let dir = tempfile::tempdir().unwrap();
        let server = dir.path().join("lib/server");
        fs::create_dir_all(&server).unwrap();
        let libjvm = server.join("libjvm.so");
        assert_eq!(release_version(&libjvm), None);
        fs::write(dir.path().join("release"), "JAVA_VERSION=\"21.0.7\"\n").unwrap();
        assert_eq!(release_version(&libjvm).as_deref(), Some("21.0.7"));
        assert_eq!(release_version(Path::new("/libjvm.so")), None);
    }

    #[test]
    fn only_files_named_like_a_jvm_are_looked_at() {
        for yes in ["/usr/lib/jvm/x/lib/server/libjvm.so", "/opt/libjvm.so.1"] {
            assert!(named_like_a_jvm(Path::new(yes)), "{yes}");
        }
        for no in ["/usr/lib/libjava.so", "/x/libjvm", "/x/jvm.so", "/"] {
            assert!(!named_like_a_jvm(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn this_process_maps_no_jvm() {
        assert!(of_process(std::process::id(), &Catalog::embedded()).is_none());
        assert!(of_process(u32::MAX, &Catalog::embedded()).is_none());
    }
}
