//! Libraries without a section table (`sstrip`): the loader needs only the dynamic segment, so
//! enforcer reads the dynamic symbol table the way the loader does. Debian ships no `sstrip`;
//! [`sstrip`] does what it does (section table gone from the header and cut off the file). Then
//! the dynamic segment of a stripped real `libssl` is made to lie in every way the reader checks:
//! never a panic, never a stall, never identified.

use std::fs;
use std::path::Path;

use enforcer::libraries;

use crate::{BOUND, TempDir, bounded, identify, serial};

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_HASH: u64 = 4;
const DT_STRSZ: u64 = 10;
const DT_SYMENT: u64 = 11;
const DT_SYMTAB: u64 = 6;
const DT_GNU_HASH: u64 = 0x6fff_fef5;

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes(b[at..at + 2].try_into().unwrap()))
}
fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn put_u32(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// (p_type, offset of the program header, p_offset, p_vaddr, p_filesz) of a 64-bit
/// little-endian file.
fn program_headers(b: &[u8]) -> Vec<(u32, usize, u64, u64, u64)> {
    let (phoff, phentsize, phnum) = (u64_at(b, 32), u16_at(b, 54), u16_at(b, 56));
    (0..phnum)
        .map(|i| {
            let at = (phoff + i * phentsize) as usize;
            let (off, vaddr, filesz) = (u64_at(b, at + 8), u64_at(b, at + 16), u64_at(b, at + 32));
            (u32_at(b, at) as u32, at, off, vaddr, filesz)
        })
        .collect()
}

/// What `sstrip` does: no section headers in the ELF header, and the file cut after the last
/// byte a program header covers (the section table and non-loaded sections such as `.symtab`
/// and `.shstrtab` are gone).
pub fn sstrip(elf: &[u8]) -> Vec<u8> {
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "a 64-bit little-endian ELF file"
    );
    let phdrs = program_headers(elf);
    let (phoff, phentsize) = (u64_at(elf, 32), u16_at(elf, 54));
    let end = phdrs
        .iter()
        .map(|&(_, _, off, _, filesz)| off + filesz)
        .chain([phoff + phentsize * phdrs.len() as u64])
        .max()
        .unwrap() as usize;
    let mut out = elf[..end.min(elf.len())].to_vec();
    put_u64(&mut out, 40, 0); // e_shoff
    out[58..64].fill(0); // e_shentsize, e_shnum, e_shstrndx
    out
}

/// The file offset loaded at `vaddr`.
fn offset_of(b: &[u8], vaddr: u64) -> usize {
    program_headers(b)
        .into_iter()
        .find(|&(t, _, _, va, filesz)| t == PT_LOAD && (va..va + filesz).contains(&vaddr))
        .map(|(_, _, off, va, _)| (off + vaddr - va) as usize)
        .expect("address in a PT_LOAD segment")
}

/// File offsets of each (tag, value) entry of the dynamic segment, up to `DT_NULL`.
fn dynamic_entries(b: &[u8]) -> Vec<(usize, u64, u64)> {
    let &(_, _, off, _, filesz) = program_headers(b)
        .iter()
        .find(|p| p.0 == PT_DYNAMIC)
        .expect("a dynamic segment");
    (0..filesz / 16)
        .map(|i| (off + i * 16) as usize)
        .map(|at| (at, u64_at(b, at), u64_at(b, at + 8)))
        .take_while(|&(_, tag, _)| tag != 0)
        .collect()
}

/// Where the entry with `tag` is, and its value.
fn entry(b: &[u8], tag: u64) -> (usize, u64) {
    dynamic_entries(b)
        .into_iter()
        .find(|e| e.1 == tag)
        .map(|(at, _, v)| (at, v))
        .unwrap_or_else(|| panic!("no dynamic entry {tag:#x}"))
}

/// (family, probes, version, build-id) of an identified file.
type Summary = (String, Vec<(String, u64)>, Option<String>, Option<String>);

fn summary(path: &Path) -> Summary {
    let id = identify(path)
        .unwrap()
        .unwrap_or_else(|| panic!("{}: not identified", path.display()));
    let probes = id.probes.iter();
    let probes = probes.map(|p| (p.symbol.clone(), p.file_offset)).collect();
    let family = id.family.name().to_owned();
    (family, probes, id.identity.version, id.identity.build_id)
}

/// Real libraries (with the companion each needs for its version) stripped of their section
/// tables are identified exactly as the originals: family, probes, version, build-id.
#[test]
fn sstripped_real_libraries_are_identified_as_the_originals() {
    let _s = serial();
    let (orig, stripped) = (TempDir::new("orig"), TempDir::new("sstripped"));
    for name in ["libssl.so.3", "libcrypto.so.3", "libgnutls.so.30"] {
        let bytes = fs::read(Path::new(LIBDIR).join(name)).expect("Debian's libssl3, libgnutls30");
        orig.write(name, &bytes);
        let cut = sstrip(&bytes);
        assert!(cut.len() < bytes.len() && u16_at(&cut, 60) == 0, "{name}");
        stripped.write(name, &cut);
    }
    for (name, family) in [("libssl.so.3", "openssl"), ("libgnutls.so.30", "gnutls")] {
        let want = summary(&orig.path(name));
        assert_eq!(want.0, family);
        assert!(want.2.is_some() && want.3.is_some(), "{name}: {want:?}");
        assert_eq!(summary(&stripped.path(name)), want, "{name} sstripped");
    }
}

/// The fuzz seeds without section headers (`fuzz/seeds/elf_identify/make.sh`: e_shoff, e_shnum
/// and e_shstrndx zeroed) are identified as the seeds they come from, 64- and 32-bit alike.
#[test]
fn sstripped_fuzz_seeds_are_identified_as_their_originals() {
    let _s = serial();
    let dir = TempDir::new("seeds");
    let seeds: [(&str, &[u8], &[u8]); 4] = [
        (
            "openssl3",
            include_bytes!("../../../fuzz/seeds/elf_identify/openssl3.so"),
            include_bytes!("../../../fuzz/seeds/elf_identify/openssl3-sstripped.so"),
        ),
        (
            "openssl10",
            include_bytes!("../../../fuzz/seeds/elf_identify/openssl10.so"),
            include_bytes!("../../../fuzz/seeds/elf_identify/openssl10-sstripped.so"),
        ),
        (
            "gnutls",
            include_bytes!("../../../fuzz/seeds/elf_identify/gnutls.so"),
            include_bytes!("../../../fuzz/seeds/elf_identify/gnutls-sstripped.so"),
        ),
        (
            "openssl-i386",
            include_bytes!("../../../fuzz/seeds/elf_identify/openssl-i386.so"),
            include_bytes!("../../../fuzz/seeds/elf_identify/openssl-i386-sstripped.so"),
        ),
    ];
    for (name, orig, cut) in seeds {
        assert_eq!(u16_at(cut, if cut[4] == 2 { 60 } else { 48 }), 0, "{name}");
        let want = summary(&dir.write(&format!("{name}.so"), orig));
        let got = summary(&dir.write(&format!("{name}-sstripped.so"), cut));
        assert_eq!(got, want, "{name}");
    }
}

/// Section headers that name another `.dynsym` than the dynamic segment do not hide the
/// library: the loader's table counts.
#[test]
fn section_headers_disagreeing_with_the_dynamic_segment() {
    let _s = serial();
    let dir = TempDir::new("disagree");
    let mut bytes = fs::read(Path::new(LIBDIR).join("libssl.so.3")).unwrap();
    let want = summary(&dir.write("libssl.so.3", &bytes));
    let (shoff, shentsize, shnum) = (u64_at(&bytes, 40), u16_at(&bytes, 58), u16_at(&bytes, 60));
    let dynsym = (0..shnum)
        .map(|i| (shoff + i * shentsize) as usize)
        .find(|&at| u32_at(&bytes, at + 4) == 11)
        .expect("a .dynsym section");
    put_u64(&mut bytes, dynsym + 32, 24); // sh_size: the null symbol only
    assert_eq!(summary(&dir.write("libssl.so.3", &bytes)), want);
}

/// A stripped real libssl whose dynamic segment lies: answers in time, never a TLS library.
#[test]
fn lying_dynamic_segments_are_never_tls() {
    let _s = serial();
    let dir = TempDir::new("lying-dynamic");
    let base = sstrip(&fs::read(Path::new(LIBDIR).join("libssl.so.3")).unwrap());
    let (symtab_at, _) = entry(&base, DT_SYMTAB);
    let (strsz_at, _) = entry(&base, DT_STRSZ);
    let (syment_at, _) = entry(&base, DT_SYMENT);
    let (gnu_at, gnu_vaddr) = entry(&base, DT_GNU_HASH);
    let gnu = offset_of(&base, gnu_vaddr);
    let nbuckets = u32_at(&base, gnu) as usize;
    let buckets = gnu + 16 + 8 * u32_at(&base, gnu + 8) as usize;
    let chains = buckets + 4 * nbuckets;
    let symoffset = u32_at(&base, gnu + 4) as usize;
    let symtab = offset_of(&base, entry(&base, DT_SYMTAB).1);
    assert!(symtab > chains);
    let dyn_ph = program_headers(&base)
        .into_iter()
        .find(|p| p.0 == PT_DYNAMIC)
        .unwrap()
        .1;

    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = base.clone();
        f(&mut b);
        b
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "symtab-unmapped",
            with(&|b| put_u64(b, symtab_at + 8, 1 << 60)),
        ),
        (
            "symtab-wraps",
            with(&|b| put_u64(b, symtab_at + 8, u64::MAX - 8)),
        ),
        ("strsz-max", with(&|b| put_u64(b, strsz_at + 8, u64::MAX))),
        (
            "strsz-cap",
            with(&|b| put_u64(b, strsz_at + 8, (64 << 20) + 1)),
        ),
        (
            "strsz-past-eof",
            with(&|b| put_u64(b, strsz_at + 8, 1 << 30)),
        ),
        ("syment-wrong", with(&|b| put_u64(b, syment_at + 8, 16))),
        (
            "gnu-hash-unmapped",
            with(&|b| put_u64(b, gnu_at + 8, 1 << 60)),
        ),
        (
            "gnu-nbuckets-max",
            with(&|b| put_u32(b, gnu, u64::from(u32::MAX))),
        ),
        (
            "gnu-bloom-max",
            with(&|b| put_u32(b, gnu + 8, u64::from(u32::MAX))),
        ),
        (
            "gnu-bucket-max",
            with(&|b| put_u32(b, buckets, u64::from(u32::MAX))),
        ),
        ("gnu-bucket-below-symoffset", {
            with(&|b| {
                b[buckets..chains].fill(0);
                put_u32(b, buckets, symoffset as u64 - 1);
            })
        }),
        ("no-hash-table", with(&|b| put_u64(b, gnu_at, 0x6fff_fe00))),
        ("hash-nchain-max", {
            with(&|b| {
                put_u64(b, gnu_at, DT_HASH);
                put_u32(b, gnu + 4, u64::from(u32::MAX));
            })
        }),
        ("dynamic-huge", with(&|b| put_u64(b, dyn_ph + 32, 1 << 40))),
        (
            "dynamic-past-eof",
            with(&|b| put_u64(b, dyn_ph + 8, 1 << 40)),
        ),
    ];
    // Every length the dynamic segment and tables can be cut at.
    for len in [gnu + 8, buckets + 2, chains + 2, symtab_at] {
        cases.push(("cut", base[..len].to_vec()));
    }
    for (name, bytes) in cases {
        let path = dir.write(&format!("lib{name}.so"), &bytes);
        let p = path.clone();
        let (res, took) = bounded(name, BOUND, move || libraries::identify(&p));
        assert!(!matches!(res, Ok(Some(_))), "{name}: {res:?}");
        eprintln!("{name}: {took:?}, {res:?}");
    }

    // Chains that never end before the symbol table: the walk runs on into it (the loader's
    // count would be as wrong) and stops at the first odd word; in time, probes in the file.
    let runs_on = with(&|b| {
        for at in (chains..symtab).step_by(4) {
            b[at] &= !1;
        }
    });
    let path = dir.write("libchain-runs-on.so", &runs_on);
    let (res, _) = bounded("chain runs on", BOUND, move || libraries::identify(&path));
    if let Ok(Some(id)) = res {
        assert!(
            id.probes
                .iter()
                .all(|p| p.file_offset < runs_on.len() as u64)
        );
    }

    // A DT_HASH table instead of DT_GNU_HASH, with the right count: identified.
    let nsyms = (0..nbuckets)
        .map(|i| u32_at(&base, buckets + 4 * i))
        .max()
        .unwrap() as usize;
    let mut end = nsyms;
    while u32_at(&base, chains + 4 * (end - symoffset)) & 1 == 0 {
        end += 1;
    }
    let hash = with(&|b| {
        put_u64(b, gnu_at, DT_HASH);
        put_u32(b, gnu, 1);
        put_u32(b, gnu + 4, end as u64 + 1);
    });
    let path = dir.write("libssl.so.3", &hash);
    assert_eq!(summary(&path).0, "openssl");
}
