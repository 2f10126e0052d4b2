use enforcer_common::flow::op;

use super::*;

fn family_of(symbols: &[&str]) -> Option<String> {
    Catalog::embedded()
        .match_file(|s| symbols.contains(&s))
        .map(|f| f.family.to_string())
}

#[test]
fn embedded_catalog_has_every_family() {
    let c = Catalog::embedded();
    let ids: Vec<String> = c.families().iter().map(|f| f.family.to_string()).collect();
    assert_eq!(
        ids,
        [
            "aws-lc",
            "boringssl",
            "libressl",
            "openssl",
            "gnutls",
            "nss",
            "wolfssl",
            "mbedtls",
            "rustls",
            "go",
            "java"
        ]
    );
    for f in c.families() {
        assert!(
            (f.probes.is_empty() == f.is_runtime()) && !f.identify.is_empty(),
            "{}",
            f.family
        );
        assert!(f.origin == Origin::Builtin);
    }
    // Sorted, no duplicates, and every referenced symbol is there.
    assert!(c.symbols().windows(2).all(|w| w[0] < w[1]));
    for s in [
        "SSL_write",
        "PR_Write",
        "OpenSSL_version_num",
        "gnutls_record_send",
    ] {
        assert!(c.symbols().binary_search(&s.to_owned()).is_ok(), "{s}");
    }
}

#[test]
fn openssl_probes_seven_functions_the_session_and_the_random_source() {
    let c = Catalog::embedded();
    let p = c.family("openssl").unwrap();
    let got: Vec<_> = p.probes.iter().map(|s| (s.symbol.as_str(), s.op)).collect();
    assert_eq!(
        got,
        [
            ("SSL_write", op::WRITE),
            ("SSL_write_ex", op::WRITE),
            ("SSL_read", op::READ),
            ("SSL_read_ex", op::READ),
            ("SSL_do_handshake", op::HANDSHAKE),
            ("SSL_connect", op::HANDSHAKE),
            ("SSL_accept", op::HANDSHAKE),
            ("SSL_new", op::SESSION),
            ("RAND_bytes_ex", op::RANDOM_BUFFER_ARG1),
            ("RAND_bytes", op::RANDOM_BUFFER_ARG0),
            ("RAND_pseudo_bytes", op::RANDOM_BUFFER_ARG0),
            ("RAND_bytes_ex", op::RANDOM_BUFFER_ARG1),
            ("RAND_bytes", op::RANDOM_BUFFER_ARG0),
            ("RAND_pseudo_bytes", op::RANDOM_BUFFER_ARG0)
        ]
    );
    // The TLS functions and the session are libssl's; the random source is libcrypto's
    // (companion), or the executable's own when OpenSSL is linked in.
    let places: Vec<Place> = p.probes.iter().map(|s| s.place).collect();
    assert!(places[..8].iter().all(|&p| p == Place::SelfFile));
    assert!(places[8..11].iter().all(|&p| p == Place::Companion));
    assert!(places[11..].iter().all(|&p| p == Place::SelfFile));
}

#[test]
fn nss_probes_nspr_io_in_its_companion() {
    let c = Catalog::embedded();
    let nss = c.family("nss").unwrap();
    assert_eq!(nss.companion, ["PR_Write", "PR_Recv", "PR_GetVersion"]);
    let companion: Vec<_> = nss
        .probes
        .iter()
        .filter(|p| p.place == Place::Companion)
        .map(|p| p.symbol.as_str())
        .collect();
    assert_eq!(companion, ["PR_Write", "PR_Send", "PR_Read", "PR_Recv"]);
    let own: Vec<_> = nss
        .probes
        .iter()
        .filter(|p| p.place == Place::SelfFile)
        .map(|p| (p.symbol.as_str(), p.op))
        .collect();
    assert!(own.iter().all(|(_, op)| *op == op::HANDSHAKE), "{own:?}");
}

#[test]
fn families_are_told_apart_by_symbols() {
    let openssl3 = [
        "OPENSSL_init_ssl",
        "SSL_CTX_new",
        "SSL_CTX_new_ex",
        "SSL_write",
    ];
    assert_eq!(family_of(&openssl3).as_deref(), Some("openssl"));
    let openssl10 = ["SSL_library_init", "SSL_CTX_ctrl", "SSL_CTX_new"];
    assert_eq!(family_of(&openssl10).as_deref(), Some("openssl"));
    let boring = [
        "OPENSSL_init_ssl",
        "SSL_CTX_new",
        "SSL_CTX_set_select_certificate_cb",
    ];
    assert_eq!(family_of(&boring).as_deref(), Some("boringssl"));
    let awslc = [
        "OPENSSL_init_ssl",
        "SSL_CTX_new",
        "SSL_CTX_set_select_certificate_cb",
        "SSL_to_bytes",
    ];
    assert_eq!(family_of(&awslc).as_deref(), Some("aws-lc"));
    let libre = [
        "OPENSSL_init_ssl",
        "SSL_CTX_new",
        "SSL_CTX_use_certificate_chain_mem",
    ];
    assert_eq!(family_of(&libre).as_deref(), Some("libressl"));
    let gnutls = ["gnutls_global_init", "gnutls_check_version"];
    assert_eq!(family_of(&gnutls).as_deref(), Some("gnutls"));
    let nss = ["SSL_ImportFD", "NSSSSL_VersionCheck", "SSL_ForceHandshake"];
    assert_eq!(family_of(&nss).as_deref(), Some("nss"));
    let wolf = ["wolfSSL_Init", "wolfSSL_new", "wolfSSL_write"];
    assert_eq!(family_of(&wolf).as_deref(), Some("wolfssl"));
    let mbed = ["mbedtls_ssl_init", "mbedtls_ssl_setup", "mbedtls_ssl_write"];
    assert_eq!(family_of(&mbed).as_deref(), Some("mbedtls"));
    // Statically linked GnuTLS + its OpenSSL compat layer: GnuTLS, not OpenSSL.
    let both = [
        "gnutls_global_init",
        "gnutls_check_version",
        "SSL_library_init",
        "SSL_CTX_ctrl",
    ];
    assert_eq!(family_of(&both).as_deref(), Some("gnutls"));
    // libgnutls-openssl.so.27 alone defines OpenSSL names but is no TLS library of its own.
    let compat = [
        "SSL_library_init",
        "SSL_CTX_new",
        "SSL_write",
        "SSL_read",
        "SSL_connect",
    ];
    assert_eq!(family_of(&compat), None);
    // NSPR alone (every NSPR program maps it, TLS or not) is not NSS.
    assert_eq!(family_of(&["PR_Write", "PR_Recv", "PR_GetVersion"]), None);
}

fn raw(text: &str) -> RawCatalog {
    serde_yaml::from_str(text).unwrap()
}

#[test]
fn policy_families_come_first_and_replace_builtins() {
    let base = Catalog::embedded();
    let ext = raw("families:
  - id: vendorssl
    identify: [{all: [vendor_tls_init]}]
    probes: [{symbol: vendor_tls_write, op: write}]
  - id: gnutls
    description: my gnutls
    identify: [{all: [gnutls_global_init]}]
    probes: [{symbol: gnutls_record_send, op: write}]
");
    let c = base.extend(ext, "p.yaml", &|i| 10 + i).unwrap();
    let ids: Vec<_> = c.families().iter().map(|f| f.family.to_string()).collect();
    assert_eq!(&ids[..2], ["vendorssl", "gnutls"]);
    assert_eq!(ids.iter().filter(|i| *i == "gnutls").count(), 1);
    assert_eq!(ids.len(), base.families().len() + 1);
    assert_eq!(
        c.family("vendorssl").unwrap().origin,
        Origin::Policy {
            source: "p.yaml".into(),
            line: 10
        }
    );
    assert!(c.symbols().contains(&"vendor_tls_init".to_owned()));
    assert_eq!(
        c.match_file(|s| s == "vendor_tls_init").unwrap().family,
        "vendorssl"
    );
}

#[test]
fn invalid_catalogs_name_the_node() {
    let base = Catalog::embedded();
    let e = |t: &str| base.extend(raw(t), "p", &|_| 1).unwrap_err().to_string();
    let probe = "probes: [{symbol: f, op: write}]";
    assert_eq!(
        e(&format!(
            "families: [{{id: Bad, identify: [{{all: [x]}}], {probe}}}]"
        )),
        "families[0].id: invalid family id 'Bad' (expected 1 to 32 lowercase letters, digits, '-' or '_', starting with a letter)"
    );
    assert_eq!(
        e(&format!("families: [{{id: a, identify: [], {probe}}}]")),
        "families[0].identify: at least one identify alternative is required"
    );
    assert_eq!(
        e(&format!(
            "families: [{{id: a, identify: [{{all: [x], none: [x]}}], {probe}}}]"
        )),
        "families[0].identify[0].none: 'x' is both required and excluded"
    );
    assert_eq!(
        e(
            "families: [{id: a, identify: [{all: [x]}], probes: [{symbol: f, op: write, in: companion}]}]"
        ),
        "families[0].probes[0].in: 'in: companion' needs the family's 'companion' symbols"
    );
    assert_eq!(
        e("families: [{id: a, identify: [{all: ['x@V']}], probes: [{symbol: f, op: read}]}]"),
        "families[0].identify[0].all[0]: invalid symbol name 'x@V' (expected 1 to 200 printable ASCII characters without '@' or spaces; a Rust path with '::' may have single spaces between words)"
    );
    // Spaces: only inside a Rust path, one at a time, not at its ends.
    let rust_ok = "families: [{id: a, identify: [{all: ['<a::B as c::D>::f']}], probes: [{symbol: 'a::f', op: read}]}]";
    assert!(base.extend(raw(rust_ok), "p", &|_| 1).is_ok());
    for bad in ["'SSL write'", "'<a::B  as c::D>::f'", "' a::f'", "'a::f '"] {
        let text = format!(
            "families: [{{id: a, identify: [{{all: [{bad}]}}], probes: [{{symbol: f, op: read}}]}}]"
        );
        assert!(
            e(&text).starts_with("families[0].identify[0].all[0]: invalid symbol name"),
            "{bad}"
        );
    }
    assert_eq!(
        e(&format!(
            "families: [{{id: a, identify: [{{all: [x]}}], {probe}}}, {{id: a, identify: [{{all: [y]}}], {probe}}}]"
        )),
        "families[1].id: family 'a' is defined twice (first as families[0])"
    );
    assert_eq!(
        e("families: [{id: a, identify: [{all: [x]}], probes: []}]"),
        "families[0].probes: at least one probe is required"
    );
    assert_eq!(
        e("families: [{id: a, identify: [{all: [x]}]}]"),
        "families[0].probes: at least one probe is required"
    );
    // A runtime family (`abi: jvm`) has nothing to probe, and says so if given probes.
    let jvm = "families: [{id: vm, abi: jvm, identify: [{all: [JNI_CreateJavaVM]}]}]";
    assert!(base.extend(raw(jvm), "p", &|_| 1).is_ok());
    assert!(
        e("families: [{id: vm, abi: jvm, identify: [{all: [x]}], probes: [{symbol: f, op: read}]}]")
            .starts_with("families[0].probes: a family with 'abi: jvm' has no probes")
    );
    assert!(
        e("families: [{id: vm, abi: jvm, identify: [{all: [x]}], companion: [y]}]")
            .starts_with("families[0].companion: a family with 'abi: jvm' has no probes")
    );
}

#[test]
fn the_jvm_is_java_and_its_native_providers_are_the_libraries_they_are() {
    // HotSpot's libjvm.so (Debian's OpenJDK 17, Temurin 25): the JNI invocation API and the JVM_*
    // entry points, and no TLS library's symbols.
    let libjvm = [
        "JNI_CreateJavaVM",
        "JNI_GetCreatedJavaVMs",
        "JVM_CurrentTimeMillis",
        "JVM_handle_linux_signal",
    ];
    assert_eq!(family_of(&libjvm).as_deref(), Some("java"));
    let def = Catalog::embedded().family("java").expect("java").clone();
    assert!(def.is_runtime() && def.probes.is_empty());
    // Named libjvm.so but not a JVM (no JNI_CreateJavaVM), or one that imports what a JVM
    // defines (libjava, libjli): not java.
    assert_eq!(family_of(&["JVM_CurrentTimeMillis"]), None);
    assert_eq!(family_of(&["JNI_CreateJavaVM", "JLI_Launch"]), None);
    // Native providers loaded into a JVM are the TLS libraries they carry: netty-tcnative's
    // boringssl-static build (BoringSSL's SSL_* exported beside its JNI functions), or its
    // dynamic build, which maps the system's libssl (a file of its own: OpenSSL).
    let tcnative_boringssl = [
        "JNI_OnLoad",
        "Java_io_netty_internal_tcnative_SSL_newSSL",
        "SSL_CTX_new",
        "SSL_CTX_set_select_certificate_cb",
    ];
    assert_eq!(family_of(&tcnative_boringssl).as_deref(), Some("boringssl"));
    assert_eq!(
        family_of(&["OPENSSL_init_ssl", "SSL_CTX_new"]).as_deref(),
        Some("openssl")
    );
    // A JVM with a TLS library linked into the same file is that library (tried first).
    let mut both = libjvm.to_vec();
    both.extend(["OPENSSL_init_ssl", "SSL_CTX_new"]);
    assert_eq!(family_of(&both).as_deref(), Some("openssl"));
}
