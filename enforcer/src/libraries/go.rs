//! Go binaries: `crypto/tls` is compiled into every Go program that speaks TLS, and its functions
//! are not in `.dynsym` (nor in `.symtab` once stripped). They are found through Go's own
//! function table `.gopclntab` ([`pclntab`]), which the runtime needs and so every Go binary
//! keeps; their probe points come from their machine code ([`code`]: the instruction after the
//! stack check, and every `RET`, since uretprobes corrupt Go's movable stacks); the Go version
//! from the build info ([`buildinfo`]).
//!
//! Only amd64 binaries built by Go 1.17 or later are probed: the kernel side keys calls by
//! goroutine, whose `g` pointer Go's register ABI keeps in R14 (see `enforcer-ebpf/src/go.rs`).
//! Older or other binaries are identified (so `enforcer libs` lists them) but get no probes.

mod buildinfo;
mod code;
pub mod pclntab;

use std::collections::HashMap;
use std::path::Path;

use object::Endianness;
use object::elf;
use object::read::elf::{FileHeader, SectionHeader};
use object::read::{ReadCache, ReadRef};

use super::elf::symbols::Found;
use super::elf::{CappedFile, Segment, file_offset};
use crate::catalog::{Abi, Catalog};

/// A `.gopclntab` larger than this is not read.
pub const MAX_PCLNTAB: u64 = 128 << 20;
/// Oldest Go with the register ABI on amd64 (g in R14).
const MIN_GO: (u64, u64) = (1, 17);

/// What a Go binary contributes beyond its symbols.
#[derive(Clone, Debug, Default)]
pub(super) struct GoInfo {
    /// `1.19.8` (from `go1.19.8`), if the build info was found.
    pub version: Option<String>,
    /// Probe points of the found functions, as file offsets, by catalog symbol index. A
    /// function whose code could not be analysed is absent (and not probed).
    pub points: HashMap<usize, FilePoints>,
}

/// [`code::Points`] as file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FilePoints {
    pub entry: u64,
    pub returns: Vec<u64>,
}

/// The catalog's Go function names defined in the file's `.gopclntab`, as symbols, with their
/// extent. `None` if the catalog has no Go family or the file has no readable table.
pub(super) fn functions<Elf: FileHeader<Endian = Endianness>>(
    header: &Elf,
    endian: Endianness,
    data: &ReadCache<CappedFile>,
    catalog: &Catalog,
    path: &Path,
) -> Option<(HashMap<usize, Found>, HashMap<usize, pclntab::Func>)> {
    if !catalog.has_go() {
        return None;
    }
    let sections = header.sections(endian, data).ok()?;
    let (index, shdr) = sections.section_by_name(endian, b".gopclntab")?;
    if shdr.sh_size(endian).into() > MAX_PCLNTAB {
        tracing::debug!(path = %path.display(), limit = MAX_PCLNTAB, ".gopclntab too large: skipped");
        return None;
    }
    let bytes = shdr.data(endian, data).ok()?;
    let text_start = sections
        .section_by_name(endian, b".text")
        .map_or(0, |(_, s)| s.sh_addr(endian).into());
    let table = match pclntab::parse(bytes, text_start) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, ".gopclntab not usable");
            return None;
        }
    };
    let wanted: Vec<(usize, &str)> = catalog
        .families()
        .iter()
        .filter(|f| f.abi == Abi::Go)
        .flat_map(|f| {
            let ids = f.identify.iter().flat_map(|a| a.all.iter().chain(&a.none));
            ids.chain(f.probes.iter().map(|p| &p.symbol))
        })
        .filter_map(|s| {
            let i = catalog.symbols().binary_search(s).ok()?;
            Some((i, s.as_str()))
        })
        .collect();
    let names: Vec<&str> = wanted.iter().map(|(_, s)| *s).collect();
    let shndx = u16::try_from(index.0).unwrap_or(elf::SHN_XINDEX);
    let mut found = HashMap::new();
    let mut extents = HashMap::new();
    for ((i, _), func) in wanted.iter().zip(table.find(&names)) {
        let Some(func) = func else { continue };
        found.insert(
            *i,
            Found {
                value: func.entry,
                st_type: elf::STT_FUNC,
                shndx,
                default_version: true,
            },
        );
        extents.insert(*i, func);
    }
    tracing::trace!(path = %path.display(), layout = ?table.layout, functions = table.len(), found = found.len(), "Go function table read");
    Some((found, extents))
}

/// Version and probe points of an identified Go binary.
pub(super) fn info<Elf: FileHeader<Endian = Endianness>>(
    header: &Elf,
    endian: Endianness,
    data: &ReadCache<CappedFile>,
    segments: &[Segment],
    extents: &HashMap<usize, pclntab::Func>,
    path: &Path,
) -> GoInfo {
    let version = version(header, endian, data, segments);
    let mut info = GoInfo {
        version: version.as_deref().map(|v| buildinfo::release(v).to_owned()),
        points: HashMap::new(),
    };
    if header.e_machine(endian) != elf::EM_X86_64 {
        tracing::debug!(path = %path.display(), "Go binary for another architecture than x86-64: not probed");
        return info;
    }
    if let Some(v) = info.version.as_deref()
        && before_register_abi(v)
    {
        tracing::debug!(path = %path.display(), version = v, "Go before 1.17 (no register ABI): not probed");
        return info;
    }
    for (&i, func) in extents {
        match points(data, segments, *func) {
            Ok(p) => {
                info.points.insert(i, p);
            }
            Err(why) => {
                tracing::debug!(path = %path.display(), entry = func.entry, "Go function not probed: {why}")
            }
        }
    }
    info
}

fn points(
    data: &ReadCache<CappedFile>,
    segments: &[Segment],
    func: pclntab::Func,
) -> Result<FilePoints, String> {
    let len = func.end - func.entry;
    if len > code::MAX_CODE as u64 {
        return Err(format!("{len} bytes of code"));
    }
    let off = file_offset(segments, func.entry)
        .filter(|o| file_offset(segments, func.entry + len - 1) == o.checked_add(len - 1))
        .ok_or("code outside the executable segments")?;
    let bytes: &[u8] = data
        .read_bytes_at(off, len)
        .map_err(|()| "code cannot be read".to_owned())?;
    let p = code::points(bytes, func.entry).map_err(|e| e.to_string())?;
    let at = |addr: u64| off + (addr - func.entry);
    Ok(FilePoints {
        entry: at(p.entry),
        returns: p.returns.into_iter().map(at).collect(),
    })
}

/// The version in `.go.buildinfo` (`go1.19.8`).
fn version<Elf: FileHeader<Endian = Endianness>>(
    header: &Elf,
    endian: Endianness,
    data: &ReadCache<CappedFile>,
    segments: &[Segment],
) -> Option<String> {
    let sections = header.sections(endian, data).ok()?;
    let (_, shdr) = sections.section_by_name(endian, b".go.buildinfo")?;
    let offset: u64 = shdr.sh_offset(endian).into();
    let size: u64 = shdr.sh_size(endian).into();
    let want = size.min((buildinfo::HEADER + 10 + buildinfo::MAX_VERSION) as u64);
    let blob: &[u8] = data.read_bytes_at(offset, want).ok()?;
    // Old format: pointers to a string header and the string, anywhere in a loaded segment.
    let read = |addr: u64, len: usize| -> Option<Vec<u8>> {
        let seg = segments
            .iter()
            .find(|s| addr >= s.vaddr && addr - s.vaddr + len as u64 <= s.filesz)?;
        let bytes: &[u8] = data
            .read_bytes_at(seg.offset.checked_add(addr - seg.vaddr)?, len as u64)
            .ok()?;
        Some(bytes.to_vec())
    };
    buildinfo::version(blob, &read)
}

/// `1.16.15` is, `1.17`, `1.22.3` and unparsable versions (a `devel` build) are not.
fn before_register_abi(release: &str) -> bool {
    let mut parts = release.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < MIN_GO,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn register_abi_versions() {
        assert!(super::before_register_abi("1.16.15"));
        assert!(super::before_register_abi("1.2"));
        assert!(!super::before_register_abi("1.17"));
        assert!(!super::before_register_abi("1.19.8"));
        assert!(!super::before_register_abi("devel go1.23-abc"));
    }
}
