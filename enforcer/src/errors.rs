//! How an error reaches the operator: its chain of causes, each said once.
//!
//! Many errors (ours with `{0}` in their message, aya's `map error: {0}`) print their source in
//! their own message, and the chain then names the source again: `failed to create map X: map
//! error: failed to create map X: ...`. [`chain_text`] leaves out a cause whose text an outer
//! message already holds.

/// `outer: cause: ... : root`, without the causes an outer message already says.
pub fn chain_text(err: &anyhow::Error) -> String {
    let mut said: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || said.iter().any(|s| s.contains(&text)) {
            continue;
        }
        said.push(text);
    }
    said.join(": ")
}

#[cfg(test)]
mod tests {
    use super::chain_text;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create map `KNOWN_FILES`")]
    struct Create(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("map error: {0}")]
    struct Map(#[from] Create);

    #[derive(Debug, thiserror::Error)]
    #[error("loading the eBPF object failed: {0}")]
    struct Load(#[from] Map);

    #[test]
    fn each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::EPERM);
        let err = anyhow::Error::from(Load(Map(Create(io))));
        assert_eq!(
            chain_text(&err),
            "loading the eBPF object failed: map error: failed to create map `KNOWN_FILES`: \
             Operation not permitted (os error 1)"
        );
    }

    #[test]
    fn context_and_distinct_causes_stay() {
        let err = anyhow::anyhow!("no such interface").context("--iface veth9");
        assert_eq!(chain_text(&err), "--iface veth9: no such interface");
    }
}
