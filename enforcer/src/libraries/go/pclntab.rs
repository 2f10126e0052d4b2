//! Go's own function table, `.gopclntab`: the entry address and extent of named functions, which
//! stripped Go binaries (`-ldflags=-s -w`) still carry because the runtime needs it for stack
//! traces and garbage collection.
//!
//! The table is hostile input (any process may map any file): [`parse`] and [`Table::find`] are
//! pure functions over the table's bytes ([`Bytes`]: a slice, or the file read a page at a time
//! so that a 36 MiB table is never in memory whole), every offset is checked, every loop is
//! bounded by the table's length or by [`MAX_FUNCS`], and nothing panics.
//!
//! Layouts (header: 4-byte magic, two zero bytes, pc quantum, pointer size `P`):
//!
//! | magic | Go | functab | `_func` entry | names |
//! | --- | --- | --- | --- | --- |
//! | `0xfffffffb` | 1.2 – 1.15 | at `8 + P`: `nfunc` × (entry `P`, funcoff `P`), then end pc | entry `P`, nameoff u32 | offsets from the table start |
//! | `0xfffffffa` | 1.16, 1.17 | header word 6: `nfunc` × (entry `P`, funcoff `P`), end pc | entry `P`, nameoff u32 | `funcnametab` (word 2) |
//! | `0xfffffff0` | 1.18, 1.19 | header word 7: `nfunc` × (entryoff u32, funcoff u32), end | entryoff u32, nameoff u32 | `funcnametab` (word 3) |
//! | `0xfffffff1` | 1.20 and later | as 1.18 | as 1.18 | as 1.18 |
//!
//! Header word `n` is the pointer-sized value at `8 + n × P`; word 0 is `nfunc`. From 1.18 on,
//! entries are offsets from the start of the text, which the caller passes (the `.text` section's
//! address: the header's own copy may be unrelocated in position-independent builds).

/// Most functions a table may claim (the Kubernetes binaries have about 10^5).
pub const MAX_FUNCS: usize = 1 << 22;
/// Longest function name looked at.
pub const MAX_NAME: usize = 4096;

/// Table layout, by magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layout {
    Go12,
    Go116,
    Go118,
    Go120,
}

/// Why a byte slice is not a usable function table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PclnError {
    #[error("not a Go function table (magic {0:#010x})")]
    Magic(u32),
    #[error("bad header ({0})")]
    Header(&'static str),
    #[error("claims {0} functions, more than the limit of {MAX_FUNCS}")]
    TooMany(u64),
    #[error("{0} lies outside the table")]
    OutOfBounds(&'static str),
}

/// Random access to a table's bytes.
pub trait Bytes {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the bytes at `at`; false if any of them lies past the end or cannot be
    /// read (then `buf` is unspecified).
    fn read(&self, at: usize, buf: &mut [u8]) -> bool;
}

impl Bytes for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read(&self, at: usize, buf: &mut [u8]) -> bool {
        match at.checked_add(buf.len()).and_then(|end| self.get(at..end)) {
            Some(b) => {
                buf.copy_from_slice(b);
                true
            }
            None => false,
        }
    }
}

/// A parsed header over the table's bytes.
pub struct Table<'a, B: Bytes + ?Sized = [u8]> {
    data: &'a B,
    pub layout: Layout,
    big_endian: bool,
    ptr: usize,
    nfunc: usize,
    /// Start of the function table (and base of `funcoff`), as an offset into `data`.
    functab: usize,
    /// Base of name offsets.
    names: usize,
    /// Added to entry offsets (1.18+), else 0.
    text_start: u64,
}

/// One function found by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Func {
    /// Virtual address of its first instruction.
    pub entry: u64,
    /// Address just past it (the next function's entry, or the table's end pc).
    pub end: u64,
}

/// Parses the header of a `.gopclntab`. `text_start` is the address of the text the 1.18+ entry
/// offsets are relative to (ignored by older layouts).
pub fn parse(data: &[u8], text_start: u64) -> Result<Table<'_>, PclnError> {
    parse_in(data, text_start)
}

/// [`parse`] over any [`Bytes`].
pub fn parse_in<B: Bytes + ?Sized>(data: &B, text_start: u64) -> Result<Table<'_, B>, PclnError> {
    let mut head = [0u8; 8];
    if !data.read(0, &mut head) {
        return Err(PclnError::Header("shorter than 8 bytes"));
    }
    let le = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let be = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let layout_of = |m: u32| match m {
        0xffff_fffb => Some(Layout::Go12),
        0xffff_fffa => Some(Layout::Go116),
        0xffff_fff0 => Some(Layout::Go118),
        0xffff_fff1 => Some(Layout::Go120),
        _ => None,
    };
    let (layout, big_endian) = match (layout_of(le), layout_of(be)) {
        (Some(l), _) => (l, false),
        (None, Some(l)) => (l, true),
        (None, None) => return Err(PclnError::Magic(le)),
    };
    if head[4] != 0 || head[5] != 0 {
        return Err(PclnError::Header("bytes 4 and 5 are not zero"));
    }
    if !matches!(head[6], 1 | 2 | 4) {
        return Err(PclnError::Header("pc quantum is not 1, 2 or 4"));
    }
    let ptr = match head[7] {
        4 => 4,
        8 => 8,
        _ => return Err(PclnError::Header("pointer size is not 4 or 8")),
    };
    let mut table = Table {
        data,
        layout,
        big_endian,
        ptr,
        nfunc: 0,
        functab: 0,
        names: 0,
        text_start: 0,
    };
    let word = |n: usize| {
        table
            .uint(8 + n * ptr, ptr)
            .ok_or(PclnError::OutOfBounds("header"))
    };
    let nfunc = word(0)?;
    let offset = |n: usize| {
        word(n).and_then(|v| {
            usize::try_from(v)
                .ok()
                .filter(|&v| v <= data.len())
                .ok_or(PclnError::OutOfBounds("a header offset"))
        })
    };
    let (functab, names, start) = match layout {
        Layout::Go12 => (8 + ptr, 0, 0),
        Layout::Go116 => (offset(6)?, offset(2)?, 0),
        Layout::Go118 | Layout::Go120 => (offset(7)?, offset(3)?, text_start),
    };
    if nfunc > MAX_FUNCS as u64 {
        return Err(PclnError::TooMany(nfunc));
    }
    table.nfunc = nfunc as usize;
    table.functab = functab;
    table.names = names;
    table.text_start = start;
    // The function table itself (nfunc pairs and the end entry) must fit.
    let field = table.field_size();
    let size = (table.nfunc * 2 + 1) * field;
    if functab.checked_add(size).is_none_or(|end| end > data.len()) {
        return Err(PclnError::OutOfBounds("the function table"));
    }
    Ok(table)
}

impl<B: Bytes + ?Sized> Table<'_, B> {
    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// Size of one functab field: a pointer before 1.18, a u32 offset since.
    fn field_size(&self) -> usize {
        match self.layout {
            Layout::Go12 | Layout::Go116 => self.ptr,
            Layout::Go118 | Layout::Go120 => 4,
        }
    }

    fn uint(&self, at: usize, size: usize) -> Option<u64> {
        let mut buf = [0u8; 8];
        let b = buf.get_mut(..size)?;
        if !self.data.read(at, b) {
            return None;
        }
        let mut v = 0u64;
        for i in 0..size {
            let byte = if self.big_endian {
                b[i]
            } else {
                b[size - 1 - i]
            };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    }

    /// Entry address of functab slot `i` (`i == nfunc` is the end pc).
    fn entry(&self, i: usize) -> Option<u64> {
        let field = self.field_size();
        let raw = self.uint(self.functab + i * 2 * field, field)?;
        self.text_start.checked_add(raw)
    }

    /// Where function `i`'s name starts in `data`.
    fn name_start(&self, i: usize) -> Option<usize> {
        let field = self.field_size();
        let funcoff = self.uint(self.functab + (i * 2 + 1) * field, field)?;
        let base = match self.layout {
            Layout::Go12 => 0,
            _ => self.functab,
        };
        let func = base.checked_add(usize::try_from(funcoff).ok()?)?;
        // `_func`: the entry (a pointer before 1.18, a u32 since), then nameoff (u32).
        let nameoff = self.uint(func.checked_add(field)?, 4)?;
        self.names.checked_add(usize::try_from(nameoff).ok()?)
    }

    /// For each of `wanted`, the function of that name (the first, if a corrupt table repeats
    /// it). Bounded by the table's function count, itself at most [`MAX_FUNCS`]; a slot that
    /// cannot be read is skipped, and a function whose end is not after its entry is not found.
    /// Names are compared in place (the wanted name and its NUL), never scanned for their end:
    /// a hostile table whose names all point at one long run without a NUL costs no more than
    /// a real one. Wanted names longer than [`MAX_NAME`] are never found.
    pub fn find(&self, wanted: &[&str]) -> Vec<Option<Func>> {
        let mut out = vec![None; wanted.len()];
        let mut seen: Vec<bool> = wanted.iter().map(|w| w.len() > MAX_NAME).collect();
        // Each function's name is read once, as long as the longest wanted name and its NUL.
        let longest = wanted
            .iter()
            .map(|w| w.len())
            .filter(|&n| n <= MAX_NAME)
            .max()
            .unwrap_or(0);
        let mut name = vec![0u8; longest + 1];
        for i in 0..self.nfunc {
            if seen.iter().all(|&s| s) {
                break;
            }
            let Some(start) = self.name_start(i) else {
                continue;
            };
            let n = name.len().min(self.data.len().saturating_sub(start));
            if !self.data.read(start, &mut name[..n]) {
                continue;
            }
            let name = &name[..n];
            for ((slot, seen), w) in out.iter_mut().zip(seen.iter_mut()).zip(wanted) {
                if !*seen && name_is(name, w.as_bytes()) {
                    *seen = true;
                    if let (Some(entry), Some(end)) = (self.entry(i), self.entry(i + 1))
                        && end > entry
                    {
                        *slot = Some(Func { entry, end });
                    }
                }
            }
        }
        out
    }
}

/// True if `bytes` (read at a name's start) hold `name` and its NUL.
fn name_is(bytes: &[u8], name: &[u8]) -> bool {
    bytes
        .get(..=name.len())
        .is_some_and(|b| b[..name.len()] == *name && b[name.len()] == 0)
}

#[cfg(test)]
#[path = "pclntab_tests.rs"]
mod tests;
