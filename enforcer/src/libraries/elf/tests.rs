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

/// `Source::verify` compares what was read with a last pass over the file: a change inside a
/// range that was read, a shrunk or grown file, or a short read is `Changed`; a change outside
/// every range read is not (the identity still describes the bytes it came from), and the hash
/// is of the last pass.
#[test]
fn verify_compares_the_reads_with_a_last_pass() {
    use std::fs::{File, OpenOptions};
    use std::os::unix::fs::FileExt;

    use file::Verified;
    use sha2::Digest as _;

    let path = std::env::temp_dir().join(format!("enforcer-verify-{}", std::process::id()));
    let content: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let read = |at: u64, n: usize| {
        std::fs::write(&path, &content).unwrap();
        let src = Source::new(File::open(&path).unwrap(), content.len() as u64);
        let mut buf = vec![0u8; n];
        assert_eq!(src.read_at(&mut buf, at).unwrap(), n);
        assert_eq!(buf, content[at as usize..at as usize + n]);
        src
    };
    let writer = || OpenOptions::new().write(true).open(&path).unwrap();
    let sha = |bytes: &[u8]| super::file::hex(&sha2::Sha256::digest(bytes));

    // Unchanged: the same, with the hash of the whole file; a read across a chunk boundary.
    let src = read((1 << 20) - 10, 100);
    assert_eq!(
        src.verify(true).unwrap(),
        Verified::Same {
            sha256: Some(sha(&content))
        }
    );
    assert_eq!(src.verify(false).unwrap(), Verified::Same { sha256: None });

    // A byte inside the range read: changed.
    let src = read((1 << 20) - 10, 100);
    writer().write_all_at(b"x", 1 << 20).unwrap();
    assert_eq!(src.verify(false).unwrap(), Verified::Changed);
    assert_eq!(src.verify(true).unwrap(), Verified::Changed);

    // A byte outside it: the reads still hold; the hash is of what the last pass read.
    let src = read(100, 100);
    writer().write_all_at(b"x", 5000).unwrap();
    let mut now = content.clone();
    now[5000] = b'x';
    assert_eq!(src.verify(false).unwrap(), Verified::Same { sha256: None });
    assert_eq!(
        src.verify(true).unwrap(),
        Verified::Same {
            sha256: Some(sha(&now))
        }
    );

    // Grown, or shrunk (even outside the reads): changed.
    let src = read(0, 10);
    writer().set_len(content.len() as u64 + 1).unwrap();
    assert_eq!(src.verify(false).unwrap(), Verified::Changed);
    let src = read(0, 10);
    writer().set_len(content.len() as u64 - 1).unwrap();
    assert_eq!(src.verify(true).unwrap(), Verified::Changed);

    // A read that came up short inside the length: changed, whatever the file is now.
    let src = read(0, 10);
    writer().set_len(5).unwrap();
    let mut buf = [0u8; 10];
    assert_eq!(src.read_at(&mut buf, 0).unwrap(), 5);
    std::fs::write(&path, &content).unwrap();
    assert_eq!(src.verify(false).unwrap(), Verified::Changed);
    let _ = std::fs::remove_file(&path);
}
