//! Odd but identifiable files, a symbol table at the size cap, special files named like
//! libraries, and sparse files around the size cap.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use enforcer::libraries;

use crate::builder::{self, Built, Eh, Ph, Sh};
use crate::{
    CAP_BOUND, DISCOVER_BOUND, TempDir, assert_discover_finds_nothing, assert_not_tls, bounded,
    discover_dir, identify, openssl, serial,
};

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

/// Sparse files: a library padded to 600 MiB (`truncate -s 600M`, which keeps it loadable) is
/// identified as the original, in time, without a hash (over [`libraries::MAX_HASH_BYTES`]);
/// at 500 MiB it is hashed too; one whose tables claim the far end reads only what it must.
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
    let small = identify(&dir.write("libsmall.so", &b.bytes))
        .unwrap()
        .unwrap();
    let id = identify(&big).unwrap().expect("600 MiB: identified");
    assert_eq!((&id.family, &id.probes), (&small.family, &small.probes));
    assert_eq!(id.identity.size, 600 << 20);
    assert_eq!(id.identity.sha256, None, "over the hash cap");
    fs::remove_file(dir.path("libsmall.so")).unwrap();

    // The same with a real library.
    let gnutls = fs::read("/usr/lib/x86_64-linux-gnu/libgnutls.so.30").expect("libgnutls30");
    let real = dir.write("libgnutls-copy.so", &gnutls);
    let want = identify(&real).unwrap().expect("libgnutls identified");
    File::options()
        .write(true)
        .open(&real)
        .unwrap()
        .set_len(600 << 20)
        .unwrap();
    let id = identify(&real)
        .unwrap()
        .expect("600 MiB libgnutls identified");
    assert_eq!(
        (
            &id.family,
            &id.probes,
            &id.identity.version,
            &id.identity.build_id
        ),
        (
            &want.family,
            &want.probes,
            &want.identity.version,
            &want.identity.build_id
        )
    );
    fs::remove_file(&real).unwrap();

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
    let canon = |p: &Path| fs::canonicalize(p).unwrap();
    assert_eq!(names, [canon(&under), canon(&big)]);
}
