//! docs/events.md against docs/events.schema.json: its examples validate, its key tables list the
//! schema's keys.

use enforcer_tests::{
    docs::blocks,
    schema::{events_schema, validate_event},
};

#[test]
fn every_event_example_in_events_md_matches_the_schema() {
    let schema = events_schema();
    let mut failures = vec![];
    let mut types = vec![];
    for block in blocks("docs/events.md").iter().filter(|b| b.lang == "json") {
        for (n, text) in block.lines.iter().filter(|(_, t)| !t.trim().is_empty()) {
            let record: serde_json::Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("docs/events.md:{n}: not one JSON object: {e}"));
                    continue;
                }
            };
            types.extend(record["type"].as_str().map(str::to_string));
            if let Err(e) = validate_event(&schema, &record) {
                failures.push(format!("docs/events.md:{n}: {e}"));
            }
        }
    }
    assert!(
        types.iter().any(|t| t == "connection"),
        "docs/events.md shows no connection event example: {types:?}"
    );
    assert!(
        failures.is_empty(),
        "event examples that do not match docs/events.schema.json:\n{}",
        failures.join("\n")
    );
}

/// Each record type of docs/events.schema.json has a `## \`type\`` section in docs/events.md
/// whose key table lists exactly the schema's top-level keys (`library.id` counts as `library`).
#[test]
fn events_md_tables_list_the_schema_keys() {
    let schema = events_schema();
    let text = std::fs::read_to_string(enforcer_tests::workspace().join("docs/events.md"))
        .expect("docs/events.md");
    let mut documented: Vec<(String, std::collections::BTreeSet<String>)> = vec![];
    let mut in_table = false;
    for line in text.lines() {
        if let Some(kind) = line.strip_prefix("## `").and_then(|r| r.strip_suffix('`')) {
            documented.push((kind.to_string(), Default::default()));
            in_table = false;
        } else if line.starts_with("| key |") {
            in_table = true;
        } else if in_table && line.starts_with("| ---") {
        } else if in_table && line.starts_with('|') {
            let cell = line.split('|').nth(1).unwrap_or_default();
            let keys = cell.split('`').skip(1).step_by(2);
            if let Some((_, set)) = documented.last_mut() {
                set.extend(keys.map(|k| k.split('.').next().unwrap_or(k).to_string()));
            }
        } else {
            in_table = false;
        }
    }
    let defs = schema["$defs"].as_object().expect("$defs");
    let mut failures = vec![];
    for (kind, def) in defs {
        let want: std::collections::BTreeSet<String> = def["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        match documented.iter().find(|(k, _)| k == kind) {
            None => failures.push(format!("no section for `{kind}`")),
            Some((_, got)) if *got != want => failures.push(format!(
                "`{kind}`: only in the doc {:?}, only in the schema {:?}",
                got.difference(&want).collect::<Vec<_>>(),
                want.difference(got).collect::<Vec<_>>()
            )),
            Some(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "docs/events.md and docs/events.schema.json differ:\n{}",
        failures.join("\n")
    );
}
