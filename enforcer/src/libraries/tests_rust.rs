//! The `rustls` family on executables compiled here with `cc` whose functions carry the names
//! rustc gives rustls' (legacy and v0 mangling, through asm labels) and whose read-only data
//! holds a panic location path: identified from `.symtab`, probed at those functions (session
//! and random source), version from the path; stripped, not identified at all. The real rustls
//! builds are tests/tests/rustls.rs.

use std::process::Command;

use enforcer_common::flow::op;

use super::*;

const LEGACY: [(&str, &str); 3] = [
    (
        "session",
        "_ZN6rustls6client11client_conn10connection16ClientConnection3new17he8f5011296103992E",
    ),
    (
        "server",
        "_ZN6rustls6server11server_conn10connection16ServerConnection3new17h75eaddb562e165f3E",
    ),
    (
        "fill",
        "_ZN83_$LT$rustls..crypto..aws_lc_rs..AwsLcRs$u20$as$u20$rustls..crypto..SecureRandom$GT$4fill17hb87dd90f17b90c8cE",
    ),
];

const V0: [(&str, &str); 3] = [
    (
        "session",
        "_RNvMs2_NtNtNtCsiWcKhtF0zut_6rustls6client11client_conn10connectionNtB5_16ClientConnection3new",
    ),
    (
        "server",
        "_RNvMNtNtNtCs1PVfNTLNy3A_6rustls6server11server_conn10connectionNtB2_16ServerConnection3new",
    ),
    (
        "fill",
        "_RNvXNtNtCsiWcKhtF0zut_6rustls6crypto4ringNtB2_4RingNtB4_12SecureRandom4fill",
    ),
];

const PANIC_PATH: &str =
    "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rustls-0.23.46/src/conn.rs";

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An executable whose functions are named `names` (mangled) and whose .rodata holds `rodata`.
fn executable(dir: &Path, name: &str, names: &[(&str, &str)], rodata: &str) -> PathBuf {
    let mut c = String::new();
    for (i, (f, mangled)) in names.iter().enumerate() {
        c.push_str(&format!(
            "__attribute__((noinline, used)) int {f}(void) __asm__(\"{mangled}\");\n\
             int {f}(void) {{ return {i}; }}\n"
        ));
    }
    c.push_str(&format!(
        "__attribute__((used)) const char panic_location[] = \"{rodata}\";\n"
    ));
    let calls: Vec<String> = names.iter().map(|(f, _)| format!("{f}()")).collect();
    c.push_str(&format!(
        "int main(void) {{ return {}; }}\n",
        calls.join(" + ")
    ));
    let src = dir.join(format!("{name}.c"));
    fs::write(&src, c).unwrap();
    let out = dir.join(name);
    tool(
        "cc",
        &["-O1", "-o", out.to_str().unwrap(), src.to_str().unwrap()],
    );
    out
}

/// `nm`'s address of `mangled`, as a file offset (non-PIE-safe: through `readelf`'s segments
/// would be exact; these small executables map .text at offset == vaddr - base).
fn nm_value(path: &Path, mangled: &str) -> u64 {
    let out = tool("nm", &["--defined-only", path.to_str().unwrap()]);
    let line = out
        .lines()
        .find(|l| l.ends_with(&format!(" {mangled}")))
        .unwrap_or_else(|| panic!("{mangled} not in nm output"));
    u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("enforcer-rust-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn check(names: &[(&str, &str); 3], tag: &str) {
    let dir = tempdir(tag);
    let exe = executable(&dir, "rustls-like", names, PANIC_PATH);
    let found = identify(&exe)
        .unwrap()
        .unwrap_or_else(|| panic!("{tag}: the executable is rustls"));
    assert_eq!(found.family, "rustls", "{tag}");
    assert_eq!(found.identity.version.as_deref(), Some("0.23.46"), "{tag}");
    let mut got: Vec<(String, u8, u64)> = found
        .probes
        .iter()
        .map(|p| (p.symbol.clone(), p.op, p.file_offset))
        .collect();
    got.sort();
    // PIE executables from cc: the first PT_LOAD maps offset 0 at vaddr 0, .text included.
    let want_at = |i: usize| nm_value(&exe, names[i].1);
    let mut want = vec![
        (
            "rustls::client::client_conn::connection::ClientConnection::new".to_owned(),
            op::SESSION,
            want_at(0),
        ),
        (
            "rustls::server::server_conn::connection::ServerConnection::new".to_owned(),
            op::SESSION,
            want_at(1),
        ),
    ];
    let fill = if tag == "legacy" {
        "<rustls::crypto::aws_lc_rs::AwsLcRs as rustls::crypto::SecureRandom>::fill"
    } else {
        "<rustls::crypto::ring::Ring as rustls::crypto::SecureRandom>::fill"
    };
    want.push((fill.to_owned(), op::RANDOM_BUFFER_ARG1, want_at(2)));
    want.sort();
    assert_eq!(got, want, "{tag}");
    assert!(
        found
            .probes
            .iter()
            .all(|p| p.op != op::SESSION || p.code.is_some()),
        "{tag}: session probes know the code around them"
    );

    // Stripped: nothing in .dynsym, no .symtab: not identified (its TLS is unattributed).
    let stripped = dir.join("rustls-like-stripped");
    fs::copy(&exe, &stripped).unwrap();
    tool("strip", &[stripped.to_str().unwrap()]);
    assert_eq!(identify(&stripped).unwrap(), None, "{tag}: stripped");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn rustls_legacy_mangling_is_identified_and_probed() {
    check(&LEGACY, "legacy");
}

#[test]
fn rustls_v0_mangling_is_identified_and_probed() {
    check(&V0, "v0");
}

#[test]
fn cargo_auditable_list_gives_the_version_first() {
    let dir = tempdir("auditable");
    let exe = executable(&dir, "rustls-audited", &LEGACY, PANIC_PATH);
    let json = br#"{"packages":[{"name":"rustls-pki-types","version":"1.16.0","source":"crates.io"},{"name":"rustls","version":"0.23.99","source":"crates.io"}]}"#;
    let section = dir.join("dep-v0");
    fs::write(
        &section,
        miniz_oxide::deflate::compress_to_vec_zlib(json, 6),
    )
    .unwrap();
    let audited = dir.join("rustls-audited-2");
    tool(
        "objcopy",
        &[
            &format!("--add-section=.dep-v0={}", section.display()),
            exe.to_str().unwrap(),
            audited.to_str().unwrap(),
        ],
    );
    let found = identify(&audited).unwrap().expect("rustls");
    assert_eq!(found.family, "rustls");
    assert_eq!(
        found.identity.version.as_deref(),
        Some("0.23.99"),
        "the list, not the panic path"
    );
    // A corrupt list: the panic path again.
    fs::write(&section, b"\x78\x9cgarbage").unwrap();
    let corrupt = dir.join("rustls-audited-3");
    tool(
        "objcopy",
        &[
            &format!("--add-section=.dep-v0={}", section.display()),
            exe.to_str().unwrap(),
            corrupt.to_str().unwrap(),
        ],
    );
    let found = identify(&corrupt).unwrap().expect("rustls");
    assert_eq!(found.identity.version.as_deref(), Some("0.23.46"));
    let _ = fs::remove_dir_all(&dir);
}
