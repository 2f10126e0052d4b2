//! Identity of a library file beyond its symbols: the SHA-256 of its contents and the version
//! text it states about itself.
//!
//! Both read a hostile file with `pread` under caps, like [`super::elf`]:
//!
//! - **SHA-256** is computed by the last pass over the file that verifies every other read
//!   (`Source::verify` in `elf/file.rs`), over the length fixed at open time, at most
//!   [`MAX_HASH_BYTES`] (a larger file gets no hash); a file that changes while it is read is not
//!   identified, never given a hash of other bytes than its symbols and version came from.
//! - **Version text**: the catalog gives, per family, prefixes such as `"OpenSSL "` or
//!   `"GnuTLS "`. The read-only data of the file (sections that are allocated, not writable, not
//!   executable; or, without section headers, `PT_LOAD` segments that are only readable) is
//!   searched for the first occurrence of each prefix directly followed by a version (a digit,
//!   then letters, digits and dots, at most [`MAX_VERSION_LEN`] bytes, that
//!   [`Version::parse_lenient`] accepts in full). At most [`MAX_RODATA_BYTES`] are searched.
//!   Where each family's text lives is documented in `catalog/default.yaml` and docs/policy.md.

use std::rc::Rc;

use object::elf;
use object::read::ReadCache;
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, FileKind};

use super::elf::file::{CappedFile, Source};
use crate::version::Version;

/// Files larger than this are not hashed (the largest shared object on a Debian host is
/// libLLVM, ~100 MiB): hashing reads the whole file, so its time grows with a size an attacker
/// chooses for free (`truncate -s 100G`). Identification itself reads only what it needs.
pub const MAX_HASH_BYTES: u64 = 512 << 20;
/// At most this much read-only data is searched for a version text.
pub const MAX_RODATA_BYTES: u64 = 64 << 20;
/// Reads are done in chunks of this size.
const CHUNK: usize = 1 << 20;
/// Longest version taken after a prefix.
pub const MAX_VERSION_LEN: usize = 32;

/// For each prefix, the first version found right after it in the file's read-only data.
/// Reads go through `src` (and are verified with the rest, see [`Source`]): a read that fails
/// or comes up short ends the search, and the file then counts as changed.
pub(super) fn version_texts(src: &Rc<Source>, prefixes: &[&str]) -> Vec<Option<String>> {
    let mut found = vec![None; prefixes.len()];
    if prefixes.is_empty() {
        return found;
    }
    let len = src.len();
    let ranges = readonly_ranges(src);
    let overlap = prefixes.iter().map(|p| p.len()).max().unwrap_or(0) + MAX_VERSION_LEN + 1;
    let mut budget = MAX_RODATA_BYTES;
    let mut buf = vec![0u8; CHUNK + overlap];
    for (start, size) in ranges {
        let end = start.saturating_add(size).min(len);
        let mut pos = start;
        while pos < end && budget > 0 && found.iter().any(Option::is_none) {
            let want = usize::try_from(end - pos)
                .unwrap_or(usize::MAX)
                .min(CHUNK + overlap)
                .min(usize::try_from(budget).unwrap_or(usize::MAX));
            let Ok(n) = src.read_at(&mut buf[..want], pos) else {
                return found;
            };
            if n == 0 {
                return found;
            }
            let last = pos + n as u64 >= end;
            for (i, prefix) in prefixes.iter().enumerate() {
                if found[i].is_none() {
                    found[i] = find_version(&buf[..n], prefix.as_bytes(), last);
                }
            }
            // Step back by `overlap` so a text cut at the chunk's end is seen whole next time.
            let step = if last {
                n
            } else {
                n.saturating_sub(overlap).max(1)
            };
            pos += step as u64;
            budget = budget.saturating_sub(step as u64);
        }
    }
    found
}

/// The first `prefix` + version in `hay`. Unless `last`, a version running into the end of `hay`
/// is left for the next (overlapping) chunk.
pub(super) fn find_version(hay: &[u8], prefix: &[u8], last: bool) -> Option<String> {
    let first = *prefix.first()?;
    let mut i = 0;
    while i + prefix.len() <= hay.len() {
        let at = hay[i..].iter().position(|&b| b == first)? + i;
        i = at + 1;
        if !hay[at..].starts_with(prefix) {
            continue;
        }
        let rest = &hay[at + prefix.len()..];
        if !rest.first().is_some_and(u8::is_ascii_digit) {
            continue;
        }
        let n = rest
            .iter()
            .take(MAX_VERSION_LEN + 1)
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'.')
            .count();
        if n > MAX_VERSION_LEN || (n == rest.len() && !last) {
            continue;
        }
        let token = std::str::from_utf8(&rest[..n]).ok()?.trim_end_matches('.');
        if let Ok(v) = Version::parse_lenient(token)
            && v.to_string() == token
        {
            return Some(token.to_owned());
        }
    }
    None
}

/// (file offset, size) of the read-only data of an ELF file; empty if it cannot be parsed.
fn readonly_ranges(src: &Rc<Source>) -> Vec<(u64, u64)> {
    let cache = ReadCache::new(CappedFile::new(src.clone()));
    match FileKind::parse(&cache) {
        Ok(FileKind::Elf64) => ranges::<elf::FileHeader64<Endianness>>(&cache),
        Ok(FileKind::Elf32) => ranges::<elf::FileHeader32<Endianness>>(&cache),
        _ => Vec::new(),
    }
}

fn ranges<Elf: FileHeader<Endian = Endianness>>(data: &ReadCache<CappedFile>) -> Vec<(u64, u64)> {
    let Ok(header) = Elf::parse(data) else {
        return Vec::new();
    };
    let Ok(endian) = header.endian() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(sections) = header.section_headers(endian, data) {
        for s in sections.iter().take(1 << 16) {
            let flags: u64 = s.sh_flags(endian).into();
            let ro = flags & u64::from(elf::SHF_ALLOC) != 0
                && flags & u64::from(elf::SHF_WRITE | elf::SHF_EXECINSTR) == 0;
            if ro && s.sh_type(endian) == elf::SHT_PROGBITS {
                out.push((s.sh_offset(endian).into(), s.sh_size(endian).into()));
            }
        }
    }
    if out.is_empty()
        && let Ok(phdrs) = header.program_headers(endian, data)
    {
        for ph in phdrs {
            let flags = ph.p_flags(endian);
            if ph.p_type(endian) == elf::PT_LOAD && flags & (elf::PF_W | elf::PF_X) == 0 {
                out.push((ph.p_offset(endian).into(), ph.p_filesz(endian).into()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_versions_after_prefixes() {
        let f = |hay: &[u8], p: &str| find_version(hay, p.as_bytes(), true);
        assert_eq!(
            f(b"\0OpenSSL 3.0.22 25 Aug 2026\0", "OpenSSL ").as_deref(),
            Some("3.0.22")
        );
        assert_eq!(
            f(b"OpenSSL 1.1.1w  11 Sep 2023", "OpenSSL ").as_deref(),
            Some("1.1.1w")
        );
        assert_eq!(
            f(
                b"GnuTLS error: %s\0Enabled GnuTLS 3.7.9 logging...",
                "GnuTLS "
            )
            .as_deref(),
            Some("3.7.9")
        );
        assert_eq!(
            f(b"NSS_3.2\0Version: NSS 3.87.1\0", "NSS ").as_deref(),
            Some("3.87.1")
        );
        assert_eq!(f(b"OpenSSL 3.0.2a5x", "OpenSSL "), None, "not a version");
        assert_eq!(f(b"OpenSSL ", "OpenSSL "), None);
        assert_eq!(f(b"", "OpenSSL "), None);
        let long = format!("OpenSSL 3.{}", "1".repeat(40));
        assert_eq!(f(long.as_bytes(), "OpenSSL "), None);
        // Cut at the end of a chunk that is not the last: left for the next one.
        assert_eq!(find_version(b"xx OpenSSL 3.0", b"OpenSSL ", false), None);
        assert_eq!(
            find_version(b"xx OpenSSL 3.0", b"OpenSSL ", true).as_deref(),
            Some("3.0")
        );
    }
}
