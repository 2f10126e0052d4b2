//! From scanned candidate files to [`Library`] values: family, companion, probe targets,
//! identity, ids.
//!
//! **Companion choice.** For a library of a family with `companion` symbols, the companion is a
//! scanned file (not the library itself) that defines all of them and is mapped by the most of
//! the library's processes; without shared processes, one in the library's directory; else none
//! (its companion probes and version texts are then missing, and it says so in a debug log).
//!
//! **Shared companions.** A uprobe lives on an inode and carries one library id. Two libraries of
//! one family sharing a companion (a copied `libssl3.so` using the system `libnspr4.so`) cannot
//! both own the companion's probes, or every call would be attributed twice and the innermost
//! (last attached) would win at random: the first library in path order keeps them, the others
//! lose their companion probes with a warning.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::elf::file::{Source, Verified};
use super::elf::{self, ElfInfo};
use super::{FileRef, Identity, Library, LibraryError, ProbeTarget, identity, open};
use crate::catalog::{Catalog, Place};
use enforcer_common::flow::op;

/// One candidate file that the catalog cares about.
pub(super) struct Scanned {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub pids: BTreeSet<u32>,
    pub mapped_as: BTreeSet<PathBuf>,
    info: ElfInfo,
    /// The version text after each prefix its families look for in it (see [`wanted_prefixes`]).
    versions: HashMap<String, Option<String>>,
    /// Libraries only, not companions (and not above [`identity::MAX_HASH_BYTES`]).
    sha256: Option<String>,
    /// Index of the family it belongs to, in the catalog's order.
    pub family: Option<usize>,
    /// Indexes of the families it is a companion for.
    companion_of: Vec<usize>,
}

/// Opens `path`, checks it is still the file `key` names, and scans it.
pub(super) fn scan_path(
    path: &Path,
    key: (u64, u64),
    catalog: &Catalog,
    companion_only: bool,
) -> Result<Option<Scanned>, LibraryError> {
    let (file, md) = open(path)?;
    if !md.is_file() || (md.dev(), md.ino()) != key {
        tracing::debug!(path = %path.display(), "file replaced while scanning: skipped");
        return Ok(None);
    }
    scan(file, &md, path, catalog, companion_only)
}

/// Scans an opened regular file: `None` unless it belongs to a family or is a companion (only
/// the latter with `companion_only`).
///
/// Symbols, probes, build-id, version texts and hash all come from bytes read through one
/// [`Source`] and verified by its last pass, or the file is [`LibraryError::Changed`]: a file
/// rewritten meanwhile never gets the identity of other contents, and a torn read never makes a
/// library look like "not TLS" or "malformed".
pub(super) fn scan(
    file: File,
    md: &fs::Metadata,
    path: &Path,
    catalog: &Catalog,
    companion_only: bool,
) -> Result<Option<Scanned>, LibraryError> {
    let useful = |defines: &dyn Fn(&str) -> bool| {
        (!companion_only && catalog.match_file(defines).is_some())
            || catalog.families().iter().any(|f| f.is_companion(&defines))
    };
    let io_err = |source| LibraryError::Io {
        path: path.to_owned(),
        source,
    };
    let changed = || LibraryError::Changed {
        path: path.to_owned(),
    };
    let src = Source::new(file, md.len());
    let info = match elf::read_file(&src, path, catalog, &useful) {
        Ok(Some(info)) => info,
        // What was read must still be there, or "not a library" may be a torn read's.
        Ok(None) => {
            return match src.verify(false).map_err(io_err)? {
                Verified::Same { .. } => Ok(None),
                Verified::Changed => Err(changed()),
            };
        }
        Err(e) => {
            return match src.verify(false) {
                Ok(Verified::Changed) => Err(changed()),
                _ => Err(e),
            };
        }
    };
    let defines = |s: &str| info.defines(catalog, s);
    let family = match companion_only {
        true => None,
        false => catalog.families().iter().position(|f| f.matches(&defines)),
    };
    let companion_of: Vec<usize> = (0..catalog.families().len())
        .filter(|&i| catalog.families()[i].is_companion(&defines))
        .collect();
    let prefixes = wanted_prefixes(catalog, family, &companion_of);
    let texts = identity::version_texts(&src, &prefixes);
    let versions = prefixes.iter().map(|p| p.to_string()).zip(texts).collect();
    let hash = family.is_some() && md.len() <= identity::MAX_HASH_BYTES;
    let sha256 = match src.verify(hash).map_err(io_err)? {
        Verified::Same { sha256 } => sha256,
        Verified::Changed => return Err(changed()),
    };
    Ok(Some(Scanned {
        path: path.to_owned(),
        dev: md.dev(),
        ino: md.ino(),
        len: md.len(),
        pids: BTreeSet::new(),
        mapped_as: BTreeSet::new(),
        info,
        versions,
        sha256,
        family,
        companion_of,
    }))
}

/// The version prefixes looked for in a file: its own family's (`place: self`) and those of the
/// families it is a companion for (`place: companion`), each once.
fn wanted_prefixes<'c>(
    catalog: &'c Catalog,
    family: Option<usize>,
    companion_of: &[usize],
) -> Vec<&'c str> {
    let families = catalog.families();
    let own = family.into_iter().flat_map(|f| {
        families[f]
            .version
            .iter()
            .filter(|v| v.place == Place::SelfFile)
    });
    let theirs = companion_of.iter().flat_map(|&f| {
        families[f]
            .version
            .iter()
            .filter(|v| v.place == Place::Companion)
    });
    let mut out: Vec<&str> = Vec::new();
    for v in own.chain(theirs).filter(|v| v.krate.is_none()) {
        if !out.contains(&v.prefix.as_str()) {
            out.push(&v.prefix);
        }
    }
    out
}

/// The libraries among `files`, sorted by path, with ids 1, 2, ...
pub(super) fn libraries(files: Vec<Scanned>, catalog: &Catalog) -> Vec<Library> {
    let mut out = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let Some(fi) = file.family else { continue };
        let def = &catalog.families()[fi];
        let companion = choose_companion(&files, index, fi);
        let own = def.probes.iter().filter(|p| p.place == Place::SelfFile);
        let mut probes = file
            .info
            .probe_targets(catalog, own, false, def.abi, file.len, &file.path);
        if let Some(c) = companion {
            let theirs = def.probes.iter().filter(|p| p.place == Place::Companion);
            probes.extend(
                c.info
                    .probe_targets(catalog, theirs, true, def.abi, c.len, &c.path),
            );
        } else if !def.companion.is_empty() {
            tracing::debug!(path = %file.path.display(), family = %def.family, "no companion found");
        }
        if probes.is_empty() && !def.is_runtime() {
            tracing::debug!(
                path = %file.path.display(), family = %def.family,
                "identified, but none of its probe functions can be probed: skipped"
            );
            continue;
        }
        // A Go binary states its version in its build info, not in a text.
        let mut version = file.info.go.as_ref().and_then(|g| g.version.clone());
        for spec in &def.version {
            let target = match spec.place {
                Place::SelfFile => Some(file),
                Place::Companion => companion,
            };
            if let Some(t) = target {
                version = match &spec.krate {
                    Some(krate) => t
                        .info
                        .crates
                        .iter()
                        .find(|(name, _)| name == krate)
                        .map(|(_, v)| v.clone()),
                    None => t.versions.get(&spec.prefix).cloned().flatten(),
                };
            }
            if version.is_some() {
                break;
            }
        }
        // A JVM's own text first (it is part of the file identified), else its JDK's `release`.
        if def.is_runtime() && version.is_none() {
            version = super::jvm::release_version(&file.path);
        }
        out.push(Library {
            family: def.family.clone(),
            path: file.path.clone(),
            dev: file.dev,
            ino: file.ino,
            probes,
            pids: file.pids.iter().copied().collect(),
            mapped_as: file.mapped_as.iter().cloned().collect(),
            identity: Identity {
                size: file.len,
                build_id: file.info.build_id.clone(),
                sha256: file.sha256.clone(),
                version,
            },
            companion: companion.map(|c| FileRef {
                path: c.path.clone(),
                dev: c.dev,
                ino: c.ino,
            }),
        });
    }
    out.sort_by(|a, b| {
        a.path
            .cmp(&b.path)
            .then((a.dev, a.ino).cmp(&(b.dev, b.ino)))
    });
    let mut owners: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // A companion's I/O functions carry one library id per probe (NSS's NSPR): a second library
    // sharing the companion loses them. Random sources are exempt: each library's probe records
    // only randoms asked for inside its own TLS calls, so two libssl copies sharing one
    // libcrypto each get theirs.
    let shared = |p: &ProbeTarget| p.in_companion && !op::is_random(p.op);
    out.retain_mut(|lib| {
        let Some(c) = &lib.companion else { return true };
        if !lib.probes.iter().any(shared) {
            return true;
        }
        match owners.get(&(c.dev, c.ino)) {
            None => {
                owners.insert((c.dev, c.ino), lib.path.clone());
            }
            Some(owner) => {
                tracing::warn!(
                    library = %lib.path.display(), companion = %c.path.display(), owner = %owner.display(),
                    "companion already probed for another library: its calls are attributed to that one"
                );
                lib.probes.retain(|p| !shared(p));
            }
        }
        !lib.probes.is_empty()
    });
    out
}

fn choose_companion(files: &[Scanned], index: usize, family: usize) -> Option<&Scanned> {
    let lib = &files[index];
    let dir = lib.path.parent();
    files
        .iter()
        .enumerate()
        .filter(|(i, f)| *i != index && f.companion_of.contains(&family))
        .map(|(_, f)| {
            let shared = f.pids.intersection(&lib.pids).count();
            let same_dir = f.path.parent() == dir;
            (f, shared, same_dir)
        })
        .filter(|(_, shared, same_dir)| *shared > 0 || *same_dir)
        // Most shared processes, then same directory, then the smallest path (deterministic).
        .max_by(|a, b| {
            (a.1, a.2)
                .cmp(&(b.1, b.2))
                .then_with(|| b.0.path.cmp(&a.0.path))
        })
        .map(|(f, _, _)| f)
}
