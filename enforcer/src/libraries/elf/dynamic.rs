//! The dynamic symbol table as the loader finds it: through `PT_DYNAMIC`, not section headers.
//!
//! The loader needs no section table, so a library can drop it (`sstrip`) and still load and
//! export its functions. Here, as in `ld.so`: `DT_SYMTAB`, `DT_STRTAB` and `DT_STRSZ` give the
//! tables by virtual address, translated to file offsets through the `PT_LOAD` segments; the
//! number of symbols comes from the hash table the loader looks names up in (`DT_GNU_HASH`: one
//! past the highest symbol its buckets and chains reach; `DT_HASH`: `nchain`; the larger if both
//! are present). A library without either cannot have its symbols looked up by name, so it
//! exports nothing to probe. `DT_VERSYM` gives the symbol versions.
//!
//! Hostile input: the dynamic segment is read up to [`MAX_DYNAMIC_BYTES`], the chain walk takes
//! at most [`MAX_SYMBOLS`] steps in reads of [`CHAIN_CHUNK`] entries, every address must lie in
//! the file-backed part of one segment, and counts or sizes over the caps make the file
//! unanalysable (an error), never silently smaller.

use object::read::ReadCache;
use object::read::ReadRef;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::{Endianness, U32, elf};

use super::file::{CappedFile, Segment, file_range};
use super::{MAX_SYMBOLS, MAX_TABLE_BYTES};

/// Dynamic segments larger than this are not read (libraries have a few dozen entries).
pub(super) const MAX_DYNAMIC_BYTES: u64 = 64 << 10;
/// GNU hash chains are read this many entries at a time.
const CHAIN_CHUNK: u64 = 4096;

/// The dynamic symbol table of a file, read through its dynamic segment.
pub(super) struct DynTable<'d, Elf: FileHeader> {
    pub symbols: &'d [Elf::Sym],
    pub strings: &'d [u8],
    pub versyms: Option<&'d [elf::Versym<Endianness>]>,
    /// File offset of the symbols (to compare with a `.dynsym` section header).
    pub offset: u64,
}

/// The dynamic symbol table, `Ok(None)` if the file has no dynamic segment or the segment names
/// no symbol table; `Err` (a reason) if it names one that cannot be read within the caps.
pub(super) fn table<'d, Elf: FileHeader<Endian = Endianness>>(
    header: &Elf,
    endian: Endianness,
    data: &'d ReadCache<CappedFile>,
    phdrs: &[Elf::ProgramHeader],
    segments: &[Segment],
    len: u64,
) -> Result<Option<DynTable<'d, Elf>>, String> {
    let Some(ph) = phdrs.iter().find(|ph| ph.p_type(endian) == elf::PT_DYNAMIC) else {
        return Ok(None);
    };
    if ph.p_filesz(endian).into() > MAX_DYNAMIC_BYTES {
        return Err(format!(
            "dynamic segment of {} bytes",
            ph.p_filesz(endian).into()
        ));
    }
    let entries = ph
        .dynamic(endian, data)
        .map_err(|e| e.to_string())?
        .unwrap_or(&[]);
    let tags = Tags::read::<Elf>(entries, endian);
    let Some(symtab) = tags.symtab else {
        return Ok(None);
    };
    let sym_size = size_of::<Elf::Sym>() as u64;
    if tags.syment.is_some_and(|s| s != sym_size) {
        return Err(format!("DT_SYMENT {:?}", tags.syment));
    }
    let at = |what: &str, addr: u64, size: u64| {
        file_range(segments, addr, size)
            .filter(|&o| o.checked_add(size).is_some_and(|end| end <= len))
            .ok_or_else(|| format!("{what} at {addr:#x} (+{size}) is not in the file"))
    };
    let count = match (tags.gnu_hash, tags.hash) {
        (None, None) => return Ok(None), // nothing the loader can look up
        (gnu, sysv) => {
            let gnu = match gnu {
                Some(a) => gnu_hash_count(at("DT_GNU_HASH", a, 16)?, endian, header, data, len)?,
                None => 0,
            };
            let sysv = match sysv {
                Some(a) => {
                    let words: &[U32<Endianness>] = data
                        .read_slice_at(at("DT_HASH", a, 8)?, 2)
                        .map_err(|()| "DT_HASH unreadable".to_string())?;
                    u64::from(words[1].get(endian))
                }
                None => 0,
            };
            gnu.max(sysv)
        }
    };
    if count > MAX_SYMBOLS as u64 {
        return Err(format!("{count} dynamic symbols"));
    }
    let (Some(strtab), Some(strsz)) = (tags.strtab, tags.strsz) else {
        return Err("DT_SYMTAB without DT_STRTAB and DT_STRSZ".into());
    };
    if strsz > MAX_TABLE_BYTES {
        return Err(format!("dynamic string table of {strsz} bytes"));
    }
    let offset = at("DT_SYMTAB", symtab, count * sym_size)?;
    let symbols = data
        .read_slice_at(offset, count as usize)
        .map_err(|()| "DT_SYMTAB unreadable".to_string())?;
    let strings = data
        .read_bytes_at(at("DT_STRTAB", strtab, strsz)?, strsz)
        .map_err(|()| "DT_STRTAB unreadable".to_string())?;
    // Versions are optional: a table that cannot be read is ignored.
    let versyms = tags.versym.and_then(|a| {
        let off = at("DT_VERSYM", a, count * 2).ok()?;
        data.read_slice_at(off, count as usize).ok()
    });
    Ok(Some(DynTable {
        symbols,
        strings,
        versyms,
        offset,
    }))
}

/// The entries of a dynamic segment this module reads, each the first of its tag.
#[derive(Default)]
struct Tags {
    symtab: Option<u64>,
    strtab: Option<u64>,
    strsz: Option<u64>,
    syment: Option<u64>,
    hash: Option<u64>,
    gnu_hash: Option<u64>,
    versym: Option<u64>,
}

impl Tags {
    fn read<Elf: FileHeader<Endian = Endianness>>(
        entries: &[Elf::Dyn],
        endian: Endianness,
    ) -> Tags {
        let mut t = Tags::default();
        for d in entries {
            let slot = match d.tag(endian) {
                elf::DT_NULL => break,
                elf::DT_SYMTAB => &mut t.symtab,
                elf::DT_STRTAB => &mut t.strtab,
                elf::DT_STRSZ => &mut t.strsz,
                elf::DT_SYMENT => &mut t.syment,
                elf::DT_HASH => &mut t.hash,
                elf::DT_GNU_HASH => &mut t.gnu_hash,
                elf::DT_VERSYM => &mut t.versym,
                _ => continue,
            };
            slot.get_or_insert(d.val(endian));
        }
        t
    }
}

/// The number of symbols a GNU hash table (at file offset `off`) covers: one past the highest
/// index its buckets and chains reach, or `symoffset` if every bucket is empty.
fn gnu_hash_count<Elf: FileHeader<Endian = Endianness>>(
    off: u64,
    endian: Endianness,
    header: &Elf,
    data: &ReadCache<CappedFile>,
    len: u64,
) -> Result<u64, String> {
    let unreadable = |()| "DT_GNU_HASH unreadable".to_string();
    let head: &[U32<Endianness>] = data.read_slice_at(off, 4).map_err(unreadable)?;
    let [nbuckets, symoffset, bloom_size, _shift] = [0, 1, 2, 3].map(|i| head[i].get(endian));
    let (nbuckets, symoffset, bloom_size) = (
        u64::from(nbuckets),
        u64::from(symoffset),
        u64::from(bloom_size),
    );
    if nbuckets > MAX_SYMBOLS as u64 || bloom_size > MAX_SYMBOLS as u64 {
        return Err(format!(
            "DT_GNU_HASH with {nbuckets} buckets, {bloom_size} bloom words"
        ));
    }
    let word = if header.is_class_64() { 8 } else { 4 };
    // Each term is below 2^21 * 8 and `off` is below `len`: no overflow.
    let buckets_at = off + 16 + bloom_size * word;
    if buckets_at + nbuckets * 4 > len {
        return Err("DT_GNU_HASH buckets past the end of the file".into());
    }
    let buckets: &[U32<Endianness>] = data
        .read_slice_at(buckets_at, nbuckets as usize)
        .map_err(unreadable)?;
    let highest = buckets
        .iter()
        .map(|b| u64::from(b.get(endian)))
        .max()
        .unwrap_or(0);
    if highest == 0 {
        return Ok(symoffset);
    }
    if highest < symoffset || highest >= MAX_SYMBOLS as u64 {
        return Err(format!(
            "DT_GNU_HASH bucket {highest} (symoffset {symoffset})"
        ));
    }
    // Walk the chain of the highest bucket to its end (the entry with the low bit set).
    let chains_at = buckets_at + nbuckets * 4;
    let mut index = highest;
    while index < MAX_SYMBOLS as u64 {
        let at = chains_at + (index - symoffset) * 4;
        let n = CHAIN_CHUNK.min(len.saturating_sub(at) / 4);
        if n == 0 {
            break;
        }
        let chunk: &[U32<Endianness>] = data.read_slice_at(at, n as usize).map_err(unreadable)?;
        if let Some(end) = chunk.iter().position(|h| h.get(endian) & 1 != 0) {
            return Ok(index + end as u64 + 1);
        }
        index += n;
    }
    Err("DT_GNU_HASH chain without an end".into())
}
