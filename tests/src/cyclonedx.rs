//! Validation against the official CycloneDX 1.7 JSON schema, vendored in
//! `tests/schemas/cyclonedx-1.7/` (where it came from: the README there). Offline: each file the
//! BOM schema `$ref`s is registered under the URI the reference resolves to, and the validator
//! refuses to fetch anything else.

use std::sync::OnceLock;

use jsonschema::{Draft, Registry, Validator};
use serde_json::Value;

/// The BOM schema's `$id`; its `$ref`s are relative to it.
const BASE: &str = "http://cyclonedx.org/schema/";
const BOM: &str = "bom-1.7.SNAPSHOT.schema.json";
const REFERENCED: [&str; 3] = [
    "spdx.SNAPSHOT.schema.json",
    "jsf-0.82.SNAPSHOT.schema.json",
    "cryptography-defs.SNAPSHOT.schema.json",
];

fn read(name: &str) -> Value {
    let path = crate::workspace()
        .join("tests/schemas/cyclonedx-1.7")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let mut registry = Registry::new();
        for name in REFERENCED {
            let schema: &'static Value = Box::leak(Box::new(read(name)));
            registry = registry
                .add(format!("{BASE}{name}"), schema)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let registry: &'static Registry = Box::leak(Box::new(
            registry.prepare().expect("the CycloneDX schemas register"),
        ));
        jsonschema::options()
            .offline()
            .with_draft(Draft::Draft7)
            .should_validate_formats(true)
            .with_registry(registry)
            .build(&read(BOM))
            .expect("the CycloneDX 1.7 schema compiles")
    })
}

/// Checks `bom` against the CycloneDX 1.7 schema; `Err`: every violation, one a line, each with
/// where in the document and where in the schema.
pub fn validate_cbom(bom: &Value) -> Result<(), String> {
    let errors: Vec<String> = validator()
        .iter_errors(bom)
        .map(|e| format!("at {}: {e} (schema {})", e.instance_path(), e.schema_path()))
        .collect();
    match errors.is_empty() {
        true => Ok(()),
        false => Err(errors.join("\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The validator must reject, or a pass means nothing.
    #[test]
    fn the_schema_rejects_what_1_7_does_not_allow() {
        let ok = serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.7"});
        validate_cbom(&ok).expect("a minimal BOM is valid");
        // Through the referenced files: an SPDX id, an algorithm family of cryptography-defs.
        let referenced = serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.7",
            "components": [{"type": "library", "name": "l", "licenses": [{"license": {"id": "Apache-2.0"}}]},
                {"type": "cryptographic-asset", "name": "a", "cryptoProperties": {"assetType": "algorithm",
                    "algorithmProperties": {"algorithmFamily": "ML-KEM"}}}]});
        validate_cbom(&referenced).expect("valid through the referenced schemas");
        for bad in [
            serde_json::json!({"bomFormat": "CycloneDX"}),
            serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.7", "serialNumber": "x"}),
            serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.7",
                "components": [{"type": "cryptographic-asset", "name": "t",
                    "cryptoProperties": {"assetType": "protocol",
                        "protocolProperties": {"type": "tls", "cipherSuites": [{"tlsCurves": []}]}}}]}),
            serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.7",
                "components": [{"type": "library", "name": "l", "licenses": [{"license": {"id": "NOT-SPDX"}}]}]}),
            serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.7",
                "components": [{"type": "cryptographic-asset", "name": "a",
                    "cryptoProperties": {"assetType": "algorithm",
                        "algorithmProperties": {"algorithmFamily": "NOT-A-FAMILY"}}}]}),
            serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.7",
                "metadata": {"timestamp": "yesterday"}}),
        ] {
            assert!(validate_cbom(&bad).is_err(), "accepted: {bad}");
        }
    }
}
