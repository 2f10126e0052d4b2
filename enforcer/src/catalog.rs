//! What identifies each TLS library family in an ELF file, and which of its functions to probe.
//!
//! A family is recognised by the **defined** symbols of a file (dynamic symbol table, or `.symtab`
//! for unstripped static builds), never by its file name: a vendored or renamed `libssl` is still
//! OpenSSL, and a file called `libssl*.so` may be something else entirely (NSS ships
//! `libssl3.so`, which defines no OpenSSL API at all).
//!
//! A file matches a [`Profile`] when it defines **every** symbol of `identify_all` and **none** of
//! `exclude_any`. Profiles are tried in order; the first match wins. It is then probed at every
//! symbol of `probes` it defines (one that lacks a few, e.g. OpenSSL 1.1.0 without `SSL_write_ex`,
//! still counts).
//!
//! ## Why these identifying symbols (checked with `nm -D --defined-only` on Debian bookworm)
//!
//! - `SSL_write`, `SSL_read`, `SSL_connect`, `SSL_CTX_new` and even `SSL_library_init` are **not**
//!   proof of OpenSSL: GnuTLS's OpenSSL compatibility layer `libgnutls-openssl.so.27` defines all
//!   of them (its `SSL_write` is a wrapper around `gnutls_record_send`, which the GnuTLS profile
//!   already probes inside `libgnutls.so.30`). That file defines no `gnutls_*` symbol itself (it
//!   imports them), so it matches no profile and is not probed at all, which is what we want: its
//!   traffic is attributed to GnuTLS, the library that really does the TLS.
//! - `OpenSSL_version` / `OpenSSL_version_num` live in **libcrypto**, not libssl, so they cannot
//!   identify the file that holds `SSL_write`.
//! - OpenSSL 1.1.0 and later (3.x included) define the function `OPENSSL_init_ssl` in libssl
//!   (`SSL_library_init` became a macro over it). 3.x additionally defines `SSL_CTX_new_ex`, but
//!   requiring it would lose 1.1, so the modern profile asks for `OPENSSL_init_ssl` +
//!   `SSL_CTX_new`.
//! - OpenSSL 1.0.x has no `OPENSSL_init_ssl`; its libssl defines `SSL_library_init` and
//!   `SSL_CTX_ctrl` (every `SSL_CTX_set_*` option setter is a macro over the latter). The GnuTLS
//!   compat layer defines `SSL_library_init` but not `SSL_CTX_ctrl`, so the pair separates them.
//!   1.0.x is long out of support, which is exactly why a policy wants to see (and deny) it.
//! - Excluded, because they implement (parts of) the OpenSSL API but are different libraries that
//!   [`Family`] does not name yet: anything defining `gnutls_global_init` (GnuTLS, also when
//!   statically linked together with its compat layer), `wolfSSL_Init` (wolfSSL's OpenSSL
//!   compatibility build) and `SSL_CTX_set_select_certificate_cb` (BoringSSL and AWS-LC; OpenSSL
//!   has `SSL_CTX_set_client_hello_cb` instead). LibreSSL and quictls are API- and ABI-compatible
//!   forks that define `OPENSSL_init_ssl` and are reported as OpenSSL.
//! - GnuTLS: `gnutls_global_init` and `gnutls_check_version` are defined only by `libgnutls`
//!   itself; its satellites (`libgnutls-dane`, `libgnutlsxx`, `libgnutls-openssl`) import them.

use enforcer_common::op;

use crate::family::Family;

/// One function to put a uprobe (and uretprobe) on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    /// Symbol name without version suffix (`SSL_write`, not `SSL_write@@OPENSSL_3.0.0`).
    pub symbol: &'static str,
    /// What the function does: one of `enforcer_common::op::*`.
    pub op: u8,
}

/// How to recognise one family (or one generation of it) and what to probe in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub family: Family,
    /// The file must define every one of these symbols.
    pub identify_all: &'static [&'static str],
    /// The file must define none of these symbols.
    pub exclude_any: &'static [&'static str],
    /// Functions to probe, where defined.
    pub probes: &'static [ProbeSpec],
}

const OPENSSL_PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        symbol: "SSL_write",
        op: op::WRITE,
    },
    ProbeSpec {
        symbol: "SSL_write_ex",
        op: op::WRITE,
    },
    ProbeSpec {
        symbol: "SSL_read",
        op: op::READ,
    },
    ProbeSpec {
        symbol: "SSL_read_ex",
        op: op::READ,
    },
    ProbeSpec {
        symbol: "SSL_do_handshake",
        op: op::HANDSHAKE,
    },
    ProbeSpec {
        symbol: "SSL_connect",
        op: op::HANDSHAKE,
    },
    ProbeSpec {
        symbol: "SSL_accept",
        op: op::HANDSHAKE,
    },
];

/// Defined by libraries that offer an OpenSSL-like API but are not OpenSSL (see the module docs).
const NOT_OPENSSL: &[&str] = &[
    "gnutls_global_init",
    "wolfSSL_Init",
    "SSL_CTX_set_select_certificate_cb",
];

const GNUTLS_PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        symbol: "gnutls_record_send",
        op: op::WRITE,
    },
    ProbeSpec {
        symbol: "gnutls_record_recv",
        op: op::READ,
    },
    ProbeSpec {
        symbol: "gnutls_handshake",
        op: op::HANDSHAKE,
    },
];

static PROFILES: [Profile; 3] = [
    // OpenSSL 1.1.0 and later, 3.x included.
    Profile {
        family: Family::Openssl,
        identify_all: &["OPENSSL_init_ssl", "SSL_CTX_new"],
        exclude_any: NOT_OPENSSL,
        probes: OPENSSL_PROBES,
    },
    // OpenSSL 1.0.x (no `*_ex` functions; they are simply absent and not probed).
    Profile {
        family: Family::Openssl,
        identify_all: &["SSL_library_init", "SSL_CTX_ctrl"],
        exclude_any: NOT_OPENSSL,
        probes: OPENSSL_PROBES,
    },
    Profile {
        family: Family::Gnutls,
        identify_all: &["gnutls_global_init", "gnutls_check_version"],
        exclude_any: &[],
        probes: GNUTLS_PROBES,
    },
];

/// Every known profile, in the order they are tried.
pub fn profiles() -> &'static [Profile] {
    &PROFILES
}

/// Every symbol name any profile looks at (identifying, excluding or probed), without duplicates.
/// A symbol table scan only has to remember these.
pub fn interesting_symbols() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: Vec<&'static str> = Vec::new();
        for p in profiles() {
            let probes = p.probes.iter().map(|s| s.symbol);
            for name in p
                .identify_all
                .iter()
                .chain(p.exclude_any)
                .copied()
                .chain(probes)
            {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    })
}

/// The first profile the file matches, given a predicate telling whether it defines a symbol.
pub fn match_profile(defines: impl Fn(&str) -> bool) -> Option<&'static Profile> {
    profiles().iter().find(|p| {
        p.identify_all.iter().all(|s| defines(s)) && !p.exclude_any.iter().any(|s| defines(s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_probes_all_seven_functions() {
        let p = &profiles()[0];
        assert_eq!(p.family, Family::Openssl);
        let names: Vec<_> = p.probes.iter().map(|s| s.symbol).collect();
        assert_eq!(
            names,
            [
                "SSL_write",
                "SSL_write_ex",
                "SSL_read",
                "SSL_read_ex",
                "SSL_do_handshake",
                "SSL_connect",
                "SSL_accept"
            ]
        );
        let ops: Vec<_> = p.probes.iter().map(|s| s.op).collect();
        assert_eq!(
            ops,
            [
                op::WRITE,
                op::WRITE,
                op::READ,
                op::READ,
                op::HANDSHAKE,
                op::HANDSHAKE,
                op::HANDSHAKE
            ]
        );
    }

    #[test]
    fn gnutls_probes() {
        let p = profiles()
            .iter()
            .find(|p| p.family == Family::Gnutls)
            .unwrap();
        let got: Vec<_> = p.probes.iter().map(|s| (s.symbol, s.op)).collect();
        assert_eq!(
            got,
            [
                ("gnutls_record_send", op::WRITE),
                ("gnutls_record_recv", op::READ),
                ("gnutls_handshake", op::HANDSHAKE)
            ]
        );
    }

    #[test]
    fn every_family_has_a_profile_and_profiles_are_sane() {
        for f in Family::ALL {
            assert!(
                profiles().iter().any(|p| p.family == f),
                "{f} has no profile"
            );
        }
        for p in profiles() {
            assert!(!p.identify_all.is_empty());
            assert!(!p.probes.is_empty());
            // A symbol cannot be both required and excluded.
            assert!(p.identify_all.iter().all(|s| !p.exclude_any.contains(s)));
            for s in p.probes {
                assert!(!s.symbol.contains('@'));
                assert!(matches!(s.op, op::HANDSHAKE | op::READ | op::WRITE));
            }
        }
    }

    #[test]
    fn gnutls_openssl_compat_layer_is_not_openssl() {
        // Defined symbols of /usr/lib/x86_64-linux-gnu/libgnutls-openssl.so.27 that matter here.
        let compat = [
            "SSL_library_init",
            "SSL_CTX_new",
            "SSL_write",
            "SSL_read",
            "SSL_connect",
            "SSL_accept",
            "SSL_CTX_set_options",
        ];
        assert_eq!(match_profile(|s| compat.contains(&s)), None);
    }

    #[test]
    fn matching() {
        let v3 = [
            "OPENSSL_init_ssl",
            "SSL_CTX_new",
            "SSL_CTX_new_ex",
            "SSL_write",
        ];
        assert_eq!(
            match_profile(|s| v3.contains(&s)).map(|p| p.family),
            Some(Family::Openssl)
        );
        let v10 = [
            "SSL_library_init",
            "SSL_CTX_ctrl",
            "SSL_CTX_new",
            "SSL_write",
        ];
        assert_eq!(
            match_profile(|s| v10.contains(&s)).map(|p| p.family),
            Some(Family::Openssl)
        );
        let boring = [
            "OPENSSL_init_ssl",
            "SSL_CTX_new",
            "SSL_CTX_set_select_certificate_cb",
        ];
        assert_eq!(match_profile(|s| boring.contains(&s)), None);
        let gnutls = ["gnutls_global_init", "gnutls_check_version"];
        assert_eq!(
            match_profile(|s| gnutls.contains(&s)).map(|p| p.family),
            Some(Family::Gnutls)
        );
        // Statically linked GnuTLS + its compat layer: GnuTLS, not OpenSSL.
        let both = [
            "gnutls_global_init",
            "gnutls_check_version",
            "SSL_library_init",
            "SSL_CTX_ctrl",
        ];
        assert_eq!(
            match_profile(|s| both.contains(&s)).map(|p| p.family),
            Some(Family::Gnutls)
        );
    }

    #[test]
    fn interesting_symbols_cover_everything_once() {
        let names = interesting_symbols();
        for p in profiles() {
            for s in p
                .identify_all
                .iter()
                .chain(p.exclude_any)
                .chain(p.probes.iter().map(|s| &s.symbol))
            {
                assert_eq!(names.iter().filter(|n| *n == s).count(), 1, "{s}");
            }
        }
    }
}
