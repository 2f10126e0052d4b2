//! cargo-auditable's dependency list: a `.dep-v0` section holding zlib-compressed JSON,
//! `{"packages":[{"name":"rustls","version":"0.23.46","source":"crates.io",...},...]}`, that
//! `cargo auditable build` links into a Rust program. It states the version of every crate the
//! program was built from, which the catalog's `version: [{ crate: NAME }]` reads.
//!
//! Bounded: a section above [`MAX_SECTION_BYTES`] is not read, inflating stops at
//! [`MAX_JSON_BYTES`] (a zlib bomb is an error, not an allocation), at most [`MAX_PACKAGES`]
//! entries are kept; serde_json limits nesting. Anything malformed is no list, never a panic.

use serde::Deserialize;

/// Largest `.dep-v0` section read.
pub(super) const MAX_SECTION_BYTES: u64 = 1 << 20;
/// Largest inflated JSON accepted.
pub(super) const MAX_JSON_BYTES: usize = 8 << 20;
/// Most packages kept.
pub(super) const MAX_PACKAGES: usize = 1 << 14;
/// Longest crate name or version kept.
const MAX_FIELD: usize = 64;

/// The section's name.
pub(super) const SECTION: &[u8] = b".dep-v0";

#[derive(Deserialize)]
struct Info {
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    version: String,
}

/// (crate, version) pairs of the list, or `None` if the section is not a valid one.
pub(super) fn crate_versions(section: &[u8]) -> Option<Vec<(String, String)>> {
    if section.len() as u64 > MAX_SECTION_BYTES {
        return None;
    }
    let json =
        miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(section, MAX_JSON_BYTES).ok()?;
    let info: Info = serde_json::from_slice(&json).ok()?;
    Some(
        info.packages
            .into_iter()
            .filter(|p| p.name.len() <= MAX_FIELD && p.version.len() <= MAX_FIELD)
            .take(MAX_PACKAGES)
            .map(|p| (p.name, p.version))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        miniz_oxide::deflate::compress_to_vec_zlib(bytes, 6)
    }

    #[test]
    fn reads_the_packages() {
        let json = br#"{"packages":[{"name":"rustls","version":"0.23.46","source":"crates.io","dependencies":[1]},{"name":"ring","version":"0.17.14","source":"crates.io","kind":"build"}],"format":1}"#;
        assert_eq!(
            crate_versions(&zlib(json)),
            Some(vec![
                ("rustls".into(), "0.23.46".into()),
                ("ring".into(), "0.17.14".into())
            ])
        );
    }

    #[test]
    fn malformed_lists_are_none() {
        assert_eq!(crate_versions(b""), None);
        assert_eq!(crate_versions(b"not zlib at all"), None);
        assert_eq!(crate_versions(&zlib(b"{\"packages\":")), None);
        assert_eq!(crate_versions(&zlib(b"[]")), None);
        assert_eq!(crate_versions(&zlib(&[b'['; 100_000])), None);
        // A bomb: 64 MiB of zeros inflates past the limit.
        let bomb = zlib(&vec![0u8; 64 << 20]);
        assert!((bomb.len() as u64) < MAX_SECTION_BYTES);
        assert_eq!(crate_versions(&bomb), None);
        // Truncations never panic.
        let good = zlib(br#"{"packages":[{"name":"rustls","version":"0.23.46"}]}"#);
        for cut in 0..good.len() {
            let _ = crate_versions(&good[..cut]);
        }
    }
}
