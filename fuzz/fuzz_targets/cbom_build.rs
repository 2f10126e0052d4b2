//! `enforcer::cbom::build` on arbitrary snapshots: what the agent puts in a CBOM comes from the
//! host (library paths and version texts from hostile files, process names anyone chooses) and
//! from ServerHellos a peer writes (any version, suite and group code).
//!
//! The input is read as: 16 bytes of serial, 8 of time (signed seconds from 1970, little-endian), then
//! records until the input ends: a tag byte (even: a library, odd: a negotiated combination)
//! and its fields, each string as a length byte and that many bytes (lossy UTF-8), a list as a
//! count byte (0-3) and its items.
//!
//! Beyond "no panic, no hang, no unbounded allocation": the document says CycloneDX 1.7 with a
//! well-formed version 4 serial and timestamp; every `bom-ref` is given once, and every reference
//! (a dependency's `ref`, `provides`, `dependsOn`, a cipher suite's `algorithms`) names one;
//! there is one protocol component per (library, version) negotiated, and one cipher suite
//! entry per suite code read; a SHA-256 is only written as 64 hex digits; a library's locations are non-empty and each once; it serializes and
//! parses back to itself.
#![no_main]

use std::{
    collections::BTreeSet,
    time::{Duration, UNIX_EPOCH},
};

use enforcer::cbom::{Host, LibraryFacts, Negotiated, Snapshot, build};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn string(&mut self) -> String {
        let n = usize::from(self.u8()).min(self.0.len());
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }
    /// `None` when the flag byte is even.
    fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        (self.u8() & 1 == 1).then(|| f(self))
    }
}

fn snapshot(data: &[u8]) -> Snapshot {
    let mut input = Input(data);
    let serial = input.bytes::<16>();
    // Before 1970 too (a clock set back), and as far ahead as `SystemTime` goes.
    let secs = i64::from_le_bytes(input.bytes());
    let offset = Duration::from_secs(secs.unsigned_abs());
    let time = match secs < 0 {
        true => UNIX_EPOCH.checked_sub(offset),
        false => UNIX_EPOCH.checked_add(offset),
    }
    .unwrap_or(UNIX_EPOCH);
    let mut s = Snapshot {
        time,
        serial,
        tool_version: "0.1.0".into(),
        host: Host {
            name: input.string(),
            kernel_release: input.maybe(Input::string),
        },
        agent: vec![("mode".into(), input.string())],
        libraries: vec![],
        negotiated: vec![],
    };
    while !input.0.is_empty() {
        if input.u8() & 1 == 0 {
            s.libraries.push(LibraryFacts {
                id: u32::from(input.u8() & 7),
                family: input.string(),
                path: input.string(),
                version: input.maybe(Input::string),
                sha256: input.maybe(Input::string),
                build_id: input.maybe(Input::string),
                mapped_as: (0..input.u8() & 3).map(|_| input.string()).collect(),
            });
        } else {
            s.negotiated.push(Negotiated {
                library: input.maybe(|i| u32::from(i.u8() & 7)),
                version: input.maybe(Input::u16),
                suite: input.maybe(Input::u16),
                group: input.maybe(Input::u16),
                connections: u64::from(input.u32()) << (input.u8() & 31),
                processes: (0..input.u8() & 3).map(|_| input.string()).collect(),
                cgroups: (0..input.u8() & 3).map(|_| (input.string(), input.string())).collect(),
            });
        }
    }
    s
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fuzz_target!(|data: &[u8]| {
    let s = snapshot(data);
    let bom = build(&s);

    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.7");
    let serial = str_of(&bom["serialNumber"], "serialNumber");
    let uuid = serial.strip_prefix("urn:uuid:").expect("urn:uuid:");
    let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{serial}");
    assert!(uuid.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(&uuid[14..15], "4", "version 4: {serial}");
    assert!(matches!(&uuid[19..20], "8" | "9" | "a" | "b"), "variant: {serial}");
    let time = str_of(&bom["metadata"]["timestamp"], "timestamp");
    assert!(time.len() == 20 && time.ends_with('Z'), "{time}");

    let mut refs = BTreeSet::new();
    refs.insert(str_of(&bom["metadata"]["component"]["bom-ref"], "host bom-ref"));
    let components = bom["components"].as_array().expect("components");
    for c in components {
        let r = str_of(&c["bom-ref"], "bom-ref");
        assert!(!r.is_empty() && refs.insert(r), "bom-ref {r:?} empty or twice");
        str_of(&c["name"], "name");
        if let Some(hashes) = c.get("hashes") {
            let content = str_of(&hashes[0]["content"], "hash");
            assert!(content.len() == 64 && content.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        if let Some(occurrences) = c["evidence"]["occurrences"].as_array() {
            let at: BTreeSet<&str> = occurrences
                .iter()
                .map(|o| str_of(&o["location"], "location"))
                .filter(|l| !l.is_empty())
                .collect();
            assert_eq!(at.len(), occurrences.len(), "empty or repeated locations: {c}");
        }
        if let Some(v) = c.get("version") {
            assert!(str_of(v, "version").chars().count() <= 1024);
        }
    }
    for d in bom["dependencies"].as_array().expect("dependencies") {
        let mut named = vec![&d["ref"]];
        for list in [&d["provides"], &d["dependsOn"]] {
            let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
            let unique: BTreeSet<&str> = list.iter().map(|r| str_of(r, "ref")).collect();
            assert_eq!(unique.len(), list.len(), "duplicates in {d}");
            named.extend(list);
        }
        for r in named {
            assert!(refs.contains(str_of(r, "ref")), "dangling {r}");
        }
    }

    let protocols: Vec<&Value> = components
        .iter()
        .filter(|c| c["cryptoProperties"]["assetType"] == "protocol")
        .collect();
    let keys: BTreeSet<(Option<u32>, Option<u16>)> =
        s.negotiated.iter().map(|n| (n.library, n.version)).collect();
    assert_eq!(protocols.len(), keys.len());
    let mut suites = 0;
    for p in &protocols {
        let list = p["cryptoProperties"]["protocolProperties"]["cipherSuites"]
            .as_array()
            .expect("cipherSuites");
        for suite in list {
            suites += usize::from(suite.get("identifiers").is_some());
            for a in suite["algorithms"].as_array().map(Vec::as_slice).unwrap_or_default() {
                assert!(refs.contains(str_of(a, "algorithm")), "dangling {a}");
            }
        }
    }
    let read: BTreeSet<(Option<u32>, Option<u16>, u16)> = s
        .negotiated
        .iter()
        .filter_map(|n| Some((n.library, n.version, n.suite?)))
        .collect();
    assert_eq!(suites, read.len());

    let text = bom.to_string();
    let back: Value = serde_json::from_str(&text).expect("parses back");
    assert_eq!(back, bom);
});
