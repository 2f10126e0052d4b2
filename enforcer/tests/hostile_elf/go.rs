//! Go-looking executables with malformed `.gopclntab` and build info.
//!
//! The base file is a minimal x86-64 ELF executable holding a real Go 1.19 `crypto/tls` table
//! cut down to the catalog's functions, with their real machine code (the `go_tables` fuzz seed,
//! `fuzz/seeds/go_tables/make.sh`), and a real `.go.buildinfo`: it is identified as `go`. The
//! corpus then breaks the table and the build info. Every `identify` must answer within
//! [`BOUND`] without panicking, and whatever it identifies must have its probes inside the
//! functions' code.

use std::time::Duration;

use super::{BOUND, CAP_BOUND, TempDir, bounded, serial};

/// The go_tables seed: u32 table length, a Go 1.20-layout table, then the code it describes,
/// packed from [`TEXT`].
const SEED: &[u8] = include_bytes!("../../../fuzz/seeds/go_tables/go120-tls-functions");
const BUILDINFO: &[u8] = include_bytes!("../../../fuzz/seeds/go_tables/buildinfo-inline");
const BASE: u64 = 0x40_0000;
const TEXT: u64 = 0x40_1000;
const TEXT_OFF: usize = 0x1000;

/// Where the parts of a built file are.
struct GoElf {
    bytes: Vec<u8>,
    /// File range of the code.
    text: std::ops::Range<u64>,
    /// File offset of `.gopclntab`, of `.go.buildinfo`, of the section headers.
    pcln: usize,
    buildinfo: usize,
    shoff: usize,
}

fn put(b: &mut [u8], at: usize, v: u64, width: usize) {
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

/// An ELF64 LE executable: one `PT_LOAD` (R+X) over the whole file at [`BASE`]; sections
/// `.text`, `.gopclntab`, `.go.buildinfo`, `.shstrtab`.
fn build(table: &[u8], code: &[u8], buildinfo: &[u8]) -> GoElf {
    let mut b = vec![0u8; TEXT_OFF];
    b.extend_from_slice(code);
    let text = TEXT_OFF as u64..b.len() as u64;
    b.resize(b.len().next_multiple_of(32), 0xcc);
    let pcln = b.len();
    b.extend_from_slice(table);
    b.resize(b.len().next_multiple_of(16), 0);
    let bi = b.len();
    b.extend_from_slice(buildinfo);
    let strtab_off = b.len();
    let names = b"\0.text\0.gopclntab\0.go.buildinfo\0.shstrtab\0";
    b.extend_from_slice(names);
    b.resize(b.len().next_multiple_of(8), 0);
    let shoff = b.len();
    // (name, type, flags, addr, offset, size)
    let sections: [(u32, u32, u64, u64, usize, usize); 5] = [
        (0, 0, 0, 0, 0, 0),
        (1, 1, 6, TEXT, TEXT_OFF, code.len()),
        (7, 1, 2, BASE + pcln as u64, pcln, table.len()),
        (18, 1, 3, BASE + bi as u64, bi, buildinfo.len()),
        (32, 3, 0, 0, strtab_off, names.len()),
    ];
    for (name, ty, flags, addr, off, size) in sections {
        let at = b.len();
        b.resize(at + 64, 0);
        put(&mut b, at, name.into(), 4);
        put(&mut b, at + 4, ty.into(), 4);
        put(&mut b, at + 8, flags, 8);
        put(&mut b, at + 16, addr, 8);
        put(&mut b, at + 24, off as u64, 8);
        put(&mut b, at + 32, size as u64, 8);
        put(&mut b, at + 48, 1, 8);
    }
    // ELF header.
    b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    put(&mut b, 16, 2, 2); // ET_EXEC
    put(&mut b, 18, 62, 2); // EM_X86_64
    put(&mut b, 20, 1, 4);
    put(&mut b, 24, TEXT, 8);
    put(&mut b, 32, 64, 8); // phoff
    put(&mut b, 40, shoff as u64, 8);
    put(&mut b, 52, 64, 2);
    put(&mut b, 54, 56, 2);
    put(&mut b, 56, 1, 2);
    put(&mut b, 58, 64, 2);
    put(&mut b, 60, 5, 2);
    put(&mut b, 62, 4, 2);
    // PT_LOAD, R+X, the whole file.
    let len = b.len() as u64;
    put(&mut b, 64, 1, 4);
    put(&mut b, 68, 5, 4);
    put(&mut b, 64 + 16, BASE, 8);
    put(&mut b, 64 + 24, BASE, 8);
    put(&mut b, 64 + 32, len, 8);
    put(&mut b, 64 + 40, len, 8);
    put(&mut b, 64 + 48, 0x1000, 8);
    GoElf {
        bytes: b,
        text,
        pcln,
        buildinfo: bi,
        shoff,
    }
}

fn seed() -> (Vec<u8>, Vec<u8>) {
    let n = u32::from_le_bytes(SEED[..4].try_into().unwrap()) as usize;
    (SEED[4..4 + n].to_vec(), SEED[4 + n..].to_vec())
}

/// `identify` answers within `limit`; if it identifies the file, every probe (entry and
/// returns) is inside the code.
fn check_within(
    dir: &TempDir,
    name: &str,
    elf: &GoElf,
    limit: Duration,
) -> Option<enforcer::libraries::Identified> {
    let path = dir.write(name, &elf.bytes);
    let (res, _) = bounded(name, limit, move || enforcer::libraries::identify(&path));
    let id = res.ok().flatten()?;
    for p in &id.probes {
        let all = std::iter::once(&p.file_offset).chain(&p.return_offsets);
        for off in all {
            assert!(
                elf.text.contains(off),
                "{name}: probe {p:?} outside the code {:?}",
                elf.text
            );
        }
    }
    Some(id)
}

fn check(dir: &TempDir, name: &str, elf: &GoElf) -> Option<enforcer::libraries::Identified> {
    check_within(dir, name, elf, BOUND)
}

#[test]
fn go_base_file_is_identified() {
    let _serial = serial();
    let dir = TempDir::new("go-base");
    let (table, code) = seed();
    let elf = build(&table, &code, BUILDINFO);
    let id = check(&dir, "go-base", &elf).expect("the base Go file is identified");
    assert_eq!(id.family.name(), "go");
    assert_eq!(id.identity.version.as_deref(), Some("1.19.8"));
    // Each of the three: an entry probe after the stack check (not on the first byte, which
    // `runtime.morestack` jumps back to) and at least one RET.
    assert_eq!(id.probes.len(), 3, "{:?}", id.probes);
    for p in &id.probes {
        assert!(!p.return_offsets.is_empty(), "{p:?}");
        assert!(elf.bytes[p.file_offset as usize - 1] != 0xcc, "{p:?}");
    }
}

#[test]
fn malformed_go_tables_answer_in_time_with_probes_in_the_code() {
    let _serial = serial();
    let dir = TempDir::new("go-malformed");
    let (table, code) = seed();
    let mut corpus: Vec<(String, GoElf)> = Vec::new();
    // Header word n of the table (Go 1.20 layout: 8-byte words after 8 bytes of magic).
    let word = |n: usize| 8 + 8 * n;
    // Truncated tables: the section cut at many lengths (the functab must fit).
    for len in (0..table.len()).step_by(97).chain([7, 8, 71, 72, 73]) {
        corpus.push((
            format!("trunc-{len}"),
            build(&table[..len], &code, BUILDINFO),
        ));
    }
    let with_word = |n: usize, v: u64| {
        let mut t = table.clone();
        put(&mut t, word(n), v, 8);
        build(&t, &code, BUILDINFO)
    };
    let len = table.len() as u64;
    for (what, n) in [("nfunc", 0), ("funcnametab", 3), ("functab", 7)] {
        for v in [
            len,
            len + 1,
            u32::MAX.into(),
            u64::MAX,
            1 << 22,
            (1 << 22) + 1,
        ] {
            corpus.push((format!("{what}-{v:#x}"), with_word(n, v)));
        }
    }
    // Function extents: the end before the entry, zero-sized, far past the code, entries
    // offsets at u32::MAX, and a `.text` address whose sum with them wraps.
    let functab = usize::try_from(u64::from_le_bytes(
        table[word(7)..word(8)].try_into().unwrap(),
    ))
    .unwrap();
    let nfunc = u64::from_le_bytes(table[word(0)..word(1)].try_into().unwrap()) as usize;
    for slot in 0..=nfunc {
        for v in [0, 1, u32::MAX.into(), 0x10_0000, code.len() as u64 - 1] {
            let mut t = table.clone();
            put(&mut t, functab + 8 * slot, v, 4);
            corpus.push((format!("entry-{slot}-{v:#x}"), build(&t, &code, BUILDINFO)));
        }
        let mut t = table.clone();
        put(&mut t, functab + 8 * slot + 4, u32::MAX.into(), 4);
        corpus.push((format!("funcoff-{slot}"), build(&t, &code, BUILDINFO)));
    }
    for addr in [u64::MAX - 0x10, u64::MAX, 0] {
        let mut e = build(&table, &code, BUILDINFO);
        put(&mut e.bytes, e.shoff + 64 + 16, addr, 8);
        corpus.push((format!("text-addr-{addr:#x}"), e));
    }
    // Every byte of the table header, and of the build info header, set to 0x00, 0x7f, 0xff.
    for at in 0..word(8) {
        for v in [0x00, 0x7f, 0xff] {
            let mut e = build(&table, &code, BUILDINFO);
            e.bytes[e.pcln + at] = v;
            corpus.push((format!("header-{at}-{v:#x}"), e));
        }
    }
    for at in 0..40 {
        for v in [0x00, 0x80, 0xff] {
            let mut e = build(&table, &code, BUILDINFO);
            e.bytes[e.buildinfo + at] = v;
            corpus.push((format!("buildinfo-{at}-{v:#x}"), e));
        }
    }
    // Build info of the old format whose pointers point nowhere, or wrap.
    for ptr in [u64::MAX - 3, u64::MAX, BASE + 0x10_0000, BASE - 1] {
        let mut bi = BUILDINFO[..32].to_vec();
        bi[15] = 0;
        put(&mut bi, 16, ptr, 8);
        corpus.push((format!("buildinfo-ptr-{ptr:#x}"), build(&table, &code, &bi)));
    }
    // A string header whose length is huge, and a uvarint that never ends.
    let mut bi = BUILDINFO[..32].to_vec();
    bi[15] = 0;
    put(&mut bi, 16, BASE, 8); // the ELF header: the "string" is at its first 8 bytes...
    corpus.push(("buildinfo-strhdr".into(), build(&table, &code, &bi)));
    let mut bi = BUILDINFO[..32].to_vec();
    bi.extend_from_slice(&[0x80; 12]);
    corpus.push(("buildinfo-varint".into(), build(&table, &code, &bi)));

    let started = std::time::Instant::now();
    let mut identified = 0;
    for (name, elf) in &corpus {
        if check(&dir, name, elf).is_some() {
            identified += 1;
        }
    }
    eprintln!(
        "{} malformed Go files, {identified} still identified, {:?}",
        corpus.len(),
        started.elapsed()
    );
    assert!(
        identified > 0,
        "the corpus only breaks parts of the base file"
    );
}

/// A table that claims the most functions allowed (2^22), all pointing at one `_func` whose name
/// is a long run without a NUL: the lookup costs what the wanted names cost, not 4 KiB a slot.
/// A file at a cap, so [`CAP_BOUND`] (measured: 9.6 s in the unoptimised test build on the
/// loaded 2-core machine).
#[test]
fn go_table_with_the_most_functions_answers_in_time() {
    let _serial = serial();
    let dir = TempDir::new("go-huge");
    let (table, code) = seed();
    const N: usize = 1 << 22;
    let mut t = table[..72].to_vec();
    let names_at = u64::from_le_bytes(t[8 + 3 * 8..8 + 4 * 8].try_into().unwrap()) as usize;
    assert!(names_at <= t.len());
    let functab = t.len();
    put(&mut t, 8 + 7 * 8, functab as u64, 8);
    put(&mut t, 8, N as u64, 8);
    let func = functab + (2 * N + 1) * 4;
    t.resize(func, 0);
    for i in 0..N {
        put(&mut t, functab + 8 * i, (i % code.len()) as u64, 4);
        put(&mut t, functab + 8 * i + 4, (func - functab) as u64, 4);
    }
    put(&mut t, functab + 8 * N, code.len() as u64, 4);
    t.extend_from_slice(&0u32.to_le_bytes());
    let run = t.len() + 4;
    t.extend_from_slice(&((run - names_at) as u32).to_le_bytes());
    t.resize(run + 8192, b'c');
    let elf = build(&t, &code, BUILDINFO);
    let started = std::time::Instant::now();
    assert!(check_within(&dir, "go-huge", &elf, CAP_BOUND).is_none());
    eprintln!(
        "2^22 functions: {:?} (bound {CAP_BOUND:?})",
        started.elapsed()
    );
}
