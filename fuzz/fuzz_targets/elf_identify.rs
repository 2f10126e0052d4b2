//! `enforcer::libraries::identify` on arbitrary file contents: enforcer parses the ELF files
//! that any process maps, so their bytes are attacker-controlled.
//!
//! The input is written to one memfd (an in-memory regular file, no disk I/O, nothing left
//! behind) and identified through `/proc/self/fd/N`, so the fuzzer drives exactly the public
//! path the agent uses: `open` + `fstat` + size cap, then `pread`s through object's `ReadCache`.
//! If a file is identified, its probes are non-empty, distinct, and inside the file.
#![no_main]

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn memfd() -> &'static (File, PathBuf) {
    static MEMFD: OnceLock<(File, PathBuf)> = OnceLock::new();
    MEMFD.get_or_init(|| {
        // SAFETY: a valid NUL-terminated name and flags; the fd is checked and then owned.
        let fd = unsafe { libc::memfd_create(c"elf_identify".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        (file, path)
    })
}

fuzz_target!(|data: &[u8]| {
    let (file, path) = memfd();
    file.set_len(0).expect("truncate memfd");
    file.write_all_at(data, 0).expect("write memfd");
    let Ok(Some(id)) = enforcer::libraries::identify(path) else {
        return; // not a TLS library, or an error: both fine
    };
    assert!(!id.probes.is_empty(), "identified without probes: {id:?}");
    let mut offsets = HashSet::new();
    for p in &id.probes {
        assert!(
            p.file_offset < data.len() as u64,
            "probe outside the file: {p:?}"
        );
        assert!(
            offsets.insert(p.file_offset),
            "two probes at one offset: {id:?}"
        );
    }
});
