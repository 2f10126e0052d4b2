//! Identity (build-id, SHA-256, version), companions, and the families this host does not ship,
//! checked on real ELF files: the system's, and small shared objects compiled here with `cc`
//! that define exactly the symbols and version texts of other TLS libraries.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use enforcer_common::flow::op;

use super::*;

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

fn lib(name: &str) -> PathBuf {
    Path::new(LIBDIR).join(name)
}

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

fn sha256sum(path: &Path) -> String {
    tool("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn readelf_build_id(path: &Path) -> String {
    let notes = tool("readelf", &["-n", path.to_str().unwrap()]);
    let line = notes.lines().find(|l| l.contains("Build ID:")).unwrap();
    line.split_whitespace().last().unwrap().to_owned()
}

/// A temp directory removed on drop.
struct Dir(PathBuf);
impl Dir {
    fn new() -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("enforcer-ident-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Compiles a shared object defining `functions` (each `int f(void)`) and holding `rodata`.
fn shared_object(dir: &Path, name: &str, functions: &[&str], rodata: &str) -> PathBuf {
    let mut c = String::new();
    for (i, f) in functions.iter().enumerate() {
        c.push_str(&format!("int {f}(void) {{ return {i}; }}\n"));
    }
    c.push_str(&format!(
        "__attribute__((used)) const char enforcer_test_text[] = \"{rodata}\";\n"
    ));
    let src = dir.join(format!("{name}.c"));
    fs::write(&src, c).unwrap();
    let out = dir.join(name);
    tool(
        "cc",
        &[
            "-shared",
            "-fPIC",
            "-O1",
            "-Wl,--build-id=sha1",
            "-o",
            out.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    out
}

#[test]
fn system_libraries_state_their_versions() {
    let ssl = identify(&lib("libssl.so.3")).unwrap().unwrap();
    let pkg = tool("dpkg-query", &["-W", "-f=${Version}", "libssl3"]);
    // 3.0.22-1~deb12u2 → 3.0.22
    let upstream = pkg.split(['-', '+', '~']).next().unwrap();
    assert_eq!(ssl.identity.version.as_deref(), Some(upstream));
    assert_eq!(
        ssl.companion.as_ref().map(|c| c.path.clone()),
        Some(lib("libcrypto.so.3"))
    );
    assert_eq!(
        ssl.identity.build_id,
        Some(readelf_build_id(&lib("libssl.so.3")))
    );
    assert_eq!(ssl.identity.sha256, Some(sha256sum(&lib("libssl.so.3"))));

    let gnutls = identify(&lib("libgnutls.so.30")).unwrap().unwrap();
    let pkg = tool("dpkg-query", &["-W", "-f=${Version}", "libgnutls30"]);
    assert_eq!(
        gnutls.identity.version.as_deref(),
        Some(pkg.split(['-', '+', '~']).next().unwrap())
    );
    assert_eq!(gnutls.companion, None);
}

#[test]
fn nss_is_libssl3_with_nspr_io_probed_in_libnspr4() {
    let nss = identify(&lib("libssl3.so"))
        .unwrap()
        .expect("libssl3.so is NSS");
    assert_eq!(nss.family, "nss");
    let pkg = tool("dpkg-query", &["-W", "-f=${Version}", "libnss3"]);
    // 2:3.87.1-1+deb12u4 → 3.87.1
    let upstream = pkg
        .split(':')
        .nth(1)
        .unwrap()
        .split(['-', '+', '~'])
        .next()
        .unwrap();
    assert_eq!(nss.identity.version.as_deref(), Some(upstream));
    let companion = nss.companion.clone().expect("libnspr4.so beside it");
    assert_eq!(companion.path, lib("libnspr4.so"));
    let own: Vec<_> = nss.probes.iter().filter(|p| !p.in_companion).collect();
    let nspr: Vec<_> = nss.probes.iter().filter(|p| p.in_companion).collect();
    assert!(own.iter().all(|p| p.op == op::HANDSHAKE));
    assert!(own.iter().any(|p| p.symbol == "SSL_ForceHandshake"));
    let names: BTreeSet<_> = nspr.iter().map(|p| (p.symbol.as_str(), p.op)).collect();
    let want: BTreeSet<_> = [
        ("PR_Write", op::WRITE),
        ("PR_Send", op::WRITE),
        ("PR_Read", op::READ),
        ("PR_Recv", op::READ),
    ]
    .into();
    assert_eq!(names, want);
    // Offsets as nm + readelf give them, in the companion.
    let nm = tool(
        "nm",
        &["-D", "--defined-only", companion.path.to_str().unwrap()],
    );
    for p in nspr {
        let line = nm
            .lines()
            .find(|l| l.ends_with(&format!(" T {}", p.symbol)))
            .unwrap_or_else(|| panic!("{} in nm output", p.symbol));
        let value = u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap();
        // libnspr4's text segment is loaded at vaddr == offset.
        assert_eq!(p.file_offset, value, "{}", p.symbol);
    }
}

#[test]
fn libraries_this_host_does_not_ship_are_recognised_by_symbols() {
    let dir = Dir::new();
    // (file name, functions, read-only text, family, version found)
    type Case<'a> = (&'a str, &'a [&'a str], &'a str, &'a str, Option<&'a str>);
    let cases: [Case; 5] = [
        (
            "libwolf-renamed.so",
            &[
                "wolfSSL_Init",
                "wolfSSL_new",
                "wolfSSL_write",
                "wolfSSL_read",
                "wolfSSL_connect",
            ],
            "5.6.4",
            "wolfssl",
            None,
        ),
        (
            "libmbed.so",
            &[
                "mbedtls_ssl_init",
                "mbedtls_ssl_setup",
                "mbedtls_ssl_write",
                "mbedtls_ssl_read",
                "mbedtls_ssl_handshake",
                "mbedtls_version_get_string",
            ],
            "mbed TLS 2.28.3",
            "mbedtls",
            Some("2.28.3"),
        ),
        (
            "libboring.so",
            &[
                "OPENSSL_init_ssl",
                "SSL_CTX_new",
                "SSL_CTX_set_select_certificate_cb",
                "SSL_write",
                "SSL_read",
                "SSL_do_handshake",
            ],
            "BoringSSL",
            "boringssl",
            None,
        ),
        (
            "libawslc.so",
            &[
                "SSL_CTX_new",
                "SSL_CTX_set_select_certificate_cb",
                "SSL_to_bytes",
                "SSL_write",
                "SSL_read",
                "awslc_api_version_num",
            ],
            "AWS-LC FIPS 2.0.13",
            "aws-lc",
            Some("2.0.13"),
        ),
        (
            "libtls-thing.so.9",
            &[
                "OPENSSL_init_ssl",
                "SSL_CTX_new",
                "SSL_CTX_use_certificate_chain_mem",
                "SSL_write",
                "SSL_read",
                "OpenSSL_version_num",
            ],
            "LibreSSL 3.8.2",
            "libressl",
            Some("3.8.2"),
        ),
    ];
    for (name, functions, text, family, version) in cases {
        let path = shared_object(&dir.0, name, functions, text);
        let id = identify(&path)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} not identified"));
        assert_eq!(id.family, family, "{name}");
        assert_eq!(id.identity.version.as_deref(), version, "{name}");
        assert_eq!(
            id.identity.build_id,
            Some(readelf_build_id(&path)),
            "{name}"
        );
        assert_eq!(id.identity.sha256, Some(sha256sum(&path)), "{name}");
        assert!(!id.probes.is_empty(), "{name}");
    }
}

#[test]
fn companion_in_the_same_process_wins_over_the_directory() {
    // An OpenSSL-like library whose libcrypto-like companion sits beside it: the companion
    // gives the version. A second one in another directory does not interfere.
    let dir = Dir::new();
    let other = Dir::new();
    let ssl = shared_object(
        &dir.0,
        "libmyssl.so",
        &["OPENSSL_init_ssl", "SSL_CTX_new", "SSL_write", "SSL_read"],
        "no version here",
    );
    shared_object(
        &dir.0,
        "libmycrypto.so",
        &["OpenSSL_version_num"],
        "OpenSSL 1.1.1w  11 Sep 2023",
    );
    shared_object(
        &other.0,
        "libcrypto.so.3",
        &["OpenSSL_version_num"],
        "OpenSSL 3.9.9 1 Jan 2030",
    );
    let id = identify(&ssl).unwrap().unwrap();
    assert_eq!(id.family, "openssl");
    assert_eq!(id.identity.version.as_deref(), Some("1.1.1w"));
    assert_eq!(id.companion.unwrap().path, dir.0.join("libmycrypto.so"));
}
