//! The policies the documents show: every `yaml` block parses, a shown `enforcer policy check`
//! output is what it prints today.

use enforcer_tests::docs::{blocks, documents};

/// A `yaml` block is a policy, or a part of one without `default:` (a `catalog:` section, say),
/// which is checked with `default: deny` added.
#[test]
fn every_policy_example_in_the_docs_is_valid() {
    let mut failures = vec![];
    let mut checked = 0;
    for doc in documents() {
        for block in blocks(&doc).iter().filter(|b| b.lang == "yaml") {
            let Some((first, _)) = block.lines.first() else {
                continue;
            };
            let mut text: String = block.lines.iter().map(|(_, l)| format!("{l}\n")).collect();
            if !text.lines().any(|l| l.starts_with("default:")) {
                text.insert_str(0, "default: deny\n");
            }
            checked += 1;
            // Error positions count from the block's first line (one more with `default:` added).
            let source = format!("{doc}, the yaml block at line {first}");
            if let Err(e) = enforcer::policy::parse(&text, &source) {
                failures.push(e.to_string());
            }
        }
    }
    assert!(checked >= 5, "only {checked} yaml blocks found in the docs");
    assert!(
        failures.is_empty(),
        "policy examples the parser rejects:\n{}",
        failures.join("\n")
    );
}

/// "`enforcer policy check FILE` prints:" followed by a block: the block is today's output.
#[test]
fn shown_policy_check_output_is_current() {
    let root = enforcer_tests::workspace();
    let mut shown = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(root.join(&doc)).expect("readable");
        let blocks = blocks(&doc);
        for (n, line) in text.lines().enumerate() {
            let Some(file) = line
                .strip_prefix("`enforcer policy check ")
                .and_then(|rest| rest.strip_suffix("` prints:"))
            else {
                continue;
            };
            let block = blocks
                .iter()
                .find(|b| b.lines.first().is_some_and(|(first, _)| *first > n + 1))
                .unwrap_or_else(|| panic!("{doc}:{}: no block after it", n + 1));
            let want: String = block.lines.iter().map(|(_, l)| format!("{l}\n")).collect();
            let policy = enforcer::policy::load(&root.join(file)).expect("a valid policy");
            // The report names the file as given on the command line.
            let got = enforcer::policy::check_report(&policy)
                .replace(&root.join(file).display().to_string(), file);
            assert_eq!(got, want, "{doc}:{}: `enforcer policy check {file}`", n + 1);
            shown += 1;
        }
    }
    assert!(shown >= 1, "no `enforcer policy check FILE` prints: found");
}
