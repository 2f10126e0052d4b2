//! The userspace side of the ClientHello fields (`enforcer::agent::events::offered`, `ja4`) on
//! arbitrary input: the JA4 builder on arbitrary field lists, and an `offered` ring record of
//! arbitrary bytes (every count, bit and value a hostile or buggy kernel side could write)
//! decoded and turned into its record.
//!
//! Beyond "no panic": every JA4 made has the specification's shape (10 characters, then two
//! 12-digit hex hashes), its raw form starts with the same 10 characters, and a record whose
//! fields were not all read carries no JA4.
#![no_main]

use enforcer::agent::events::{Record, decode, ja4, offered};
use libfuzzer_sys::fuzz_target;

/// `event::kind::OFFERED`, and a record longer than `OfferedEvent` (the ring rounds up).
const OFFERED: u8 = 5;
const RECORD: usize = 512;

fn check(s: &str) {
    let b = s.as_bytes();
    assert_eq!(b.len(), 36, "{s}");
    assert_eq!((b[0], b[10], b[23]), (b't', b'_', b'_'), "{s}");
    assert!(b[3] == b'd' || b[3] == b'i', "{s}");
    assert!(b[4..8].iter().all(u8::is_ascii_digit), "{s}");
    assert!(b[8..10].iter().all(u8::is_ascii_alphanumeric), "{s}");
    let hex = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
    assert!(b[11..23].iter().all(hex) && b[24..].iter().all(hex), "{s}");
}

fuzz_target!(|data: &[u8]| {
    let words: Vec<u16> = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    let part = |i: usize| {
        let n = words.len();
        &words[(n * i / 5)..(n * (i + 1) / 5)]
    };
    let hello = ja4::Hello {
        legacy_version: words.first().copied().unwrap_or(0),
        versions: part(0),
        suites: part(1),
        extensions: part(2),
        signature_schemes: part(3),
        server_name: data.first().is_some_and(|b| b & 1 != 0),
        alpn: (data.len() > 2).then(|| (data[1], data[2])),
    };
    let s = ja4::ja4(&hello);
    check(&s);
    assert!(ja4::ja4_r(&hello).starts_with(&s[..11]));

    let mut record = vec![0u8; RECORD];
    record[0] = OFFERED;
    let n = data.len().min(RECORD - 16);
    record[16..16 + n].copy_from_slice(&data[..n]);
    let Ok(Record::Offered(event)) = decode(&record) else {
        panic!("an OFFERED record of {RECORD} bytes decodes");
    };
    let json = offered::offer_json(&event);
    let unread = json["unread"].as_array().map_or(0, Vec::len);
    match json["ja4"].as_str() {
        Some(j) => check(j),
        None => assert!(unread > 0, "no JA4 while every field was read: {json}"),
    }
});
