//! The file a library's probes go on, opened and checked just before they are attached
//! (issue 16, item 1). The kernel attaches a uprobe to the inode its path names at that moment,
//! so a path another file was renamed onto (or a mount was put over) after the library was
//! identified would get the probes placed for the identified file: an attacker's library with
//! code of its own at the offsets of an allowed library's random source would be attributed as
//! that library. So the path is opened (`O_PATH`), the open file compared by `st_dev`/`st_ino`
//! with the identified one, and the probes attached through `/proc/self/fd/<n>`, which names
//! the opened inode and is not looked up by name again.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

/// An identified file, held open while probes are attached to it.
pub struct TargetFile {
    _fd: OwnedFd,
    /// `/proc/self/fd/<n>`.
    path: PathBuf,
}

impl TargetFile {
    /// Opens `path` and checks that it is the file identified as `dev`/`ino`.
    pub fn open(path: &Path, dev: u64, ino: u64) -> io::Result<TargetFile> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated path that outlives the call.
        let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `st` is written by fstat before it is read.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if (st.st_dev, st.st_ino) != (dev, ino) {
            return Err(io::Error::other(format!(
                "the file changed since it was identified (now device {} inode {}, identified \
                 as device {dev} inode {ino}): not probed",
                st.st_dev, st.st_ino
            )));
        }
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        Ok(TargetFile { _fd: fd, path })
    }

    /// The path that names the opened file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_identified_file_is_opened_and_another_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libssl.so.3");
        std::fs::write(&lib, b"identified").unwrap();
        let meta = std::fs::metadata(&lib).unwrap();
        let opened = TargetFile::open(&lib, meta.dev(), meta.ino()).unwrap();
        assert_eq!(std::fs::read(opened.path()).unwrap(), b"identified");
        // Another file renamed over the path: the name now leads elsewhere, the fd does not.
        let other = dir.path().join("evil.so");
        std::fs::write(&other, b"attacker").unwrap();
        std::fs::rename(&other, &lib).unwrap();
        assert_eq!(std::fs::read(opened.path()).unwrap(), b"identified");
        let err = TargetFile::open(&lib, meta.dev(), meta.ino())
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("changed since it was identified"),
            "{err}"
        );
        assert!(TargetFile::open(&dir.path().join("gone"), 1, 2).is_err());
    }
}
