//! The path globs of `path`, `executables` and `cgroups`, and the hashes of `sha256`, as the
//! policy's keys write them.

use std::path::Path;

use globset::GlobMatcher;

/// A path glob, as written and compiled (`*` does not cross `/`; `**` does).
#[derive(Clone, Debug)]
pub struct PathGlob {
    pub text: String,
    matcher: GlobMatcher,
}

impl PathGlob {
    pub fn new(text: &str) -> Result<PathGlob, String> {
        if !text.starts_with('/') && !text.starts_with('*') {
            return Err("a path glob must be absolute (start with '/' or '*')".into());
        }
        let glob = globset::GlobBuilder::new(text)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| e.kind().to_string())?;
        Ok(PathGlob {
            text: text.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn is_match(&self, path: &Path) -> bool {
        self.matcher.is_match(path)
    }
}

impl PartialEq for PathGlob {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for PathGlob {}

/// A 64-digit hex SHA-256, lowercased.
pub fn parse_sha256(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}
