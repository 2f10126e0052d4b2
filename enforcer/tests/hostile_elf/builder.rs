//! A minimal ELF writer for the hostile-ELF corpus: one `PT_LOAD` segment (R+X, file offset =
//! virtual address) over the whole file and the sections enforcer reads, in either class and
//! byte order, followed by typed setters to make any header field lie.
//!
//! Layout: ELF header | program header | .text | .rodata | .dynstr | .dynsym | .gnu.version |
//! .shstrtab | section headers (last, so every truncation cuts them).

/// Section indexes of a built file.
pub const TEXT: usize = 1;
pub const RODATA: usize = 2;
pub const DYNSTR: usize = 3;
pub const DYNSYM: usize = 4;
pub const VERSYM: usize = 5;
pub const SHSTRTAB: usize = 6;
const SECTIONS: usize = 7;

const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_DYNSYM: u32 = 11;
const SHT_GNU_VERSYM: u32 = 0x6fff_ffff;
pub const SHT_NOTE: u32 = 7;
pub const STT_FUNC: u8 = 2;
const STB_GLOBAL: u8 = 1;

/// One symbol; `value: None` places it at its own 16-byte slot of `.text`.
#[derive(Clone, Debug)]
pub struct Sym {
    pub name: Vec<u8>,
    pub value: Option<u64>,
    pub st_type: u8,
    pub shndx: u16,
}

impl Sym {
    pub fn func(name: &str) -> Sym {
        Sym {
            name: name.as_bytes().to_vec(),
            value: None,
            st_type: STT_FUNC,
            shndx: TEXT as u16,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub class64: bool,
    pub big_endian: bool,
    pub symbols: Vec<Sym>,
    pub rodata: Vec<u8>,
    /// `.dynstr` as given instead of built from the names (then `Sym::name` is ignored and each
    /// symbol's `st_name` comes from `name_offsets`).
    pub raw_strings: Option<(Vec<u8>, Vec<u32>)>,
    /// `SHT_SYMTAB` (as in an unstripped static executable) instead of `SHT_DYNSYM`.
    pub static_table: bool,
}

impl Spec {
    /// A little OpenSSL 3 `libssl` as the catalog recognises it.
    pub fn openssl() -> Spec {
        let names = [
            "OPENSSL_init_ssl",
            "SSL_CTX_new",
            "SSL_write",
            "SSL_read",
            "SSL_do_handshake",
            "SSL_connect",
        ];
        Spec {
            class64: true,
            big_endian: false,
            symbols: names.iter().map(|n| Sym::func(n)).collect(),
            rodata: b"\0OpenSSL 3.0.15 3 Sep 2024\0".to_vec(),
            raw_strings: None,
            static_table: false,
        }
    }
}

/// Header fields that can be made to lie.
#[derive(Clone, Copy, Debug)]
pub enum Eh {
    Class,
    Data,
    Phoff,
    Shoff,
    Phentsize,
    Phnum,
    Shentsize,
    Shnum,
    Shstrndx,
}

#[derive(Clone, Copy, Debug)]
pub enum Sh {
    Type,
    Offset,
    Size,
    Link,
    Info,
    Addralign,
    Entsize,
}

#[derive(Clone, Copy, Debug)]
pub enum Ph {
    Type,
    Flags,
    Offset,
    Vaddr,
    Filesz,
}

/// A built file and where its parts are.
#[derive(Clone, Debug)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub class64: bool,
    pub big_endian: bool,
    pub phoff: u64,
    pub shoff: u64,
    /// (offset, size) of each section's data, by index.
    pub sections: Vec<(u64, u64)>,
    /// File offset of each symbol's code (symbols with `value: None`), in `Spec::symbols` order.
    pub text_offsets: Vec<u64>,
    /// Symbol entry size.
    pub sym_size: u64,
}

fn align(v: &mut Vec<u8>, to: usize) {
    while !v.len().is_multiple_of(to) {
        v.push(0);
    }
}

impl Built {
    pub fn put(&mut self, off: u64, width: usize, value: u64) {
        let off = usize::try_from(off).expect("offset fits");
        let bytes = if self.big_endian {
            value.to_be_bytes()[8 - width..].to_vec()
        } else {
            value.to_le_bytes()[..width].to_vec()
        };
        self.bytes[off..off + width].copy_from_slice(&bytes);
    }

    pub fn set_eh(&mut self, f: Eh, v: u64) {
        let (off, w) = match (self.class64, f) {
            (_, Eh::Class) => {
                self.bytes[4] = v as u8;
                return;
            }
            (_, Eh::Data) => {
                self.bytes[5] = v as u8;
                return;
            }
            (true, Eh::Phoff) => (32, 8),
            (true, Eh::Shoff) => (40, 8),
            (true, Eh::Phentsize) => (54, 2),
            (true, Eh::Phnum) => (56, 2),
            (true, Eh::Shentsize) => (58, 2),
            (true, Eh::Shnum) => (60, 2),
            (true, Eh::Shstrndx) => (62, 2),
            (false, Eh::Phoff) => (28, 4),
            (false, Eh::Shoff) => (32, 4),
            (false, Eh::Phentsize) => (42, 2),
            (false, Eh::Phnum) => (44, 2),
            (false, Eh::Shentsize) => (46, 2),
            (false, Eh::Shnum) => (48, 2),
            (false, Eh::Shstrndx) => (50, 2),
        };
        self.put(off, w, v);
    }

    pub fn set_sh(&mut self, index: usize, f: Sh, v: u64) {
        let (off, w) = match (self.class64, f) {
            (true, Sh::Type) => (4, 4),
            (true, Sh::Offset) => (24, 8),
            (true, Sh::Size) => (32, 8),
            (true, Sh::Link) => (40, 4),
            (true, Sh::Info) => (44, 4),
            (true, Sh::Addralign) => (48, 8),
            (true, Sh::Entsize) => (56, 8),
            (false, Sh::Type) => (4, 4),
            (false, Sh::Offset) => (16, 4),
            (false, Sh::Size) => (20, 4),
            (false, Sh::Link) => (24, 4),
            (false, Sh::Info) => (28, 4),
            (false, Sh::Addralign) => (32, 4),
            (false, Sh::Entsize) => (36, 4),
        };
        let size = if self.class64 { 64 } else { 40 };
        self.put(self.shoff + index as u64 * size + off, w, v);
    }

    pub fn set_ph(&mut self, f: Ph, v: u64) {
        let (off, w) = match (self.class64, f) {
            (true, Ph::Type) => (0, 4),
            (true, Ph::Flags) => (4, 4),
            (true, Ph::Offset) => (8, 8),
            (true, Ph::Vaddr) => (16, 8),
            (true, Ph::Filesz) => (32, 8),
            (false, Ph::Type) => (0, 4),
            (false, Ph::Offset) => (4, 4),
            (false, Ph::Vaddr) => (8, 4),
            (false, Ph::Filesz) => (16, 4),
            (false, Ph::Flags) => (24, 4),
        };
        self.put(self.phoff + off, w, v);
    }

    /// Sets `st_value` of symbol `i` (1-based: 0 is the null symbol).
    pub fn set_sym_value(&mut self, i: usize, v: u64) {
        let base = self.sections[DYNSYM].0 + i as u64 * self.sym_size;
        if self.class64 {
            self.put(base + 8, 8, v);
        } else {
            self.put(base + 4, 4, v);
        }
    }

    pub fn section_offset(&self, index: usize) -> u64 {
        self.sections[index].0
    }
}

pub fn build(spec: &Spec) -> Built {
    let (ehsize, phsize, shsize, symsize) = if spec.class64 {
        (64usize, 56usize, 64usize, 24usize)
    } else {
        (52, 32, 40, 16)
    };
    let mut out = vec![0u8; ehsize + phsize];
    let mut sections = vec![(0u64, 0u64); SECTIONS];

    // .text: 16 bytes of `ret` per function.
    align(&mut out, 16);
    let text_start = out.len();
    let mut text_offsets = Vec::new();
    for s in &spec.symbols {
        if s.value.is_none() {
            text_offsets.push(out.len() as u64);
            out.extend_from_slice(&[0xc3; 16]);
        }
    }
    out.extend_from_slice(&[0xc3; 16]);
    sections[TEXT] = (text_start as u64, (out.len() - text_start) as u64);

    let start = out.len();
    out.extend_from_slice(&spec.rodata);
    sections[RODATA] = (start as u64, spec.rodata.len() as u64);

    let (strings, name_offsets) = match &spec.raw_strings {
        Some((s, offs)) => (s.clone(), offs.clone()),
        None => {
            let mut s = vec![0u8];
            let mut offs = Vec::new();
            for sym in &spec.symbols {
                offs.push(s.len() as u32);
                s.extend_from_slice(&sym.name);
                s.push(0);
            }
            (s, offs)
        }
    };
    let start = out.len();
    out.extend_from_slice(&strings);
    sections[DYNSTR] = (start as u64, strings.len() as u64);

    align(&mut out, 8);
    let dynsym_start = out.len();
    out.resize(out.len() + symsize * (spec.symbols.len() + 1), 0);
    sections[DYNSYM] = (
        dynsym_start as u64,
        (symsize * (spec.symbols.len() + 1)) as u64,
    );

    align(&mut out, 2);
    let start = out.len();
    for _ in 0..=spec.symbols.len() {
        out.extend_from_slice(&[0, 0]); // filled below (byte order)
    }
    sections[VERSYM] = (start as u64, out.len() as u64 - start as u64);

    let shstr: &[u8] = b"\0.text\0.rodata\0.dynstr\0.dynsym\0.gnu.version\0.shstrtab\0";
    let start = out.len();
    out.extend_from_slice(shstr);
    sections[SHSTRTAB] = (start as u64, shstr.len() as u64);

    align(&mut out, 8);
    let shoff = out.len();
    out.resize(shoff + shsize * SECTIONS, 0);

    let mut b = Built {
        bytes: out,
        class64: spec.class64,
        big_endian: spec.big_endian,
        phoff: ehsize as u64,
        shoff: shoff as u64,
        sections,
        text_offsets,
        sym_size: symsize as u64,
    };
    let len = b.bytes.len() as u64;

    // ELF header.
    b.bytes[..4].copy_from_slice(b"\x7fELF");
    b.bytes[4] = if spec.class64 { 2 } else { 1 };
    b.bytes[5] = if spec.big_endian { 2 } else { 1 };
    b.bytes[6] = 1;
    b.put(16, 2, 3); // ET_DYN
    b.put(18, 2, if spec.class64 { 62 } else { 3 });
    b.put(20, 4, 1);
    b.set_eh(Eh::Phoff, ehsize as u64);
    b.set_eh(Eh::Shoff, shoff as u64);
    let ehsize_off = if spec.class64 { 52 } else { 40 };
    b.put(ehsize_off, 2, ehsize as u64);
    b.set_eh(Eh::Phentsize, phsize as u64);
    b.set_eh(Eh::Phnum, 1);
    b.set_eh(Eh::Shentsize, shsize as u64);
    b.set_eh(Eh::Shnum, SECTIONS as u64);
    b.set_eh(Eh::Shstrndx, SHSTRTAB as u64);

    // PT_LOAD, R+X, the whole file at vaddr 0.
    b.set_ph(Ph::Type, 1);
    b.set_ph(Ph::Flags, 5);
    b.set_ph(Ph::Offset, 0);
    b.set_ph(Ph::Vaddr, 0);
    b.set_ph(Ph::Filesz, len);
    let (memsz, palign) = if spec.class64 { (40, 48) } else { (20, 28) };
    let w = if spec.class64 { 8 } else { 4 };
    b.put(b.phoff + memsz, w, len);
    b.put(b.phoff + palign, w, 0x1000);

    // Symbols.
    let mut slot = 0;
    for (i, s) in spec.symbols.iter().enumerate() {
        let value = match s.value {
            Some(v) => v,
            None => {
                slot += 1;
                b.text_offsets[slot - 1]
            }
        };
        let base = dynsym_start as u64 + (i as u64 + 1) * symsize as u64;
        let info = u64::from(STB_GLOBAL << 4 | s.st_type);
        let name = u64::from(name_offsets.get(i).copied().unwrap_or(0));
        if spec.class64 {
            b.put(base, 4, name);
            b.put(base + 4, 1, info);
            b.put(base + 6, 2, u64::from(s.shndx));
            b.put(base + 8, 8, value);
            b.put(base + 16, 8, 16);
        } else {
            b.put(base, 4, name);
            b.put(base + 4, 4, value);
            b.put(base + 8, 4, 16);
            b.put(base + 12, 1, info);
            b.put(base + 14, 2, u64::from(s.shndx));
        }
    }
    for i in 1..=spec.symbols.len() as u64 {
        b.put(b.sections[VERSYM].0 + 2 * i, 2, 1); // VER_NDX_GLOBAL
    }

    // Section headers.
    let table = if spec.static_table {
        SHT_SYMTAB
    } else {
        SHT_DYNSYM
    };
    let headers: [(usize, u32, u32, u64, u64); 6] = [
        // index, name offset in .shstrtab, type, link, entsize
        (TEXT, 1, SHT_PROGBITS, 0, 0),
        (RODATA, 7, SHT_PROGBITS, 0, 0),
        (DYNSTR, 15, SHT_STRTAB, 0, 0),
        (DYNSYM, 23, table, DYNSTR as u64, symsize as u64),
        (VERSYM, 31, SHT_GNU_VERSYM, DYNSYM as u64, 2),
        (SHSTRTAB, 44, SHT_STRTAB, 0, 0),
    ];
    let shsize = shsize as u64;
    for (i, name, ty, link, entsize) in headers {
        let base = b.shoff + i as u64 * shsize;
        b.put(base, 4, u64::from(name));
        b.set_sh(i, Sh::Type, u64::from(ty));
        let (off, size) = b.sections[i];
        let flags = match i {
            TEXT => 6, // ALLOC | EXEC
            SHSTRTAB => 0,
            _ => 2, // ALLOC
        };
        let w = if spec.class64 { 8 } else { 4 };
        b.put(base + 8, w, flags);
        let addr = if spec.class64 { 16 } else { 12 };
        if flags != 0 {
            b.put(base + addr, w, off);
        }
        b.set_sh(i, Sh::Offset, off);
        b.set_sh(i, Sh::Size, size);
        b.set_sh(i, Sh::Link, link);
        b.set_sh(i, Sh::Info, if i == DYNSYM { 1 } else { 0 });
        b.set_sh(i, Sh::Addralign, 1);
        b.set_sh(i, Sh::Entsize, entsize);
    }
    b
}
