//! docs/operations.md's example answer to the control socket's `recent` request: one JSON object
//! with the keys the agent answers, each violation a `connection` record of
//! docs/events.schema.json.

use std::collections::BTreeSet;

use enforcer_tests::{
    docs::blocks,
    schema::{events_schema, validate_event},
};

#[test]
fn the_recent_answer_in_operations_md_matches_the_agent_and_the_schema() {
    let doc = "docs/operations.md";
    let answers: Vec<(usize, serde_json::Value)> = blocks(doc)
        .iter()
        .filter(|b| b.lang == "json")
        .map(|b| {
            let at = b.lines.first().map_or(0, |(n, _)| *n);
            let text: String = b.lines.iter().map(|(_, t)| format!("{t}\n")).collect();
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{doc}:{at}: not one JSON object: {e}"));
            (at, v)
        })
        .filter(|(_, v): &(usize, serde_json::Value)| v.get("violations").is_some())
        .collect();
    assert_eq!(answers.len(), 1, "{doc}: one `recent` answer example");
    let (at, answer) = &answers[0];
    assert_eq!(
        keys_of(answer),
        BTreeSet::from(["ok", "connections", "violations", "violations_total"]),
        "{doc}:{at}: the keys of enforcer/src/agent/operator.rs's `recent` answer"
    );
    for row in answer["connections"]
        .as_array()
        .expect("connections: an array")
    {
        assert_eq!(
            keys_of(row),
            BTreeSet::from(["library", "verdict", "count"]),
            "{doc}:{at}: {row}"
        );
    }
    let schema = events_schema();
    let violations = answer["violations"]
        .as_array()
        .expect("violations: an array");
    assert!(!violations.is_empty(), "{doc}:{at}: show a violation");
    for v in violations {
        assert_eq!(v["type"], "connection", "{doc}:{at}: {v}");
        if let Err(e) = validate_event(&schema, v) {
            panic!("{doc}:{at}: a violation that is no connection record: {e}");
        }
    }
}

/// The keys of a JSON object (panics on anything else: the examples are objects).
fn keys_of(v: &serde_json::Value) -> BTreeSet<&str> {
    let object = v
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {v}"));
    object.keys().map(String::as_str).collect()
}
