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

pub mod buildinfo;
pub mod code;
pub mod pclntab;

use std::collections::HashMap;
use std::path::Path;

use object::Endianness;
use object::elf;
use object::read::elf::{FileHeader, SectionHeader};
use object::read::{ReadCache, ReadRef};

use super::elf::file::{CappedFile, Pages, Segment, Source, file_offset};
use super::elf::symbols::Found;
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
    file: (&Source, u64),
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
    if shdr.sh_type(endian) == elf::SHT_NOBITS {
        return None;
    }
    // Read a page at a time, not whole: the largest tables are tens of MiB (docs/benchmarks.md).
    let bytes = Pages::new(
        file.0,
        file.1,
        shdr.sh_offset(endian).into(),
        shdr.sh_size(endian).into(),
    )?;
    let text_start = sections
        .section_by_name(endian, b".text")
        .map_or(0, |(_, s)| s.sh_addr(endian).into());
    let table = match pclntab::parse_in(&bytes, text_start) {
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

impl pclntab::Bytes for Pages<'_> {
    fn len(&self) -> usize {
        Pages::len(self)
    }

    fn read(&self, at: usize, buf: &mut [u8]) -> bool {
        Pages::read(self, at, buf)
    }
}

/// Whether Go binaries of ELF machine `machine` can be probed: only x86-64. The probe points
/// (after the stack check, each `RET`) come from an x86-64 instruction decoder and the eBPF side
/// reads the goroutine from R14; arm64 (goroutine in R28, fixed-width instructions) is refused.
pub(crate) fn probe_support(machine: u16) -> Result<(), &'static str> {
    match machine {
        elf::EM_X86_64 => Ok(()),
        elf::EM_AARCH64 => Err(
            "Go's crypto/tls is not supported on arm64 yet (its probe points are found by an \
             x86-64 decoder); its connections are not attributed to Go",
        ),
        _ => Err("Go binary for an architecture other than x86-64"),
    }
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
    if let Err(why) = probe_support(header.e_machine(endian)) {
        match header.e_machine(endian) {
            // A Go program of this host's own architecture: say so, it is a gap in coverage.
            elf::EM_AARCH64 if cfg!(target_arch = "aarch64") => {
                tracing::warn!(path = %path.display(), "Go crypto/tls not probed: {why}");
            }
            _ => tracing::debug!(path = %path.display(), "Go binary not probed: {why}"),
        }
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
        let bytes: &[u8] = data
            .read_bytes_at(loaded_offset(segments, addr, len as u64)?, len as u64)
            .ok()?;
        Some(bytes.to_vec())
    };
    buildinfo::version(blob, &read)
}

/// The file offset of `len` bytes at `addr`, if they lie in one loaded segment's file bytes.
/// `addr` and `len` come from the file: every step is checked (a pointer near `u64::MAX` must
/// not wrap into range).
fn loaded_offset(segments: &[Segment], addr: u64, len: u64) -> Option<u64> {
    segments.iter().find_map(|s| {
        let delta = addr.checked_sub(s.vaddr)?;
        (delta.checked_add(len)? <= s.filesz)
            .then(|| s.offset.checked_add(delta))
            .flatten()
    })
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
    use super::{Segment, loaded_offset, probe_support};
    use object::elf;

    /// arm64 Go is refused with the reason (issue 18), x86-64 Go probed.
    #[test]
    fn go_probes_are_x86_64_only() {
        assert!(probe_support(elf::EM_X86_64).is_ok());
        let why = probe_support(elf::EM_AARCH64).unwrap_err();
        assert!(why.contains("not supported on arm64"), "{why}");
        assert!(probe_support(elf::EM_RISCV).is_err());
    }

    /// Regression: a build info pointer near `u64::MAX` made `addr - vaddr + len` overflow
    /// (a panic with overflow checks, a wrapped bounds check without).
    #[test]
    fn build_info_pointers_do_not_wrap() {
        let seg = Segment {
            vaddr: 0,
            offset: 0x100,
            filesz: 0x1000,
            executable: false,
        };
        assert_eq!(loaded_offset(&[seg], 0x10, 16), Some(0x110));
        assert_eq!(loaded_offset(&[seg], 0xff0, 16), Some(0x10f0));
        assert_eq!(loaded_offset(&[seg], 0xff1, 16), None);
        assert_eq!(loaded_offset(&[seg], u64::MAX - 3, 16), None);
        assert_eq!(loaded_offset(&[seg], u64::MAX, u64::MAX), None);
        let high = Segment {
            vaddr: u64::MAX - 0xf,
            offset: u64::MAX - 0x8,
            filesz: 0x10,
            executable: false,
        };
        assert_eq!(
            loaded_offset(&[high], u64::MAX - 0xf, 8),
            Some(u64::MAX - 0x8)
        );
        assert_eq!(loaded_offset(&[high], u64::MAX - 0x6, 8), None);
    }

    /// The go_tables fuzz seeds: a real Go 1.19 client's `.gopclntab` cut down to the catalog's
    /// functions (real names, `_func` records and machine code), in every table layout, with
    /// the code packed at 0x401000 (see `fuzz/seeds/go_tables/make.sh`).
    #[test]
    fn real_functions_in_every_layout() {
        use super::{buildinfo, code, pclntab};
        let seeds: [&[u8]; 4] = [
            include_bytes!("../../../fuzz/seeds/go_tables/go12-tls-functions"),
            include_bytes!("../../../fuzz/seeds/go_tables/go116-tls-functions"),
            include_bytes!("../../../fuzz/seeds/go_tables/go118-tls-functions"),
            include_bytes!("../../../fuzz/seeds/go_tables/go120-tls-functions"),
        ];
        let names = [
            "crypto/tls.(*Conn).Write",
            "crypto/tls.(*Conn).Read",
            "crypto/tls.(*Conn).handshakeContext",
        ];
        for seed in seeds {
            let n = u32::from_le_bytes(seed[..4].try_into().unwrap()) as usize;
            let (table, text) = (&seed[4..4 + n], &seed[4 + n..]);
            let t = pclntab::parse(table, 0x401000).unwrap();
            for (name, f) in names.iter().zip(t.find(&names)) {
                let f = f.unwrap_or_else(|| panic!("{:?}: {name} not found", t.layout));
                let body = &text[(f.entry - 0x401000) as usize..(f.end - 0x401000) as usize];
                let p = code::points(body, f.entry).unwrap();
                assert!(p.entry > f.entry && p.entry < f.end, "{name}: {p:?}");
                assert!(p.returns.iter().all(|r| (f.entry..f.end).contains(r)));
            }
        }
        let none = |_: u64, _: usize| None;
        let blob = include_bytes!("../../../fuzz/seeds/go_tables/buildinfo-inline");
        assert_eq!(buildinfo::version(blob, &none).as_deref(), Some("go1.19.8"));
    }

    /// The table read a few bytes a page from the file finds what the whole slice finds; a file
    /// that shrank after it was opened reads as an unusable table, not a crash.
    #[test]
    fn table_read_a_page_at_a_time() {
        use std::io::Write;

        use super::{Pages, pclntab};
        let seed = include_bytes!("../../../fuzz/seeds/go_tables/go120-tls-functions");
        let n = u32::from_le_bytes(seed[..4].try_into().unwrap()) as usize;
        let table = &seed[4..4 + n];
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0xcc; 100]).unwrap();
        file.write_all(table).unwrap();
        let names = [
            "crypto/tls.(*Conn).Write",
            "crypto/tls.(*Conn).Read",
            "nope",
        ];
        let whole = pclntab::parse(table, 0x401000).unwrap().find(&names);
        assert!(whole[0].is_some() && whole[1].is_some());
        let len = 100 + n as u64;
        let source = super::Source::new(file.try_clone().unwrap(), len);
        for page in [7, 64, 4096, Pages::PAGE] {
            let pages = Pages::with_page(&source, len, 100, n as u64, page).unwrap();
            let paged = pclntab::parse_in(&pages, 0x401000).unwrap().find(&names);
            assert_eq!(paged, whole, "page size {page}");
        }
        assert!(Pages::new(&source, len, 100, n as u64 + 1).is_none());
        assert!(Pages::new(&source, len, u64::MAX, 2).is_none());
        // Opened at this length, then truncated: reads past the new end fail.
        file.set_len(100 + n as u64 / 2).unwrap();
        let source = super::Source::new(file.try_clone().unwrap(), len);
        let pages = Pages::with_page(&source, len, 100, n as u64, 64).unwrap();
        if let Ok(t) = pclntab::parse_in(&pages, 0x401000) {
            for (cut, whole) in t.find(&names).iter().zip(&whole) {
                assert!(cut.is_none() || cut == whole);
            }
        }
    }

    #[test]
    fn register_abi_versions() {
        assert!(super::before_register_abi("1.16.15"));
        assert!(super::before_register_abi("1.2"));
        assert!(!super::before_register_abi("1.17"));
        assert!(!super::before_register_abi("1.19.8"));
        assert!(!super::before_register_abi("devel go1.23-abc"));
    }
}
