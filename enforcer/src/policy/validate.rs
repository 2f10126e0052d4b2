//! The checks serde cannot make on a policy file (`policy::validate`): the catalog section,
//! each rule's keys, duplicate rules, and the host's posture. Every error names the file, the
//! line and column, and the key.

use std::sync::Arc;

use super::raw::RawPolicy;
use super::{
    MAX_RULES, PathGlob, Policy, PolicyError, Rule, ServerNamePattern, error, posture, recover,
    rules, scope, who_validate,
};
use crate::catalog::{Catalog, Seg};
use crate::version::VersionReq;

/// The checks serde cannot make (families, versions, globs, duplicates...): each error goes to
/// `errors`, and the policy made of what is valid is returned.
pub(super) fn validate(
    raw: RawPolicy,
    text: &str,
    source: &str,
    removed: &recover::Removed,
    errors: &mut Vec<PolicyError>,
) -> Policy {
    // Errors under a value the recovery put in are not the file's; nor is an unknown family
    // when the catalog section had an error (the family may be defined there).
    let stand_ins: Vec<String> = removed.stand_ins.iter().map(|p| error::render(p)).collect();
    let catalog_broken = removed.touched(&[error::Step::Key("catalog".into(), 0)]);
    let mut push = |e: PolicyError| {
        let PolicyError::Invalid { key: Some(k), .. } = &e else {
            return errors.push(e);
        };
        let under = |s: &String| {
            k == s || k.starts_with(&format!("{s}.")) || k.starts_with(&format!("{s}["))
        };
        let family_maybe_there = catalog_broken && e.to_string().contains(".family: unknown value");
        if !(stand_ins.iter().any(under) || family_maybe_there) {
            errors.push(e);
        }
    };
    let invalid = |path: &[Seg], message: String| error::at_node(source, text, path, message);

    let catalog = match raw.catalog {
        None => Catalog::embedded(),
        Some(c) => {
            let line_of = |i: usize| {
                let path = [Seg::Key("catalog"), Seg::Key("families"), Seg::Index(i)];
                error::locate_segs(text, &path).map_or(0, |(l, _)| l)
            };
            match Catalog::embedded().extend(c, source, &line_of) {
                Ok(extended) => Arc::new(extended),
                Err(e) => {
                    let mut path = vec![Seg::Key("catalog")];
                    path.extend(e.path.iter().cloned());
                    push(invalid(&path, format!("catalog.{e}")));
                    Catalog::embedded()
                }
            }
        }
    };

    // Rules are located by re-reading the document: too many are refused before that.
    let too_many = raw.libraries.len() > MAX_RULES;
    if too_many {
        push(invalid(
            &[Seg::Key("libraries")],
            format!(
                "libraries: {} rules, more than the limit of {MAX_RULES}",
                raw.libraries.len()
            ),
        ));
    }
    let origins = removed.survivors(
        &[error::Step::Key("libraries".into(), 0)],
        raw.libraries.len(),
    );
    let mut libraries: Vec<Rule> = Vec::with_capacity(raw.libraries.len());
    let rules = if too_many { Vec::new() } else { raw.libraries };
    for (index, r) in origins.into_iter().zip(rules) {
        let key = |k: &'static str| [Seg::Key("libraries"), Seg::Index(index), Seg::Key(k)];
        let here = format!("libraries[{index}]");
        // Each check of the rule reports its own error; a rule with one is left out.
        let mut bad = false;
        let mut fail = |e: PolicyError| {
            bad = true;
            push(e)
        };
        let family = r.family.as_ref().and_then(|id| {
            let found = catalog.family(id).map(|f| f.family.clone());
            if found.is_none() {
                let known: Vec<&str> = catalog.families().iter().map(|f| f.family.name()).collect();
                fail(invalid(
                    &key("family"),
                    format!(
                        "{here}.family: unknown value '{}' (expected {})",
                        error::show(id),
                        error::alternatives(&known)
                    ),
                ));
            }
            found
        });
        let version = match &r.version {
            None => None,
            Some(_) if r.family.is_none() => {
                fail(invalid(
                    &key("version"),
                    format!(
                        "{here}.version: a version range needs 'family' (versions are compared within one family)"
                    ),
                ));
                None
            }
            Some(v) => VersionReq::parse(v)
                .map_err(|e| fail(invalid(&key("version"), format!("{here}.version: {e}"))))
                .ok(),
        };
        let path = r.path.as_ref().and_then(|p| {
            PathGlob::new(p)
                .map_err(|e| {
                    fail(invalid(
                        &key("path"),
                        format!("{here}.path: invalid glob '{}': {e}", error::show(p)),
                    ))
                })
                .ok()
        });
        let sha256 = r.sha256.as_ref().and_then(|h| {
            let parsed = rules::parse_sha256(h);
            if parsed.is_none() {
                fail(invalid(
                    &key("sha256"),
                    format!(
                        "{here}.sha256: expected 64 hexadecimal digits, found '{}'",
                        error::show(h)
                    ),
                ));
            }
            parsed
        });
        let server_names = match &r.server_names {
            None => None,
            Some(list) if list.is_empty() => {
                fail(invalid(
                    &key("server_names"),
                    format!(
                        "{here}.server_names: an empty list scopes the rule to nothing; remove the key to apply the rule to every server"
                    ),
                ));
                None
            }
            Some(list) if list.len() > scope::MAX_NAMES_PER_RULE => {
                fail(invalid(
                    &key("server_names"),
                    format!(
                        "{here}.server_names: {} names, more than the limit of {}",
                        list.len(),
                        scope::MAX_NAMES_PER_RULE
                    ),
                ));
                None
            }
            Some(list) => {
                let mut patterns = Vec::with_capacity(list.len());
                for (i, text) in list.iter().enumerate() {
                    match ServerNamePattern::new(text) {
                        Ok(pattern) => patterns.push(pattern),
                        Err(e) => {
                            let mut path = key("server_names").to_vec();
                            path.push(Seg::Index(i));
                            fail(invalid(
                                &path,
                                format!(
                                    "{here}.server_names[{i}]: invalid server name pattern '{}': {e}",
                                    error::show(text)
                                ),
                            ));
                        }
                    }
                }
                Some(patterns)
            }
        };
        // A runtime's TLS (a JVM's) is judged in userspace per sender, without its server name
        // or its offer: only library and who keys apply to it.
        let runtime = r
            .family
            .as_ref()
            .and_then(|id| catalog.family(id))
            .is_some_and(|f| f.is_runtime());
        if runtime {
            let keys = [
                ("server_names", r.server_names.is_some()),
                ("tls_versions", r.tls_versions.is_some()),
                ("groups", r.groups.is_some()),
                ("cipher_suites", r.cipher_suites.is_some()),
                ("ja4", r.ja4.is_some()),
            ];
            for (k, _) in keys.iter().filter(|(_, present)| *present) {
                fail(invalid(
                    &key(k),
                    format!(
                        "{here}.{k}: not supported for family '{}' (a runtime's TLS is judged by the process that sends it; only version, path, sha256, executables, cgroups and users refine such a rule)",
                        error::show(r.family.as_deref().unwrap_or_default())
                    ),
                ));
            }
        }
        let who = who_validate::validate(&r, text, source, index, &mut fail);
        let rule_posture = posture::validate(
            &posture::RawPosture {
                tls_versions: r.tls_versions.clone(),
                groups: r.groups.clone(),
                cipher_suites: r.cipher_suites.clone(),
                ja4: r.ja4.clone(),
            },
            text,
            source,
            &[Seg::Key("libraries"), Seg::Index(index)],
            &format!("{here}."),
            &mut fail,
        );
        let (line, column) = error::locate_rule(text, index);
        let at_rule = |message: String| PolicyError::Invalid {
            file: source.to_owned(),
            line: Some(line),
            column: Some(column),
            key: Some(here.clone()),
            message,
        };
        // A key of the rule that was in error (`fmaily`) is not missing from it as well.
        let rule_path = [
            error::Step::Key("libraries".into(), 0),
            error::Step::Index(index),
        ];
        let none = r.family.is_none() && r.path.is_none() && r.sha256.is_none();
        let no_who = r.executables.is_none() && r.cgroups.is_none() && r.users.is_none();
        if none && no_who && !removed.touched(&rule_path) {
            fail(at_rule(format!(
                "{here}: a rule needs at least one of family, path, sha256, executables, cgroups, users"
            )));
        }
        if bad {
            continue;
        }
        let rule = Rule {
            family,
            version,
            path,
            sha256,
            server_names,
            who,
            posture: rule_posture,
            action: r.action,
            line,
        };
        if let Some(first) = libraries.iter().find(|o| o.same_matchers(&rule)) {
            push(at_rule(format!(
                "{here}: duplicate rule for {} (first rule at line {})",
                rule.describe(),
                first.line
            )));
            continue;
        }
        libraries.push(rule);
    }
    let host_posture = posture::validate(
        &posture::RawPosture {
            tls_versions: raw.tls_versions,
            groups: raw.groups,
            cipher_suites: raw.cipher_suites,
            ja4: raw.ja4,
        },
        text,
        source,
        &[],
        "",
        &mut push,
    );
    let mut policy = Policy {
        mode: raw.mode,
        default: raw.default,
        unattributed_tls: raw.unattributed_tls.unwrap_or(raw.default),
        unknown_files: raw
            .unknown_files
            .or(raw.unattributed_tls)
            .unwrap_or(raw.default),
        quic: raw.quic.unwrap_or(raw.default),
        posture: host_posture,
        ja4_patterns: Vec::new(),
        ja4_generation: 0,
        libraries,
        catalog,
        source: source.to_owned(),
    };
    posture::index_ja4(&mut policy, text, source, &mut push);
    policy
}
