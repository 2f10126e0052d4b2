//! The catalog's YAML shape (shared by `catalog/default.yaml` and a policy's `catalog:` section)
//! and its validation. Everything a policy file says is untrusted: names are checked for shape and
//! length, lists are capped.

use std::fmt;

use enforcer_common::flow::op;
use serde::Deserialize;

use super::{Abi, Alternative, FamilyDef, Origin, Place, ProbeSpec, SymbolPrefix, VersionSpec};
use crate::family::{Family, MAX_ID_LEN};

/// Most families a catalog may hold (built-in and added together).
pub const MAX_FAMILIES: usize = 64;
/// Most entries of any one list (identify alternatives, symbols, probes, version texts).
pub const MAX_LIST: usize = 64;
/// Longest symbol name accepted.
pub const MAX_SYMBOL_LEN: usize = 200;
/// Longest version prefix accepted.
pub const MAX_PREFIX_LEN: usize = 64;

/// `catalog:` / `catalog/default.yaml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    pub families: Vec<RawFamily>,
    /// Prefixes some builds put before every symbol name (`aws_lc_*_`, a `BORINGSSL_PREFIX`).
    #[serde(default)]
    pub symbol_prefixes: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFamily {
    id: String,
    #[serde(default)]
    description: Option<String>,
    identify: Vec<RawAlternative>,
    #[serde(default)]
    companion: Vec<String>,
    #[serde(default)]
    probes: Vec<RawProbe>,
    #[serde(default)]
    version: Vec<RawVersion>,
    #[serde(default)]
    abi: Abi,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlternative {
    all: Vec<String>,
    #[serde(default)]
    none: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OpName {
    Handshake,
    Read,
    Write,
    Random,
    Session,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    symbol: String,
    op: OpName,
    /// `op: random` only: which argument (0-based) is the output buffer; its length is the next.
    #[serde(default)]
    buffer: Option<u8>,
    #[serde(default, rename = "in")]
    place: Place,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    #[serde(rename = "in")]
    place: Place,
    #[serde(default)]
    prefix: Option<String>,
    /// A Rust crate whose version cargo-auditable's `.dep-v0` list states.
    #[serde(default, rename = "crate")]
    krate: Option<String>,
}

/// One step of the path to the offending node, below the catalog's top level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A catalog that parsed but makes no sense. `path` locates the node (relative to the catalog).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", render(path))]
pub struct CatalogError {
    pub path: Vec<Seg>,
    pub message: String,
}

fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k)
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn err(path: Vec<Seg>, message: impl fmt::Display) -> CatalogError {
    CatalogError {
        path,
        message: message.to_string(),
    }
}

fn quoted(s: &str) -> String {
    let mut out: String = s.chars().take(60).flat_map(char::escape_debug).collect();
    if s.chars().count() > 60 {
        out.push_str("...");
    }
    out
}

pub(super) fn check_count(n: usize) -> Result<(), CatalogError> {
    if n > MAX_FAMILIES {
        return Err(err(
            vec![Seg::Key("families")],
            format!("{n} families, more than the limit of {MAX_FAMILIES}"),
        ));
    }
    Ok(())
}

/// Validates a parsed catalog into family definitions. `origin(index)` tags each family.
pub(super) fn validate(
    raw: RawCatalog,
    origin: &dyn Fn(usize) -> Origin,
) -> Result<Vec<FamilyDef>, CatalogError> {
    check_count(raw.families.len())?;
    let mut out: Vec<FamilyDef> = Vec::with_capacity(raw.families.len());
    for (i, f) in raw.families.into_iter().enumerate() {
        let at = |rest: &[Seg]| {
            let mut p = vec![Seg::Key("families"), Seg::Index(i)];
            p.extend_from_slice(rest);
            p
        };
        let family = Family::new(&f.id).ok_or_else(|| {
            err(
                at(&[Seg::Key("id")]),
                format!(
                    "invalid family id '{}' (expected 1 to {MAX_ID_LEN} lowercase letters, digits, '-' or '_', starting with a letter)",
                    quoted(&f.id)
                ),
            )
        })?;
        if let Some(j) = out.iter().position(|o| o.family == family) {
            return Err(err(
                at(&[Seg::Key("id")]),
                format!("family '{family}' is defined twice (first as families[{j}])"),
            ));
        }
        let description = f.description.unwrap_or_default();
        if description.chars().count() > 200 || description.contains(char::is_control) {
            return Err(err(
                at(&[Seg::Key("description")]),
                "description must be one line of at most 200 characters",
            ));
        }
        if f.identify.is_empty() {
            return Err(err(
                at(&[Seg::Key("identify")]),
                "at least one identify alternative is required",
            ));
        }
        list_len(f.identify.len(), at(&[Seg::Key("identify")]))?;
        let mut identify = Vec::new();
        for (k, a) in f.identify.into_iter().enumerate() {
            let here = |key| at(&[Seg::Key("identify"), Seg::Index(k), Seg::Key(key)]);
            if a.all.is_empty() {
                return Err(err(
                    here("all"),
                    "at least one symbol is required (a family is recognised by the symbols it defines)",
                ));
            }
            symbols(&a.all, &here("all"))?;
            symbols(&a.none, &here("none"))?;
            if let Some(s) = a.all.iter().find(|s| a.none.contains(s)) {
                return Err(err(
                    here("none"),
                    format!("'{}' is both required and excluded", quoted(s)),
                ));
            }
            identify.push(Alternative {
                all: a.all,
                none: a.none,
            });
        }
        symbols(&f.companion, &at(&[Seg::Key("companion")]))?;
        let has_companion = !f.companion.is_empty();
        if f.abi == Abi::Jvm && (has_companion || !f.probes.is_empty()) {
            let key = if has_companion { "companion" } else { "probes" };
            return Err(err(
                at(&[Seg::Key(key)]),
                "a family with 'abi: jvm' has no probes and no companion (its TLS is code the runtime compiles, with no native function to probe)",
            ));
        }
        if f.probes.is_empty() && f.abi != Abi::Jvm {
            return Err(err(
                at(&[Seg::Key("probes")]),
                "at least one probe is required",
            ));
        }
        list_len(f.probes.len(), at(&[Seg::Key("probes")]))?;
        let mut probes = Vec::new();
        for (k, p) in f.probes.into_iter().enumerate() {
            let here = |key| at(&[Seg::Key("probes"), Seg::Index(k), Seg::Key(key)]);
            symbol(&p.symbol, here("symbol"))?;
            if p.place == Place::Companion && !has_companion {
                return Err(err(
                    here("in"),
                    "'in: companion' needs the family's 'companion' symbols",
                ));
            }
            let op = match (p.op, p.buffer) {
                (OpName::Random, Some(0)) => op::RANDOM_BUFFER_ARG0,
                (OpName::Random, Some(1)) => op::RANDOM_BUFFER_ARG1,
                (OpName::Random, Some(_)) => {
                    return Err(err(
                        here("buffer"),
                        "the output buffer must be argument 0 or 1 (its length the next one)",
                    ));
                }
                (OpName::Random, None) => {
                    return Err(err(
                        here("op"),
                        "'op: random' needs 'buffer': the argument (0 or 1) that is the output",
                    ));
                }
                (_, Some(_)) => {
                    return Err(err(here("buffer"), "'buffer' is for 'op: random' only"));
                }
                (OpName::Handshake, None) => op::HANDSHAKE,
                (OpName::Read, None) => op::READ,
                (OpName::Write, None) => op::WRITE,
                (OpName::Session, None) => op::SESSION,
            };
            if f.abi == Abi::Go && (op::is_random(op) || op == op::SESSION) {
                return Err(err(
                    here("op"),
                    "'op: random' and 'op: session' are for C-ABI libraries",
                ));
            }
            probes.push(ProbeSpec {
                symbol: p.symbol,
                op,
                place: p.place,
            });
        }
        if f.abi == Abi::Go && (has_companion || !f.version.is_empty()) {
            let key = if has_companion {
                "companion"
            } else {
                "version"
            };
            return Err(err(
                at(&[Seg::Key(key)]),
                "a family with 'abi: go' has no companion and takes its version from the Go build info",
            ));
        }
        list_len(f.version.len(), at(&[Seg::Key("version")]))?;
        let mut version = Vec::new();
        for (k, v) in f.version.into_iter().enumerate() {
            let here = |key| at(&[Seg::Key("version"), Seg::Index(k), Seg::Key(key)]);
            if v.place == Place::Companion && !has_companion {
                return Err(err(
                    here("in"),
                    "'in: companion' needs the family's 'companion' symbols",
                ));
            }
            let (prefix, krate) = match (v.prefix, v.krate) {
                (Some(p), None) => (p, None),
                (None, Some(c)) => (String::new(), Some(c)),
                _ => {
                    return Err(err(
                        here("prefix"),
                        "a version entry has either 'prefix' (a text) or 'crate' (a Rust crate in cargo-auditable's list)",
                    ));
                }
            };
            if let Some(c) = &krate
                && (c.is_empty()
                    || c.len() > MAX_PREFIX_LEN
                    || !c
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            {
                return Err(err(
                    here("crate"),
                    format!(
                        "a crate name is 1 to {MAX_PREFIX_LEN} ASCII letters, digits, '_' or '-'"
                    ),
                ));
            }
            if krate.is_none()
                && (prefix.is_empty()
                    || prefix.len() > MAX_PREFIX_LEN
                    || !prefix.bytes().all(|b| (0x20..0x7f).contains(&b)))
            {
                return Err(err(
                    here("prefix"),
                    format!("a version prefix is 1 to {MAX_PREFIX_LEN} printable ASCII characters"),
                ));
            }
            version.push(VersionSpec {
                place: v.place,
                prefix,
                krate,
            });
        }
        out.push(FamilyDef {
            family,
            description,
            identify,
            companion: f.companion,
            probes,
            version,
            abi: f.abi,
            origin: origin(i),
        });
    }
    Ok(out)
}

/// Validates `symbol_prefixes`: each 1 to [`MAX_PREFIX_LEN`] printable characters without `@`,
/// with at most one `*` (a run of digits and underscores, as in `aws_lc_0_28_0_`).
pub(super) fn symbol_prefixes(raw: &[String]) -> Result<Vec<SymbolPrefix>, CatalogError> {
    let path = vec![Seg::Key("symbol_prefixes")];
    list_len(raw.len(), path.clone())?;
    let mut out = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let mut here = path.clone();
        here.push(Seg::Index(i));
        let ok = !p.is_empty()
            && p.len() <= MAX_PREFIX_LEN
            && p.bytes().all(|b| b.is_ascii_graphic() && b != b'@')
            && p.bytes().filter(|&b| b == b'*').count() <= 1
            && p != "*";
        if !ok {
            return Err(err(
                here,
                format!(
                    "invalid symbol prefix '{}' (expected 1 to {MAX_PREFIX_LEN} printable ASCII characters without '@' or spaces, at most one '*', not only '*')",
                    quoted(p)
                ),
            ));
        }
        let (head, tail) = match p.split_once('*') {
            Some((h, t)) => (h.to_owned(), Some(t.to_owned())),
            None => (p.clone(), None),
        };
        out.push(SymbolPrefix { head, tail });
    }
    Ok(out)
}

fn list_len(n: usize, path: Vec<Seg>) -> Result<(), CatalogError> {
    if n > MAX_LIST {
        return Err(err(
            path,
            format!("{n} entries, more than the limit of {MAX_LIST}"),
        ));
    }
    Ok(())
}

fn symbols(list: &[String], path: &[Seg]) -> Result<(), CatalogError> {
    list_len(list.len(), path.to_vec())?;
    for (i, s) in list.iter().enumerate() {
        let mut p = path.to_vec();
        p.push(Seg::Index(i));
        symbol(s, p)?;
    }
    Ok(())
}

fn symbol(s: &str, path: Vec<Seg>) -> Result<(), CatalogError> {
    // A Rust path (`<rustls::crypto::ring::Ring as rustls::crypto::SecureRandom>::fill`) may hold
    // single spaces between words; a C or Go name holds none.
    let rust = super::is_rust_path(s);
    let ok = !s.is_empty()
        && s.len() <= MAX_SYMBOL_LEN
        && s.bytes()
            .all(|b| (b.is_ascii_graphic() || (rust && b == b' ')) && b != b'@')
        && !(rust && (s.starts_with(' ') || s.ends_with(' ') || s.contains("  ")));
    if ok {
        Ok(())
    } else {
        Err(err(
            path,
            format!(
                "invalid symbol name '{}' (expected 1 to {MAX_SYMBOL_LEN} printable ASCII characters without '@' or spaces; a Rust path with '::' may have single spaces between words)",
                quoted(s)
            ),
        ))
    }
}
