//! Tests against the real libraries of this host (Debian bookworm: OpenSSL 3.0, GnuTLS 3.7).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use enforcer_common::{flow::op, hello::CodeSpan};

use super::*;

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

fn lib(name: &str) -> PathBuf {
    Path::new(LIBDIR).join(name)
}

/// A fresh directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("enforcer-lib-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Kills and reaps the child on drop, also when an assertion fails.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Expected file offsets, independently of `object`: symbol values from `nm -D --defined-only`
/// (default version `@@` preferred), translated through the executable `PT_LOAD` segment that
/// `readelf -lW` shows containing them; with the segment's code before and after the symbol.
fn expected_offsets(path: &Path) -> HashMap<String, (u64, CodeSpan)> {
    let path = path.to_str().unwrap();
    let mut values: HashMap<String, (u64, bool)> = HashMap::new();
    for line in run("nm", &["-D", "--defined-only", path]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [value, kind, name] = f[..] else { continue };
        if !matches!(kind, "T" | "t" | "W") {
            continue;
        }
        let (base, default) = match name.split_once('@') {
            None => (name, true),
            Some((b, v)) => (b, v.starts_with('@')),
        };
        let value = u64::from_str_radix(value, 16).unwrap();
        let e = values.entry(base.to_owned()).or_insert((value, default));
        if default && !e.1 {
            *e = (value, default);
        }
    }
    let mut loads = Vec::new();
    for line in run("readelf", &["-lW", path]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"LOAD") {
            continue;
        }
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
        // LOAD Offset VirtAddr PhysAddr FileSiz MemSiz Flg... Align
        let executable = f[6..f.len() - 1].iter().any(|s| s.contains('E'));
        loads.push((hex(f[1]), hex(f[2]), hex(f[4]), executable));
    }
    assert!(!loads.is_empty());
    values
        .into_iter()
        .filter_map(|(name, (addr, _))| {
            let (off, vaddr, filesz, _) = loads
                .iter()
                .find(|(_, vaddr, filesz, x)| *x && addr >= *vaddr && addr < vaddr + filesz)?;
            let span = CodeSpan {
                before: addr - vaddr,
                after: vaddr + filesz - addr,
            };
            Some((name, (addr - vaddr + off, span)))
        })
        .collect()
}

fn assert_probes(got: &Identified, path: &Path, want: &[(&str, u8)]) {
    let expected = expected_offsets(path);
    // The file's own functions; companion probes (libcrypto's random source) are checked apart.
    let own: Vec<&ProbeTarget> = got.probes.iter().filter(|p| !p.in_companion).collect();
    let names: Vec<(&str, u8)> = own.iter().map(|p| (p.symbol.as_str(), p.op)).collect();
    assert_eq!(names, want, "{}", path.display());
    for p in own {
        let (offset, span) = expected[&p.symbol];
        assert_eq!(p.file_offset, offset, "{} in {}", p.symbol, path.display());
        assert_ne!(p.file_offset, 0);
        // A session function carries its segment's extent (where the library's code lies).
        let want_span = (p.op == op::SESSION).then_some(span);
        assert_eq!(p.code, want_span, "{} in {}", p.symbol, path.display());
    }
}

/// The probes in the file itself (not its companion's).
fn own_probes(probes: &[ProbeTarget]) -> Vec<ProbeTarget> {
    probes.iter().filter(|p| !p.in_companion).cloned().collect()
}

const OPENSSL_8: [(&str, u8); 8] = [
    ("SSL_write", op::WRITE),
    ("SSL_write_ex", op::WRITE),
    ("SSL_read", op::READ),
    ("SSL_read_ex", op::READ),
    ("SSL_do_handshake", op::HANDSHAKE),
    ("SSL_connect", op::HANDSHAKE),
    ("SSL_accept", op::HANDSHAKE),
    ("SSL_new", op::SESSION),
];
const GNUTLS_5: [(&str, u8); 5] = [
    ("gnutls_record_send", op::WRITE),
    ("gnutls_record_recv", op::READ),
    ("gnutls_handshake", op::HANDSHAKE),
    ("gnutls_init", op::SESSION),
    ("gnutls_rnd", op::RANDOM_BUFFER_ARG1),
];

#[test]
fn libssl3_is_openssl_with_all_eight_offsets() {
    let path = lib("libssl.so.3");
    let id = identify(&path).unwrap().expect("libssl.so.3 identified");
    assert_eq!(id.family, "openssl");
    assert_probes(&id, &path, &OPENSSL_8);
    // The hello random's source, in libcrypto (the companion).
    let random: Vec<(&str, u8)> = id
        .probes
        .iter()
        .filter(|p| p.in_companion)
        .map(|p| (p.symbol.as_str(), p.op))
        .collect();
    assert_eq!(
        random,
        [
            ("RAND_bytes_ex", op::RANDOM_BUFFER_ARG1),
            ("RAND_bytes", op::RANDOM_BUFFER_ARG0),
            ("RAND_pseudo_bytes", op::RANDOM_BUFFER_ARG0)
        ]
    );
}

#[test]
fn libgnutls_is_gnutls_with_five_offsets() {
    let path = lib("libgnutls.so.30");
    let id = identify(&path)
        .unwrap()
        .expect("libgnutls.so.30 identified");
    assert_eq!(id.family, "gnutls");
    assert_probes(&id, &path, &GNUTLS_5);
}

#[test]
fn gnutls_openssl_compat_layer_is_not_openssl() {
    // It defines SSL_write, SSL_read, SSL_connect, SSL_library_init, ... but no gnutls_* symbol
    // of its own (it imports them from libgnutls.so.30, which is probed): no family at all.
    let path = lib("libgnutls-openssl.so.27");
    assert!(run("nm", &["-D", "--defined-only", path.to_str().unwrap()]).contains(" SSL_write"));
    assert_eq!(identify(&path).unwrap(), None);
}

#[test]
fn other_libraries_are_not_tls() {
    for name in [
        "libc.so.6",
        "libcrypto.so.3",
        "libgnutls-dane.so.0",
        "libgnutlsxx.so.30",
        "libnspr4.so",
        "libnss3.so",
    ] {
        let path = lib(name);
        if path.exists() {
            assert_eq!(identify(&path).unwrap(), None, "{name}");
        }
    }
}

#[test]
fn renamed_copy_is_still_openssl() {
    let dir = TempDir::new("renamed");
    let copy = dir.0.join("libfoo.so.9");
    fs::copy(lib("libssl.so.3"), &copy).unwrap();
    let id = identify(&copy).unwrap().expect("renamed libssl identified");
    assert_eq!(id.family, "openssl");
    let system = identify(&lib("libssl.so.3")).unwrap().unwrap();
    // The copy has no libcrypto beside it, so no companion (random source) probes.
    assert_eq!(own_probes(&id.probes), own_probes(&system.probes));
    assert_eq!(id.identity.sha256, system.identity.sha256);
    assert_eq!(id.identity.build_id, system.identity.build_id);
    // Alone in its directory, with no process mapping it: no libcrypto beside it to state the
    // version (a process that loads it maps one; see discover's tests).
    assert_eq!((id.identity.version, id.companion), (None, None));
}

#[test]
fn truncated_copies_never_identify_and_never_panic() {
    let bytes = fs::read(lib("libssl.so.3")).unwrap();
    let dir = TempDir::new("truncated");
    let path = dir.0.join("libssl.so.3");
    let len = bytes.len();
    let mut lengths = vec![
        0,
        1,
        3,
        4,
        5,
        16,
        52,
        63,
        64,
        65,
        100,
        1000,
        4096,
        len / 2,
        len - 64,
        len - 1,
    ];
    lengths.extend((1..64).map(|i| len * i / 64));
    for n in lengths {
        fs::write(&path, &bytes[..n]).unwrap();
        match identify(&path) {
            Ok(None) | Err(_) => {}
            Ok(Some(id)) => panic!("{n}-byte prefix identified as {id:?}"),
        }
    }
}

#[test]
fn corrupted_copies_never_panic() {
    let bytes = fs::read(lib("libssl.so.3")).unwrap();
    let dir = TempDir::new("corrupt");
    let path = dir.0.join("libssl.so.3");
    // Deterministic xorshift: overwrite a few bytes in the headers, the section header table at
    // the end of the file, or anywhere.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..(1 + next() % 8) {
            let region = match round % 3 {
                0 => 0..256,
                1 => b.len() - 4096..b.len(),
                _ => 0..b.len(),
            };
            let i = region.start + (next() as usize) % region.len();
            b[i] = next() as u8;
        }
        fs::write(&path, &b).unwrap();
        let _ = identify(&path);
    }
}

#[test]
fn non_elf_and_special_files() {
    let dir = TempDir::new("special");
    let text = dir.0.join("libtext.so");
    fs::write(&text, b"INPUT ( libfoo.so.1 )\n").unwrap(); // a linker script, like libc.so
    assert_eq!(identify(&text).unwrap(), None);
    let empty = dir.0.join("libempty.so");
    fs::write(&empty, b"").unwrap();
    assert_eq!(identify(&empty).unwrap(), None);
    assert_eq!(identify(&dir.0).unwrap(), None, "a directory");
    // A FIFO must not block the scan.
    let fifo = dir.0.join("libfifo.so");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert_eq!(identify(&fifo).unwrap(), None);
    assert!(identify(&dir.0.join("missing.so")).is_err());
    // Huge (sparse) file with an ELF magic and nothing else: only its header is read.
    let huge = dir.0.join("libhuge.so");
    let f = File::create(&huge).unwrap();
    f.set_len(4 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"\x7fELF\x02\x01\x01", 0).unwrap();
    assert!(!matches!(identify(&huge), Ok(Some(_))));
    // All of it together in a directory scan: skipped, nothing fails.
    let opts = DiscoverOptions {
        library_dirs: vec![dir.0.clone()],
        scan_proc: false,
        ..DiscoverOptions::default()
    };
    assert_eq!(discover(&opts).unwrap(), vec![]);
}

#[test]
fn shared_object_names() {
    for yes in [
        "libssl.so",
        "libssl.so.3",
        "libgnutls.so.30.34.3",
        "ld-linux-x86-64.so.2",
    ] {
        assert!(looks_like_shared_object(yes.as_bytes()), "{yes}");
    }
    for no in ["libssl.a", "libssl.sox", "python3", "so", "libssl.so3"] {
        assert!(!looks_like_shared_object(no.as_bytes()), "{no}");
    }
}

#[test]
fn default_options() {
    let d = DiscoverOptions::default();
    assert!(d.scan_proc);
    for dir in [
        "/lib",
        "/usr/lib",
        "/usr/local/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
    ] {
        assert!(d.library_dirs.contains(&PathBuf::from(dir)), "{dir}");
    }
}

fn check_listing(libs: &[Library]) {
    assert!(
        libs.windows(2).all(|w| w[0].path <= w[1].path),
        "sorted by path"
    );
    let mut keys: Vec<_> = libs.iter().map(|l| (l.dev, l.ino)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), libs.len(), "each file once");
    assert!(
        libs.iter()
            .all(|l| l.probes.is_empty() == (l.family.name() == "java"))
    );
}

fn find_file<'a>(libs: &'a [Library], path: &Path) -> Vec<&'a Library> {
    let md = fs::metadata(path).unwrap();
    libs.iter()
        .filter(|l| (l.dev, l.ino) == (md.dev(), md.ino()))
        .collect()
}

#[test]
fn discover_finds_system_libraries_once() {
    let started = Instant::now();
    let libs = discover(&DiscoverOptions::default()).unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "discover(default) found {} libraries in {elapsed:?}",
        libs.len()
    );
    for l in &libs {
        eprintln!(
            "  {} {} probes, pids {:?}",
            l.path.display(),
            l.probes.len(),
            l.pids
        );
    }
    check_listing(&libs);
    let ssl = find_file(&libs, &lib("libssl.so.3"));
    assert_eq!(ssl.len(), 1);
    assert_eq!(ssl[0].family, "openssl");
    assert_eq!(ssl[0].path, fs::canonicalize(lib("libssl.so.3")).unwrap());
    // Its eight functions, and libcrypto's three random sources (its companion).
    assert_eq!(own_probes(&ssl[0].probes).len(), 8);
    assert_eq!(ssl[0].probes.len(), 11);
    let gnutls = find_file(&libs, &lib("libgnutls.so.30"));
    assert_eq!(gnutls.len(), 1);
    assert_eq!(gnutls[0].family, "gnutls");
    assert_eq!(
        gnutls[0].path,
        fs::canonicalize(lib("libgnutls.so.30")).unwrap()
    );
    assert!(find_file(&libs, &lib("libgnutls-openssl.so.27")).is_empty());
    // Generous: a regression guard, not the performance target (measured well below 2 s).
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
}

#[test]
fn discover_finds_renamed_and_deleted_copies_mapped_by_a_process() {
    let dir = TempDir::new("mapped");
    let renamed = dir.0.join("librenamed.so");
    let deleted = dir.0.join("libdeleted.so");
    fs::copy(lib("libssl.so.3"), &renamed).unwrap();
    fs::copy(lib("libssl.so.3"), &deleted).unwrap();
    let deleted_md = fs::metadata(&deleted).unwrap();
    let child = Command::new("python3")
        .args([
            "-c",
            "import ctypes,sys,time\nfor p in sys.argv[1:]: ctypes.CDLL(p)\ntime.sleep(30)",
        ])
        .arg(&renamed)
        .arg(&deleted)
        .stdin(Stdio::null())
        .spawn()
        .expect("python3");
    let child = ChildGuard(child);
    let pid = child.0.id();
    let maps = format!("/proc/{pid}/maps");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = fs::read_to_string(&maps).unwrap_or_default();
        if text.contains(renamed.to_str().unwrap()) && text.contains(deleted.to_str().unwrap()) {
            break;
        }
        assert!(Instant::now() < deadline, "python3 did not map both copies");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Upgrade scenario: the file is gone from disk, the process still runs it.
    fs::remove_file(&deleted).unwrap();

    let libs = discover(&DiscoverOptions {
        library_dirs: vec![],
        scan_proc: true,
        ..DiscoverOptions::default()
    })
    .unwrap();
    check_listing(&libs);
    let system = identify(&lib("libssl.so.3")).unwrap().unwrap();

    let r = find_file(&libs, &renamed);
    assert_eq!(r.len(), 1, "renamed copy found once");
    assert_eq!(r[0].path, renamed, "by its real path");
    assert_eq!(r[0].family, "openssl");
    assert_eq!(own_probes(&r[0].probes), own_probes(&system.probes));
    assert!(r[0].pids.contains(&pid));

    let d: Vec<_> = libs
        .iter()
        .filter(|l| (l.dev, l.ino) == (deleted_md.dev(), deleted_md.ino()))
        .collect();
    assert_eq!(d.len(), 1, "deleted copy found once");
    assert!(
        d[0].path.starts_with(format!("/proc/{pid}/")),
        "{}",
        d[0].path.display()
    );
    assert_eq!(d[0].family, "openssl");
    assert_eq!(d[0].pids, vec![pid]);
    // The /proc path reaches the deleted file (what the attacher will hand to the kernel).
    let via_proc = identify(&d[0].path).unwrap().unwrap();
    assert_eq!(own_probes(&via_proc.probes), own_probes(&system.probes));
}

/// A library renamed over after a process opened it: read through the process's descriptor
/// (`/proc/<pid>/fd/<n>`, as the watcher does) it is still the library, by path it is the new
/// file, and `identify_at` with the inode the hook saw refuses the file the path names now.
#[test]
fn identify_at_reads_the_inode_the_process_holds() {
    let dir = TempDir::new("renamed-over");
    let path = dir.0.join("libssl.so.3");
    fs::copy(lib("libssl.so.3"), &path).unwrap();
    let held = File::open(&path).unwrap();
    let md = held.metadata().unwrap();
    let key = (md.dev(), md.ino());
    let other = dir.0.join(".new");
    fs::write(&other, b"not a library any more").unwrap();
    fs::rename(&other, &path).unwrap();
    use std::os::fd::AsRawFd;
    let link = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
    let catalog = Catalog::embedded();
    let via_fd = identify_at(&link, Some(&dir.0), Some(key), &catalog)
        .unwrap()
        .expect("the held inode is still libssl");
    assert_eq!(via_fd.family, "openssl");
    assert!(identify_with(&path, &catalog).unwrap().is_none());
    assert!(matches!(
        identify_at(&path, Some(&dir.0), Some(key), &catalog),
        Err(LibraryError::Changed { .. })
    ));
}
