//! The Go version a binary was built with, from its build info: the 32-byte header that starts
//! with `"\xff Go buildinf:"` (in the `.go.buildinfo` section, 16-byte aligned), then either
//! (Go 1.18+, flag bit 2) the version as a uvarint-length-prefixed string right after the header,
//! or (older) a pointer to a Go string header (`ptr`, `len`) holding it.
//!
//! Pure and bounded: the caller hands the blob and a function reading `len` bytes at a virtual
//! address (for the old pointer format); strings longer than [`MAX_VERSION`] are refused.

/// The magic at the start of the build info.
pub const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Size of the header.
pub const HEADER: usize = 32;
/// Longest version string accepted (`go1.22.12`, `devel go1.23-1a2b3c4d Tue ...`).
pub const MAX_VERSION: usize = 128;

/// The version as Go prints it (`go1.19.8`), if `blob` starts with a valid build info header.
pub fn version(blob: &[u8], read: &dyn Fn(u64, usize) -> Option<Vec<u8>>) -> Option<String> {
    let header = blob.get(..HEADER)?;
    if !header.starts_with(MAGIC) {
        return None;
    }
    let ptr = usize::from(header[14]);
    let flags = header[15];
    let raw = if flags & 2 != 0 {
        let (len, used) = uvarint(blob.get(HEADER..)?)?;
        let len = usize::try_from(len).ok().filter(|&l| l <= MAX_VERSION)?;
        let start = HEADER + used;
        blob.get(start..start.checked_add(len)?)?.to_vec()
    } else {
        if ptr != 4 && ptr != 8 {
            return None;
        }
        let big = flags & 1 != 0;
        let word = |b: &[u8]| {
            let b = b.get(..ptr)?;
            let mut v = 0u64;
            for i in 0..ptr {
                v = (v << 8) | u64::from(if big { b[i] } else { b[ptr - 1 - i] });
            }
            Some(v)
        };
        // runtime.buildVersion: the address of a Go string header.
        let string_header = read(word(&header[16..])?, 2 * ptr)?;
        let data = word(&string_header)?;
        let len = usize::try_from(word(string_header.get(ptr..)?)?).ok()?;
        if len > MAX_VERSION {
            return None;
        }
        read(data, len)?
    };
    let text = String::from_utf8(raw).ok()?;
    (!text.is_empty() && text.bytes().all(|b| (0x20..0x7f).contains(&b))).then_some(text)
}

/// `go1.19.8` → `1.19.8`; anything else (a `devel` build) as it is.
pub fn release(version: &str) -> &str {
    version
        .strip_prefix("go")
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(version)
}

/// Go's `encoding/binary.Uvarint`: the value and the bytes used; `None` if cut short or longer
/// than 10 bytes.
fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u8, ptr: u8) -> Vec<u8> {
        let mut h = MAGIC.to_vec();
        h.push(ptr);
        h.push(flags);
        h.resize(HEADER, 0);
        h
    }

    #[test]
    fn inline_format() {
        let mut blob = header(2, 8);
        blob.push(8);
        blob.extend_from_slice(b"go1.19.8");
        blob.extend_from_slice(&[0x05, b'm', b'o', b'd', b'u', b'l']);
        let none = |_: u64, _: usize| None;
        assert_eq!(version(&blob, &none).as_deref(), Some("go1.19.8"));
        assert_eq!(release("go1.19.8"), "1.19.8");
        assert_eq!(release("devel go1.23-abc"), "devel go1.23-abc");
        // Cut short, claims too much, not text, no magic.
        assert_eq!(version(&blob[..HEADER + 4], &none), None);
        let mut long = header(2, 8);
        long.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(version(&long, &none), None);
        let mut bin = header(2, 8);
        bin.extend_from_slice(&[2, 0, 0xff]);
        assert_eq!(version(&bin, &none), None);
        let mut varint = header(2, 8);
        varint.extend_from_slice(&[0x80; 12]);
        assert_eq!(version(&varint, &none), None);
        assert_eq!(version(&blob[1..], &none), None);
        assert_eq!(version(&[], &none), None);
    }

    #[test]
    fn pointer_format() {
        let mut blob = header(0, 8);
        blob[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
        let read = |addr: u64, len: usize| -> Option<Vec<u8>> {
            match addr {
                0x1000 => {
                    let mut h = 0x2000u64.to_le_bytes().to_vec();
                    h.extend_from_slice(&8u64.to_le_bytes());
                    Some(h[..len].to_vec())
                }
                0x2000 => Some(b"go1.16.5"[..len].to_vec()),
                _ => None,
            }
        };
        assert_eq!(version(&blob, &read).as_deref(), Some("go1.16.5"));
        // A length over the cap is never read.
        let huge = |addr: u64, len: usize| -> Option<Vec<u8>> {
            (addr == 0x1000).then(|| {
                let mut h = 0x2000u64.to_le_bytes().to_vec();
                h.extend_from_slice(&u64::MAX.to_le_bytes());
                h[..len].to_vec()
            })
        };
        assert_eq!(version(&blob, &huge), None);
        let mut bad_ptr = blob.clone();
        bad_ptr[14] = 3;
        assert_eq!(version(&bad_ptr, &read), None);
    }
}
