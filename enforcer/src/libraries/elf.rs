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
//! - **Bounded.** The length is fixed from `fstat` when the file is opened, whatever it is (a
//!   library padded to gigabytes with `truncate` costs the same reads as the original); every
//!   read is checked against it (a file that shrinks mid-read makes
//!   `pread` come up short, which is an error, not a crash). Every read goes through one
//!   `file::Source`, which records it and verifies it with a last pass (see there): what a file
//!   changed meanwhile gives is never used. Symbol and string tables larger than
//!   [`MAX_TABLE_BYTES`] are skipped, at most [`MAX_SYMBOLS`] symbols of a table are looked at,
//!   and all address arithmetic is checked.
//! - **As the loader reads it.** The dynamic symbol table is found through `PT_DYNAMIC`
//!   (`dynamic.rs`), so a library without section headers (`sstrip`) is read like any other;
//!   section headers are used only where there is no dynamic segment (and for `.symtab`). Where
//!   a `.dynsym` section header names another table than the dynamic segment, the loader's
//!   table counts.
//! - **Cheap.** Only names listed in [`Catalog::symbols`] are remembered; a symbol is looked up
//!   in the string table only if it is defined.
//! - **Build-id.** The GNU build-id comes from the `.note.gnu.build-id` note (or a `PT_NOTE`
//!   segment), at most [`MAX_NOTES_BYTES`] of notes. (Version texts and hashes: `identity.rs`.)

mod auditable;
mod dynamic;
pub(super) mod file;
mod rust;
pub(super) mod symbols;

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use object::elf;
use object::read::ReadCache;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, FileKind};

use super::go::{self, GoInfo};
use super::{LibraryError, ProbeTarget};
use crate::catalog::{Abi, Catalog, ProbeSpec};
use enforcer_common::flow::op;
use file::{CappedFile, Segment, Source, code_around, file_offset};
#[cfg(test)]
use symbols::Names;
use symbols::{Found, collect, collect_from, versyms};

/// Symbol tables and their string tables larger than this are skipped.
pub(super) const MAX_TABLE_BYTES: u64 = 64 << 20;
/// At most this many symbols of one table are looked at.
pub(super) const MAX_SYMBOLS: usize = 1 << 21;
/// At most this many section headers are read.
const MAX_SECTIONS: usize = 1 << 16;
/// Notes larger than this are not read for a build-id.
pub(super) const MAX_NOTES_BYTES: u64 = 64 << 10;

/// Which symbol table a name set came from (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Dynamic,
    Static,
    /// Go's function table (`.gopclntab`).
    Go,
}

/// What one ELF file defines that the catalog cares about.
#[derive(Clone, Debug)]
pub(super) struct ElfInfo {
    /// Interesting defined symbols of the table used, by index into [`Catalog::symbols`].
    found: HashMap<usize, Found>,
    segments: Vec<Segment>,
    pub build_id: Option<String>,
    table: Table,
    /// Set when the symbols came from a Go function table.
    pub(super) go: Option<GoInfo>,
    /// (crate, version) from cargo-auditable's `.dep-v0` section, when the catalog names Rust
    /// paths and the file has a valid one; else empty.
    pub(super) crates: Vec<(String, String)>,
}

impl ElfInfo {
    /// True if the file defines `name` (an interesting symbol of the catalog it was read with).
    pub fn defines(&self, catalog: &Catalog, name: &str) -> bool {
        catalog
            .symbols()
            .binary_search_by(|s| s.as_str().cmp(name))
            .is_ok_and(|i| self.found.contains_key(&i))
    }

    /// Where to probe the functions of `specs` that this file defines (see [`probe_targets`]).
    pub fn probe_targets<'a>(
        &self,
        catalog: &Catalog,
        specs: impl Iterator<Item = &'a ProbeSpec>,
        in_companion: bool,
        abi: Abi,
        len: u64,
        path: &Path,
    ) -> Vec<ProbeTarget> {
        probe_targets(self, catalog, specs, in_companion, abi, len, path)
    }
}

/// Says whether a symbol table is worth keeping, given a predicate telling whether it defines a
/// symbol.
pub(super) type Useful<'a> = dyn Fn(&dyn Fn(&str) -> bool) -> bool + 'a;

/// Reads an already opened regular file (any length): the interesting symbols of the first
/// symbol table (`.dynsym`, then `.symtab`) for which `useful` says yes, and the build-id.
/// `None` if it is not ELF or no table is useful. Every read goes through `src`, which the
/// caller verifies afterwards (see [`file::Source`]).
pub(super) fn read_file(
    src: &Rc<Source>,
    path: &Path,
    catalog: &Catalog,
    useful: &Useful<'_>,
) -> Result<Option<ElfInfo>, LibraryError> {
    let malformed = |e: object::Error| LibraryError::Malformed {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let len = src.len();
    // Shorter than the magic, or not ELF at all: not a library we can probe.
    let mut magic = [0u8; 4];
    if len < 4 {
        return Ok(None);
    }
    let n = src
        .read_at(&mut magic, 0)
        .map_err(|source| LibraryError::Io {
            path: path.to_owned(),
            source,
        })?;
    if n < magic.len() || magic != *b"\x7fELF" {
        return Ok(None);
    }
    let cache = ReadCache::new(CappedFile::new(src.clone()));
    let scan = Scan {
        file: (src, len),
        path,
        catalog,
        useful,
        len,
    };
    match FileKind::parse(&cache).map_err(malformed)? {
        FileKind::Elf64 => scan.run::<elf::FileHeader64<Endianness>>(&cache),
        FileKind::Elf32 => scan.run::<elf::FileHeader32<Endianness>>(&cache),
        _ => Ok(None),
    }
}

struct Scan<'a> {
    file: (&'a Source, u64),
    path: &'a Path,
    catalog: &'a Catalog,
    useful: &'a Useful<'a>,
    len: u64,
}

impl Scan<'_> {
    fn malformed(&self, reason: impl ToString) -> LibraryError {
        LibraryError::Malformed {
            path: self.path.to_owned(),
            reason: reason.to_string(),
        }
    }

    fn run<Elf: FileHeader<Endian = Endianness>>(
        &self,
        data: &ReadCache<CappedFile>,
    ) -> Result<Option<ElfInfo>, LibraryError> {
        let m = |e: object::Error| self.malformed(e);
        let header = Elf::parse(data).map_err(m)?;
        let endian = header.endian().map_err(m)?;
        let shnum = header.shnum(endian, data).map_err(m)?;
        if shnum > MAX_SECTIONS {
            return Err(self.malformed(format!("{shnum} section headers")));
        }
        let sections = header.section_headers(endian, data).map_err(m)?;
        let phdrs = header.program_headers(endian, data).map_err(m)?;
        let segments: Vec<Segment> = phdrs
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .map(|ph| Segment {
                vaddr: ph.p_vaddr(endian).into(),
                offset: ph.p_offset(endian).into(),
                filesz: ph.p_filesz(endian).into(),
                executable: ph.p_flags(endian) & elf::PF_X != 0,
            })
            .collect();

        let defines_in = |found: &HashMap<usize, Found>, name: &str| {
            self.catalog
                .symbols()
                .binary_search_by(|s| s.as_str().cmp(name))
                .is_ok_and(|i| found.contains_key(&i))
        };
        // A Go binary's functions come from its own table first: even unstripped, only that
        // table says where each function ends (which the return probes need).
        if let Some((found, extents)) =
            go::functions(header, endian, data, self.file, self.catalog, self.path)
            && (self.useful)(&|name| defines_in(&found, name))
        {
            let go = go::info(header, endian, data, &segments, &extents, self.path);
            let build_id = build_id::<Elf>(endian, data, sections, phdrs);
            tracing::trace!(path = %self.path.display(), symbols = found.len(), version = go.version.as_deref(), "Go functions found");
            return Ok(Some(ElfInfo {
                found,
                segments,
                build_id,
                table: Table::Go,
                go: Some(go),
                crates: Vec::new(),
            }));
        }

        // The dynamic symbol table first (what a shared library exports), as the loader finds
        // it; then `.symtab`, which an unstripped executable with a statically linked TLS
        // library still carries.
        let section_dynsym = sections
            .iter()
            .find(|s| s.sh_type(endian) == elf::SHT_DYNSYM);
        let dynamic = dynamic::table(header, endian, data, phdrs, &segments, self.len)
            .map_err(|reason| self.malformed(format!("dynamic segment: {reason}")))?;
        let dynamic_found = match dynamic {
            Some(t) => {
                if let Some(s) = section_dynsym
                    && s.sh_offset(endian).into() != t.offset
                {
                    // The loader reads the dynamic segment's table, so that one counts.
                    tracing::debug!(path = %self.path.display(), "section headers disagree with the dynamic segment: its table is used");
                }
                Some(collect_from::<Elf>(
                    endian,
                    t.symbols,
                    t.strings,
                    t.versyms,
                    self.path,
                    self.catalog,
                ))
            }
            None => match section_dynsym {
                Some(symtab) => collect::<Elf>(
                    endian,
                    data,
                    sections,
                    symtab,
                    versyms::<Elf>(endian, data, sections),
                    self.path,
                    self.catalog,
                )?,
                None => None,
            },
        };
        let static_found = || match sections
            .iter()
            .find(|s| s.sh_type(endian) == elf::SHT_SYMTAB)
        {
            Some(symtab) => collect::<Elf>(
                endian,
                data,
                sections,
                symtab,
                None,
                self.path,
                self.catalog,
            ),
            None => Ok(None),
        };
        for (table, found) in [
            (Table::Dynamic, Ok(dynamic_found)),
            (Table::Static, static_found()),
        ] {
            let Some(found) = found? else {
                continue;
            };
            if !(self.useful)(&|name| defines_in(&found, name)) {
                continue;
            }
            let build_id = build_id::<Elf>(endian, data, sections, phdrs);
            let crates = match self.catalog.has_rust() {
                true => crates::<Elf>(header, endian, data),
                false => Vec::new(),
            };
            tracing::trace!(path = %self.path.display(), ?table, symbols = found.len(), crates = crates.len(), "catalog symbols found");
            return Ok(Some(ElfInfo {
                found,
                segments,
                build_id,
                table,
                go: None,
                crates,
            }));
        }
        Ok(None)
    }
}

/// The crate versions of cargo-auditable's `.dep-v0` section (see `auditable.rs`), if any.
fn crates<Elf: FileHeader<Endian = Endianness>>(
    header: &Elf,
    endian: Endianness,
    data: &ReadCache<CappedFile>,
) -> Vec<(String, String)> {
    let Ok(table) = header.sections(endian, data) else {
        return Vec::new();
    };
    let Some((_, section)) = table.section_by_name(endian, auditable::SECTION) else {
        return Vec::new();
    };
    if section.sh_type(endian) == elf::SHT_NOBITS
        || section.sh_size(endian).into() > auditable::MAX_SECTION_BYTES
    {
        return Vec::new();
    }
    section
        .data(endian, data)
        .ok()
        .and_then(auditable::crate_versions)
        .unwrap_or_default()
}

/// The GNU build-id, lowercase hex, from a `SHT_NOTE` section or else a `PT_NOTE` segment.
fn build_id<Elf: FileHeader<Endian = Endianness>>(
    endian: Endianness,
    data: &ReadCache<CappedFile>,
    sections: &[Elf::SectionHeader],
    phdrs: &[Elf::ProgramHeader],
) -> Option<String> {
    let from_notes = |mut notes: object::read::elf::NoteIterator<'_, Elf>| {
        while let Ok(Some(note)) = notes.next() {
            if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                let desc = note.desc();
                if !desc.is_empty() && desc.len() <= 64 {
                    return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
                }
            }
        }
        None
    };
    for s in sections {
        if s.sh_type(endian) == elf::SHT_NOTE
            && s.sh_size(endian).into() <= MAX_NOTES_BYTES
            && let Ok(Some(notes)) = s.notes(endian, data)
            && let Some(id) = from_notes(notes)
        {
            return Some(id);
        }
    }
    for ph in phdrs {
        if ph.p_type(endian) == elf::PT_NOTE
            && ph.p_filesz(endian).into() <= MAX_NOTES_BYTES
            && let Ok(Some(notes)) = ph.notes(endian, data)
            && let Some(id) = from_notes(notes)
        {
            return Some(id);
        }
    }
    None
}

fn probe_targets<'a>(
    info: &ElfInfo,
    catalog: &Catalog,
    specs: impl Iterator<Item = &'a ProbeSpec>,
    in_companion: bool,
    abi: Abi,
    len: u64,
    path: &Path,
) -> Vec<ProbeTarget> {
    let (found, segments) = (&info.found, &info.segments);
    let index = |name: &str| {
        catalog
            .symbols()
            .binary_search_by(|s| s.as_str().cmp(name))
            .ok()
    };
    let mut probes: Vec<ProbeTarget> = Vec::new();
    for spec in specs {
        let Some((i, sym)) = index(&spec.symbol).and_then(|i| Some((i, found.get(&i)?))) else {
            tracing::trace!(path = %path.display(), symbol = spec.symbol, "not defined: not probed");
            continue;
        };
        if abi == Abi::Go {
            // Never a uretprobe on Go code: only functions whose return instructions are known.
            let Some(p) = info.go.as_ref().and_then(|g| g.points.get(&i)) else {
                tracing::debug!(path = %path.display(), symbol = spec.symbol, "Go function without probe points: not probed");
                continue;
            };
            if p.entry >= len || p.returns.iter().any(|&r| r >= len) {
                continue;
            }
            probes.push(ProbeTarget {
                symbol: spec.symbol.clone(),
                op: spec.op,
                file_offset: p.entry,
                in_companion,
                return_offsets: p.returns.clone(),
                code: None,
            });
            continue;
        }
        let skip = |why: &str| {
            tracing::debug!(path = %path.display(), symbol = spec.symbol, value = sym.value, table = ?info.table, "{why}: not probed");
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
        let code = match spec.op {
            op::SESSION => match code_around(segments, sym.value) {
                Some(span) => Some(span),
                None => {
                    skip("no executable segment around the session function");
                    continue;
                }
            },
            _ => None,
        };
        probes.push(ProbeTarget {
            symbol: spec.symbol.clone(),
            op: spec.op,
            file_offset: offset,
            in_companion,
            return_offsets: Vec::new(),
            code,
        });
    }
    probes
}

#[cfg(test)]
mod tests;
