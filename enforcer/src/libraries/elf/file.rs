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
