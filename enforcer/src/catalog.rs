//! The catalog: what identifies each TLS library family in an ELF file, which of its functions to
//! probe, and where it states its version. It is data: `catalog/default.yaml` is embedded in the
//! binary, and a policy may extend it with a `catalog:` section of the same shape (families it
//! defines are tried first; one with a built-in id replaces the built-in definition).
//!
//! A file belongs to a family when it matches one `identify` alternative: it **defines** every
//! symbol of `all` and none of `none` (dynamic symbol table, or `.symtab` for unstripped static
//! builds), never by its file name: a vendored or renamed `libssl` is still OpenSSL, and a file
//! called `libssl3.so` is NSS, not OpenSSL. Families are tried in order; the first match wins.
//! See the comments in `catalog/default.yaml` for why each symbol was chosen.
//!
//! Some libraries do their work through a second file, the **companion**: OpenSSL's version text
//! is in libcrypto, NSS's I/O goes through NSPR's `PR_Write`/`PR_Read` in libnspr4. A family
//! names the symbols its companion defines; probes and version texts may be looked for `in:
//! companion`. Which file is the companion of which library is decided by discovery
//! ([`crate::libraries`]).

mod schema;

use std::sync::{Arc, OnceLock};

pub use schema::{CatalogError, RawCatalog, Seg};

use crate::family::Family;

/// Where a probe or version text is looked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// The library file itself.
    #[default]
    #[serde(rename = "self")]
    SelfFile,
    /// The library's companion file.
    Companion,
}

/// How the family's functions are called, and so how they are found and probed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Abi {
    /// The platform C ABI: symbols from `.dynsym` / `.symtab`, a uretprobe on each function,
    /// calls tracked per thread.
    #[default]
    C,
    /// Go's register ABI (amd64, Go 1.17+): function names from Go's own table `.gopclntab`
    /// (stripped binaries keep it), uprobes on the function's return instructions instead of
    /// uretprobes, calls tracked per goroutine, version from the Go build info. See
    /// `crate::libraries::go`.
    Go,
    /// A language runtime whose TLS is code it compiles itself (JSSE in a JVM, compiled by the
    /// JIT): there is no native TLS function to probe, so the family has no probes. Its file
    /// (`libjvm.so`) is identified and listed; a process that maps it and sends TLS no native
    /// library made is judged by the policy's rules for the family (docs/policy.md, "Java").
    Jvm,
}

/// A prefix some builds put before every symbol: `head`, then (if `tail` is set) a run of digits
/// and underscores, then `tail`. `aws_lc_*_` matches `aws_lc_0_28_0_SSL_write`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolPrefix {
    pub head: String,
    pub tail: Option<String>,
}

impl SymbolPrefix {
    /// Longest run the `*` stands for.
    pub const MAX_RUN: usize = 32;

    /// The candidate rests of `name` once this prefix is taken off, longest prefix first (a
    /// `*` may stop at several places: `aws_lc_0_28_0_` or `aws_lc_0_28_`). Never empty rests.
    pub fn strip<'n>(&self, name: &'n [u8]) -> Vec<&'n [u8]> {
        let Some(rest) = name.strip_prefix(self.head.as_bytes()) else {
            return Vec::new();
        };
        let Some(tail) = &self.tail else {
            return [rest].into_iter().filter(|r| !r.is_empty()).collect();
        };
        let run = rest
            .iter()
            .take(Self::MAX_RUN)
            .take_while(|b| b.is_ascii_digit() || **b == b'_')
            .count();
        (1..=run)
            .rev()
            .filter_map(|k| rest[k..].strip_prefix(tail.as_bytes()))
            .filter(|r| !r.is_empty())
            .collect()
    }
}

/// Whether a catalog symbol is a Rust path (`rustls::client::hs::f`, `<T as Trait>::f`), looked
/// for among the demangled names of `.symtab` (`crate::libraries`, `elf/rust.rs`), rather than a
/// C or Go name compared byte for byte.
pub fn is_rust_path(name: &str) -> bool {
    name.contains("::")
}

/// One identify alternative.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alternative {
    pub all: Vec<String>,
    pub none: Vec<String>,
}

/// One function to put a uprobe (and uretprobe) on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    /// Symbol name without version suffix (`SSL_write`, not `SSL_write@@OPENSSL_3.0.0`).
    pub symbol: String,
    /// What the function does: one of `enforcer_common::flow::op::*`.
    pub op: u8,
    pub place: Place,
}

/// Where a version is stated: `prefix` followed by a version, in the read-only data of `place`;
/// or, with `krate` set (and `prefix` empty), that crate's version in the cargo-auditable list of
/// `place` (`crate: rustls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionSpec {
    pub place: Place,
    pub prefix: String,
    pub krate: Option<String>,
}

/// Where a family definition came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Builtin,
    /// A policy file's `catalog:` section; `line` of the family's mapping.
    Policy {
        source: String,
        line: usize,
    },
}

/// How to recognise one family and what to probe in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyDef {
    pub family: Family,
    pub description: String,
    pub identify: Vec<Alternative>,
    /// Symbols the companion file defines (all of them); empty: no companion.
    pub companion: Vec<String>,
    pub probes: Vec<ProbeSpec>,
    pub version: Vec<VersionSpec>,
    pub abi: Abi,
    pub origin: Origin,
}

impl FamilyDef {
    /// True if the file (given by a predicate telling whether it defines a symbol) matches.
    pub fn matches(&self, defines: &impl Fn(&str) -> bool) -> bool {
        self.identify
            .iter()
            .any(|a| a.all.iter().all(|s| defines(s)) && !a.none.iter().any(|s| defines(s)))
    }

    /// True if the family is a runtime's whose TLS is not a native library's (`abi: jvm`): it has
    /// no probes, and its files are listed but never probed.
    pub fn is_runtime(&self) -> bool {
        self.abi == Abi::Jvm
    }

    /// True if the file defines every companion symbol (false when there is no companion).
    pub fn is_companion(&self, defines: &impl Fn(&str) -> bool) -> bool {
        !self.companion.is_empty() && self.companion.iter().all(|s| defines(s))
    }
}

/// A validated catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    families: Vec<FamilyDef>,
    /// Every symbol any family looks at, sorted, without duplicates.
    symbols: Vec<String>,
    /// Prefixes a defined symbol may carry and still count as the unprefixed name.
    prefixes: Vec<SymbolPrefix>,
}

/// Name under which the embedded catalog reports itself.
pub const EMBEDDED_SOURCE: &str = "<embedded catalog/default.yaml>";
const EMBEDDED_TEXT: &str = include_str!("../../catalog/default.yaml");

impl Catalog {
    /// The built-in catalog (`catalog/default.yaml`).
    pub fn embedded() -> Arc<Catalog> {
        static CATALOG: OnceLock<Arc<Catalog>> = OnceLock::new();
        CATALOG
            .get_or_init(|| {
                // A unit test parses the same text, so this cannot fail in a tested build.
                let raw: RawCatalog = serde_yaml::from_str(EMBEDDED_TEXT)
                    .unwrap_or_else(|e| panic!("{EMBEDDED_SOURCE}: {e}"));
                let prefixes = schema::symbol_prefixes(&raw.symbol_prefixes)
                    .unwrap_or_else(|e| panic!("{EMBEDDED_SOURCE}: {e}"));
                let families = schema::validate(raw, &|_| Origin::Builtin)
                    .unwrap_or_else(|e| panic!("{EMBEDDED_SOURCE}: {e}"));
                Arc::new(Catalog::new(families, prefixes))
            })
            .clone()
    }

    fn new(families: Vec<FamilyDef>, prefixes: Vec<SymbolPrefix>) -> Catalog {
        let mut symbols: Vec<String> = families
            .iter()
            .flat_map(|f| {
                let ids = f.identify.iter().flat_map(|a| a.all.iter().chain(&a.none));
                ids.chain(&f.companion)
                    .chain(f.probes.iter().map(|p| &p.symbol))
            })
            .cloned()
            .collect();
        symbols.sort();
        symbols.dedup();
        Catalog {
            families,
            symbols,
            prefixes,
        }
    }

    /// This catalog extended by a policy's `catalog:` section: its families are tried first, in
    /// file order, and replace built-in families of the same id. `line_of(index)` gives the line
    /// of the section's `index`-th family, for reports.
    pub fn extend(
        &self,
        raw: RawCatalog,
        source: &str,
        line_of: &dyn Fn(usize) -> usize,
    ) -> Result<Catalog, CatalogError> {
        let mut prefixes = schema::symbol_prefixes(&raw.symbol_prefixes)?;
        let builtin: Vec<SymbolPrefix> = self
            .prefixes
            .iter()
            .filter(|p| !prefixes.contains(p))
            .cloned()
            .collect();
        prefixes.extend(builtin);
        let added = schema::validate(raw, &|index| Origin::Policy {
            source: source.to_owned(),
            line: line_of(index),
        })?;
        let mut families = added.clone();
        families.extend(
            self.families
                .iter()
                .filter(|f| !added.iter().any(|a| a.family == f.family))
                .cloned(),
        );
        schema::check_count(families.len())?;
        Ok(Catalog::new(families, prefixes))
    }

    pub fn families(&self) -> &[FamilyDef] {
        &self.families
    }

    /// The family with this id.
    pub fn family(&self, id: &str) -> Option<&FamilyDef> {
        self.families.iter().find(|f| f.family == id)
    }

    /// Every symbol any family looks at (identifying, excluding, companion or probed), sorted and
    /// without duplicates. A symbol table scan only has to remember these.
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    /// Symbol prefixes (policy ones first).
    pub fn symbol_prefixes(&self) -> &[SymbolPrefix] {
        &self.prefixes
    }

    /// True if some symbol is a Rust path (then Rust programs' `.dep-v0` lists are read too).
    pub fn has_rust(&self) -> bool {
        self.symbols.iter().any(|s| is_rust_path(s))
    }

    /// True if some family uses Go's ABI (then Go binaries' function tables are read).
    pub fn has_go(&self) -> bool {
        self.families.iter().any(|f| f.abi == Abi::Go)
    }

    /// The first family the file matches, given a predicate telling whether it defines a symbol.
    pub fn match_file(&self, defines: impl Fn(&str) -> bool) -> Option<&FamilyDef> {
        self.families.iter().find(|f| f.matches(&defines))
    }
}

#[cfg(test)]
mod tests;
