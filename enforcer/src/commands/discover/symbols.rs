//! Every function of an ELF file that a uprobe can be put on: defined `STT_FUNC` symbols of
//! `.dynsym` (exported) and, where the file keeps it, `.symtab` (local ones too), with their file
//! offsets. Aliases (several names at one address) become one function, named by its exported
//! name when it has one. What is left out is counted, by reason.

use std::{collections::BTreeMap, fs, path::Path};

use object::{Object, ObjectSegment, ObjectSymbol, SegmentFlags, SymbolFlags};

/// Files larger than this are refused (the largest shared object on a Debian host is ~100 MiB).
const MAX_FILE_SIZE: u64 = 512 << 20;
/// At most this many functions are scanned.
pub const MAX_FUNCTIONS: usize = 1 << 18;

const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;
const PF_X: u32 = 1;

/// One probe-able function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Symbol name without version suffix.
    pub name: String,
    /// Offset of its first instruction in the file (what a uprobe takes).
    pub offset: u64,
    pub size: u64,
    /// In `.dynsym`: an entry point other objects can call.
    pub exported: bool,
}

/// The functions of one file, and what was left out.
#[derive(Clone, Debug, Default)]
pub struct Functions {
    pub functions: Vec<Function>,
    /// Every defined function name of `.dynsym` (for identification).
    pub exported_names: Vec<String>,
    pub has_symtab: bool,
    /// Indirect functions (`STT_GNU_IFUNC`): the symbol is the resolver, run once at load.
    pub skipped_ifunc: usize,
    /// Size 0 (assembly labels, aliases of nothing) or not inside an executable segment.
    pub skipped_no_code: usize,
    /// Names beyond the first at one address.
    pub aliases: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes, more than the limit of {MAX_FILE_SIZE}")]
    TooLarge { path: String, size: u64 },
    #[error("{path}: not an ELF file enforcer can read: {reason}")]
    Malformed { path: String, reason: String },
    #[error("{path}: no function symbols (neither .dynsym nor .symtab defines any)")]
    NoFunctions { path: String },
}

/// Reads the functions of `path`.
pub fn read(path: &Path) -> Result<Functions, SymbolsError> {
    let p = || path.display().to_string();
    let size = fs::metadata(path)
        .map_err(|source| SymbolsError::Io { path: p(), source })?
        .len();
    if size > MAX_FILE_SIZE {
        return Err(SymbolsError::TooLarge { path: p(), size });
    }
    let data = fs::read(path).map_err(|source| SymbolsError::Io { path: p(), source })?;
    let out = parse(&data).map_err(|reason| SymbolsError::Malformed { path: p(), reason })?;
    if out.functions.is_empty() {
        return Err(SymbolsError::NoFunctions { path: p() });
    }
    Ok(out)
}

/// Parses ELF `data` (untrusted: every range is checked by `object`, counts are capped).
pub fn parse(data: &[u8]) -> Result<Functions, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    // Executable PT_LOAD segments: (vaddr, vaddr end of file-backed bytes, file offset).
    let code: Vec<(u64, u64, u64)> = file
        .segments()
        .filter(|s| matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0))
        .map(|s| {
            let (offset, filesz) = s.file_range();
            (s.address(), s.address().saturating_add(filesz), offset)
        })
        .collect();
    let file_offset = |addr: u64, size: u64| {
        code.iter()
            .find(|(start, end, _)| addr >= *start && addr.saturating_add(size) <= *end)
            .map(|(start, _, offset)| addr - start + offset)
    };
    let mut out = Functions {
        has_symtab: file.symbol_table().is_some(),
        ..Functions::default()
    };
    // Offset → function; exported names win over local ones.
    let mut by_offset: BTreeMap<u64, Function> = BTreeMap::new();
    let tables = [(true, file.dynamic_symbols()), (false, file.symbols())];
    for (exported, symbols) in tables {
        for sym in symbols.take(MAX_FUNCTIONS * 4) {
            let SymbolFlags::Elf { st_info, .. } = sym.flags() else {
                continue;
            };
            let kind = st_info & 0xf;
            if !sym.is_definition() && kind != STT_GNU_IFUNC {
                continue;
            }
            if kind != STT_FUNC && kind != STT_GNU_IFUNC {
                continue;
            }
            let Ok(raw) = sym.name() else { continue };
            let name = raw.split('@').next().unwrap_or(raw);
            if name.is_empty() || sym.section_index().is_none() {
                continue;
            }
            if exported {
                out.exported_names.push(name.to_owned());
            }
            if kind == STT_GNU_IFUNC {
                out.skipped_ifunc += 1;
                continue;
            }
            let Some(offset) = (sym.size() > 0)
                .then(|| file_offset(sym.address(), sym.size()))
                .flatten()
            else {
                out.skipped_no_code += 1;
                continue;
            };
            if let Some(existing) = by_offset.get_mut(&offset) {
                if existing.name != name {
                    out.aliases += 1;
                    // The name a caller would use: exported, and public (`write`, not `__write`).
                    let better = (exported, !name.starts_with('_'))
                        > (existing.exported, !existing.name.starts_with('_'));
                    if better {
                        existing.name = name.to_owned();
                        existing.exported = exported;
                    }
                }
                continue;
            }
            if by_offset.len() >= MAX_FUNCTIONS {
                break;
            }
            by_offset.insert(
                offset,
                Function {
                    name: name.to_owned(),
                    offset,
                    size: sym.size(),
                    exported,
                },
            );
        }
    }
    out.exported_names.sort();
    out.exported_names.dedup();
    out.functions = by_offset.into_values().collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libc_of_this_host() {
        // libc is on every host these tests run on; it has thousands of exported functions.
        let libc = ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("libc.so.6");
        let f = read(libc).unwrap();
        assert!(f.functions.len() > 1000, "{}", f.functions.len());
        let write = f.functions.iter().find(|f| f.name == "write").unwrap();
        assert!(write.exported && write.size > 0);
        // memcpy and friends are indirect functions in glibc.
        assert!(f.skipped_ifunc > 0);
        let mut offsets: Vec<u64> = f.functions.iter().map(|f| f.offset).collect();
        offsets.dedup();
        assert_eq!(offsets.len(), f.functions.len(), "one function per offset");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(b"").is_err());
        assert!(parse(b"\x7fELF\x02\x01\x01garbage").is_err());
        let mut data = vec![0u8; 4096];
        data[..4].copy_from_slice(b"\x7fELF");
        let _ = parse(&data);
    }
}
