//! `enforcer::policy::parse` on arbitrary text: policy files are untrusted input (and they can
//! extend the catalog, carry version ranges and path globs, all parsed here).
//!
//! Beyond "no panic, no hang, no unbounded allocation": a policy that parses has every rule
//! located (line >= 1), can decide for every family of its catalog and renders its report; every
//! error renders as one line that names the file.
#![no_main]

use std::path::Path;

use enforcer::policy::{self, PolicyError, Subject};
use libfuzzer_sys::fuzz_target;

const SOURCE: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    // `policy::load` rejects non-UTF-8 before parsing; `parse` takes a `&str`.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match policy::parse(text, SOURCE) {
        Ok(p) => {
            for (i, rule) in p.libraries.iter().enumerate() {
                assert!(rule.line >= 1, "rule {i} was not located: {rule:?}");
            }
            let paths = [
                Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3"),
                Path::new("/opt/vendor/lib/libssl.so.1.1"),
            ];
            let sha = "0123456789abcdef".repeat(4);
            for def in p.catalog.families() {
                for version in [None, Some("3.0.15"), Some("1.1.1w"), Some("2.28.3")] {
                    let subject = Subject {
                        family: &def.family,
                        version,
                        paths: paths.to_vec(),
                        sha256: Some(&sha),
                    };
                    let decision = p.decide_subject(&subject);
                    if let Some(line) = decision.rule_line {
                        assert!(p.libraries.iter().any(|r| r.line == line));
                    }
                }
            }
            let report = policy::check_report(&p);
            assert!(report.contains(SOURCE), "{report}");
        }
        Err(e) => {
            if let PolicyError::Invalid { line, column, .. } = &e {
                assert_ne!(*line, Some(0), "{e}");
                assert_ne!(*column, Some(0), "{e}");
            }
            let msg = e.to_string();
            assert!(msg.starts_with(SOURCE), "{msg}");
            assert!(
                !msg.contains(['\n', '\r']),
                "error message spans lines: {msg:?}"
            );
        }
    }
});
