//! Progress of long work a person waits for (`libs`, `policy explain`, `discover`): a bar on
//! stderr when stderr is a terminal, and nothing added otherwise, so logs, pipes and tests read
//! the same plain lines as before.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar on a terminal, or nothing. Dropping it clears the bar.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar drawn with `template` (indicatif's syntax: `{bar:40} {pos}/{len} {msg}`) when stderr
    /// is a terminal and `wanted`; otherwise nothing.
    pub fn on_terminal(template: &str, wanted: bool) -> Self {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = (terminal && wanted).then(|| {
            ProgressBar::new(0).with_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        });
        Self { bar }
    }

    /// Whether a bar is shown (its caller then leaves out the plain progress lines).
    pub fn shown(&self) -> bool {
        self.bar.is_some()
    }

    /// `done` of `total`, with `message` beside the bar.
    pub fn set(&self, done: usize, total: usize, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(message);
        }
    }

    /// A line on stderr, above the bar while one is shown (so the two do not overwrite each
    /// other).
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
