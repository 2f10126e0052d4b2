//! `enforcer top`: a live view of a running agent, from its control socket only (`status` and
//! `recent`, polled once a second and at once on a key): connections per library and verdict
//! per second, the newest violations, drops, ring-buffer losses. `q`, Esc or Ctrl-C quits; the
//! terminal is restored on every way out (return, error, panic, SIGTERM/SIGHUP/SIGINT).

mod model;
mod view;

use std::{
    io::IsTerminal,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::agent::control::{self, Request};
use model::{Model, Sample};

/// How often the agent is asked.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long one wait for a key lasts at most: how soon a signal is noticed.
const SLICE: Duration = Duration::from_millis(100);

/// Set by the signal handler: leave the loop and restore the terminal.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// One poll: the agent's `status` and `recent` answers.
fn poll(socket: &Path) -> Result<Sample> {
    let status = control::request(socket, &Request::Status)?;
    let recent = control::request(socket, &Request::Recent)?;
    Ok(Sample::from_answers(&status, &recent))
}

/// Leaves raw mode and the alternate screen, and shows the cursor, when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
        let _ = ratatui::crossterm::execute!(std::io::stdout(), ratatui::crossterm::cursor::Show);
    }
}

pub fn run(socket: &Path) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "enforcer top draws on a terminal and stdout is not one; for a script or a pipe use \
             `enforcer status --json` and `enforcer flows --json`"
        );
    }
    // Before the screen changes: an agent that is not there is a plain error message.
    let first = poll(socket)?;
    for signal in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    let started = Instant::now();
    let mut model = Model::default();
    model.observe(first, 0.0);
    // Installs a panic hook that restores the terminal first, then enters raw mode and the
    // alternate screen.
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let _restore = Restore;
    let mut next_poll = Instant::now() + INTERVAL;
    loop {
        terminal
            .draw(|frame| view::draw(frame, &model))
            .context("drawing")?;
        let mut refresh = false;
        while !refresh {
            if SIGNALLED.load(Ordering::Relaxed) {
                return Ok(());
            }
            let left = next_poll.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !event::poll(left.min(SLICE)).context("reading the terminal")? {
                continue;
            }
            match event::read().context("reading the terminal")? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
                        && matches!(key.code, KeyCode::Char('c' | 'C'));
                    if ctrl_c || matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                        return Ok(());
                    }
                    refresh = true;
                }
                // Redraw at the new size.
                Event::Resize(..) => break,
                _ => {}
            }
        }
        if refresh || Instant::now() >= next_poll {
            match poll(socket) {
                Ok(sample) => model.observe(sample, started.elapsed().as_secs_f64()),
                Err(err) => model.failed(format!("{err:#}")),
            }
            next_poll = Instant::now() + INTERVAL;
        }
    }
}
