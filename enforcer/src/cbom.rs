//! The host's live TLS use as a CycloneDX 1.7 CBOM (`enforcer cbom`): a pure function of a
//! [`Snapshot`] (the libraries the agent probes, what connections negotiated, facts about the
//! agent and the host), so that it can be tested and fuzzed without an agent. The running agent
//! takes the snapshot (`agent/operator.rs`); docs/cbom.md describes the document.
//!
//! What goes where (every choice is one the 1.7 schema allows; `tests/schemas/cyclonedx-1.7/`):
//!
//! - each probed library file: a component of `type: library`, with its version, its SHA-256 in
//!   `hashes`, its path and the names processes map it under as `evidence.occurrences`, and
//!   `enforcer:library:*` properties (family, path, build-id, the agent's id);
//! - each (library, TLS version) some connection negotiated: a `cryptographic-asset` of
//!   `assetType: protocol`, `protocolProperties.type: tls`, the `version`, and one
//!   `cipherSuites` entry per suite negotiated (its IANA `name`, its code as `identifiers`,
//!   the key-exchange groups negotiated with it as `tlsGroups`, and those groups' components as
//!   `algorithms`). `tlsSignatureSchemes` is left out: TLS 1.3 encrypts the CertificateVerify
//!   that would say which scheme was used, so it is not seen on the wire;
//! - each key-exchange group negotiated: a `cryptographic-asset` of `assetType: algorithm`
//!   (`primitive: kem` for ML-KEM and the hybrid ML-KEM groups, `key-agree` for the others),
//!   with `enforcer:post_quantum` `true` or `false`;
//! - each process (by command name) that made such a connection: a component of
//!   `type: application`;
//! - `dependencies`: a library `provides` the protocols it negotiated, a protocol `dependsOn`
//!   its groups, a process `dependsOn` the libraries and protocols it used, the host (the
//!   `metadata.component`) `dependsOn` the libraries and processes.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use enforcer_common::iana;
use serde_json::{Value, json};

/// The CycloneDX version written.
pub const SPEC_VERSION: &str = "1.7";
/// Longest string the schema allows as a `version`.
const MAX_VERSION: usize = 1024;

/// Everything the CBOM is made from.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// When it was taken (`metadata.timestamp`).
    pub time: SystemTime,
    /// Random bytes for the `serialNumber` (made a version 4 UUID).
    pub serial: [u8; 16],
    /// enforcer's own version (`metadata.tools`).
    pub tool_version: String,
    pub host: Host,
    /// Facts about the agent, as `metadata.properties` (`enforcer:agent:<name>`).
    pub agent: Vec<(String, String)>,
    pub libraries: Vec<LibraryFacts>,
    pub negotiated: Vec<Negotiated>,
}

/// The host the agent runs on (`metadata.component`).
#[derive(Clone, Debug, Default)]
pub struct Host {
    pub name: String,
    /// `uname -r`.
    pub kernel_release: Option<String>,
}

/// A library file the agent probes.
#[derive(Clone, Debug, Default)]
pub struct LibraryFacts {
    /// The agent's id for it (the `library.id` of events).
    pub id: u32,
    pub family: String,
    pub path: String,
    pub version: Option<String>,
    /// Lowercase hex.
    pub sha256: Option<String>,
    /// GNU build-id, lowercase hex.
    pub build_id: Option<String>,
    /// The names processes map it under, each in its own mount namespace (a container's
    /// processes name the file as the container sees it).
    pub mapped_as: Vec<String>,
}

/// How many connections negotiated one combination, and the processes seen making them.
#[derive(Clone, Debug, Default)]
pub struct Negotiated {
    /// The library that made them; `None`: no probed library (unattributed TLS).
    pub library: Option<u32>,
    /// TLS version, cipher suite and key-exchange group codes; `None`: not read.
    pub version: Option<u16>,
    pub suite: Option<u16>,
    pub group: Option<u16>,
    pub connections: u64,
    /// Command names.
    pub processes: Vec<String>,
    /// (command name, cgroup v2 path) of those processes, where it was read.
    pub cgroups: Vec<(String, String)>,
}

/// The CBOM of `snapshot`, as a CycloneDX 1.7 JSON document.
pub fn build(snapshot: &Snapshot) -> Value {
    let libraries: BTreeMap<u32, &LibraryFacts> =
        snapshot.libraries.iter().map(|l| (l.id, l)).collect();
    let protocols = protocols(&snapshot.negotiated);
    let mut components = Vec::new();
    let mut dependencies = Vec::new();
    let mut host_needs = Vec::new();

    // Libraries: every one probed, and any a connection names that is no longer probed.
    let mut library_ids: BTreeSet<u32> = libraries.keys().copied().collect();
    library_ids.extend(protocols.keys().filter_map(|(lib, _)| *lib));
    for id in library_ids {
        let provides: Vec<String> = protocols
            .keys()
            .filter(|(lib, _)| *lib == Some(id))
            .map(|(lib, version)| protocol_ref(*lib, *version))
            .collect();
        let connections: u64 = protocols
            .iter()
            .filter(|((lib, _), _)| *lib == Some(id))
            .fold(0u64, |sum, (_, p)| sum.saturating_add(p.connections));
        components.push(match libraries.get(&id) {
            Some(lib) => library_component(lib, connections),
            None => json!({
                "type": "library",
                "bom-ref": library_ref(id),
                "name": format!("library {id}"),
                "description": "a library the agent no longer probes (its file went away since these connections)",
                "properties": [prop("enforcer:library:id", id), prop("enforcer:connections", connections)],
            }),
        });
        dependencies.push(json!({ "ref": library_ref(id), "provides": provides }));
        host_needs.push(library_ref(id));
    }

    // Key-exchange groups.
    let groups: BTreeSet<u16> = snapshot.negotiated.iter().filter_map(|n| n.group).collect();
    for &group in &groups {
        components.push(group_component(group));
        dependencies.push(json!({ "ref": group_ref(group) }));
    }

    // Protocols.
    let mut processes: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (&(lib, version), seen) in &protocols {
        let me = protocol_ref(lib, version);
        components.push(protocol_component(
            lib.map(|id| (id, libraries.get(&id).copied())),
            version,
            seen,
        ));
        let used: BTreeSet<u16> = seen.suites.values().flatten().copied().collect();
        dependencies.push(json!({
            "ref": me,
            "dependsOn": used.iter().map(|g| group_ref(*g)).collect::<Vec<_>>(),
        }));
        for comm in &seen.processes {
            let needs = processes.entry(comm.as_str()).or_default();
            needs.extend(lib.map(library_ref));
            needs.insert(me.clone());
        }
    }

    // Processes, with the cgroups (and containers) they ran in.
    let mut cgroups: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for n in &snapshot.negotiated {
        for (comm, cgroup) in &n.cgroups {
            cgroups
                .entry(comm.as_str())
                .or_default()
                .insert(cgroup.as_str());
        }
    }
    for (comm, needs) in &processes {
        let mut properties = vec![prop("enforcer:process:comm", comm)];
        for cgroup in cgroups.get(comm).into_iter().flatten() {
            properties.push(prop("enforcer:process:cgroup", cgroup));
            if let Some(c) = crate::containers::container_of(cgroup) {
                properties.push(prop("enforcer:container:runtime", c.runtime));
                properties.push(prop("enforcer:container:id", c.id));
            }
        }
        components.push(json!({
            "type": "application",
            "bom-ref": process_ref(comm),
            "name": name_or(comm, "(no command name)"),
            "description": "processes with this command name (the kernel's comm, at most 15 bytes) made the TLS connections of the protocols it depends on",
            "properties": properties,
        }));
        dependencies.push(json!({ "ref": process_ref(comm), "dependsOn": needs }));
        host_needs.push(process_ref(comm));
    }
    dependencies.insert(0, json!({ "ref": HOST_REF, "dependsOn": host_needs }));

    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.7.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": uuid_urn(snapshot.serial),
        "version": 1,
        "metadata": metadata(snapshot),
        "components": components,
        "dependencies": dependencies,
    })
}

const HOST_REF: &str = "host";

fn library_ref(id: u32) -> String {
    format!("library:{id}")
}

fn group_ref(group: u16) -> String {
    format!("tls-group:{group:#06x}")
}

fn process_ref(comm: &str) -> String {
    format!("process:{comm}")
}

/// `tls:library:2:0x0304`, `tls:unattributed:unread`.
fn protocol_ref(lib: Option<u32>, version: Option<u16>) -> String {
    let lib = lib.map_or_else(|| "unattributed".to_owned(), library_ref);
    let version = version.map_or_else(|| "unread".to_owned(), |v| format!("{v:#06x}"));
    format!("tls:{lib}:{version}")
}

/// A property (`value` as text).
fn prop(name: &str, value: impl ToString) -> Value {
    json!({ "name": name, "value": value.to_string() })
}

fn name_or(name: &str, empty: &str) -> String {
    match name.is_empty() {
        true => empty.to_owned(),
        false => name.to_owned(),
    }
}

/// IANA's name of `code` in `table`, else `0xNNNN`.
fn iana_name(table: &'static [(u16, &'static str)], code: u16) -> String {
    iana::named(table, code).to_string()
}

/// What was negotiated through one (library, version): suites (`None`: not read) with the
/// groups negotiated with each, connections, processes.
#[derive(Default)]
struct Protocol {
    suites: BTreeMap<Option<u16>, BTreeSet<u16>>,
    connections: u64,
    post_quantum: u64,
    processes: BTreeSet<String>,
}

fn protocols(negotiated: &[Negotiated]) -> BTreeMap<(Option<u32>, Option<u16>), Protocol> {
    let mut out: BTreeMap<_, Protocol> = BTreeMap::new();
    for n in negotiated {
        let p = out.entry((n.library, n.version)).or_default();
        let groups = p.suites.entry(n.suite).or_default();
        groups.extend(n.group);
        p.connections = p.connections.saturating_add(n.connections);
        if n.group.is_some_and(iana::is_post_quantum) {
            p.post_quantum = p.post_quantum.saturating_add(n.connections);
        }
        p.processes.extend(n.processes.iter().cloned());
    }
    out
}

fn library_component(lib: &LibraryFacts, connections: u64) -> Value {
    let name = lib.path.rsplit('/').next().unwrap_or_default();
    let mut properties = vec![
        prop("enforcer:library:id", lib.id),
        prop("enforcer:library:family", &lib.family),
        prop("enforcer:library:path", &lib.path),
    ];
    properties.extend(
        lib.build_id
            .as_ref()
            .map(|b| prop("enforcer:library:build_id", b)),
    );
    properties.push(prop("enforcer:connections", connections));
    let mut c = json!({
        "type": "library",
        "bom-ref": library_ref(lib.id),
        "name": match (name.is_empty(), lib.path.is_empty()) {
            (false, _) => name.to_owned(),
            (true, false) => lib.path.clone(),
            (true, true) => format!("library {}", lib.id),
        },
        "description": format!("{} library file probed by enforcer", name_or(&lib.family, "TLS")),
        "properties": properties,
    });
    if let Some(v) = lib.version.as_ref().filter(|v| !v.is_empty()) {
        c["version"] = v.chars().take(MAX_VERSION).collect::<String>().into();
    }
    // Where it is: its path, then the other names processes map it under.
    let mut seen = BTreeSet::new();
    let locations: Vec<Value> = std::iter::once(&lib.path)
        .chain(&lib.mapped_as)
        .filter(|l| !l.is_empty() && seen.insert(l.as_str()))
        .map(|l| json!({ "location": l }))
        .collect();
    if !locations.is_empty() {
        c["evidence"] = json!({ "occurrences": locations });
    }
    // The schema takes hex of a hash's length only: anything else is no SHA-256.
    if let Some(sha) = lib
        .sha256
        .as_ref()
        .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        c["hashes"] = json!([{ "alg": "SHA-256", "content": sha }]);
    }
    c
}

fn group_component(group: u16) -> Value {
    let known = iana::name_of(iana::GROUPS, group).is_some();
    let pq = iana::is_post_quantum(group);
    let primitive = match (known, pq) {
        (_, true) => "kem",
        (true, false) => "key-agree",
        (false, false) => "unknown",
    };
    json!({
        "type": "cryptographic-asset",
        "bom-ref": group_ref(group),
        "name": iana_name(iana::GROUPS, group),
        "description": "a TLS key-exchange group (IANA TLS Supported Groups) negotiated by connections of this host",
        "cryptoProperties": {
            "assetType": "algorithm",
            "algorithmProperties": { "primitive": primitive },
        },
        "properties": [
            prop("enforcer:tls:group_code", format!("{group:#06x}")),
            prop("enforcer:post_quantum", pq),
        ],
    })
}

/// `lib`: the library's id and, while it is probed, its facts.
fn protocol_component(
    lib: Option<(u32, Option<&LibraryFacts>)>,
    version: Option<u16>,
    seen: &Protocol,
) -> Value {
    let version_name = version.map(|v| iana_name(iana::VERSIONS, v));
    let suites: Vec<Value> = seen
        .suites
        .iter()
        .filter(|(suite, groups)| suite.is_some() || !groups.is_empty())
        .map(|(suite, groups)| {
            let mut s = json!({});
            if let Some(code) = suite {
                s["name"] = iana_name(iana::CIPHER_SUITES, *code).into();
                s["identifiers"] = json!([format!("{code:#06x}")]);
            }
            if !groups.is_empty() {
                s["algorithms"] = groups.iter().map(|g| group_ref(*g)).collect();
                s["tlsGroups"] = groups.iter().map(|g| iana_name(iana::GROUPS, *g)).collect();
            }
            s
        })
        .collect();
    let by = match lib {
        Some((_, Some(l))) => format!("{} ({})", name_or(&l.family, "library"), l.path),
        Some((id, None)) => format!("library {id}, no longer probed"),
        None => "no probed library (unattributed TLS)".to_owned(),
    };
    let shown = version_name
        .as_ref()
        .map_or("TLS (version not read)".to_owned(), |v| format!("TLS {v}"));
    let mut protocol = json!({ "type": "tls", "cipherSuites": suites });
    if let Some(v) = &version_name {
        protocol["version"] = v.clone().into();
    }
    let mut properties = vec![
        prop("enforcer:connections", seen.connections),
        prop("enforcer:connections_post_quantum", seen.post_quantum),
    ];
    if lib.is_none() {
        properties.push(prop("enforcer:library", "unattributed"));
    }
    json!({
        "type": "cryptographic-asset",
        "bom-ref": protocol_ref(lib.map(|(id, _)| id), version),
        "name": match &version_name {
            Some(v) => format!("TLS {v}"),
            None => "TLS".to_owned(),
        },
        "description": format!("{shown} as negotiated by connections made through {by}"),
        "cryptoProperties": { "assetType": "protocol", "protocolProperties": protocol },
        "properties": properties,
    })
}

fn metadata(s: &Snapshot) -> Value {
    let mut host_props = vec![prop("enforcer:host:os", "Linux")];
    host_props.extend(
        s.host
            .kernel_release
            .as_ref()
            .map(|r| prop("enforcer:host:kernel_release", r)),
    );
    json!({
        "timestamp": timestamp(s.time),
        "lifecycles": [{ "phase": "operations" }],
        "tools": { "components": [{
            "type": "application",
            "name": "enforcer",
            "version": s.tool_version.chars().take(MAX_VERSION).collect::<String>(),
            "description": "kernel-enforced firewall that decides by TLS library; this CBOM is what its running agent saw",
        }] },
        "component": {
            "type": "operating-system",
            "bom-ref": HOST_REF,
            "name": name_or(&s.host.name, "(unnamed host)"),
            "description": "the host whose live TLS use this CBOM describes",
            "properties": host_props,
        },
        "properties": s.agent.iter().map(|(k, v)| prop(&format!("enforcer:agent:{k}"), v)).collect::<Vec<_>>(),
    })
}

/// RFC 3339, to the second. A clock before 1970 or after 9999 (RFC 3339 has four-digit years)
/// is written as the nearest time that can be.
fn timestamp(time: SystemTime) -> String {
    const LAST: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(LAST);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// `urn:uuid:` and `bytes` as a version 4 (random) UUID.
fn uuid_urn(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests;
