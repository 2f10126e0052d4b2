//! Malicious and odd ELF files never crash or stall the library scanner.
//!
//! enforcer identifies every file any process maps, so an attacker who can run a process controls
//! what `libraries::identify` and `libraries::discover` read. The corpus is generated here, at
//! test time (nothing large is committed), from a small OpenSSL-shaped library written by
//! [`builder`] that *is* identified (checked first, so the mutations start from a file that
//! reaches the deepest code), then broken in every way the issue lists: truncated at every
//! length, symbol-count and size claims that lie, overlapping sections, offsets past the end or
//! overflowing 64 bits, string tables without NUL, 1 MB names, a symbol table at the size cap,
//! 32-bit and big-endian files, flipped class and byte order, special files named like libraries,
//! sparse files of 500 and 600 MiB, a file rewritten while it is identified, and a library renamed
//! over while `discover` runs.
//!
//! Every call must return (`Ok` or `Err`, never a panic) within [`BOUND`]; files built not to be
//! TLS libraries must never be reported as one, by `identify` or by `discover`.

#[path = "hostile_elf/builder.rs"]
mod builder;
#[path = "hostile_elf/go.rs"]
mod go;
#[path = "hostile_elf/malformed.rs"]
mod malformed;
#[path = "hostile_elf/odd.rs"]
mod odd;
#[path = "hostile_elf/races.rs"]
mod races;
#[path = "hostile_elf/stripped.rs"]
mod stripped;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use builder::{Built, Spec};
use enforcer::libraries::{self, DiscoverOptions, Identified, LibraryError};

/// Longest one `identify` may take on any file of a few MiB.
const BOUND: Duration = Duration::from_secs(2);
/// Longest one `identify` may take on a file at the caps (a 64 MiB symbol table of 2^21 names
/// that all start like an interesting one, 500 MiB to hash): the work is bounded by the caps, not
/// by anything the file claims. The release binary needs about 0.6 s and 1.6 s for these; an
/// unoptimised test build on a loaded 2-core machine up to 30 times that.
const CAP_BOUND: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(60)
} else {
    Duration::from_secs(5)
};
/// Longest one `discover` over a corpus directory may take (the largest holds two files at the
/// caps).
const DISCOVER_BOUND: Duration = Duration::from_secs(2 * CAP_BOUND.as_secs() + 10);

/// The tests measure time: one at a time, so they do not slow each other down on a small machine.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh directory under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("enforcer-hostile-{}-{n}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Stops a background thread's loop when dropped, also when an assertion fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `f` on its own thread and returns its result; fails the test if it panics or takes
/// longer than `limit` (the thread is then abandoned: the process ends with the test run).
fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    thread::Builder::new()
        .name(format!("bounded {what}"))
        .spawn(move || {
            let _ = tx.send(f());
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(v) => (v, started.elapsed()),
        Err(RecvTimeoutError::Timeout) => panic!("{what}: still running after {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => {
            panic!("{what}: panicked after {:?}", started.elapsed())
        }
    }
}

fn identify(path: &Path) -> Result<Option<Identified>, LibraryError> {
    let p = path.to_owned();
    bounded(&path.display().to_string(), BOUND, move || {
        libraries::identify(&p)
    })
    .0
}

/// `identify` must not call it a TLS library (returning `Ok(None)` or an error are both fine).
fn assert_not_tls(path: &Path) {
    if let Ok(Some(id)) = identify(path) {
        panic!("{} identified as a TLS library: {id:?}", path.display());
    }
}

/// `discover` over one directory (no processes), and how long it took.
fn discover_dir(dir: &Path, limit: Duration) -> (Vec<libraries::Library>, Duration) {
    let opts = DiscoverOptions {
        library_dirs: vec![dir.to_owned()],
        scan_proc: false,
        ..DiscoverOptions::default() // the embedded catalog
    };
    let (res, took) = bounded(&format!("discover {}", dir.display()), limit, move || {
        libraries::discover(&opts)
    });
    (res.expect("discover without /proc never fails"), took)
}

fn assert_discover_finds_nothing(dir: &Path) {
    let (found, took) = discover_dir(dir, DISCOVER_BOUND);
    eprintln!("discover {}: {took:?}", dir.display());
    let paths: Vec<_> = found.iter().map(|l| (&l.path, &l.family)).collect();
    assert!(paths.is_empty(), "reported as TLS libraries: {paths:?}");
}

fn openssl(spec: impl FnOnce(&mut Spec)) -> Built {
    let mut s = Spec::openssl();
    spec(&mut s);
    builder::build(&s)
}

/// The base file is identified as OpenSSL with a probe on each probed function it defines, at
/// the right file offset: the corpus below starts from a file that reaches the deepest code.
fn check_base(b: &Built, dir: &TempDir, name: &str) -> Identified {
    let path = dir.write(name, &b.bytes);
    let id = identify(&path)
        .unwrap()
        .unwrap_or_else(|| panic!("{name}: not identified"));
    assert_eq!(id.family.name(), "openssl", "{name}");
    let probes: Vec<(&str, u64)> = id
        .probes
        .iter()
        .map(|p| (p.symbol.as_str(), p.file_offset))
        .collect();
    // Spec::openssl: OPENSSL_init_ssl, SSL_CTX_new, SSL_write, SSL_read, SSL_do_handshake,
    // SSL_connect (the first two are not probed).
    let t = &b.text_offsets;
    assert_eq!(
        probes,
        [
            ("SSL_write", t[2]),
            ("SSL_read", t[3]),
            ("SSL_do_handshake", t[4]),
            ("SSL_connect", t[5])
        ],
        "{name}"
    );
    assert_eq!(id.identity.version.as_deref(), Some("3.0.15"), "{name}");
    id
}

#[test]
fn base_files_are_identified_in_every_class_and_byte_order() {
    let _s = serial();
    let dir = TempDir::new("base");
    for (class64, big_endian) in [(true, false), (true, true), (false, false), (false, true)] {
        let b = openssl(|s| {
            s.class64 = class64;
            s.big_endian = big_endian;
        });
        check_base(&b, &dir, &format!("lib-{class64}-{big_endian}.so"));
    }
    let b = openssl(|s| s.static_table = true);
    check_base(&b, &dir, "libstatic.so");
}

#[test]
fn truncated_at_every_length() {
    let _s = serial();
    let dir = TempDir::new("truncated");
    for (class64, big_endian) in [(true, false), (false, true)] {
        let b = openssl(|s| {
            s.class64 = class64;
            s.big_endian = big_endian;
        });
        let started = Instant::now();
        for len in 0..b.bytes.len() {
            let name = format!("libcut-{class64}-{len}.so");
            let path = dir.write(&name, &b.bytes[..len]);
            assert_not_tls(&path);
        }
        eprintln!(
            "{} truncations of a {}-byte file: {:?}",
            b.bytes.len(),
            b.bytes.len(),
            started.elapsed()
        );
    }
    assert_discover_finds_nothing(&dir.0);
}
