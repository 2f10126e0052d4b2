//! Reading an ELF file: bounded reads of the file (`CappedFile`) and where a loaded address
//! comes from in it (`Segment`, `file_offset`). Shared by the symbol tables (`elf.rs`), Go's
//! function table (`go.rs`) and file identity, which import this module rather than each other.

use std::fs::File;
use std::os::unix::fs::FileExt;

use object::read::ReadCacheOps;

/// A file read with `pread`, with a length fixed when it was opened.
pub(in crate::libraries) struct CappedFile {
    file: File,
    len: u64,
    pos: u64,
}

impl CappedFile {
    pub(in crate::libraries) fn new(file: File, len: u64) -> Self {
        CappedFile { file, len, pos: 0 }
    }
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

/// `len` bytes of a file from `base`, read a page at a time through a small cache: a table too
/// large to hold whole (Go's `.gopclntab`, tens of MiB) that is walked in a few places moving
/// forward at once. Holds at most [`Pages::KEPT`] pages of [`Pages::PAGE`] bytes.
pub(in crate::libraries) struct Pages<'f> {
    file: &'f File,
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
    pub fn new(file: &'f File, file_len: u64, base: u64, len: u64) -> Option<Self> {
        Self::with_page(file, file_len, base, len, Self::PAGE)
    }

    pub fn with_page(
        file: &'f File,
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
                if self
                    .file
                    .read_exact_at(&mut bytes, self.base + start as u64)
                    .is_err()
                {
                    return false;
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
