//! A validator for the subset of JSON Schema that docs/events.schema.json uses: `type` (one or
//! several), `const`, `enum`, `properties`, `required`, `additionalProperties: false`, `items`,
//! `minimum`/`maximum`, `oneOf` over `$ref`s to `#/$defs/...` (dispatched on the record's
//! `type`). Anything else in the schema is an error, so the schema cannot silently use more.

use serde_json::Value;

/// docs/events.schema.json, parsed: built into the test binaries, which run where the source
/// tree is not (`cargo xtask vm` copies only the binaries into the VMs).
pub fn events_schema() -> Value {
    const SCHEMA: &str = include_str!("../../docs/events.schema.json");
    serde_json::from_str(SCHEMA)
        .unwrap_or_else(|e| panic!("docs/events.schema.json is not JSON: {e}"))
}

/// Checks one event record; `Err` says which key and why.
pub fn validate_event(schema: &Value, record: &Value) -> Result<(), String> {
    let kind = record["type"]
        .as_str()
        .ok_or_else(|| format!("record without a string `type`: {record}"))?;
    let def = &schema["$defs"][kind];
    if def.is_null() {
        return Err(format!(
            "record type {kind:?} is not in the schema: {record}"
        ));
    }
    check(def, record, kind)
}

fn check(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let obj = schema
        .as_object()
        .ok_or_else(|| format!("{at}: schema is not an object"))?;
    for (key, rule) in obj {
        match key.as_str() {
            "description" | "format" => {}
            "type" => {
                let types: Vec<&str> = match rule {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => return Err(format!("{at}: bad `type` rule")),
                };
                if !types.iter().any(|t| is_type(value, t)) {
                    return Err(format!("{at}: {value} is not of type {types:?}"));
                }
            }
            "const" if value != rule => return Err(format!("{at}: {value} is not {rule}")),
            "const" => {}
            "enum" => {
                let options = rule.as_array().ok_or(format!("{at}: bad enum"))?;
                if !options.contains(value) {
                    return Err(format!("{at}: {value} is not one of {rule}"));
                }
            }
            "minimum" | "maximum" => {
                let (Some(n), Some(bound)) = (value.as_f64(), rule.as_f64()) else {
                    continue; // null where null is allowed
                };
                let ok = if key == "minimum" {
                    n >= bound
                } else {
                    n <= bound
                };
                if !ok {
                    return Err(format!("{at}: {n} violates {key} {bound}"));
                }
            }
            // As in JSON Schema, `required` constrains objects only: a nullable object's
            // `null` (an unattributed ClientHello's `library`) has no keys to require.
            "required" if !value.is_object() => {}
            "required" => {
                for name in rule
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if value.get(name).is_none() {
                        return Err(format!("{at}: missing key {name:?} in {value}"));
                    }
                }
            }
            "additionalProperties" => {
                let known = schema["properties"].as_object();
                for name in value.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !known.is_some_and(|k| k.contains_key(name)) {
                        return Err(format!(
                            "{at}: key {name:?} is not documented in the schema: {value}"
                        ));
                    }
                }
            }
            "properties" => {
                for (name, sub) in rule.as_object().into_iter().flatten() {
                    if let Some(v) = value.get(name) {
                        check(sub, v, &format!("{at}.{name}"))?;
                    }
                }
            }
            "items" => {
                for (i, v) in value.as_array().into_iter().flatten().enumerate() {
                    check(rule, v, &format!("{at}[{i}]"))?;
                }
            }
            other => return Err(format!("{at}: schema keyword {other:?} not supported")),
        }
    }
    Ok(())
}

fn is_type(value: &Value, t: &str) -> bool {
    match t {
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::check;

    #[test]
    fn nullable_objects_need_their_keys_only_when_present() {
        let rule = json!({
            "type": ["object", "null"],
            "additionalProperties": false,
            "required": ["id"],
            "properties": {"id": {"type": "integer"}}
        });
        assert_eq!(check(&rule, &json!(null), "x"), Ok(()));
        assert_eq!(check(&rule, &json!({"id": 1}), "x"), Ok(()));
        assert!(
            check(&rule, &json!({}), "x")
                .unwrap_err()
                .contains("missing key")
        );
        assert!(
            check(&rule, &json!("id"), "x")
                .unwrap_err()
                .contains("not of type")
        );
    }
}
