//! Files built not to be TLS libraries (lying counts and sizes, overlapping sections, offsets
//! past the end, tables without NUL, huge names, wrong class and byte order): never reported as
//! one, never a stall.

use std::time::Duration;

use enforcer::libraries;

use crate::builder::{self, Built, Eh, Ph, Sh, Sym};
use crate::{BOUND, TempDir, assert_discover_finds_nothing, bounded, openssl, serial};

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
