//! The JA4 cache (`JA4_CACHE`): the policy's verdict on a ClientHello, keyed by exactly the
//! fields its JA4 is made of, so the kernel can judge a flow whose hello it has seen before
//! without waiting for userspace to hash it (`enforcer-ebpf/src/offer.rs`, `posture.rs`).
//!
//! The key holds the fields themselves, not a digest of them: two hellos with the same key have
//! the same JA4 (a key is finer than a JA4: the same JA4 from other field orders is another
//! key, which costs a miss, never a wrong verdict). GREASE values, which JA4 ignores and some
//! clients pick at random per connection, are all written as `0x0a0a`. The policy's JA4
//! patterns are numbered per policy: the key carries the policy's `generation`, and the kernel
//! reads the current one from `JA4_GENERATION` (0 while a policy is being written: no lookups).

use crate::offer::{
    ALPN_KEPT, MAX_EXTENSIONS, MAX_SIGNATURE_SCHEMES, MAX_SUITES, MAX_VERSIONS, OfferedEvent, field,
};

/// `LruHashMap<Ja4Key, u64>`: the patterns a JA4 matched (`Ja4Verdict::matched`).
pub const JA4_CACHE: &str = "JA4_CACHE";
/// `Array<u64>` of one element: the generation of the policy the cache's verdicts are for.
pub const JA4_GENERATION: &str = "JA4_GENERATION";
/// Entries of `JA4_CACHE`: distinct ClientHellos (clients, builds and configurations) a host
/// makes or receives; more are evicted, least recently used first.
pub const JA4_CACHE_ENTRIES: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ja4Key {
    pub generation: u64,
    pub read: u16,
    pub legacy_version: u16,
    pub suite_count: u16,
    pub extension_count: u16,
    pub version_count: u8,
    pub signature_scheme_count: u8,
    pub sni: u8,
    pub alpn_len: u8,
    pub alpn_first: u8,
    pub alpn_last: u8,
    pub _pad: [u8; 6],
    pub suites: [u16; MAX_SUITES],
    pub extensions: [u16; MAX_EXTENSIONS],
    pub versions: [u16; MAX_VERSIONS],
    pub signature_schemes: [u16; MAX_SIGNATURE_SCHEMES],
}
const _: () = assert!(core::mem::size_of::<Ja4Key>() == 304);
const _: () = assert!(ALPN_KEPT >= 1);

/// RFC 8701's reserved values (`0x0a0a`, `0x1a1a`, ... `0xfafa`).
#[inline(always)]
pub const fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// The first `count` values of `from` (GREASE as `0x0a0a`), zeros after.
#[inline(always)]
fn kept<const N: usize>(from: &[u16; N], count: usize, to: &mut [u16; N]) {
    for i in 0..N {
        let v = from[i];
        to[i] = match i < count {
            true if is_grease(v) => 0x0a0a,
            true => v,
            false => 0,
        };
    }
}

impl Ja4Key {
    /// Writes the key of `e` into `key` (in place: it is larger than a BPF stack frame wants).
    /// `None`-like: `false` when `e` has no JA4 (a field it needs was not read in full).
    #[inline(always)]
    pub fn fill(key: &mut Ja4Key, e: &OfferedEvent, generation: u64) -> bool {
        if e.read & field::JA4 != field::JA4 {
            return false;
        }
        key.generation = generation;
        key.read = e.read & field::JA4;
        key.legacy_version = e.legacy_version;
        key.suite_count = e.suite_count;
        key.extension_count = e.extension_count;
        key.version_count = e.version_count;
        key.signature_scheme_count = e.signature_scheme_count;
        key.sni = e.sni;
        key.alpn_len = e.alpn_len;
        key.alpn_first = e.alpn[0];
        key.alpn_last = e.alpn_last;
        key._pad = [0; 6];
        kept(&e.suites, e.suite_count as usize, &mut key.suites);
        kept(
            &e.extensions,
            e.extension_count as usize,
            &mut key.extensions,
        );
        kept(&e.versions, e.version_count as usize, &mut key.versions);
        kept(
            &e.signature_schemes,
            e.signature_scheme_count as usize,
            &mut key.signature_schemes,
        );
        true
    }

    /// The key of `e` (userspace).
    pub fn of(e: &OfferedEvent, generation: u64) -> Option<Ja4Key> {
        let mut key = Ja4Key::zeroed();
        Ja4Key::fill(&mut key, e, generation).then_some(key)
    }

    pub const fn zeroed() -> Ja4Key {
        Ja4Key {
            generation: 0,
            read: 0,
            legacy_version: 0,
            suite_count: 0,
            extension_count: 0,
            version_count: 0,
            signature_scheme_count: 0,
            sni: 0,
            alpn_len: 0,
            alpn_first: 0,
            alpn_last: 0,
            _pad: [0; 6],
            suites: [0; MAX_SUITES],
            extensions: [0; MAX_EXTENSIONS],
            versions: [0; MAX_VERSIONS],
            signature_schemes: [0; MAX_SIGNATURE_SCHEMES],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, without implicit padding (asserted size), any bit pattern valid.
    unsafe impl aya::Pod for super::Ja4Key {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(suites: &[u16], extensions: &[u16]) -> OfferedEvent {
        let mut e = OfferedEvent {
            read: field::JA4,
            legacy_version: 0x0303,
            suite_count: suites.len() as u16,
            extension_count: extensions.len() as u16,
            ..Default::default()
        };
        e.suites[..suites.len()].copy_from_slice(suites);
        e.extensions[..extensions.len()].copy_from_slice(extensions);
        e
    }

    #[test]
    fn stale_tails_and_grease_do_not_change_the_key_and_the_fields_do() {
        let a = hello(&[0x1301, 0x2a2a, 0x1302], &[0x0000, 0x000a]);
        let mut b = hello(&[0x1301, 0xdada, 0x1302], &[0x0000, 0x000a]);
        b.suites[7] = 0x1234; // beyond the count: what an earlier hello left in the scratch
        assert_eq!(Ja4Key::of(&a, 7), Ja4Key::of(&b, 7));
        assert_ne!(Ja4Key::of(&a, 7), Ja4Key::of(&a, 8), "another policy");
        let c = hello(&[0x1302, 0x1301], &[0x0000, 0x000a]);
        assert_ne!(Ja4Key::of(&a, 7), Ja4Key::of(&c, 7));
        let mut unread = a;
        unread.read &= !field::SUITES;
        assert_eq!(Ja4Key::of(&unread, 7), None, "no JA4, no key");
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && !is_grease(0x0a1a));
    }
}
