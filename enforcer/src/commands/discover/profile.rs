//! The catalog profile: a policy `catalog:` section (docs/policy.md, "Catalog") naming the
//! discovered entry points as probes of a new family.
//!
//! Identification: if the built-in catalog already recognises the library, the new family uses
//! the same identify alternative (plus the probed symbols), so it recognises the same files; a
//! policy's families are tried before the built-in ones, so the discovered family wins for them.
//! A library the catalog does not know is identified by the probed symbols it defines.

use std::fmt::Write as _;

use crate::{
    catalog::{Catalog, Place},
    family::{Family, MAX_ID_LEN},
};

/// One probe of the profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileProbe {
    pub symbol: String,
    pub op: &'static str,
    pub in_companion: bool,
    /// Shown as a comment.
    pub note: String,
}

pub struct ProfileInput<'a> {
    pub id: &'a str,
    pub description: String,
    /// Defined function names of the library's `.dynsym`, sorted.
    pub lib_exported: &'a [String],
    /// Same for the companion, if one was scanned.
    pub companion_exported: Option<&'a [String]>,
    pub probes: &'a [ProfileProbe],
    pub header: &'a [String],
}

/// A family id from a file name: `libssl.so.3` → `discovered-libssl`.
pub fn default_id(file_name: &str) -> String {
    let stem = file_name.split('.').next().unwrap_or(file_name);
    let clean: String = stem
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut id = format!("discovered-{clean}");
    id.truncate(MAX_ID_LEN);
    match Family::is_valid_id(&id) {
        true => id,
        false => "discovered".to_owned(),
    }
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The `catalog:` section.
pub fn render(input: &ProfileInput) -> String {
    let defines_lib = |s: &str| {
        input
            .lib_exported
            .binary_search_by(|n| n.as_str().cmp(s))
            .is_ok()
    };
    let defines_comp = |s: &str| {
        input
            .companion_exported
            .is_some_and(|c| c.binary_search_by(|n| n.as_str().cmp(s)).is_ok())
    };
    let builtin = Catalog::embedded();
    let known = builtin.match_file(defines_lib);
    let self_probes: Vec<String> = input
        .probes
        .iter()
        .filter(|p| !p.in_companion)
        .map(|p| p.symbol.clone())
        .collect();
    let comp_probes: Vec<String> = input
        .probes
        .iter()
        .filter(|p| p.in_companion)
        .map(|p| p.symbol.clone())
        .collect();

    let mut out = String::new();
    for line in input.header {
        let _ = writeln!(out, "# {line}");
    }
    let _ = writeln!(out, "catalog:\n  families:\n    - id: {}", input.id);
    let _ = writeln!(out, "      description: {}", quote(&input.description));
    let _ = writeln!(out, "      identify:");
    match known.and_then(|f| {
        f.identify.iter().find(|a| {
            a.all.iter().all(|s| defines_lib(s)) && !a.none.iter().any(|s| defines_lib(s))
        })
    }) {
        Some(alt) => {
            let mut all = alt.all.clone();
            all.extend(
                self_probes
                    .iter()
                    .filter(|s| !all.contains(s))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            let _ = writeln!(
                out,
                "        # what the built-in family '{}' recognises, plus the probed symbols",
                known.map_or("", |f| f.family.name())
            );
            let _ = writeln!(out, "        - all: {}", list(&all));
            if !alt.none.is_empty() {
                let _ = writeln!(out, "          none: {}", list(&alt.none));
            }
        }
        None => {
            let mut all = self_probes.clone();
            if all.is_empty() {
                // Everything is probed in the companion: name the library by a few of its own
                // exported functions.
                all = input.lib_exported.iter().take(4).cloned().collect();
            }
            let _ = writeln!(out, "        - all: {}", list(&all));
        }
    }
    // Companion: the probed companion symbols, plus those of the built-in family (its version
    // text may live there) that the scanned companion defines.
    let mut companion = comp_probes.clone();
    let builtin_companion: Vec<String> = known.map(|f| f.companion.clone()).unwrap_or_default();
    let builtin_companion_usable = match input.companion_exported {
        Some(_) => builtin_companion.iter().all(|s| defines_comp(s)),
        None => true,
    };
    if builtin_companion_usable {
        companion.extend(
            builtin_companion
                .iter()
                .filter(|s| !companion.contains(s))
                .cloned()
                .collect::<Vec<_>>(),
        );
    }
    if !companion.is_empty() {
        let _ = writeln!(out, "      companion: {}", list(&companion));
    }
    let _ = writeln!(out, "      probes:");
    for p in input.probes {
        let place = if p.in_companion {
            ", in: companion"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "        - {{ symbol: {}, op: {}{place} }}   # {}",
            quote(&p.symbol),
            p.op,
            p.note
        );
    }
    let versions: Vec<_> = known
        .map(|f| f.version.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|v| {
            v.place == Place::SelfFile || (builtin_companion_usable && !companion.is_empty())
        })
        .collect();
    if !versions.is_empty() {
        let _ = writeln!(out, "      version:");
        for v in versions {
            let place = match v.place {
                Place::SelfFile => "self",
                Place::Companion => "companion",
            };
            let _ = match &v.krate {
                Some(krate) => {
                    writeln!(out, "        - {{ in: {place}, crate: {} }}", quote(krate))
                }
                None => writeln!(
                    out,
                    "        - {{ in: {place}, prefix: {} }}",
                    quote(&v.prefix)
                ),
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    fn names(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    fn probe(symbol: &str, op: &'static str, in_companion: bool) -> ProfileProbe {
        ProfileProbe {
            symbol: symbol.into(),
            op,
            in_companion,
            note: "3 calls".into(),
        }
    }

    #[test]
    fn openssl_profile_is_a_valid_catalog_that_wins_over_the_builtin() {
        let lib = names(&[
            "OPENSSL_init_ssl",
            "SSL_CTX_new",
            "SSL_write",
            "SSL_read",
            "SSL_connect",
        ]);
        let probes = [
            probe("SSL_connect", "handshake", false),
            probe("SSL_write", "write", false),
            probe("SSL_read", "read", false),
        ];
        let text = render(&ProfileInput {
            id: "discovered-libssl",
            description: "test \"quoted\"".into(),
            lib_exported: &lib,
            companion_exported: None,
            probes: &probes,
            header: &["a header".into()],
        });
        let doc = format!(
            "mode: audit\ndefault: deny\nlibraries:\n  - family: discovered-libssl\n    action: allow\n{text}"
        );
        let p = policy::parse(&doc, "test.yaml").unwrap_or_else(|e| panic!("{e}\n{doc}"));
        let cat = &p.catalog;
        let fam = cat
            .match_file(|s| lib.binary_search_by(|n| n.as_str().cmp(s)).is_ok())
            .unwrap();
        assert_eq!(fam.family.name(), "discovered-libssl");
        assert_eq!(fam.probes.len(), 3);
        assert_eq!(fam.companion, vec!["OpenSSL_version_num".to_string()]);
        assert!(!fam.version.is_empty());
    }

    #[test]
    fn nss_profile_probes_the_companion() {
        let lib = names(&["SSL_ImportFD", "NSSSSL_VersionCheck", "SSL_ForceHandshake"]);
        let nspr = names(&["PR_Write", "PR_Read", "PR_Recv", "PR_GetVersion", "PR_Send"]);
        let probes = [
            probe("SSL_ForceHandshake", "handshake", false),
            probe("PR_Write", "write", true),
            probe("PR_Read", "read", true),
        ];
        let text = render(&ProfileInput {
            id: "discovered-libssl3",
            description: "nss".into(),
            lib_exported: &lib,
            companion_exported: Some(&nspr),
            probes: &probes,
            header: &[],
        });
        let doc = format!("mode: audit\ndefault: allow\nlibraries: []\n{text}");
        let p = policy::parse(&doc, "t.yaml").unwrap_or_else(|e| panic!("{e}\n{doc}"));
        let fam = p.catalog.family("discovered-libssl3").unwrap().clone();
        assert!(fam.companion.contains(&"PR_Write".to_string()));
        assert!(fam.companion.contains(&"PR_GetVersion".to_string()));
        assert_eq!(
            fam.probes
                .iter()
                .filter(|p| p.place == Place::Companion)
                .count(),
            2
        );
    }

    #[test]
    fn ids_from_file_names() {
        assert_eq!(default_id("libssl.so.3"), "discovered-libssl");
        assert_eq!(default_id("libgnutls.so.30"), "discovered-libgnutls");
        assert_eq!(default_id("Lib+X.so"), "discovered-lib-x");
    }
}
