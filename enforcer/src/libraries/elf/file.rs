//! Reading an ELF file: bounded reads of the file (`CappedFile`) and where a loaded address
//! comes from in it (`Segment`, `file_offset`). Shared by the symbol tables (`elf.rs`), Go's
//! function table (`go.rs`) and file identity, which import this module rather than each other.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use enforcer_common::hello::CodeSpan;
use object::read::ReadCacheOps;
use sha2::{Digest, Sha256};

/// Verification re-reads in chunks of this size.
const CHUNK: usize = 1 << 20;
/// Up to this many bytes read from one file are kept as they were read (compared with `memcmp`,
/// cheap); what is read beyond it is kept as its SHA-256 only.
const MAX_KEPT_BYTES: u64 = 8 << 20;

/// A file being identified: a length fixed when it was opened, and what was read of it.
///
/// Every read (through [`CappedFile`] or [`Source::read_at`]) is recorded as its range and the
/// bytes it returned (a copy while their total is under [`MAX_KEPT_BYTES`], else their SHA-256:
/// hashing the symbol tables of the thousands of shared objects a scan pre-filters would
/// cost more than reading them). [`Source::verify`] then reads the file once more, front to
/// back, and compares: an identity is made only of bytes that this last pass read too (and
/// hashed, for a library), so it describes one sequence of bytes even if the file was rewritten
/// meanwhile, whatever the resolution of its timestamps. A read that came up short inside the
/// length (the file shrank) or failed also makes the file changed.
pub(in crate::libraries) struct Source {
    file: File,
    len: u64,
    seen: RefCell<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Every read, in the order made.
    reads: Vec<Read>,
    /// Bytes kept in [`Got::Bytes`].
    kept: u64,
    /// A read failed or came up short inside the length.
    short: bool,
}

#[derive(Clone)]
struct Read {
    at: u64,
    size: u64,
    got: Got,
}

#[derive(Clone)]
enum Got {
    Bytes(Rc<[u8]>),
    Sha256([u8; 32]),
}

impl Read {
    fn end(&self) -> u64 {
        self.at + self.size
    }
}

/// One read being compared with the last pass: how far, and its hash so far.
struct Check {
    read: Read,
    hasher: Option<Sha256>,
}

/// What [`Source::verify`] found.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::libraries) enum Verified {
    /// Every read agrees with the last pass, which ended exactly at the length; the SHA-256 of
    /// the whole file if it was asked for.
    Same { sha256: Option<String> },
    /// The file changed while it was read.
    Changed,
}

impl Source {
    pub(in crate::libraries) fn new(file: File, len: u64) -> Rc<Source> {
        Rc::new(Source {
            file,
            len,
            seen: RefCell::default(),
        })
    }

    pub(in crate::libraries) fn len(&self) -> u64 {
        self.len
    }

    /// Reads at `pos`, never past the length, and records what was read.
    pub(in crate::libraries) fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let remaining = self.len.saturating_sub(pos);
        let want = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let got = match read_full(&self.file, &mut buf[..want], pos) {
            Ok(got) => got,
            Err(e) => {
                self.seen.borrow_mut().short = true;
                return Err(e);
            }
        };
        let mut seen = self.seen.borrow_mut();
        seen.short |= got < want;
        if got > 0 {
            let bytes = &buf[..got];
            let got_ = if seen.kept + got as u64 <= MAX_KEPT_BYTES {
                seen.kept += got as u64;
                Got::Bytes(bytes.into())
            } else {
                Got::Sha256(Sha256::digest(bytes).into())
            };
            seen.reads.push(Read {
                at: pos,
                size: got as u64,
                got: got_,
            });
        }
        Ok(got)
    }

    /// Reads the file again, in one pass, and compares it with every read made so far: the
    /// whole file when `hash` (its SHA-256 is returned), else only the ranges that were read.
    /// Also checks that the file ends exactly at the length. `Err` only if the file cannot be
    /// read at all any more.
    pub(in crate::libraries) fn verify(&self, hash: bool) -> io::Result<Verified> {
        let seen = self.seen.borrow();
        if seen.short {
            return Ok(Verified::Changed);
        }
        let mut reads = seen.reads.clone();
        drop(seen);
        reads.sort_unstable_by_key(|r| (r.at, r.size));
        let spans = match hash {
            true => vec![(0, self.len)],
            false => merged(&reads),
        };
        let mut hasher = hash.then(Sha256::new);
        let mut next = 0; // the first read not yet being checked
        let mut open: Vec<Check> = Vec::new();
        let widest = spans.iter().map(|(s, e)| e - s).max().unwrap_or(0);
        let mut buf = vec![0u8; usize::try_from(widest).unwrap_or(CHUNK).clamp(1, CHUNK)];
        for (start, end) in spans {
            let mut pos = start;
            while pos < end {
                let want = usize::try_from(end - pos).unwrap_or(CHUNK).min(buf.len());
                let n = read_full(&self.file, &mut buf[..want], pos)?;
                if n < want {
                    return Ok(Verified::Changed); // shrank
                }
                let chunk_end = pos + n as u64;
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf[..n]);
                }
                while next < reads.len() && reads[next].at < chunk_end {
                    let read = reads[next].clone();
                    let hasher = matches!(read.got, Got::Sha256(_)).then(Sha256::new);
                    open.push(Check { read, hasher });
                    next += 1;
                }
                let mut mismatch = false;
                open.retain_mut(|c| {
                    let (at, end) = (c.read.at, c.read.end());
                    let from = at.max(pos);
                    let now = &buf[(from - pos) as usize..(end.min(chunk_end) - pos) as usize];
                    match (&c.read.got, c.hasher.as_mut()) {
                        (Got::Bytes(then), _) => {
                            let then = &then[(from - at) as usize..][..now.len()];
                            mismatch |= then != now;
                        }
                        (Got::Sha256(_), Some(h)) => h.update(now),
                        (Got::Sha256(_), None) => mismatch = true,
                    }
                    if end > chunk_end {
                        return true;
                    }
                    if let (Got::Sha256(digest), Some(h)) = (&c.read.got, c.hasher.take()) {
                        mismatch |= <[u8; 32]>::from(h.finalize()) != *digest;
                    }
                    false
                });
                if mismatch {
                    return Ok(Verified::Changed);
                }
                pos = chunk_end;
            }
        }
        // Nothing past the length: a file that grew is not the one that was read.
        if read_full(&self.file, &mut [0u8; 1], self.len)? != 0 {
            return Ok(Verified::Changed);
        }
        Ok(Verified::Same {
            sha256: hasher.map(|h| hex(&h.finalize())),
        })
    }
}

/// `pread` until `buf` is full or the file ends.
fn read_full(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The union of the (sorted) reads' ranges, as (start, end) spans.
fn merged(reads: &[Read]) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for r in reads {
        let (at, end) = (r.at, r.end());
        match spans.last_mut() {
            Some(last) if at <= last.1 => last.1 = last.1.max(end),
            _ => spans.push((at, end)),
        }
    }
    spans
}

/// A [`Source`] as `object`'s [`object::read::ReadCache`] reads it.
pub(in crate::libraries) struct CappedFile {
    src: Rc<Source>,
    pos: u64,
}

impl CappedFile {
    pub(in crate::libraries) fn new(src: Rc<Source>) -> Self {
        CappedFile { src, pos: 0 }
    }
}

impl ReadCacheOps for CappedFile {
    fn len(&mut self) -> Result<u64, ()> {
        Ok(self.src.len)
    }

    fn seek(&mut self, pos: u64) -> Result<u64, ()> {
        self.pos = pos;
        Ok(pos)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        let n = self.src.read_at(buf, self.pos).map_err(|_| ())?;
        self.pos = self.pos.checked_add(n as u64).ok_or(())?;
        Ok(n)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ()> {
        match self.read(buf)? {
            n if n == buf.len() => Ok(()),
            _ => Err(()), // the file shrank, or the range was past the end
        }
    }
}

/// A `PT_LOAD` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::libraries) struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
}

/// The file offset the virtual address `addr` is loaded from, if it lies in the file-backed part
/// of an executable `PT_LOAD` segment. This is what a uprobe wants: the kernel places it at
/// `offset` within the file's page cache, wherever the file is mapped.
pub(in crate::libraries) fn file_offset(segments: &[Segment], addr: u64) -> Option<u64> {
    segments.iter().filter(|s| s.executable).find_map(|s| {
        let delta = addr.checked_sub(s.vaddr)?;
        (delta < s.filesz)
            .then(|| s.offset.checked_add(delta))
            .flatten()
    })
}

/// The executable segment's code around `addr`: how many of its bytes precede `addr` and how many
/// follow from it. The library's session probe carries it (`enforcer_common::hello::CodeSpan`).
pub(in crate::libraries) fn code_around(segments: &[Segment], addr: u64) -> Option<CodeSpan> {
    segments.iter().filter(|s| s.executable).find_map(|s| {
        let before = addr.checked_sub(s.vaddr)?;
        let after = s.filesz.checked_sub(before).filter(|&a| a > 0)?;
        Some(CodeSpan { before, after })
    })
}

/// The file offset of the `size` bytes loaded at `addr`, if they all lie in the file-backed part
/// of one `PT_LOAD` segment (of any permission): where the loader reads a table it finds through
/// the dynamic segment.
pub(in crate::libraries) fn file_range(segments: &[Segment], addr: u64, size: u64) -> Option<u64> {
    segments.iter().find_map(|s| {
        let delta = addr.checked_sub(s.vaddr)?;
        let end = delta.checked_add(size)?;
        (end <= s.filesz)
            .then(|| s.offset.checked_add(delta))
            .flatten()
    })
}

/// `len` bytes of a file from `base`, read a page at a time through a small cache: a table too
/// large to hold whole (Go's `.gopclntab`, tens of MiB) that is walked in a few places moving
/// forward at once. Holds at most [`Pages::KEPT`] pages of [`Pages::PAGE`] bytes.
pub(in crate::libraries) struct Pages<'f> {
    file: &'f Source,
    base: u64,
    len: usize,
    /// Page size: [`Pages::PAGE`] (smaller in tests).
    page: usize,
    /// (page number, its bytes), least recently used first.
    kept: std::cell::RefCell<Vec<(usize, Box<[u8]>)>>,
}

impl<'f> Pages<'f> {
    pub const PAGE: usize = 64 << 10;
    pub const KEPT: usize = 8;

    /// `None` if the range does not lie within the first `file_len` bytes of the file.
    pub fn new(file: &'f Source, file_len: u64, base: u64, len: u64) -> Option<Self> {
        Self::with_page(file, file_len, base, len, Self::PAGE)
    }

    pub fn with_page(
        file: &'f Source,
        file_len: u64,
        base: u64,
        len: u64,
        page: usize,
    ) -> Option<Self> {
        base.checked_add(len).filter(|&end| end <= file_len)?;
        Some(Pages {
            file,
            base,
            len: usize::try_from(len).ok()?,
            page: page.max(1),
            kept: Default::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Fills `buf` with the bytes at `at` of the range; false if any lies past its end or
    /// cannot be read.
    pub fn read(&self, at: usize, buf: &mut [u8]) -> bool {
        let Some(end) = at.checked_add(buf.len()).filter(|&end| end <= self.len) else {
            return false;
        };
        let (mut pos, mut done) = (at, 0);
        while pos < end {
            let (page, off) = (pos / self.page, pos % self.page);
            let n = (self.page - off).min(end - pos);
            if !self.copy(page, off, &mut buf[done..done + n]) {
                return false;
            }
            pos += n;
            done += n;
        }
        true
    }

    /// Copies `buf.len()` bytes at `off` of page `page` into `buf`.
    fn copy(&self, page: usize, off: usize, buf: &mut [u8]) -> bool {
        let mut kept = self.kept.borrow_mut();
        let entry = match kept.iter().position(|(p, _)| *p == page) {
            Some(i) => kept.remove(i),
            None => {
                let start = page * self.page;
                let mut bytes = vec![0; self.page.min(self.len - start)].into_boxed_slice();
                // A file that shrank since it was opened comes up short: an error, no crash.
                // Through the `Source`, so the last pass checks these bytes too.
                match self.file.read_at(&mut bytes, self.base + start as u64) {
                    Ok(n) if n == bytes.len() => {}
                    _ => return false,
                }
                if kept.len() >= Self::KEPT {
                    kept.remove(0);
                }
                (page, bytes)
            }
        };
        let ok = match entry.1.get(off..off + buf.len()) {
            Some(b) => {
                buf.copy_from_slice(b);
                true
            }
            None => false,
        };
        kept.push(entry);
        ok
    }
}

/// Lowercase hex of `bytes` (a SHA-256 as `identity` and the policy's `sha256:` rules spell it).
pub(in crate::libraries) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
