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

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use builder::{Built, Eh, Ph, Sh, Spec, Sym};
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

/// Files built not to be TLS libraries, by name.
fn not_tls_corpus() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, b: Built| out.push((format!("lib{name}.so"), b.bytes));
    let base = || openssl(|_| {});
    let with = |f: &dyn Fn(&mut Built)| {
        let mut b = base();
        f(&mut b);
        b
    };
    let len = base().bytes.len() as u64;
    let dynsym = base().section_offset(builder::DYNSYM);
    let dynstr = base().section_offset(builder::DYNSTR);

    // Symbol count and size claims that lie.
    for (name, index, at) in [
        ("dynsym", builder::DYNSYM, dynsym),
        ("dynstr", builder::DYNSTR, dynstr),
    ] {
        for (tag, size) in [
            ("size-max", u64::MAX),
            ("size-max-aligned", u64::MAX / 24 * 24),
            ("size-cap", 64 << 20),
            ("size-cap-plus", (64 << 20) + 24),
            ("size-past-eof", len - at + 24),
            ("size-u32-max", u64::from(u32::MAX)),
        ] {
            add(
                &format!("{name}-{tag}"),
                with(&|b| b.set_sh(index, Sh::Size, size)),
            );
        }
    }
    add(
        "shnum-xnum-huge",
        with(&|b| {
            // e_shnum 0: the count is section 0's sh_size.
            b.set_eh(Eh::Shnum, 0);
            b.set_sh(0, Sh::Size, u64::MAX);
        }),
    );
    add(
        "shnum-xnum-64k",
        with(&|b| {
            b.set_eh(Eh::Shnum, 0);
            b.set_sh(0, Sh::Size, 65536);
        }),
    );
    add(
        "phnum-xnum-huge",
        with(&|b| {
            // e_phnum PN_XNUM: the count is section 0's sh_info.
            b.set_eh(Eh::Phnum, 0xffff);
            b.set_sh(0, Sh::Info, u64::from(u32::MAX));
        }),
    );
    add("phnum-max", with(&|b| b.set_eh(Eh::Phnum, 0xfffe)));
    add("shnum-max", with(&|b| b.set_eh(Eh::Shnum, 0xfeff)));
    add("shentsize-1", with(&|b| b.set_eh(Eh::Shentsize, 1)));
    add("shentsize-max", with(&|b| b.set_eh(Eh::Shentsize, 0xffff)));
    add("phentsize-0", with(&|b| b.set_eh(Eh::Phentsize, 0)));

    // Overlapping sections.
    add(
        "dynsym-is-dynstr",
        with(&|b| b.set_sh(builder::DYNSYM, Sh::Offset, dynstr)),
    );
    add(
        "dynstr-is-dynsym",
        with(&|b| b.set_sh(builder::DYNSTR, Sh::Offset, dynsym)),
    );
    add(
        "dynsym-own-strtab",
        with(&|b| b.set_sh(builder::DYNSYM, Sh::Link, builder::DYNSYM as u64)),
    );
    add(
        "dynsym-over-whole-file",
        with(&|b| {
            b.set_sh(builder::DYNSYM, Sh::Offset, 0);
            b.set_sh(builder::DYNSYM, Sh::Size, len / 24 * 24);
        }),
    );
    add(
        "dynsym-over-headers",
        with(&|b| {
            let shoff = b.shoff;
            b.set_sh(builder::DYNSYM, Sh::Offset, shoff);
        }),
    );
    add("shdrs-over-ehdr", with(&|b| b.set_eh(Eh::Shoff, 0)));
    add("shdrs-over-phdrs", with(&|b| b.set_eh(Eh::Shoff, 64)));

    // Offsets past the end, and 64-bit overflow.
    for (tag, off) in [
        ("eof", len),
        ("past-eof", len + 4096),
        ("u64-max", u64::MAX),
        ("wraps", u64::MAX - 8),
        ("u32-max", u64::from(u32::MAX)),
    ] {
        add(
            &format!("dynsym-at-{tag}"),
            with(&|b| b.set_sh(builder::DYNSYM, Sh::Offset, off)),
        );
        add(
            &format!("dynstr-at-{tag}"),
            with(&|b| b.set_sh(builder::DYNSTR, Sh::Offset, off)),
        );
        add(&format!("shoff-{tag}"), with(&|b| b.set_eh(Eh::Shoff, off)));
        add(&format!("phoff-{tag}"), with(&|b| b.set_eh(Eh::Phoff, off)));
    }
    add(
        "dynstr-link-u32-max",
        with(&|b| b.set_sh(builder::DYNSYM, Sh::Link, u64::from(u32::MAX))),
    );
    // Segments and addresses that overflow: identified by symbols, nothing to probe.
    add(
        "segment-wraps",
        with(&|b| {
            b.set_ph(Ph::Vaddr, u64::MAX - 0x10);
            b.set_ph(Ph::Offset, u64::MAX);
            b.set_ph(Ph::Filesz, u64::MAX);
        }),
    );
    add(
        "segment-offset-past-eof",
        with(&|b| b.set_ph(Ph::Offset, u64::MAX / 2)),
    );
    add("segment-not-executable", with(&|b| b.set_ph(Ph::Flags, 4)));
    add("segment-not-load", with(&|b| b.set_ph(Ph::Type, 4)));
    add(
        "symbols-at-u64-max",
        with(&|b| {
            for i in 1..=6 {
                b.set_sym_value(i, u64::MAX);
            }
        }),
    );
    add(
        "symbols-past-eof",
        with(&|b| {
            for i in 1..=6 {
                b.set_sym_value(i, len + 16 * i as u64);
            }
        }),
    );

    // String tables without a NUL: names run into each other, only the last one ends (at the
    // table's end), and one name alone identifies nothing.
    let names = ["OPENSSL_init_ssl", "SSL_CTX_new", "SSL_write", "SSL_read"];
    let mut strings = Vec::new();
    let mut offsets = Vec::new();
    for n in names {
        offsets.push(strings.len() as u32);
        strings.extend_from_slice(n.as_bytes());
    }
    add(
        "strtab-without-nul",
        openssl(|s| {
            s.symbols.truncate(names.len());
            s.raw_strings = Some((strings.clone(), offsets.clone()));
        }),
    );
    // Names pointing past the table, and one byte short of it.
    add(
        "names-past-strtab",
        openssl(|s| {
            let n = s.symbols.len();
            s.raw_strings = Some((b"\0".to_vec(), (0..n as u32).map(|i| 1 + i).collect()));
        }),
    );

    // 1 MB names: an interesting prefix, then a megabyte, no NUL at the end.
    let mut strings = b"\0SSL_write".to_vec();
    strings.extend(std::iter::repeat_n(b'A', 1 << 20));
    strings.push(0);
    let second = strings.len() as u32;
    strings.extend_from_slice(b"OPENSSL_init_ssl");
    strings.extend(std::iter::repeat_n(b'B', 1 << 20));
    let offsets: Vec<u32> = (0..1000u32)
        .map(|i| match i % 3 {
            0 => 1,
            1 => second,
            _ => 1 + i * 997,
        })
        .collect();
    add(
        "names-1mb",
        openssl(|s| {
            s.symbols = (0..1000).map(|_| Sym::func("x")).collect();
            s.raw_strings = Some((strings.clone(), offsets.clone()));
        }),
    );

    // Class and byte order flipped in the header only: every field reads as garbage.
    add("class-flipped", with(&|b| b.set_eh(Eh::Class, 1)));
    add("data-flipped", with(&|b| b.set_eh(Eh::Data, 2)));
    add("class-0", with(&|b| b.set_eh(Eh::Class, 0)));
    add("class-3", with(&|b| b.set_eh(Eh::Class, 3)));
    add("data-0", with(&|b| b.set_eh(Eh::Data, 0)));
    let b32 = openssl(|s| s.class64 = false);
    let mut flipped = b32.clone();
    flipped.set_eh(Eh::Class, 2);
    add("class32-as-64", flipped);

    // Symbols not functions, undefined, absolute: identify nothing.
    add(
        "symbols-undefined",
        openssl(|s| s.symbols.iter_mut().for_each(|x| x.shndx = 0)),
    );
    add(
        "symbols-objects",
        openssl(|s| s.symbols.iter_mut().skip(2).for_each(|x| x.st_type = 1)),
    );
    add(
        "symbols-absolute",
        openssl(|s| s.symbols.iter_mut().skip(2).for_each(|x| x.shndx = 0xfff1)),
    );
    out.push(("libempty.so".into(), Vec::new()));
    out.push(("libmagic-only.so".into(), b"\x7fELF".to_vec()));
    out.push(("libnot-elf.so".into(), b"#!/bin/sh\nexit 0\n".to_vec()));
    out
}

#[test]
fn malformed_files_are_never_tls_and_never_stall() {
    let _s = serial();
    let dir = TempDir::new("malformed");
    let mut slowest = (Duration::ZERO, String::new());
    for (name, bytes) in not_tls_corpus() {
        let path = dir.write(&name, &bytes);
        let (res, took) = bounded(&name, BOUND, {
            let path = path.clone();
            move || libraries::identify(&path)
        });
        if let Ok(Some(id)) = res {
            panic!("{name} identified as a TLS library: {id:?}");
        }
        if took > slowest.0 {
            slowest = (took, name);
        }
    }
    eprintln!("slowest identify: {slowest:?}");
    assert_discover_finds_nothing(&dir.0);
}

/// Odd but well-formed enough to be identified: any answer is fine, as long as it comes in
/// time and points inside the file.
#[test]
fn odd_files_answer_in_time_inside_the_file() {
    let _s = serial();
    let dir = TempDir::new("odd");
    let base = || openssl(|_| {});
    let with = |f: &dyn Fn(&mut Built)| {
        let mut b = base();
        f(&mut b);
        b
    };
    let mut files: Vec<(&str, Built)> = vec![
        (
            "entsize-0",
            with(&|b| b.set_sh(builder::DYNSYM, Sh::Entsize, 0)),
        ),
        (
            "entsize-1",
            with(&|b| b.set_sh(builder::DYNSYM, Sh::Entsize, 1)),
        ),
        (
            "entsize-max",
            with(&|b| b.set_sh(builder::DYNSYM, Sh::Entsize, u64::MAX)),
        ),
        (
            "versym-lies",
            with(&|b| b.set_sh(builder::VERSYM, Sh::Size, u64::MAX)),
        ),
        (
            "versym-short",
            with(&|b| b.set_sh(builder::VERSYM, Sh::Size, 2)),
        ),
        (
            "align-huge",
            with(&|b| {
                for i in 1..7 {
                    b.set_sh(i, Sh::Addralign, u64::MAX);
                }
            }),
        ),
        ("shstrndx-bad", with(&|b| b.set_eh(Eh::Shstrndx, 0xfffe))),
        ("shstrndx-xindex", with(&|b| b.set_eh(Eh::Shstrndx, 0xffff))),
        (
            "rodata-is-note-with-lying-sizes",
            with(&|b| {
                b.set_sh(builder::RODATA, Sh::Type, u64::from(builder::SHT_NOTE));
                let at = b.section_offset(builder::RODATA);
                b.put(at, 4, u64::from(u32::MAX)); // n_namesz
                b.put(at + 4, 4, u64::from(u32::MAX)); // n_descsz
                b.put(at + 8, 4, 3); // NT_GNU_BUILD_ID
            }),
        ),
        ("big-endian", openssl(|s| s.big_endian = true)),
        ("elf32", openssl(|s| s.class64 = false)),
        (
            "elf32-big-endian",
            openssl(|s| {
                s.class64 = false;
                s.big_endian = true;
            }),
        ),
    ];
    // Aliases and duplicates: every probe at one address, every symbol twice.
    files.push((
        "all-aliases",
        openssl(|s| {
            for x in s.symbols.iter_mut() {
                x.value = Some(0x40);
            }
        }),
    ));
    files.push((
        "duplicates",
        openssl(|s| {
            let again = s.symbols.clone();
            s.symbols.extend(again);
        }),
    ));
    // A version text that never ends, and one at the very end of the file.
    files.push((
        "version-unterminated",
        openssl(|s| {
            s.rodata = b"OpenSSL 3".to_vec();
            s.rodata.extend(std::iter::repeat_n(b'9', 1 << 16));
        }),
    ));
    for (name, b) in &files {
        let path = dir.write(&format!("lib{name}.so"), &b.bytes);
        if let Ok(Some(id)) = identify(&path) {
            assert!(!id.probes.is_empty(), "{name}: {id:?}");
            for p in &id.probes {
                assert!(p.file_offset < b.bytes.len() as u64, "{name}: {p:?}");
            }
        }
    }
    let (found, took) = discover_dir(&dir.0, DISCOVER_BOUND);
    eprintln!(
        "discover {}: {} libraries in {took:?}",
        dir.0.display(),
        found.len()
    );
    for lib in &found {
        let len = fs::metadata(&lib.path).unwrap().len();
        assert!(lib.probes.iter().all(|p| p.file_offset < len), "{lib:?}");
    }
}

/// A symbol table at the size cap: 64 MiB of symbols, more than the 2^21 looked at. The symbols
/// that would identify OpenSSL come after the first 2^21, so the file must not be identified.
#[test]
fn symbol_table_at_the_size_cap() {
    let _s = serial();
    let dir = TempDir::new("huge-table");
    let b = openssl(|_| {});
    let sym = b.sym_size as usize;
    let count = (64usize << 20) / sym;
    assert!(count > 1 << 21);
    // Copy SSL_write's entry 2^21 times, then OPENSSL_init_ssl's and SSL_CTX_new's.
    let dynsym = b.section_offset(builder::DYNSYM) as usize;
    let entry = |i: usize| &b.bytes[dynsym + i * sym..dynsym + (i + 1) * sym];
    let mut table = Vec::with_capacity(count * sym);
    table.extend_from_slice(entry(0));
    while table.len() < (1 << 21) * sym {
        table.extend_from_slice(entry(3));
    }
    table.extend_from_slice(entry(1));
    table.extend_from_slice(entry(2));
    table.resize(count * sym, 0);
    let mut file = b.clone();
    let at = file.bytes.len() as u64;
    file.bytes.extend_from_slice(&table);
    file.set_sh(builder::DYNSYM, Sh::Offset, at);
    file.set_sh(builder::DYNSYM, Sh::Size, table.len() as u64);
    file.set_sh(builder::VERSYM, Sh::Size, 0);
    file.set_ph(Ph::Filesz, file.bytes.len() as u64);
    let path = dir.write("libhuge-table.so", &file.bytes);
    drop(table);
    let (res, took) = bounded("huge table", CAP_BOUND, {
        let path = path.clone();
        move || libraries::identify(&path)
    });
    eprintln!(
        "64 MiB symbol table: {took:?}, {:?}",
        res.as_ref().map(|r| r.is_some())
    );
    assert!(!matches!(res, Ok(Some(_))), "{res:?}");

    // The same table of zeros in a sparse file: all undefined, nothing identified.
    let sparse = dir.path("libsparse-table.so");
    let f = File::create(&sparse).unwrap();
    let mut head = b.clone();
    let at = 1u64 << 20;
    head.set_sh(builder::DYNSYM, Sh::Offset, at);
    head.set_sh(builder::DYNSYM, Sh::Size, (count * sym) as u64);
    f.write_all_at(&head.bytes, 0).unwrap();
    f.set_len(at + (count * sym) as u64).unwrap();
    drop(f);
    let (res, took) = bounded("sparse table", CAP_BOUND, {
        let sparse = sparse.clone();
        move || libraries::identify(&sparse)
    });
    eprintln!("64 MiB sparse symbol table: {took:?}");
    assert!(!matches!(res, Ok(Some(_))), "{res:?}");
    assert_discover_finds_nothing(&dir.0);
}

#[test]
fn special_files_named_like_libraries() {
    let _s = serial();
    let dir = TempDir::new("special");
    let fifo = dir.path("libfifo.so");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path and mode.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    fs::create_dir(dir.path("libdir.so")).unwrap();
    fs::create_dir(dir.path("libdir.so.3")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(dir.path("libsock.so")).unwrap();
    let links = [
        ("libzero.so", "/dev/zero"),
        ("libnull.so", "/dev/null"),
        ("liburandom.so", "/dev/urandom"),
        ("libmem.so", "/proc/self/mem"),
        ("libkcore.so", "/proc/kcore"),
        ("libbtf.so", "/sys/kernel/btf/vmlinux"),
        ("libdangling.so", "/nonexistent/libssl.so.3"),
        ("libloop.so", "libloop.so"),
        ("libroot.so", "/"),
    ];
    for (name, target) in links {
        std::os::unix::fs::symlink(target, dir.path(name)).unwrap();
    }
    // The FIFO has a reader and writer (this one, which never writes): a blocking read of it
    // would never return.
    let _held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    for entry in fs::read_dir(&dir.0).unwrap() {
        let path = entry.unwrap().path();
        assert_not_tls(&path);
    }
    assert_not_tls(Path::new("/dev/zero"));
    assert_not_tls(Path::new("/proc/self/mem"));
    assert_not_tls(&dir.0);
    assert_discover_finds_nothing(&dir.0);
}

/// Sparse files: 600 MiB is over the size cap (refused without reading); just under the cap, a
/// real library at the start is identified (and hashed) in time, and one whose tables claim the
/// far end reads only what it must.
#[test]
fn sparse_files_around_the_size_cap() {
    let _s = serial();
    let dir = TempDir::new("sparse");
    let b = openssl(|_| {});

    let big = dir.path("libsparse600.so");
    let f = File::create(&big).unwrap();
    f.write_all_at(&b.bytes, 0).unwrap();
    f.set_len(600 << 20).unwrap();
    drop(f);
    match identify(&big) {
        Err(LibraryError::TooLarge { size, .. }) => assert_eq!(size, 600 << 20),
        other => panic!("600 MiB: {other:?}"),
    }

    let under = dir.path("libsparse500.so");
    let f = File::create(&under).unwrap();
    f.write_all_at(&b.bytes, 0).unwrap();
    f.set_len(500 << 20).unwrap();
    drop(f);
    let (res, took) = bounded("500 MiB library", CAP_BOUND, {
        let under = under.clone();
        move || libraries::identify(&under)
    });
    eprintln!("500 MiB sparse library: {took:?}");
    let id = res
        .unwrap()
        .expect("a library followed by zeros is still a library");
    assert_eq!(id.identity.size, 500 << 20);

    let far = dir.path("libsparse-far.so");
    let f = File::create(&far).unwrap();
    let mut moved = b.clone();
    let end = (500u64 << 20) - moved.bytes.len() as u64;
    moved.set_eh(Eh::Shoff, end + moved.shoff);
    f.write_all_at(&moved.bytes[..64], 0).unwrap();
    f.write_all_at(&moved.bytes, end).unwrap();
    f.set_len(500 << 20).unwrap();
    drop(f);
    // Section headers at the far end point back into the (zero) start: nothing to find.
    assert_not_tls(&far);
    let (found, took) = discover_dir(&dir.0, DISCOVER_BOUND);
    eprintln!("discover {}: {took:?}", dir.0.display());
    let names: Vec<_> = found.iter().map(|l| l.path.clone()).collect();
    assert_eq!(names, [fs::canonicalize(&under).unwrap()]);
}

/// Tiny deterministic PRNG (xorshift64*): the test needs variety, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One file, rewritten and truncated by another thread while `identify` reads it.
///
/// Phase 1 only ever cuts the file and writes its own bytes back, so every byte `identify` can
/// read is right: whatever it reports must be exactly the reference answer. Phase 2 also writes
/// garbage and grows the file with zeros: any answer, in time, inside the file.
#[test]
fn file_rewritten_while_identified() {
    let _s = serial();
    let dir = TempDir::new("rewrite");
    let mut sources = vec![openssl(|_| {}).bytes];
    if let Ok(real) = fs::read("/usr/lib/x86_64-linux-gnu/libssl.so.3") {
        sources.push(real);
    }
    for (n, content) in sources.into_iter().enumerate() {
        let path = dir.write(&format!("librewrite{n}.so"), &content);
        let reference = identify(&path).unwrap().expect("reference identification");
        let content = Arc::new(content);
        for garbage in [false, true] {
            let stop = Arc::new(AtomicBool::new(false));
            let writer = {
                let (path, content, stop) = (path.clone(), content.clone(), stop.clone());
                thread::spawn(move || {
                    let f = OpenOptions::new().write(true).open(&path).unwrap();
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + n as u64);
                    let len = content.len() as u64;
                    let mut ops = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let cut = rng.below(len);
                        f.set_len(cut).unwrap();
                        if garbage && rng.below(3) == 0 {
                            let at = rng.below(len);
                            let junk: Vec<u8> =
                                (0..rng.below(4096)).map(|_| rng.next() as u8).collect();
                            f.write_all_at(&junk, at).unwrap();
                        }
                        if garbage && rng.below(4) == 0 {
                            f.set_len(len + rng.below(len)).unwrap();
                        }
                        thread::yield_now();
                        // Write the rest back in a few chunks.
                        let mut pos = cut;
                        while pos < len {
                            let end = (pos + 1 + rng.below(len / 4 + 1)).min(len);
                            f.write_all_at(&content[pos as usize..end as usize], pos)
                                .unwrap();
                            pos = end;
                        }
                        if garbage {
                            f.set_len(len).unwrap();
                        }
                        ops += 1;
                    }
                    f.write_all_at(&content, 0).unwrap();
                    f.set_len(len).unwrap();
                    ops
                })
            };
            let _stop = StopOnDrop(stop.clone());
            let started = Instant::now();
            let (mut same, mut later, mut none, mut errors, mut calls) = (0, 0, 0, 0, 0);
            while started.elapsed() < Duration::from_secs(3) {
                calls += 1;
                match identify(&path) {
                    Ok(Some(id)) if !garbage => {
                        assert_eq!(
                            (&id.family, &id.probes),
                            (&reference.family, &reference.probes),
                            "a torn read made wrong probes"
                        );
                        // The identity (size, hash, version) is read in a second pass over a
                        // reopened file, so it can describe the file a moment later: see
                        // docs/fuzzing.md, "Findings".
                        if id.identity == reference.identity {
                            same += 1;
                        } else {
                            later += 1;
                        }
                    }
                    Ok(Some(id)) => {
                        let max = 2 * content.len() as u64;
                        assert!(id.probes.iter().all(|p| p.file_offset < max), "{id:?}");
                        same += usize::from(id == reference);
                    }
                    Ok(None) => none += 1,
                    Err(_) => errors += 1,
                }
            }
            stop.store(true, Ordering::Relaxed);
            let ops = writer.join().expect("writer thread");
            eprintln!(
                "rewrite source {n} garbage={garbage}: {calls} identify calls during {ops} \
                 rewrites: {same} as reference, {later} with the identity of a later moment, \
                 {none} none, {errors} errors"
            );
            assert!(ops > 0 && calls > 0);
        }
    }
}

/// A library renamed over (as package upgrades do) again and again while `discover` runs: it is
/// either missed or reported exactly as it is, never as what the garbage renamed over it says,
/// and a library beside it is always found.
#[test]
fn library_replaced_during_discover() {
    let _s = serial();
    let dir = TempDir::new("replace");
    let good = openssl(|_| {});
    let stable = dir.write("libstable.so", &good.bytes);
    let stable = fs::canonicalize(stable).unwrap();
    let swap_path = dir.write("libswap.so.3", &good.bytes);
    let reference = identify(&swap_path).unwrap().unwrap();
    let variants: Vec<Vec<u8>> = vec![
        good.bytes.clone(),
        good.bytes[..good.bytes.len() / 2].to_vec(),
        b"not an ELF file".to_vec(),
        openssl(|s| s.big_endian = true).bytes,
        Vec::new(),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let renamer = {
        let (dir, stop) = (dir.0.clone(), stop.clone());
        thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let tmp = dir.join(format!(".tmp{}", i % 4));
                let mut f = File::create(&tmp).unwrap();
                f.write_all(&variants[i % variants.len()]).unwrap();
                drop(f);
                fs::rename(&tmp, dir.join("libswap.so.3")).unwrap();
                i += 1;
            }
            i
        })
    };
    let _stop = StopOnDrop(stop.clone());
    let started = Instant::now();
    let (mut runs, mut seen) = (0, 0);
    while started.elapsed() < Duration::from_secs(3) {
        let (found, _) = discover_dir(&dir.0, DISCOVER_BOUND);
        runs += 1;
        assert!(found.iter().any(|l| l.path == stable), "{found:?}");
        for lib in found.iter().filter(|l| l.path != stable) {
            assert!(lib.path.ends_with("libswap.so.3"), "{lib:?}");
            assert_eq!(lib.family, reference.family);
            // The big-endian variant is a library too, with its own offsets.
            if lib.identity.sha256 == reference.identity.sha256 {
                assert_eq!(lib.probes, reference.probes);
                seen += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let renames = renamer.join().expect("renamer thread");
    eprintln!("{runs} discover runs during {renames} renames; the good library seen {seen} times");
    assert!(renames > 0);
}
