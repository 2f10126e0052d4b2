//! Reading the interesting defined symbols of one symbol table (see [`super`] for the caps).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use object::Endianness;
use object::elf;
use object::read::ReadCache;
use object::read::elf::{FileHeader, SectionHeader, Sym};

use super::{MAX_SYMBOLS, MAX_TABLE_BYTES, file::CappedFile};
use crate::catalog::{Catalog, SymbolPrefix};
use crate::libraries::LibraryError;

/// One interesting symbol as found in a table.
#[derive(Clone, Copy, Debug)]
pub(in crate::libraries) struct Found {
    pub value: u64,
    pub st_type: u8,
    pub shndx: u16,
    /// Default version (`name@@VER`, or unversioned), as opposed to a hidden `name@VER`.
    pub default_version: bool,
}

/// `.gnu.version`, if present and consistent with `.dynsym`.
pub(super) fn versyms<'d, Elf: FileHeader<Endian = Endianness>>(
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

/// The interesting defined symbols of the table a section header describes, by name; `None` if
/// the table is too large.
pub(super) fn collect<'d, Elf: FileHeader<Endian = Endianness>>(
    endian: Endianness,
    data: &'d ReadCache<CappedFile>,
    sections: &'d [Elf::SectionHeader],
    symtab: &'d Elf::SectionHeader,
    versyms: Option<&'d [elf::Versym<Endianness>]>,
    path: &Path,
    catalog: &Catalog,
) -> Result<Option<HashMap<usize, Found>>, LibraryError> {
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
    Ok(Some(collect_from::<Elf>(
        endian, symbols, strings, versyms, path, catalog,
    )))
}

/// The interesting defined symbols of `symbols`, whose names are in `strings`, by name.
pub(super) fn collect_from<Elf: FileHeader<Endian = Endianness>>(
    endian: Endianness,
    symbols: &[Elf::Sym],
    strings: &[u8],
    versyms: Option<&[elf::Versym<Endianness>]>,
    path: &Path,
    catalog: &Catalog,
) -> HashMap<usize, Found> {
    // Versions are only meaningful if there is one per symbol.
    let versyms = versyms.filter(|v| v.len() == symbols.len());
    if symbols.len() > MAX_SYMBOLS {
        tracing::debug!(path = %path.display(), symbols = symbols.len(), limit = MAX_SYMBOLS, "only the first symbols are looked at");
    }

    let names = Names::new(catalog.symbols(), catalog.symbol_prefixes());
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
    found
}

/// Matches names from a string table against [`Catalog::symbols`] without scanning for the
/// terminating NUL of the (mostly uninteresting) names first: this loop runs over every defined
/// symbol of every candidate file.
pub(super) struct Names<'c> {
    interesting: &'c [String],
    prefixes: &'c [SymbolPrefix],
    first_bytes: [bool; 256],
    /// The interesting Rust paths (see [`super::rust`]), empty if the catalog names none.
    rust: super::rust::RustNames<'c>,
    /// Some C name or prefix starts with `_`: a mangled-looking name must be compared as C too.
    c_underscore: bool,
}

impl<'c> Names<'c> {
    pub(super) fn new(interesting: &'c [String], prefixes: &'c [SymbolPrefix]) -> Self {
        let mut first_bytes = [false; 256];
        for n in interesting {
            if let Some(&b) = n.as_bytes().first() {
                first_bytes[usize::from(b)] = true;
            }
        }
        for p in prefixes {
            match p.head.as_bytes().first() {
                Some(&b) => first_bytes[usize::from(b)] = true,
                // `*_`: the name starts with the run of digits and underscores.
                None => {
                    for b in b"0123456789_" {
                        first_bytes[usize::from(*b)] = true;
                    }
                }
            }
        }
        let c_underscore = first_bytes[usize::from(b'_')];
        let rust = super::rust::RustNames::new(interesting);
        if !rust.is_empty() {
            first_bytes[usize::from(b'_')] = true; // `_ZN...` (legacy) and `_R...` (v0)
        }
        Names {
            interesting,
            prefixes,
            first_bytes,
            rust,
            c_underscore,
        }
    }

    /// As [`Self::exact`], also for names carrying one of the catalog's symbol prefixes
    /// (`aws_lc_0_28_0_SSL_write` counts as `SSL_write`).
    pub(super) fn lookup(&self, rest: &[u8]) -> Option<(usize, bool)> {
        if !self.first_bytes[usize::from(*rest.first()?)] {
            return None;
        }
        if !self.c_underscore && super::rust::is_mangled(rest) {
            return self.rust.lookup(rest).map(|i| (i, true));
        }
        if let Some(hit) = self.exact(rest) {
            return Some(hit);
        }
        if let Some(i) = self.rust.lookup(rest) {
            return Some((i, true));
        }
        self.prefixes
            .iter()
            .flat_map(|p| p.strip(rest))
            .find_map(|r| self.exact(r))
    }

    /// `rest` is the string table from a symbol's name on. Returns the index of the interesting
    /// name it starts with and whether it is a default version: `SSL_write` and `SSL_write@@OPENSSL_3.0.0`
    /// are, `SSL_write@OPENSSL_1.0.0` is not (`.dynsym` names carry no suffix, their versions live
    /// in `.gnu.version`; `.symtab` names may carry one).
    pub(super) fn exact(&self, rest: &[u8]) -> Option<(usize, bool)> {
        self.interesting.iter().enumerate().find_map(|(i, n)| {
            let tail = rest.strip_prefix(n.as_bytes())?;
            match tail.first() {
                None | Some(0) => Some((i, true)), // (a table missing its final NUL ends the name too)
                Some(b'@') => Some((i, tail.get(1) == Some(&b'@'))),
                Some(_) => None, // a longer name: `SSL_write_ex` is not `SSL_write`
            }
        })
    }
}
