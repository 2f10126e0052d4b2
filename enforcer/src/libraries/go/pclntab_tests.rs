use super::*;

/// A little-endian table with 8-byte pointers: `funcs` are (name, entry), `end` the end pc.
/// Entries of 1.18+ layouts are stored relative to `text`.
pub(crate) fn build(layout: Layout, funcs: &[(&str, u64)], end: u64, text: u64) -> Vec<u8> {
    let magic: u32 = match layout {
        Layout::Go12 => 0xffff_fffb,
        Layout::Go116 => 0xffff_fffa,
        Layout::Go118 => 0xffff_fff0,
        Layout::Go120 => 0xffff_fff1,
    };
    let words = match layout {
        Layout::Go12 => 1,
        Layout::Go116 => 7,
        _ => 8,
    };
    let mut out = magic.to_le_bytes().to_vec();
    out.extend_from_slice(&[0, 0, 1, 8]);
    out.resize(8 + words * 8, 0);
    let put = |out: &mut Vec<u8>, at: usize, v: u64, size: usize| {
        out[at..at + size].copy_from_slice(&v.to_le_bytes()[..size]);
    };
    put(&mut out, 8, funcs.len() as u64, 8);
    // Names.
    let names_at = out.len();
    let mut name_offs = Vec::new();
    for (name, _) in funcs {
        name_offs.push(out.len() - if layout == Layout::Go12 { 0 } else { names_at });
        out.extend_from_slice(name.as_bytes());
        out.push(0);
    }
    let old = matches!(layout, Layout::Go12 | Layout::Go116);
    let field = if old { 8 } else { 4 };
    let functab = if layout == Layout::Go12 {
        // 1.2: the functab follows the header directly; move the names after it.
        let names: Vec<u8> = out.drain(names_at..).collect();
        let tab = out.len();
        out.resize(tab + (2 * funcs.len() + 1) * field, 0);
        let shift = out.len();
        out.extend_from_slice(&names);
        for o in &mut name_offs {
            *o = *o - names_at + shift;
        }
        tab
    } else {
        let tab = out.len();
        out.resize(tab + (2 * funcs.len() + 1) * field, 0);
        tab
    };
    match layout {
        Layout::Go12 => {}
        Layout::Go116 => {
            put(&mut out, 8 + 2 * 8, names_at as u64, 8);
            put(&mut out, 8 + 6 * 8, functab as u64, 8);
        }
        _ => {
            put(&mut out, 8 + 2 * 8, text, 8);
            put(&mut out, 8 + 3 * 8, names_at as u64, 8);
            put(&mut out, 8 + 7 * 8, functab as u64, 8);
        }
    }
    let base = if layout == Layout::Go12 { 0 } else { functab };
    let rel = |a: u64| if old { a } else { a - text };
    for (i, (_, entry)) in funcs.iter().enumerate() {
        let func = out.len();
        out.resize(func + field + 4, 0);
        put(&mut out, func, rel(*entry), field);
        put(&mut out, func + field, name_offs[i] as u64, 4);
        put(&mut out, functab + 2 * i * field, rel(*entry), field);
        put(
            &mut out,
            functab + (2 * i + 1) * field,
            (func - base) as u64,
            field,
        );
    }
    put(&mut out, functab + 2 * funcs.len() * field, rel(end), field);
    out
}

const FUNCS: &[(&str, u64)] = &[
    ("main.main", 0x401000),
    ("crypto/tls.(*Conn).Write", 0x401100),
    ("crypto/tls.(*Conn).Read", 0x401380),
];

#[test]
fn every_layout() {
    for layout in [Layout::Go12, Layout::Go116, Layout::Go118, Layout::Go120] {
        let data = build(layout, FUNCS, 0x401500, 0x401000);
        let table = parse(&data, 0x401000).unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        assert_eq!(table.layout, layout);
        assert_eq!(table.len(), 3);
        let found = table.find(&[
            "crypto/tls.(*Conn).Read",
            "crypto/tls.(*Conn).Write",
            "crypto/tls.(*Conn).Close",
            "main",
        ]);
        assert_eq!(
            found,
            vec![
                Some(Func {
                    entry: 0x401380,
                    end: 0x401500
                }),
                Some(Func {
                    entry: 0x401100,
                    end: 0x401380
                }),
                None,
                None,
            ],
            "{layout:?}"
        );
    }
}

#[test]
fn hostile_tables_are_refused_or_yield_nothing() {
    let good = build(Layout::Go118, FUNCS, 0x401500, 0x401000);
    // Every truncation: an error or fewer functions, never a panic.
    for len in 0..good.len() {
        if let Ok(t) = parse(&good[..len], 0x401000) {
            let _ = t.find(&["crypto/tls.(*Conn).Write"]);
        }
    }
    // Every single-byte corruption of the header and tables.
    for at in 0..good.len() {
        for v in [0x00, 0x7f, 0xff] {
            let mut bad = good.clone();
            bad[at] = v;
            if let Ok(t) = parse(&bad, 0x401000) {
                let _ = t.find(&["crypto/tls.(*Conn).Write", "main.main"]);
            }
        }
    }
    let mut magic = good.clone();
    magic[0] = 0;
    assert!(matches!(parse(&magic, 0), Err(PclnError::Magic(_))));
    let mut ptr = good.clone();
    ptr[7] = 3;
    assert!(matches!(parse(&ptr, 0), Err(PclnError::Header(_))));
    // A function count far beyond the data, and one beyond the cap.
    let mut many = good.clone();
    many[8..16].copy_from_slice(&1_000_000u64.to_le_bytes());
    assert!(matches!(parse(&many, 0), Err(PclnError::OutOfBounds(_))));
    many[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse(&many, 0), Err(PclnError::TooMany(_))));
    // Offsets past the end.
    let mut off = good.clone();
    off[8 + 7 * 8..8 + 8 * 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse(&off, 0), Err(PclnError::OutOfBounds(_))));
    // Entries out of order: the function is not found rather than given a negative size.
    let backwards = build(
        Layout::Go118,
        &[("crypto/tls.(*Conn).Write", 0x401200), ("b", 0x401100)],
        0x401300,
        0x401000,
    );
    let t = parse(&backwards, 0x401000).unwrap();
    assert_eq!(t.find(&["crypto/tls.(*Conn).Write"]), vec![None]);
    // A name without its NUL.
    let mut unterminated = build(Layout::Go120, &[("x", 0x401000)], 0x401010, 0x401000);
    let name_at = 8 + 8 * 8;
    unterminated[name_at + 1] = b'y';
    let t = parse(&unterminated, 0x401000).unwrap();
    assert_eq!(t.find(&["x"]), vec![None]);
}

/// Regression: every function's name was scanned for its NUL (up to [`MAX_NAME`] bytes), so a
/// table of 2^20 functions whose names all point at one run without a NUL cost 4 GiB of
/// scanning. Names are now compared in place: the cost is that of the wanted names.
#[test]
fn unterminated_shared_names_are_not_rescanned() {
    const N: usize = 1 << 20;
    let mut data = build(Layout::Go118, &[("x", 0x401000)], 0x401010, 0x401000);
    // A function table of N slots, then one `_func` (entryoff, nameoff) that every slot points
    // at, its name a long run of 'c'.
    let names_at = 8 + 8 * 8;
    let functab = data.len();
    data[8 + 7 * 8..8 + 8 * 8].copy_from_slice(&(functab as u64).to_le_bytes());
    data[8..16].copy_from_slice(&(N as u64).to_le_bytes());
    let func = functab + (2 * N + 1) * 4;
    for i in 0..=N {
        data.extend_from_slice(&(i as u32 * 16).to_le_bytes());
        data.extend_from_slice(&((func - functab) as u32).to_le_bytes());
    }
    data.truncate(func);
    data.extend_from_slice(&0u32.to_le_bytes());
    let run = data.len() + 4;
    data.extend_from_slice(&((run - names_at) as u32).to_le_bytes());
    data.resize(run + 2 * MAX_NAME, b'c');
    let table = parse(&data, 0x401000).unwrap();
    assert_eq!(table.len(), N);
    let started = std::time::Instant::now();
    let wanted = ["crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read", "c"];
    assert_eq!(table.find(&wanted), vec![None; 3]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?} for 2^20 functions",
        started.elapsed()
    );
    // A wanted name longer than MAX_NAME is never compared.
    let long = "c".repeat(MAX_NAME + 1);
    assert_eq!(table.find(&[&long]), vec![None]);
}
