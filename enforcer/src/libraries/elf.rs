//! Reading the parts of an ELF file that identify a TLS library and locate its probe points.
//!
//! The files come from anywhere (every process's mappings), so they are treated as hostile: they
//! can be truncated, huge, malformed, or change while they are read.
//!
//! - **No mmap.** A mapping of a file that another process truncates raises `SIGBUS` on access,
//!   which would kill the agent. Instead the file is read with `pread` through `object`'s
//!   [`ReadCache`], which fetches only the byte ranges the parser asks for (ELF header, program
//!   and section headers, the symbol table, its string table and `.gnu.version`), so a 5 MB
//!   library costs a few hundred KB of reads and the thousands of `.so` files in `/usr/lib` are
//!   cheap to pre-filter.
//! - **Bounded.** The length is fixed from `fstat` when the file is opened and capped at
//!   [`MAX_FILE_SIZE`]; every read is checked against it (a file that shrinks mid-read makes
//!   `pread` come up short, which is an error, not a crash). Symbol and string tables larger than
//!   [`MAX_TABLE_BYTES`] are skipped, at most [`MAX_SYMBOLS`] symbols of a table are looked at,
//!   and all address arithmetic is checked.
//! - **Cheap.** Only names listed in [`catalog::interesting_symbols`] are remembered; a symbol is
//!   looked up in the string table only if it is defined.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym};
use object::read::{ReadCache, ReadCacheOps};
use object::{Endianness, FileKind};

use super::{Identified, LibraryError, ProbeTarget};
use crate::catalog::{self, Profile};

/// Files larger than this are not parsed (the largest shared object on a Debian host is libLLVM,
/// ~100 MiB; unstripped static binaries can approach this).
pub(super) const MAX_FILE_SIZE: u64 = 512 << 20;
/// Symbol tables and their string tables larger than this are skipped.
pub(super) const MAX_TABLE_BYTES: u64 = 64 << 20;
/// At most this many symbols of one table are looked at.
pub(super) const MAX_SYMBOLS: usize = 1 << 21;
/// At most this many section headers are read.
const MAX_SECTIONS: usize = 1 << 16;

/// A file read with `pread`, with a length fixed when it was opened.
struct CappedFile {
    file: File,
    len: u64,
    pos: u64,
}

impl ReadCacheOps for CappedFile {
    fn len(&mut self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn seek(&mut self, pos: u64) -> Result<u64, ()> {
        self.pos = pos;
        Ok(pos)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        let remaining = self.len.saturating_sub(self.pos);
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self
            .file
            .read_at(&mut buf[..want], self.pos)
            .map_err(|_| ())?;
        self.pos = self.pos.checked_add(n as u64).ok_or(())?;
        Ok(n)
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), ()> {
        while !buf.is_empty() {
            match self.read(buf)? {
                0 => return Err(()), // the file shrank, or the range was past the end
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }
}

/// One interesting symbol as found in a table.
#[derive(Clone, Copy, Debug)]
struct Found {
    value: u64,
    st_type: u8,
    shndx: u16,
    /// Default version (`name@@VER`, or unversioned), as opposed to a hidden `name@VER`.
    default_version: bool,
}

/// Which symbol table a name set came from (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Dynamic,
    Static,
}

/// Identify an already opened regular file of `len` bytes (`len <= MAX_FILE_SIZE`).
pub(super) fn identify_file(
    file: File,
    len: u64,
    path: &Path,
) -> Result<Option<Identified>, LibraryError> {
    let malformed = |e: object::Error| LibraryError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    // Shorter than the magic, or not ELF at all: not a library we can probe.
    let mut magic = [0u8; 4];
    if len < 4 {
        return Ok(None);
    }
    file.read_exact_at(&mut magic, 0)
        .map_err(|source| LibraryError::Io {
            path: path.to_owned(),
            source,
        })?;
    if magic != *b"\x7fELF" {
        return Ok(None);
    }
    let cache = ReadCache::new(CappedFile { file, len, pos: 0 });
    match FileKind::parse(&cache).map_err(malformed)? {
        FileKind::Elf64 => scan::<elf::FileHeader64<Endianness>>(&cache, len, path),
        FileKind::Elf32 => scan::<elf::FileHeader32<Endianness>>(&cache, len, path),
        _ => Ok(None),
    }
}

fn scan<Elf: FileHeader<Endian = Endianness>>(
    data: &ReadCache<CappedFile>,
    len: u64,
    path: &Path,
) -> Result<Option<Identified>, LibraryError> {
    let malformed = |e: object::Error| LibraryError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let header = Elf::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    let shnum = header.shnum(endian, data).map_err(malformed)?;
    if shnum > MAX_SECTIONS {
        return Err(LibraryError::Malformed {
            path: path.to_owned(),
            reason: format!("{shnum} section headers"),
        });
    }
    let sections = header.section_headers(endian, data).map_err(malformed)?;
    let segments: Vec<Segment> = header
        .program_headers(endian, data)
        .map_err(malformed)?
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .map(|ph| Segment {
            vaddr: ph.p_vaddr(endian).into(),
            offset: ph.p_offset(endian).into(),
            filesz: ph.p_filesz(endian).into(),
            executable: ph.p_flags(endian) & elf::PF_X != 0,
        })
        .collect();

    // The dynamic symbol table first (what a shared library exports); then `.symtab`, which an
    // unstripped executable with a statically linked TLS library still carries.
    for (sh_type, table) in [
        (elf::SHT_DYNSYM, Table::Dynamic),
        (elf::SHT_SYMTAB, Table::Static),
    ] {
        let Some(symtab) = sections.iter().find(|s| s.sh_type(endian) == sh_type) else {
            continue;
        };
        let versyms = if table == Table::Dynamic {
            versyms::<Elf>(endian, data, sections)
        } else {
            None
        };
        let Some(found) = collect::<Elf>(endian, data, sections, symtab, versyms, path)? else {
            continue;
        };
        let Some(profile) = catalog::match_profile(|s| found.contains_key(s)) else {
            continue;
        };
        let probes = probe_targets(profile, &found, &segments, len, path);
        if probes.is_empty() {
            tracing::debug!(
                path = %path.display(), family = %profile.family, ?table,
                "identified, but none of its probe functions can be probed: skipped"
            );
            return Ok(None);
        }
        tracing::trace!(path = %path.display(), family = %profile.family, ?table, probes = probes.len(), "identified");
        return Ok(Some(Identified {
            family: profile.family,
            probes,
        }));
    }
    Ok(None)
}

/// `.gnu.version`, if present and consistent with `.dynsym`.
fn versyms<'d, Elf: FileHeader<Endian = Endianness>>(
    endian: Endianness,
    data: &'d ReadCache<CappedFile>,
    sections: &'d [Elf::SectionHeader],
) -> Option<&'d [elf::Versym<Endianness>]> {
    let shdr = sections
        .iter()
        .find(|s| s.sh_type(endian) == elf::SHT_GNU_VERSYM)?;
    if shdr.sh_size(endian).into() > MAX_TABLE_BYTES {
        return None;
    }
    shdr.data_as_array(endian, data).ok()
}

/// The interesting defined symbols of one table, by name; `None` if the table is too large.
fn collect<'d, Elf: FileHeader<Endian = Endianness>>(
    endian: Endianness,
    data: &'d ReadCache<CappedFile>,
    sections: &'d [Elf::SectionHeader],
    symtab: &'d Elf::SectionHeader,
    versyms: Option<&'d [elf::Versym<Endianness>]>,
    path: &Path,
) -> Result<Option<HashMap<&'static str, Found>>, LibraryError> {
    let malformed = |e: object::Error| LibraryError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let strtab = usize::try_from(symtab.sh_link(endian))
        .ok()
        .and_then(|i| sections.get(i))
        .ok_or_else(|| LibraryError::Malformed {
            path: path.to_owned(),
            reason: "symbol table links no string table".into(),
        })?;
    let sizes = (symtab.sh_size(endian).into(), strtab.sh_size(endian).into());
    if sizes.0 > MAX_TABLE_BYTES || sizes.1 > MAX_TABLE_BYTES {
        tracing::debug!(path = %path.display(), ?sizes, limit = MAX_TABLE_BYTES, "symbol table too large: skipped");
        return Ok(None);
    }
    let symbols: &[Elf::Sym] = symtab.data_as_array(endian, data).map_err(malformed)?;
    let strings: &[u8] = strtab.data(endian, data).map_err(malformed)?;
    // Versions are only meaningful if there is one per symbol.
    let versyms = versyms.filter(|v| v.len() == symbols.len());
    if symbols.len() > MAX_SYMBOLS {
        tracing::debug!(path = %path.display(), symbols = symbols.len(), limit = MAX_SYMBOLS, "only the first symbols are looked at");
    }

    let names = Names::new();
    let mut found = HashMap::new();
    for (index, sym) in symbols.iter().enumerate().take(MAX_SYMBOLS) {
        let shndx = sym.st_shndx(endian);
        if shndx == elf::SHN_UNDEF {
            continue; // imported, not defined here
        }
        let Some(name) = usize::try_from(sym.st_name(endian))
            .ok()
            .and_then(|o| strings.get(o..))
        else {
            continue;
        };
        let Some((key, mut default_version)) = names.lookup(name) else {
            continue;
        };
        if let Some(v) = versyms.and_then(|v| v.get(index)) {
            default_version &= v.0.get(endian) & elf::VERSYM_HIDDEN == 0;
        }
        let new = Found {
            value: sym.st_value(endian).into(),
            st_type: sym.st_type(),
            shndx,
            default_version,
        };
        match found.entry(key) {
            Entry::Vacant(e) => {
                e.insert(new);
            }
            // `SSL_write@@OPENSSL_3.0.0` beats an older `SSL_write@OPENSSL_1.1.0` kept for ABI
            // compatibility: the default version is what newly linked programs call.
            Entry::Occupied(mut e) if new.default_version && !e.get().default_version => {
                e.insert(new);
            }
            Entry::Occupied(_) => {}
        }
    }
    Ok(Some(found))
}

/// Matches names from a string table against [`catalog::interesting_symbols`] without scanning
/// for the terminating NUL of the (mostly uninteresting) names first: this loop runs over every
/// defined symbol of every candidate file.
struct Names {
    interesting: &'static [&'static str],
    first_bytes: [bool; 256],
}

impl Names {
    fn new() -> Self {
        let interesting = catalog::interesting_symbols();
        let mut first_bytes = [false; 256];
        for n in interesting {
            if let Some(&b) = n.as_bytes().first() {
                first_bytes[usize::from(b)] = true;
            }
        }
        Names {
            interesting,
            first_bytes,
        }
    }

    /// `rest` is the string table from a symbol's name on. Returns the interesting name it
    /// starts with and whether it is a default version: `SSL_write` and `SSL_write@@OPENSSL_3.0.0`
    /// are, `SSL_write@OPENSSL_1.0.0` is not (`.dynsym` names carry no suffix, their versions live
    /// in `.gnu.version`; `.symtab` names may carry one).
    fn lookup(&self, rest: &[u8]) -> Option<(&'static str, bool)> {
        if !self.first_bytes[usize::from(*rest.first()?)] {
            return None;
        }
        self.interesting.iter().find_map(|&n| {
            let tail = rest.strip_prefix(n.as_bytes())?;
            match tail.first() {
                None | Some(0) => Some((n, true)), // (a table missing its final NUL ends the name too)
                Some(b'@') => Some((n, tail.get(1) == Some(&b'@'))),
                Some(_) => None, // a longer name: `SSL_write_ex` is not `SSL_write`
            }
        })
    }
}

/// A `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
}

/// The file offset the virtual address `addr` is loaded from, if it lies in the file-backed part
/// of an executable `PT_LOAD` segment. This is what a uprobe wants: the kernel places it at
/// `offset` within the file's page cache, wherever the file is mapped.
pub(super) fn file_offset(segments: &[Segment], addr: u64) -> Option<u64> {
    segments.iter().filter(|s| s.executable).find_map(|s| {
        let delta = addr.checked_sub(s.vaddr)?;
        (delta < s.filesz)
            .then(|| s.offset.checked_add(delta))
            .flatten()
    })
}

fn probe_targets(
    profile: &Profile,
    found: &HashMap<&'static str, Found>,
    segments: &[Segment],
    len: u64,
    path: &Path,
) -> Vec<ProbeTarget> {
    let mut probes: Vec<ProbeTarget> = Vec::new();
    for spec in profile.probes {
        let Some(sym) = found.get(spec.symbol) else {
            tracing::trace!(path = %path.display(), symbol = spec.symbol, "not defined: not probed");
            continue;
        };
        let skip = |why: &str| {
            tracing::debug!(path = %path.display(), symbol = spec.symbol, value = sym.value, "{why}: not probed");
        };
        match sym.st_type {
            elf::STT_FUNC => {}
            // An IFUNC symbol's address is its resolver, which runs once at relocation time and
            // returns the real implementation; a probe there would never see a TLS call. No
            // supported library uses IFUNC for these functions.
            elf::STT_GNU_IFUNC => {
                skip("IFUNC symbol");
                continue;
            }
            _ => {
                skip("not a function");
                continue;
            }
        }
        if matches!(sym.shndx, elf::SHN_ABS | elf::SHN_COMMON) || sym.value == 0 {
            skip("no address in the file");
            continue;
        }
        let Some(offset) = file_offset(segments, sym.value).filter(|&o| o < len) else {
            skip("address outside every executable PT_LOAD segment");
            continue;
        };
        if let Some(other) = probes.iter().find(|p| p.file_offset == offset) {
            // Aliases: one uprobe per address is enough (two would count every call twice).
            tracing::debug!(path = %path.display(), symbol = spec.symbol, alias_of = %other.symbol, "alias: not probed twice");
            continue;
        }
        probes.push(ProbeTarget {
            symbol: spec.symbol.to_owned(),
            op: spec.op,
            file_offset: offset,
        });
    }
    probes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lookup() {
        let names = Names::new();
        assert_eq!(names.lookup(b"SSL_write\0next"), Some(("SSL_write", true)));
        assert_eq!(
            names.lookup(b"SSL_write_ex\0"),
            Some(("SSL_write_ex", true))
        );
        assert_eq!(
            names.lookup(b"SSL_write@@OPENSSL_3.0.0\0"),
            Some(("SSL_write", true))
        );
        assert_eq!(
            names.lookup(b"SSL_write@OPENSSL_1.0.0\0"),
            Some(("SSL_write", false))
        );
        assert_eq!(names.lookup(b"SSL_write"), Some(("SSL_write", true)));
        assert_eq!(names.lookup(b"SSL_writex\0"), None);
        assert_eq!(names.lookup(b"SSL_writ\0"), None);
        assert_eq!(names.lookup(b"malloc\0"), None);
        assert_eq!(names.lookup(b""), None);
        assert_eq!(names.lookup(b"\0"), None);
    }

    #[test]
    fn offsets_through_segments() {
        // Shaped like libssl.so.3's segments, with the data segment's usual vaddr != offset.
        let segs = [
            Segment {
                vaddr: 0,
                offset: 0,
                filesz: 0x1e9b0,
                executable: false,
            },
            Segment {
                vaddr: 0x1f000,
                offset: 0x1f000,
                filesz: 0x5cff1,
                executable: true,
            },
            Segment {
                vaddr: 0x9b810,
                offset: 0x9a810,
                filesz: 0xd020,
                executable: true,
            },
        ];
        assert_eq!(file_offset(&segs, 0x359c0), Some(0x359c0));
        assert_eq!(file_offset(&segs, 0x9b820), Some(0x9a820));
        assert_eq!(file_offset(&segs, 0x100), None, "not executable");
        assert_eq!(
            file_offset(&segs, 0x1f000 + 0x5cff1),
            None,
            "one past the end"
        );
        assert_eq!(file_offset(&segs, u64::MAX), None);
        let hostile = [Segment {
            vaddr: 0,
            offset: u64::MAX,
            filesz: u64::MAX,
            executable: true,
        }];
        assert_eq!(file_offset(&hostile, 0), Some(u64::MAX));
        assert_eq!(file_offset(&hostile, 1), None, "overflow is no offset");
    }
}
