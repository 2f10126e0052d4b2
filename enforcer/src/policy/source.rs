//! Where a policy comes from: a file (size-capped, UTF-8 checked) or the embedded default.

use std::io::Read as _;
use std::path::Path;

use super::{MAX_POLICY_BYTES, Policy, PolicyError, error, parse, parse_all};

/// Reads and parses the policy at `path`.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    load_all(path).map_err(|mut errors| errors.swap_remove(0))
}

/// [`load`] with every error of the file ([`parse_all`]).
pub fn load_all(path: &Path) -> Result<Policy, Vec<PolicyError>> {
    let name = path.display().to_string();
    let io_err = |error| PolicyError::Io {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::open(path).map_err(|e| vec![io_err(e)])?;
    let size = file.metadata().map_err(|e| vec![io_err(e)])?.len();
    if size > MAX_POLICY_BYTES as u64 {
        return Err(vec![error::too_large(&name, size)]);
    }
    // Files in /proc and pipes report size 0: the read itself is capped too.
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| vec![io_err(e)])?;
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(vec![error::too_large(&name, bytes.len() as u64)]);
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        vec![PolicyError::Invalid {
            file: name.clone(),
            line: None,
            column: None,
            key: None,
            message: format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        }]
    })?;
    parse_all(&text, &name)
}

/// Name under which the embedded default policy reports itself.
pub const EMBEDDED_SOURCE: &str = "<embedded policies/default.yaml>";

/// The policy used when none is given: audit mode, default deny, OpenSSL allowed.
pub fn embedded_default() -> Policy {
    const TEXT: &str = include_str!("../../../policies/default.yaml");
    // A unit test parses the same text, so this cannot fail in a tested build.
    parse(TEXT, EMBEDDED_SOURCE).unwrap_or_else(|e| panic!("embedded default policy: {e}"))
}
