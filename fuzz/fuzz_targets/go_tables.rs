//! Go binaries' own tables on arbitrary bytes (`enforcer::libraries::go`): the `.gopclntab`
//! parser and name lookup, the build info parser, and the x86-64 decoder that places the entry
//! and `RET` probes. Any process may map any file, so all three read attacker-controlled bytes.
//!
//! Input: a little-endian u32 `n`, then `n` bytes of `.gopclntab`, then the text its functions
//! live in, loaded at [`TEXT`] (as `go.rs` does with a real binary: a function found in the table
//! is decoded from its entry to its end). An input too short for its `n` is all table, no text.
//! Besides, the whole input is read as a build info blob (whose pointers address the input
//! itself) and decoded as one function.
//!
//! Checked besides "no panic, hang or huge allocation": a found function ends after its entry;
//! every probe point lies inside the function's bytes, returns are distinct, ascending and at
//! most `MAX_RETURNS`; a version is non-empty printable ASCII of at most `MAX_VERSION` bytes.
#![no_main]

use enforcer::libraries::go::{buildinfo, code, pclntab};
use libfuzzer_sys::fuzz_target;

/// Where the text is loaded (and what 1.18+ entry offsets are relative to).
const TEXT: u64 = 0x401000;
/// The catalog's Go names, and two every Go binary has.
const NAMES: [&str; 5] = [
    "crypto/tls.(*Conn).Write",
    "crypto/tls.(*Conn).Read",
    "crypto/tls.(*Conn).handshakeContext",
    "main.main",
    "runtime.main",
];

fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let Some(n) = data.get(..4) else {
        return (data, &[]);
    };
    let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
    match data.get(4..4usize.saturating_add(n)) {
        Some(table) => (table, &data[4 + n..]),
        None => (data, &[]),
    }
}

/// Probe points of `code` loaded at `addr`, checked.
fn check_points(code_bytes: &[u8], addr: u64) {
    let Ok(p) = code::points(code_bytes, addr) else {
        return;
    };
    let end = addr + code_bytes.len() as u64;
    assert!(
        (addr..end).contains(&p.entry),
        "entry {:#x} outside {addr:#x}..{end:#x}",
        p.entry
    );
    assert!(!p.returns.is_empty() && p.returns.len() <= code::MAX_RETURNS);
    for r in &p.returns {
        assert!((addr..end).contains(r), "return {r:#x} outside {addr:#x}..{end:#x}");
    }
    assert!(
        p.returns.windows(2).all(|w| w[0] < w[1]),
        "returns not ascending: {:?}",
        p.returns
    );
}

fuzz_target!(|data: &[u8]| {
    let (table, text) = split(data);
    if let Ok(t) = pclntab::parse(table, TEXT) {
        assert!(t.len() <= pclntab::MAX_FUNCS);
        for f in t.find(&NAMES).into_iter().flatten() {
            assert!(f.end > f.entry, "{f:?}");
            let (Some(start), len) = (f.entry.checked_sub(TEXT), f.end - f.entry) else {
                continue;
            };
            if let Some(body) = usize::try_from(start)
                .ok()
                .and_then(|s| text.get(s..s.checked_add(usize::try_from(len).ok()?)?))
            {
                check_points(body, f.entry);
            }
        }
    }

    let read = |addr: u64, len: usize| -> Option<Vec<u8>> {
        let at = usize::try_from(addr).ok()?;
        Some(data.get(at..at.checked_add(len)?)?.to_vec())
    };
    if let Some(v) = buildinfo::version(data, &read) {
        assert!(!v.is_empty() && v.len() <= buildinfo::MAX_VERSION, "{v:?}");
        assert!(v.bytes().all(|b| (0x20..0x7f).contains(&b)), "{v:?}");
        let _ = buildinfo::release(&v);
    }

    check_points(data, TEXT);
});
