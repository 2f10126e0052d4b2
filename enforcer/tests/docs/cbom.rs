//! docs/cbom.md's example: one CycloneDX 1.7 document that validates against the official
//! schema (vendored, `tests/schemas/cyclonedx-1.7/`), whose references all resolve, and that uses
//! only keys and property names `enforcer::cbom::build` writes.

use std::{
    collections::BTreeSet,
    time::{Duration, UNIX_EPOCH},
};

use enforcer::cbom::{Host, LibraryFacts, Negotiated, Snapshot, build};
use enforcer_tests::{cyclonedx::validate_cbom, docs::blocks};
use serde_json::Value;

/// Every key path of `v` (`components[].cryptoProperties.assetType`), a `properties` entry's
/// path naming the property (`components[].properties[enforcer:connections]`).
fn paths(v: &Value, at: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let here = format!("{at}.{k}");
                out.insert(here.clone());
                if k == "properties" && child.is_array() {
                    for p in child.as_array().into_iter().flatten() {
                        out.insert(format!("{here}[{}]", p["name"].as_str().unwrap_or("?")));
                    }
                } else {
                    paths(child, &here, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| paths(i, &format!("{at}[]"), out)),
        _ => {}
    }
}

/// A snapshot with every kind of entry the builder writes.
fn everything() -> Snapshot {
    let negotiated = |library, version, group| Negotiated {
        library,
        version: Some(version),
        suite: Some(0x1301),
        group: Some(group),
        connections: 1,
        processes: vec!["curl".into()],
        cgroups: vec![],
    };
    Snapshot {
        time: UNIX_EPOCH + Duration::from_secs(1_780_000_000),
        serial: [7; 16],
        tool_version: "0.1.0".into(),
        host: Host {
            name: "h".into(),
            kernel_release: Some("6.1.0".into()),
        },
        agent: [
            "pid",
            "mode",
            "policy",
            "interfaces",
            "kernel_hook",
            "uptime_s",
        ]
        .map(|k| (k.to_owned(), "x".to_owned()))
        .to_vec(),
        libraries: vec![LibraryFacts {
            id: 1,
            family: "openssl".into(),
            path: "/usr/lib/libssl.so.3".into(),
            version: Some("3.0.19".into()),
            sha256: Some("ab".repeat(32)),
            build_id: Some("cd".repeat(20)),
            mapped_as: vec!["/lib/libssl.so.3".into()],
        }],
        negotiated: vec![
            negotiated(Some(1), 0x0304, 0x001d),
            negotiated(None, 0x0303, 0x11ec),
        ],
    }
}

#[test]
fn the_example_in_cbom_md_is_a_valid_cbom_of_what_enforcer_writes() {
    let doc = "docs/cbom.md";
    let examples: Vec<(usize, Value)> = blocks(doc)
        .iter()
        .filter(|b| b.lang == "json")
        .map(|b| {
            let at = b.lines.first().map_or(0, |(n, _)| *n);
            let text: String = b.lines.iter().map(|(_, t)| format!("{t}\n")).collect();
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{doc}:{at}: not one JSON document: {e}"));
            (at, v)
        })
        .collect();
    assert_eq!(examples.len(), 1, "{doc}: one example CBOM");
    let (at, example) = &examples[0];
    if let Err(e) = validate_cbom(example) {
        panic!("{doc}:{at}: not valid CycloneDX 1.7:\n{e}");
    }

    let mut refs = BTreeSet::new();
    refs.extend(example["metadata"]["component"]["bom-ref"].as_str());
    for c in example["components"].as_array().expect("components") {
        let r = c["bom-ref"].as_str().expect("a bom-ref");
        assert!(refs.insert(r), "{doc}:{at}: bom-ref {r} twice");
    }
    for d in example["dependencies"].as_array().expect("dependencies") {
        let lists = [&d["provides"], &d["dependsOn"]];
        let named = lists
            .into_iter()
            .flat_map(|l| l.as_array().into_iter().flatten());
        for r in named.chain([&d["ref"]]) {
            let r = r.as_str().expect("a reference");
            assert!(refs.contains(r), "{doc}:{at}: {r} names no component");
        }
    }

    let (mut shown, mut written) = (BTreeSet::new(), BTreeSet::new());
    paths(example, "", &mut shown);
    paths(&build(&everything()), "", &mut written);
    let unknown: Vec<&String> = shown.difference(&written).collect();
    assert!(
        unknown.is_empty(),
        "{doc}:{at}: keys enforcer cbom does not write: {unknown:?}"
    );
}
