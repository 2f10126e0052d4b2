//! Rust symbol names: a catalog symbol written as a Rust path
//! (`rustls::client::client_conn::connection::ClientConnection::new`,
//! `<rustls::crypto::ring::Ring as rustls::crypto::SecureRandom>::fill`) matches a mangled
//! `.symtab` name whose demangled form, without its hash, is that path. Both manglings are read:
//! legacy (`_ZN6rustls...17h<hash>E`, what rustc gives crates by default) and v0 (`_RNv...`,
//! `-C symbol-mangling-version=v0`, which Rust's own standard library uses); v0 writes an
//! inherent method as `<Type>::method`, legacy as `Type::method`, so the brackets are dropped
//! before comparing. Generic functions are best avoided in the catalog: the two manglings print
//! their parameters differently.
//!
//! Bounded: only names that start like a mangled name, are at most [`MAX_MANGLED`] bytes and
//! whose first path is in a crate some catalog path starts with (read from the first bytes, see
//! `first_crate`: a Rust program's `.symtab` holds tens of thousands of names, a few hundred of
//! them the crate's) are demangled, and a demangled name longer than [`MAX_DEMANGLED`] is
//! dropped mid-way. `rustc_demangle` bounds its
//! own recursion and returns an error, never panics, on malformed names.

use std::borrow::Cow;
use std::fmt::{self, Write};

use crate::catalog::is_rust_path;

/// Longest mangled name demangled.
pub(super) const MAX_MANGLED: usize = 1024;
/// Longest demangled name kept.
pub(super) const MAX_DEMANGLED: usize = 512;

/// The catalog's symbols that are Rust paths.
pub(super) struct RustNames<'c> {
    /// (index in the catalog's symbols, path).
    paths: Vec<(usize, &'c str)>,
    /// The crates those paths start with (`rustls`).
    crates: Vec<&'c str>,
}

/// The crate a Rust path starts with: `rustls` for `<rustls::x::Y as z::W>::f` and `rustls::f`.
fn crate_of(path: &str) -> &str {
    let path = path.strip_prefix('<').unwrap_or(path);
    path.split("::").next().unwrap_or(path)
}

/// Starts like a legacy (`_ZN`) or v0 (`_R`) Rust name.
pub(super) fn is_mangled(name: &[u8]) -> bool {
    name.starts_with(b"_ZN") || name.starts_with(b"_R")
}

impl<'c> RustNames<'c> {
    pub(super) fn new(interesting: &'c [String]) -> Self {
        let mut paths = Vec::new();
        let mut crates: Vec<&str> = Vec::new();
        for (i, name) in interesting.iter().enumerate() {
            if !is_rust_path(name) {
                continue;
            }
            paths.push((i, name.as_str()));
            let c = crate_of(name);
            if !c.is_empty() && !crates.contains(&c) {
                crates.push(c);
            }
        }
        RustNames { paths, crates }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// `rest` is the string table from a symbol's name on (NUL-terminated, or the table's end).
    /// The index of the catalog path it is the mangled form of, if any.
    pub(super) fn lookup(&self, rest: &[u8]) -> Option<usize> {
        if self.paths.is_empty() || !is_mangled(rest) {
            return None;
        }
        // Most Rust names are another crate's: decided on the first bytes (this runs over every
        // symbol of every Rust program's .symtab, debug builds of the agent included).
        let krate = first_crate(rest)?;
        if !self.crates.iter().any(|c| c.as_bytes() == krate) {
            return None;
        }
        let window = &rest[..rest.len().min(MAX_MANGLED + 1)];
        let end = window.iter().position(|&b| b == 0).unwrap_or(window.len());
        if end > MAX_MANGLED {
            return None;
        }
        let mangled = &rest[..end];
        let name = demangle(std::str::from_utf8(mangled).ok()?)?;
        let name = normalize(&name);
        self.paths
            .iter()
            .find(|(_, p)| *p == &*name)
            .map(|(i, _)| *i)
    }
}

/// The crate of the first path in a mangled name, read without demangling (a few steps from
/// its start): legacy `_ZN6rustls...` is `rustls`, and so is `_ZN83_$LT$rustls..crypto..` (an
/// impl for a type of `rustls`); v0 `_RNvMs2_NtNtCs<hash>_6rustls...` is the crate root `C` the
/// leading path tags (`N`, `M`, `X`, `Y`, `I` and their disambiguators) lead to.
fn first_crate(name: &[u8]) -> Option<&[u8]> {
    if let Some(r) = name.strip_prefix(b"_ZN") {
        let (ident, _) = identifier(r)?;
        let ident = match ident.strip_prefix(b"_$LT$") {
            Some(t) => &t[..t.windows(2).take(64).position(|w| w == b"..")?],
            None => ident,
        };
        return Some(ident);
    }
    let r = name.strip_prefix(b"_R")?;
    let mut i = 0;
    for _ in 0..32 {
        match *r.get(i)? {
            b'N' => i += 2, // and its namespace
            b'M' | b'X' | b'Y' => i = skip_disambiguator(r, i + 1)?,
            b'I' => i += 1,
            b'C' => {
                let at = skip_disambiguator(r, i + 1)?;
                let rest = r.get(at..)?;
                let (ident, _) = identifier(rest)?;
                return Some(ident);
            }
            _ => return None,
        }
    }
    None
}

/// `s<base-62>_` at `i`, if there: the index after it.
fn skip_disambiguator(r: &[u8], i: usize) -> Option<usize> {
    if r.get(i) != Some(&b's') {
        return Some(i);
    }
    let n = r.get(i + 1..)?.iter().take(16).position(|&b| b == b'_')?;
    Some(i + 1 + n + 1)
}

/// A length-prefixed identifier (`6rustls`; v0 puts a `_` after the length when the identifier
/// starts with a digit or `_`): the identifier and what follows it.
fn identifier(r: &[u8]) -> Option<(&[u8], &[u8])> {
    let digits = r.iter().take(5).take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let len: usize = std::str::from_utf8(&r[..digits]).ok()?.parse().ok()?;
    let mut at = digits;
    if r.get(at) == Some(&b'_')
        && r.get(at + 1)
            .is_some_and(|b| b.is_ascii_digit() || *b == b'_')
    {
        at += 1;
    }
    let end = at.checked_add(len)?;
    Some((r.get(at..end)?, &r[end..]))
}

/// The demangled name without hash or crate disambiguators, or `None` if `mangled` is not a
/// Rust name or demangles to more than [`MAX_DEMANGLED`] bytes.
pub(super) fn demangle(mangled: &str) -> Option<String> {
    let d = rustc_demangle::try_demangle(mangled).ok()?;
    let mut out = Bounded(String::new());
    write!(out, "{d:#}").ok()?;
    Some(out.0)
}

/// A `fmt::Write` that fails once [`MAX_DEMANGLED`] bytes would be exceeded (a crafted v0 name
/// can expand through back-references).
struct Bounded(String);

impl Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.0.len() + s.len() > MAX_DEMANGLED {
            return Err(fmt::Error);
        }
        self.0.push_str(s);
        Ok(())
    }
}

/// `<Type>::method` (v0's inherent method) as `Type::method` (legacy's); anything else as is.
pub(super) fn normalize(name: &str) -> Cow<'_, str> {
    let Some(inner) = name.strip_prefix('<') else {
        return Cow::Borrowed(name);
    };
    let mut depth = 1usize;
    for (i, b) in inner.bytes().enumerate() {
        match b {
            b'<' => depth += 1,
            b'>' => {
                depth -= 1;
                if depth == 0 {
                    let (ty, rest) = (&inner[..i], &inner[i + 1..]);
                    if ty.contains(" as ") || !rest.starts_with("::") {
                        break;
                    }
                    return Cow::Owned(format!("{ty}{rest}"));
                }
            }
            _ => {}
        }
    }
    Cow::Borrowed(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names as rustc 1.95 emits them (rustls-client's build, and the same paths compiled with
    /// `-C symbol-mangling-version=v0`).
    const LEGACY_NEW: &str =
        "_ZN6rustls6client11client_conn10connection16ClientConnection3new17he8f5011296103992E";
    const LEGACY_FILL: &str = "_ZN83_$LT$rustls..crypto..aws_lc_rs..AwsLcRs$u20$as$u20$rustls..crypto..SecureRandom$GT$4fill17hb87dd90f17b90c8cE";
    const V0_NEW: &str = "_RNvMNtNtNtCs1PVfNTLNy3A_6rustls6client11client_conn10connectionNtB2_16ClientConnection3new";
    const V0_FILL: &str =
        "_RNvXNtNtCs1PVfNTLNy3A_6rustls6crypto4ringNtB2_4RingNtB4_12SecureRandom4fill";
    const NEW: &str = "rustls::client::client_conn::connection::ClientConnection::new";
    const AWS_FILL: &str =
        "<rustls::crypto::aws_lc_rs::AwsLcRs as rustls::crypto::SecureRandom>::fill";
    const RING_FILL: &str = "<rustls::crypto::ring::Ring as rustls::crypto::SecureRandom>::fill";

    fn catalog() -> Vec<String> {
        ["SSL_write", NEW, AWS_FILL, RING_FILL]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn both_manglings_match_the_catalog_path() {
        let symbols = catalog();
        let names = RustNames::new(&symbols);
        assert!(!names.is_empty());
        let at = |s: &str| {
            let mut bytes = s.as_bytes().to_vec();
            bytes.extend_from_slice(b"\0_ZNnext\0");
            names.lookup(&bytes).map(|i| symbols[i].as_str())
        };
        assert_eq!(at(LEGACY_NEW), Some(NEW));
        assert_eq!(at(LEGACY_FILL), Some(AWS_FILL));
        assert_eq!(at(V0_NEW), Some(NEW));
        assert_eq!(at(V0_FILL), Some(RING_FILL));
        // LLVM's suffix on a local copy.
        assert_eq!(at(&format!("{LEGACY_NEW}.llvm.1234567")), Some(NEW));
        // Another method of the same type, another crate, C names.
        assert_eq!(
            at(
                "_ZN6rustls6client11client_conn10connection16ClientConnection8new_with17he8f5011296103992E"
            ),
            None
        );
        assert_eq!(at("_ZN3std2io5stdio6_print17h0123456789abcdefE"), None);
        assert_eq!(at("SSL_write"), None);
        // Without the table's final NUL.
        assert_eq!(names.lookup(V0_NEW.as_bytes()), Some(1));
    }

    #[test]
    fn the_crate_is_read_from_the_first_bytes() {
        let c =
            |s: &str| first_crate(s.as_bytes()).map(|c| String::from_utf8_lossy(c).into_owned());
        for name in [LEGACY_NEW, LEGACY_FILL, V0_NEW, V0_FILL] {
            assert_eq!(c(name).as_deref(), Some("rustls"), "{name}");
        }
        assert_eq!(
            c("_RNvXNtCsebV7awk8ebD_4ring4randNtB2_12SystemRandomNtB2_12SecureRandom4fillCsiWcKhtF0zut_6rustls").as_deref(),
            Some("ring")
        );
        assert_eq!(
            c("_ZN51_$LT$T$u20$as$u20$aws_lc_rs..rand..SecureRandom$GT$4fill17hE").as_deref(),
            Some("T$u20$as$u20$aws_lc_rs")
        );
        assert_eq!(
            c("_ZN3std2io5stdio6_print17h0123456789abcdefE").as_deref(),
            Some("std")
        );
        for junk in [
            "_ZN",
            "_ZN99rustls",
            "_R",
            "_RN",
            "_RNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNvNv",
            "_RCs",
            "_RCsxxxxxxxxxxxxxxxxxxxxx_6rustls",
            "_ZN99999999rustls",
        ] {
            assert_eq!(c(junk), None, "{junk}");
        }
    }

    #[test]
    fn c_only_catalogs_demangle_nothing() {
        let symbols = vec!["SSL_write".to_string()];
        let names = RustNames::new(&symbols);
        assert!(names.is_empty());
        assert_eq!(names.lookup(LEGACY_NEW.as_bytes()), None);
    }

    #[test]
    fn normalize_drops_only_inherent_brackets() {
        assert_eq!(normalize("<a::B>::new"), "a::B::new");
        assert_eq!(normalize("<a::B<c::D>>::new"), "a::B<c::D>::new");
        assert_eq!(normalize("<a::B as c::D>::fill"), "<a::B as c::D>::fill");
        assert_eq!(normalize("a::b"), "a::b");
        assert_eq!(normalize("<a::B>"), "<a::B>");
        assert_eq!(normalize("<<<"), "<<<");
        assert_eq!(normalize(">"), ">");
        assert_eq!(normalize("<"), "<");
    }

    #[test]
    fn hostile_names_are_bounded_and_never_panic() {
        let symbols = catalog();
        let names = RustNames::new(&symbols);
        // Longer than the cap, even if it would match.
        let long = format!(
            "_ZN6rustls{}3new17he8f5011296103992E",
            "1a".repeat(MAX_MANGLED)
        );
        assert_eq!(names.lookup(long.as_bytes()), None);
        // Not UTF-8, truncated, garbage after a valid start.
        assert_eq!(names.lookup(b"_ZN6rustls\xff\xfe3new\0"), None);
        assert_eq!(names.lookup(b"_ZN6rustls\0"), None);
        assert_eq!(names.lookup(b"_RNvCs_6rustlsB0_\0"), None);
        // A v0 name whose back-references expand without end is cut at MAX_DEMANGLED.
        let mut v0 = String::from("_RINvCs1_6rustls1f");
        for _ in 0..200 {
            v0.push_str("TB");
        }
        assert!(demangle(&v0).is_none_or(|d| d.len() <= MAX_DEMANGLED));
        // Every truncation and one-byte corruption of real names.
        for name in [LEGACY_NEW, LEGACY_FILL, V0_NEW, V0_FILL] {
            let bytes = name.as_bytes();
            for cut in 0..bytes.len() {
                let _ = names.lookup(&bytes[..cut]);
                for b in [0u8, b'0', b'9', b'B', b'_', b'<', 0xff] {
                    let mut m = bytes.to_vec();
                    m[cut] = b;
                    let _ = names.lookup(&m);
                }
            }
        }
    }
}
