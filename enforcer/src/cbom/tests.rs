use std::{
    collections::BTreeSet,
    time::{Duration, UNIX_EPOCH},
};

use enforcer_tests::cyclonedx::validate_cbom;
use serde_json::Value;

use super::*;

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn snapshot() -> Snapshot {
    Snapshot {
        time: UNIX_EPOCH + Duration::from_secs(1_780_000_000),
        serial: [0xab; 16],
        tool_version: "0.1.0".into(),
        host: Host {
            name: "web-1".into(),
            kernel_release: Some("6.1.0-18-amd64".into()),
        },
        agent: vec![("mode".into(), "audit".into())],
        libraries: vec![
            LibraryFacts {
                id: 2,
                family: "openssl".into(),
                path: "/usr/lib/x86_64-linux-gnu/libssl.so.3".into(),
                version: Some("3.0.15".into()),
                sha256: Some(SHA.into()),
                build_id: Some("ab12".into()),
                mapped_as: vec![
                    "/usr/lib/x86_64-linux-gnu/libssl.so.3".into(),
                    "/lib/x86_64-linux-gnu/libssl.so.3".into(),
                ],
            },
            LibraryFacts {
                id: 1,
                family: "gnutls".into(),
                path: "/usr/lib/x86_64-linux-gnu/libgnutls.so.30".into(),
                version: None,
                sha256: None,
                build_id: None,
                mapped_as: vec![],
            },
        ],
        negotiated: vec![
            Negotiated {
                library: Some(2),
                version: Some(0x0304),
                suite: Some(0x1302),
                group: Some(0x001d),
                connections: 3,
                processes: vec!["curl".into()],
                cgroups: vec![],
            },
            Negotiated {
                library: Some(2),
                version: Some(0x0304),
                suite: Some(0x1302),
                group: Some(0x11ec),
                connections: 2,
                processes: vec!["curl".into(), "python3".into()],
                cgroups: vec![],
            },
            Negotiated {
                library: Some(2),
                version: Some(0x0303),
                suite: Some(0xc030),
                group: Some(0x0017),
                connections: 1,
                processes: vec!["openssl".into()],
                cgroups: vec![],
            },
            Negotiated {
                library: None,
                version: Some(0x0304),
                suite: Some(0x1301),
                group: None,
                connections: 1,
                processes: vec![],
                cgroups: vec![],
            },
        ],
    }
}

fn component<'a>(bom: &'a Value, bom_ref: &str) -> &'a Value {
    bom["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["bom-ref"] == bom_ref)
        .unwrap_or_else(|| panic!("no component {bom_ref}: {bom:#}"))
}

fn dependency<'a>(bom: &'a Value, bom_ref: &str) -> &'a Value {
    bom["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["ref"] == bom_ref)
        .unwrap_or_else(|| panic!("no dependency entry for {bom_ref}"))
}

fn property<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["properties"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["value"].as_str())
}

#[test]
fn the_document_is_a_cyclonedx_1_7_bom() {
    let bom = build(&snapshot());
    validate_cbom(&bom).unwrap_or_else(|e| panic!("{e}\n{bom:#}"));
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.7");
    assert_eq!(
        bom["serialNumber"],
        "urn:uuid:abababab-abab-4bab-abab-abababababab"
    );
    assert_eq!(bom["metadata"]["timestamp"], "2026-05-28T20:26:40Z");
    assert_eq!(
        bom["metadata"]["tools"]["components"][0]["name"],
        "enforcer"
    );
    assert_eq!(bom["metadata"]["component"]["name"], "web-1");
    assert_eq!(
        bom["metadata"]["properties"][0],
        serde_json::json!({"name": "enforcer:agent:mode", "value": "audit"})
    );
}

#[test]
fn libraries_carry_version_hash_build_id_and_what_they_negotiated() {
    let bom = build(&snapshot());
    let ssl = component(&bom, "library:2");
    assert_eq!(ssl["type"], "library");
    assert_eq!(ssl["name"], "libssl.so.3");
    assert_eq!(ssl["version"], "3.0.15");
    assert_eq!(
        ssl["hashes"],
        serde_json::json!([{"alg": "SHA-256", "content": SHA}])
    );
    assert_eq!(property(ssl, "enforcer:library:family"), Some("openssl"));
    assert_eq!(property(ssl, "enforcer:library:build_id"), Some("ab12"));
    assert_eq!(
        ssl["evidence"]["occurrences"],
        serde_json::json!([
            {"location": "/usr/lib/x86_64-linux-gnu/libssl.so.3"},
            {"location": "/lib/x86_64-linux-gnu/libssl.so.3"},
        ]),
        "the path once, then the other mapped names"
    );
    assert_eq!(property(ssl, "enforcer:connections"), Some("6"));
    assert_eq!(
        dependency(&bom, "library:2")["provides"],
        serde_json::json!(["tls:library:2:0x0303", "tls:library:2:0x0304"])
    );
    // Probed, never negotiated anything: listed, provides nothing, no version or hash invented.
    let gnutls = component(&bom, "library:1");
    assert!(gnutls.get("version").is_none() && gnutls.get("hashes").is_none());
    assert_eq!(property(gnutls, "enforcer:connections"), Some("0"));
    assert_eq!(
        dependency(&bom, "library:1")["provides"],
        serde_json::json!([])
    );
}

#[test]
fn protocols_list_suites_with_their_groups_and_pq_connections() {
    let bom = build(&snapshot());
    let tls13 = component(&bom, "tls:library:2:0x0304");
    assert_eq!(tls13["type"], "cryptographic-asset");
    assert_eq!(tls13["name"], "TLS 1.3");
    let crypto = &tls13["cryptoProperties"];
    assert_eq!(crypto["assetType"], "protocol");
    assert_eq!(crypto["protocolProperties"]["type"], "tls");
    assert_eq!(crypto["protocolProperties"]["version"], "1.3");
    assert_eq!(
        crypto["protocolProperties"]["cipherSuites"],
        serde_json::json!([{
            "name": "TLS_AES_256_GCM_SHA384",
            "identifiers": ["0x1302"],
            "tlsGroups": ["x25519", "X25519MLKEM768"],
            "algorithms": ["tls-group:0x001d", "tls-group:0x11ec"],
        }])
    );
    assert_eq!(property(tls13, "enforcer:connections"), Some("5"));
    assert_eq!(
        property(tls13, "enforcer:connections_post_quantum"),
        Some("2")
    );
    let pq = component(&bom, "tls-group:0x11ec");
    assert_eq!(pq["cryptoProperties"]["assetType"], "algorithm");
    assert_eq!(
        pq["cryptoProperties"]["algorithmProperties"]["primitive"],
        "kem"
    );
    assert_eq!(property(pq, "enforcer:post_quantum"), Some("true"));
    let classic = component(&bom, "tls-group:0x001d");
    assert_eq!(property(classic, "enforcer:post_quantum"), Some("false"));
    assert_eq!(
        classic["cryptoProperties"]["algorithmProperties"]["primitive"],
        "key-agree"
    );
    // No library: the protocol is there, tied to no library.
    let stray = component(&bom, "tls:unattributed:0x0304");
    assert_eq!(property(stray, "enforcer:library"), Some("unattributed"));
    let tls12 = component(&bom, "tls:library:2:0x0303");
    assert_eq!(
        tls12["cryptoProperties"]["protocolProperties"]["cipherSuites"][0]["name"],
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
    );
}

#[test]
fn processes_depend_on_the_libraries_and_protocols_they_used() {
    let bom = build(&snapshot());
    let curl = component(&bom, "process:curl");
    assert_eq!(curl["type"], "application");
    assert_eq!(curl["name"], "curl");
    assert_eq!(
        dependency(&bom, "process:curl")["dependsOn"],
        serde_json::json!(["library:2", "tls:library:2:0x0304"])
    );
    assert_eq!(
        dependency(&bom, "process:openssl")["dependsOn"],
        serde_json::json!(["library:2", "tls:library:2:0x0303"])
    );
    let host = dependency(&bom, "host")["dependsOn"].clone();
    for r in ["library:1", "library:2", "process:curl", "process:python3"] {
        assert!(host.as_array().unwrap().contains(&r.into()), "{r}: {host}");
    }
}

#[test]
fn processes_name_their_cgroups_and_the_containers_those_are() {
    let mut snap = snapshot();
    let id = "4f1c9a0b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a";
    snap.negotiated[0].cgroups = vec![
        ("curl".into(), format!("/system.slice/docker-{id}.scope")),
        (
            "curl".into(),
            "/user.slice/user-0.slice/session-1.scope".into(),
        ),
    ];
    let bom = build(&snap);
    validate_cbom(&bom).unwrap();
    let curl = component(&bom, "process:curl");
    let names: Vec<(&str, &str)> = curl["properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["value"].as_str().unwrap()))
        .collect();
    assert!(
        names.contains(&("enforcer:container:runtime", "docker")),
        "{names:?}"
    );
    assert!(names.contains(&("enforcer:container:id", id)), "{names:?}");
    let cgroups = names
        .iter()
        .filter(|(n, _)| *n == "enforcer:process:cgroup")
        .count();
    assert_eq!(cgroups, 2, "{names:?}");
    assert_eq!(
        property(
            component(&bom, "process:openssl"),
            "enforcer:process:cgroup"
        ),
        None
    );
}

/// Every bom-ref once, every dependency ref and `provides` / `dependsOn` / `algorithms` names
/// one: for any snapshot (the fuzz target checks the same over arbitrary ones).
fn assert_consistent(bom: &Value) {
    let mut refs = BTreeSet::new();
    refs.insert(bom["metadata"]["component"]["bom-ref"].as_str().unwrap());
    for c in bom["components"].as_array().unwrap() {
        let r = c["bom-ref"]
            .as_str()
            .expect("every component has a bom-ref");
        assert!(refs.insert(r), "bom-ref {r} twice");
    }
    for d in bom["dependencies"].as_array().unwrap() {
        let named = [&d["provides"], &d["dependsOn"]]
            .into_iter()
            .flat_map(|a| a.as_array().into_iter().flatten())
            .chain([&d["ref"]]);
        for r in named {
            assert!(refs.contains(r.as_str().unwrap()), "dangling {r}");
        }
    }
}

#[test]
fn odd_snapshots_stay_valid_and_consistent() {
    let mut s = snapshot();
    s.host.name = String::new();
    s.libraries.push(LibraryFacts {
        id: 9,
        family: String::new(),
        path: String::new(),
        version: Some("x".repeat(2000)),
        sha256: Some("not hex".into()),
        build_id: None,
        mapped_as: vec![String::new()],
    });
    s.negotiated.extend([
        // A library the agent no longer probes, an unknown version, suite and group.
        Negotiated {
            library: Some(7),
            version: Some(0x7f1c),
            suite: Some(0xabcd),
            group: Some(0x4242),
            connections: u64::MAX,
            processes: vec![String::new(), "a \"quoted\" name".into()],
            cgroups: vec![],
        },
        Negotiated {
            library: Some(7),
            version: Some(0x7f1c),
            suite: Some(0xabcd),
            group: Some(0x11eb),
            connections: u64::MAX,
            processes: vec![],
            cgroups: vec![],
        },
        // Another version through the same library: its total saturates, never overflows.
        Negotiated {
            library: Some(7),
            version: Some(0x0304),
            suite: None,
            group: None,
            connections: u64::MAX,
            processes: vec![],
            cgroups: vec![],
        },
        // Nothing read at all.
        Negotiated {
            library: None,
            version: None,
            suite: None,
            group: None,
            connections: 1,
            processes: vec!["nc".into()],
            cgroups: vec![],
        },
    ]);
    let bom = build(&s);
    validate_cbom(&bom).unwrap_or_else(|e| panic!("{e}\n{bom:#}"));
    assert_consistent(&bom);
    let gone = component(&bom, "library:7");
    assert_eq!(gone["type"], "library");
    assert_eq!(
        property(gone, "enforcer:connections"),
        Some("18446744073709551615")
    );
    let odd = component(&bom, "tls:library:7:0x7f1c");
    assert_eq!(
        odd["cryptoProperties"]["protocolProperties"]["version"],
        "0x7f1c"
    );
    assert_eq!(
        property(odd, "enforcer:connections"),
        Some("18446744073709551615")
    );
    let unread = component(&bom, "tls:unattributed:unread");
    assert!(
        unread["cryptoProperties"]["protocolProperties"]
            .get("version")
            .is_none()
    );
    assert_eq!(
        unread["cryptoProperties"]["protocolProperties"]["cipherSuites"],
        serde_json::json!([])
    );
    assert_eq!(
        component(&bom, "tls-group:0x4242")["cryptoProperties"]["algorithmProperties"]["primitive"],
        "unknown"
    );
    let nameless = component(&bom, "library:9");
    assert_eq!(nameless["name"], "library 9");
    assert!(nameless.get("evidence").is_none(), "no empty location");
}

#[test]
fn clocks_out_of_rfc_3339_range_are_clamped() {
    assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(
        timestamp(UNIX_EPOCH - Duration::from_secs(10)),
        "1970-01-01T00:00:00Z"
    );
    let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
    assert_eq!(timestamp(far), "9999-12-31T23:59:59Z");
}

#[test]
fn the_serial_number_is_a_version_4_uuid() {
    assert_eq!(
        uuid_urn([0; 16]),
        "urn:uuid:00000000-0000-4000-8000-000000000000"
    );
    assert_eq!(
        uuid_urn([0xff; 16]),
        "urn:uuid:ffffffff-ffff-4fff-bfff-ffffffffffff"
    );
}
