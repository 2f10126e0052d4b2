//! The agent's own log lines, as an operator reads them: `--log-format json` gives one JSON
//! object a line with the fields of the text; the text shows values as a person writes them
//! (`rule_line=4`, absent when there is none), never Rust's `Some(..)`/`None`.

use std::time::Duration;

use enforcer_tests::{Agent, NetNs, require_root};
use serde_json::Value;

const READY: Duration = Duration::from_secs(60);
/// The openssl rule is on line 4: its probed libraries log `rule_line` 4; the others have none.
const POLICY: &str =
    "mode: audit\ndefault: allow\nlibraries:\n  - family: openssl\n    action: allow\n";

/// Starts an agent, waits for it to be ready and stops it: its whole stderr.
fn agent_log(extra: &[&str]) -> String {
    let ns = NetNs::new();
    let mut agent = Agent::with_policy(&ns.host_if, POLICY, extra);
    agent.wait_ready(READY);
    assert!(
        agent.stderr_contains("enforcer ready", Duration::from_secs(10)),
        "no `enforcer ready` log line:\n{}",
        agent.stderr()
    );
    let status = agent.stop().expect("the agent ran");
    assert!(
        status.success(),
        "agent exited {status:?}:\n{}",
        agent.stderr()
    );
    agent.stderr()
}

#[test]
fn json_log_lines_carry_the_fields_of_the_text() {
    require_root();
    let log = agent_log(&["--log-format", "json"]);
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "no `{key}` in {line}");
        }
    }
    let ready = lines
        .iter()
        .find(|l| l["message"] == "enforcer ready")
        .expect("an `enforcer ready` line");
    assert_eq!(ready["mode"], "audit", "{ready}");
    assert!(ready.get("interfaces").is_some(), "{ready}");
    assert!(
        ready.get("metrics").is_none(),
        "no metrics listener: no field: {ready}"
    );
    let probed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "library probed")
        .collect();
    let openssl = probed
        .iter()
        .find(|l| l["family"] == "openssl")
        .unwrap_or_else(|| panic!("no openssl library probed:\n{log}"));
    assert_eq!(openssl["rule_line"], 4, "{openssl}");
    for line in &probed {
        if line["family"] != "openssl" {
            assert!(line.get("rule_line").is_none(), "no rule, no field: {line}");
        }
    }
}

#[test]
fn text_log_shows_values_not_rust_debug() {
    require_root();
    let log = agent_log(&[]);
    assert!(log.contains("rule_line=4"), "no `rule_line=4`:\n{log}");
    for bad in ["Some(", "=None"] {
        let found: Vec<&str> = log.lines().filter(|l| l.contains(bad)).collect();
        assert!(
            found.is_empty(),
            "`{bad}` in the log:\n{}",
            found.join("\n")
        );
    }
}
