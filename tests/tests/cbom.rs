//! `enforcer cbom` against a running agent: real `curl` and `openssl s_client` connections to an
//! `openssl s_server` in a network namespace, then the CBOM the agent answers, checked against
//! the official CycloneDX 1.7 schema (vendored, `tests/schemas/cyclonedx-1.7/`) and against what
//! the connections really negotiated: the OpenSSL library with its version and SHA-256, a TLS 1.3
//! protocol with the cipher suite and group, and the client processes that used them. Then a
//! rustls (aws-lc-rs) client and server negotiating X25519MLKEM768: the group is flagged
//! post-quantum.

use std::{net::IpAddr, path::Path, time::Duration};

use enforcer_tests::{
    Agent, Cert, NetNs, Server, cmd,
    content::Background,
    cyclonedx::validate_cbom,
    enforcer_bin,
    programs::{RustlsProvider, build_rustls, build_rustls_server},
    require_root, run_with_timeout,
};
use serde_json::Value;

const POLICY: &str =
    "mode: audit\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
const CLIENT: Duration = Duration::from_secs(15);
/// What `s_client` is made to negotiate (not OpenSSL's first choices, so that the CBOM is seen
/// to follow the connection, not a default).
const FORCED_SUITE: &str = "TLS_CHACHA20_POLY1305_SHA256";
const FORCED_GROUP: &str = "secp384r1";

fn components_where(bom: &Value, pred: impl Fn(&Value) -> bool) -> Vec<&Value> {
    let all = bom["components"].as_array().expect("components");
    all.iter().filter(|c| pred(c)).collect()
}

fn property<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    let props = c["properties"].as_array()?;
    let found = props.iter().find(|p| p["name"] == name)?;
    found["value"].as_str()
}

fn depends_on(bom: &Value, from: &str) -> Vec<String> {
    let deps = bom["dependencies"].as_array().expect("dependencies");
    let entry = deps.iter().find(|d| d["ref"] == from);
    let entry = entry.unwrap_or_else(|| panic!("no dependency entry for {from}"));
    let on = entry["dependsOn"].as_array().into_iter().flatten();
    on.filter_map(|r| r.as_str().map(str::to_owned)).collect()
}

/// The one component whose `bom-ref` is `r`.
fn component<'a>(bom: &'a Value, r: &str) -> &'a Value {
    let found = components_where(bom, |c| c["bom-ref"] == r);
    let [one] = found[..] else {
        panic!("one component {r}: {bom:#}");
    };
    one
}

/// An agent (audit mode, `policy`) on `ns`'s host interface, serving `socket`.
fn agent(ns: &NetNs, policy: &str, socket: &Path) -> Agent {
    let mut args = enforcer_tests::hook_args();
    args.extend(["--control-socket".into(), socket.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, policy, &args);
    agent.wait_ready(READY);
    agent
}

fn sha256_of(path: &str) -> String {
    let out = cmd("sha256sum", [path]).output().expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {path}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().next().expect("a digest").to_owned()
}

/// `enforcer cbom --socket SOCKET [--output FILE]`: the document, parsed.
fn cbom(socket: &Path, output: Option<&Path>) -> Value {
    let mut c = std::process::Command::new(enforcer_bin());
    c.args(["cbom", "--socket"]).arg(socket);
    if let Some(file) = output {
        c.arg("--output").arg(file);
    }
    let out = c.output().expect("run enforcer cbom");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "enforcer cbom failed: {stderr}");
    let text = match output {
        Some(file) => {
            assert!(out.stdout.is_empty(), "--output: nothing on stdout");
            std::fs::read_to_string(file).expect("the CBOM file")
        }
        None => String::from_utf8(out.stdout).expect("UTF-8"),
    };
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn cbom_of_live_openssl_connections_validates_and_names_what_was_negotiated() {
    require_root();
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let www = Server::www(&ns, peer, 8443, &cert);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("agent.sock");
    let mut agent = agent(&ns, POLICY, &socket);

    // curl: OpenSSL's defaults. The `-www` page says what the server negotiated.
    let out = run_with_timeout(
        &mut cmd("curl", ["-sk", "--max-time", "10", &www.url()]),
        b"",
        CLIENT,
    );
    assert!(out.success(), "curl: {out:?}\n{}", agent.stderr());
    let page = out.stdout_str();
    let curl_suite = page
        .lines()
        .find_map(|l| l.split_once("Cipher is ").map(|(_, s)| s.trim().to_owned()))
        .unwrap_or_else(|| panic!("the -www page names the cipher: {page}"));
    let curl_event = agent.wait_for(|v| v["type"] == "connection" && v["comm"] == "curl", EVENT);
    let library = curl_event["library"].clone();
    assert_eq!(library["family"], "openssl", "{curl_event}");

    // s_client: a suite and group that are not the defaults.
    let out = run_with_timeout(
        &mut cmd(
            "openssl",
            [
                "s_client",
                "-connect",
                &www.addr().to_string(),
                "-ciphersuites",
                FORCED_SUITE,
                "-groups",
                FORCED_GROUP,
            ],
        ),
        b"GET / HTTP/1.0\r\n\r\n",
        CLIENT,
    );
    assert!(out.success(), "s_client: {out:?}");
    let said = out.stdout_str();
    assert!(
        said.contains(FORCED_SUITE) && said.contains("TLSv1.3"),
        "s_client negotiated what it was told: {said}"
    );

    // The kernel read both ServerHellos: a `negotiated` event per client.
    let negotiated = |agent: &mut Agent, comm: &'static str| {
        agent.wait_for(
            move |v| v["type"] == "negotiated" && v["comm"] == comm,
            EVENT,
        )
    };
    let curl_tls = negotiated(&mut agent, "curl");
    let s_client_tls = negotiated(&mut agent, "openssl");
    assert_eq!(
        curl_tls["tls"]["cipher_suite"],
        curl_suite.as_str(),
        "{curl_tls}"
    );
    assert_eq!(
        s_client_tls["tls"]["cipher_suite"], FORCED_SUITE,
        "{s_client_tls}"
    );
    assert_eq!(s_client_tls["tls"]["group"], FORCED_GROUP, "{s_client_tls}");
    let curl_group = curl_tls["tls"]["group"]
        .as_str()
        .expect("curl's group read");

    // The CBOM, to a file and on stdout: the same traffic in both (libraries may differ: the
    // watcher probes any new library file another process of the host maps in between).
    let file = dir.path().join("cbom.json");
    let bom = cbom(&socket, Some(&file));
    let again = cbom(&socket, None);
    let traffic = |bom: &Value| -> Vec<Value> {
        let kinds = ["protocol", "algorithm"];
        let crypto = |c: &Value| {
            kinds
                .iter()
                .any(|k| c["cryptoProperties"]["assetType"] == *k)
        };
        let found = components_where(bom, |c| crypto(c) || c["type"] == "application");
        found.into_iter().cloned().collect()
    };
    assert_eq!(traffic(&bom), traffic(&again));
    assert_ne!(
        bom["serialNumber"], again["serialNumber"],
        "a new serial each time"
    );
    if let Err(e) = validate_cbom(&bom) {
        panic!("not a valid CycloneDX 1.7 document:\n{e}\n{bom:#}");
    }
    assert_eq!(bom["specVersion"], "1.7");
    let tool = &bom["metadata"]["tools"]["components"][0];
    assert_eq!(tool["name"], "enforcer", "{tool}");

    // The library: the file the connections were attributed to, its version and hash.
    let id = library["id"].as_u64().expect("library id");
    let lib_ref = format!("library:{id}");
    let path = library["path"].as_str().expect("library path");
    let libs = components_where(&bom, |c| c["bom-ref"] == lib_ref.as_str());
    let [lib] = libs[..] else {
        panic!("one component {lib_ref}: {bom:#}");
    };
    assert_eq!(lib["type"], "library", "{lib}");
    assert_eq!(lib["version"], library["version"], "{lib}");
    assert!(
        lib["version"].is_string(),
        "OpenSSL states its version: {lib}"
    );
    assert_eq!(property(lib, "enforcer:library:family"), Some("openssl"));
    assert_eq!(property(lib, "enforcer:library:path"), Some(path));
    assert_eq!(lib["hashes"][0]["alg"], "SHA-256", "{lib}");
    assert_eq!(
        lib["hashes"][0]["content"],
        sha256_of(path).as_str(),
        "{lib}"
    );

    // TLS 1.3 through it, with both suites and their groups.
    let tls13_ref = format!("tls:{lib_ref}:0x0304");
    let protocols = components_where(&bom, |c| c["bom-ref"] == tls13_ref.as_str());
    let [tls13] = protocols[..] else {
        panic!("one component {tls13_ref}: {bom:#}");
    };
    let props = &tls13["cryptoProperties"];
    assert_eq!(props["assetType"], "protocol", "{tls13}");
    assert_eq!(props["protocolProperties"]["type"], "tls", "{tls13}");
    assert_eq!(props["protocolProperties"]["version"], "1.3", "{tls13}");
    let suites = props["protocolProperties"]["cipherSuites"]
        .as_array()
        .expect("cipherSuites");
    let suite = |name: &str| {
        let found = suites.iter().find(|s| s["name"] == name);
        found.unwrap_or_else(|| panic!("no suite {name} in {tls13}"))
    };
    let forced = suite(FORCED_SUITE);
    assert_eq!(
        forced["identifiers"],
        serde_json::json!(["0x1303"]),
        "{forced}"
    );
    let groups = forced["tlsGroups"].as_array().expect("tlsGroups");
    assert!(groups.contains(&FORCED_GROUP.into()), "{forced}");
    let groups = suite(&curl_suite)["tlsGroups"].clone();
    assert!(
        groups
            .as_array()
            .expect("tlsGroups")
            .contains(&curl_group.into()),
        "{tls13}"
    );
    let connections: u64 = property(tls13, "enforcer:connections")
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(connections >= 2, "{tls13}");
    let provides = bom["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .find(|d| d["ref"] == lib_ref.as_str())
        .map(|d| d["provides"].clone());
    let provides = provides.expect("the library's dependency entry");
    assert!(
        provides
            .as_array()
            .expect("provides")
            .contains(&tls13_ref.as_str().into())
    );

    // The groups, flagged classical; the client processes.
    let group = components_where(&bom, |c| c["name"] == FORCED_GROUP);
    let [group] = group[..] else {
        panic!("one {FORCED_GROUP} component: {bom:#}");
    };
    assert_eq!(group["cryptoProperties"]["assetType"], "algorithm");
    assert_eq!(property(group, "enforcer:post_quantum"), Some("false"));
    for comm in ["curl", "openssl"] {
        let process = format!("process:{comm}");
        let found = components_where(&bom, |c| c["bom-ref"] == process.as_str());
        assert_eq!(found.len(), 1, "{process}: {bom:#}");
        assert_eq!(found[0]["type"], "application");
        let on = depends_on(&bom, &process);
        assert!(
            on.contains(&lib_ref) && on.contains(&tls13_ref),
            "{process}: {on:?}"
        );
        // The clients ran in this test's cgroup (a child inherits its parent's).
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("cgroup v2");
        assert_eq!(
            property(found[0], "enforcer:process:cgroup"),
            Some(own),
            "{process}: {}",
            found[0]
        );
    }
    println!("{}", serde_json::to_string_pretty(&bom).expect("JSON"));
    drop(agent);
}

const RUSTLS_AUDIT: &str =
    "mode: audit\ndefault: deny\nlibraries:\n  - family: rustls\n    action: allow\n";

#[test]
fn a_post_quantum_group_negotiated_by_rustls_is_flagged() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("enforcer-cbom-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let ns = NetNs::new();
    let peer = IpAddr::V4(ns.peer_v4);
    let cert = Cert::new(&[peer]);
    let client = build_rustls(dir.path(), "pq-rustls-cli", RustlsProvider::AwsLcRs, false);
    let server = build_rustls_server(dir.path(), "pq-rustls-srv", RustlsProvider::AwsLcRs, false);
    let socket = dir.path().join("agent.sock");
    let mut agent = agent(&ns, RUSTLS_AUDIT, &socket);

    let port = "9461";
    let mut child = ns
        .exec(
            server.to_str().expect("UTF-8"),
            [peer.to_string(), port.to_owned()],
        )
        .arg(cert.cert_path())
        .arg(cert.key_path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the rustls server");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("the server's first line");
    let _server = Background(child);
    assert_eq!(line.trim(), "listening");
    // rustls offers X25519 first unless told (its `prefer-post-quantum` feature is off here).
    let out = run_with_timeout(
        std::process::Command::new(&client)
            .env("RUSTLS_GROUPS", "X25519MLKEM768")
            .args([peer.to_string(), port.to_owned(), "PING\n".to_owned()])
            .arg(cert.cert_path()),
        b"",
        CLIENT,
    );
    assert!(out.success(), "rustls client: {out:?}\n{}", agent.stderr());
    let tls = agent.wait_for(
        |v| v["type"] == "negotiated" && v["comm"] == "pq-rustls-cli",
        EVENT,
    );
    assert_eq!(tls["tls"]["group"], "X25519MLKEM768", "{tls}");
    assert_eq!(tls["tls"]["post_quantum"], true, "{tls}");
    let id = tls["library"]["id"]
        .as_u64()
        .expect("attributed to the client binary");

    let bom = cbom(&socket, None);
    if let Err(e) = validate_cbom(&bom) {
        panic!("not a valid CycloneDX 1.7 document:\n{e}\n{bom:#}");
    }
    let lib = component(&bom, &format!("library:{id}"));
    assert_eq!(
        property(lib, "enforcer:library:family"),
        Some("rustls"),
        "{lib}"
    );
    assert_eq!(
        property(lib, "enforcer:library:path"),
        client.to_str(),
        "the client binary is the library: {lib}"
    );
    let group = component(&bom, "tls-group:0x11ec");
    assert_eq!(group["name"], "X25519MLKEM768");
    assert_eq!(property(group, "enforcer:post_quantum"), Some("true"));
    assert_eq!(
        group["cryptoProperties"]["algorithmProperties"]["primitive"],
        "kem"
    );
    let tls13 = component(&bom, &format!("tls:library:{id}:0x0304"));
    let suites = &tls13["cryptoProperties"]["protocolProperties"]["cipherSuites"];
    let pq = suites.as_array().expect("cipherSuites").iter().any(|s| {
        s["tlsGroups"] == serde_json::json!(["X25519MLKEM768"])
            && s["algorithms"] == serde_json::json!(["tls-group:0x11ec"])
    });
    assert!(pq, "{tls13}");
    assert_eq!(
        property(tls13, "enforcer:connections_post_quantum"),
        property(tls13, "enforcer:connections"),
        "{tls13}"
    );
    let on = depends_on(&bom, "process:pq-rustls-cli");
    assert!(on.contains(&format!("library:{id}")), "{on:?}");
    drop(agent);
}
