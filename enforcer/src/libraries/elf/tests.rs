use super::*;

#[test]
fn name_lookup() {
    let catalog = Catalog::embedded();
    let names = Names::new(catalog.symbols(), catalog.symbol_prefixes());
    let lookup = |s: &[u8]| {
        names
            .lookup(s)
            .map(|(i, d)| (catalog.symbols()[i].as_str(), d))
    };
    assert_eq!(lookup(b"SSL_write\0next"), Some(("SSL_write", true)));
    assert_eq!(lookup(b"SSL_write_ex\0"), Some(("SSL_write_ex", true)));
    assert_eq!(
        lookup(b"SSL_write@@OPENSSL_3.0.0\0"),
        Some(("SSL_write", true))
    );
    assert_eq!(
        lookup(b"SSL_write@OPENSSL_1.0.0\0"),
        Some(("SSL_write", false))
    );
    assert_eq!(lookup(b"SSL_write"), Some(("SSL_write", true)));
    assert_eq!(lookup(b"SSL_writex\0"), None);
    assert_eq!(lookup(b"SSL_writ\0"), None);
    assert_eq!(lookup(b"malloc\0"), None);
    assert_eq!(lookup(b""), None);
    assert_eq!(lookup(b"\0"), None);
    // Prefixed builds (aws-lc-sys, aws-lc-fips-sys).
    assert_eq!(
        lookup(b"aws_lc_0_28_0_SSL_write\0"),
        Some(("SSL_write", true))
    );
    assert_eq!(
        lookup(b"aws_lc_fips_0_13_2_SSL_CTX_new\0"),
        Some(("SSL_CTX_new", true))
    );
    assert_eq!(
        lookup(b"aws_lc_1_SSL_write_ex\0"),
        Some(("SSL_write_ex", true))
    );
    assert_eq!(lookup(b"aws_lc_0_28_0_\0"), None);
    assert_eq!(
        lookup(b"aws_lc_SSL_write\0"),
        None,
        "the version is required"
    );
    assert_eq!(lookup(b"aws_lc_0_28_0_SSL_writex\0"), None);
    assert_eq!(lookup(b"aws_lc_0_28_0_malloc\0"), None);
}

#[test]
fn offsets_through_segments() {
    // Shaped like libssl.so.3's segments, with the data segment's usual vaddr != offset.
    let segs = [
        Segment {
            vaddr: 0,
            offset: 0,
            filesz: 0x1e9b0,
            executable: false,
        },
        Segment {
            vaddr: 0x1f000,
            offset: 0x1f000,
            filesz: 0x5cff1,
            executable: true,
        },
        Segment {
            vaddr: 0x9b810,
            offset: 0x9a810,
            filesz: 0xd020,
            executable: true,
        },
    ];
    assert_eq!(file_offset(&segs, 0x359c0), Some(0x359c0));
    assert_eq!(file_offset(&segs, 0x9b820), Some(0x9a820));
    assert_eq!(file_offset(&segs, 0x100), None, "not executable");
    assert_eq!(
        file_offset(&segs, 0x1f000 + 0x5cff1),
        None,
        "one past the end"
    );
    assert_eq!(file_offset(&segs, u64::MAX), None);
    let hostile = [Segment {
        vaddr: 0,
        offset: u64::MAX,
        filesz: u64::MAX,
        executable: true,
    }];
    assert_eq!(file_offset(&hostile, 0), Some(u64::MAX));
    assert_eq!(file_offset(&hostile, 1), None, "overflow is no offset");
}
