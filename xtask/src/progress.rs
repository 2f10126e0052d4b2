//! Progress for long work a person waits on (`cargo xtask vm`, `cargo xtask bench`): an
//! indicatif bar on stderr when stderr is a terminal, nothing at all otherwise (CI, tests,
//! pipes see exactly the plain lines they always did).
//!
//! One bar at a time, held by a [`Progress`] guard and reachable from anywhere through this
//! module's functions, so deep code (a figure's round, a VM's console line) can say what it is
//! doing without a handle being passed down. Lines printed while a bar is shown must go through
//! [`say!`] / [`say_err!`]: they clear the bar, print the line where `println!` / `eprintln!`
//! would, and draw the bar again below it, so the screen is not garbled.

use std::{
    cell::Cell,
    fmt::Display,
    io::{IsTerminal, Write},
    sync::{
        Mutex, MutexGuard, Once, TryLockError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar shown now, if any, with its step bookkeeping.
static SHOWN: Mutex<Option<Shown>> = Mutex::new(None);

/// Whether a bar is on the screen (for the panic hook, which must not wait for `SHOWN`).
static ON_SCREEN: AtomicBool = AtomicBool::new(false);

struct Shown {
    bar: ProgressBar,
    steps: Steps,
}

fn shown() -> MutexGuard<'static, Option<Shown>> {
    // A panic while the lock was held leaves a usable Option: keep using it.
    SHOWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether bars are drawn in this process: stderr is a terminal.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// The guard of the bar: shown from creation (on a terminal) until drop, which clears it.
/// Off a terminal it is inert.
pub struct Progress {
    /// Whether this guard put a bar on the screen (and so must take it off).
    owner: bool,
}

impl Progress {
    /// A bar over `total` steps, e.g. `3/12 cells`, with the current step as its message.
    pub fn steps(total: u64, unit: &str) -> Progress {
        let template = format!(
            "{{elapsed_precise}} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {unit} {{wide_msg}}"
        );
        Progress::show(on_terminal(), Some(total), &template)
    }

    /// A byte count (a download): a bar if `total` bytes are known, else a spinner.
    pub fn bytes(total: Option<u64>, message: &str) -> Progress {
        let template = match total {
            Some(_) => {
                "{elapsed_precise} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}"
            }
            None => "{spinner} {elapsed_precise} {bytes} {bytes_per_sec} {wide_msg}",
        };
        let p = Progress::show(on_terminal(), total, template);
        set_message(message);
        p
    }

    /// `terminal`: draw at all (a parameter so that tests can ask for the plain case).
    fn show(terminal: bool, total: Option<u64>, template: &str) -> Progress {
        let mut slot = shown();
        // Only one bar at a time: a second one (never wanted so far) stays invisible.
        if !terminal || slot.is_some() {
            return Progress { owner: false };
        }
        install_panic_hook();
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar =
            ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr()).with_style(style);
        // Redrawn 4 times a second even when nothing advances: the elapsed time of a VM cell or
        // a bench round (minutes) keeps moving, so the screen shows the work is alive.
        bar.enable_steady_tick(Duration::from_millis(250));
        ON_SCREEN.store(true, Ordering::SeqCst);
        *slot = Some(Shown {
            bar,
            steps: Steps::default(),
        });
        Progress { owner: true }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.owner
            && let Some(s) = shown().take()
        {
            s.bar.finish_and_clear();
            ON_SCREEN.store(false, Ordering::SeqCst);
        }
    }
}

/// Runs `f` with the shown bar, if there is one.
fn with_bar(f: impl FnOnce(&mut Shown)) {
    let _busy = Busy::enter();
    if let Some(s) = shown().as_mut() {
        f(s);
    }
}

thread_local! {
    /// This thread is inside a call on the bar (for the panic hook: see there).
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as [`BUSY`] until dropped (also when unwinding).
struct Busy;

impl Busy {
    fn enter() -> Busy {
        BUSY.set(true);
        Busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.set(false);
    }
}

/// The bar's message (what is being done now).
pub fn set_message(message: impl Display) {
    with_bar(|s| s.bar.set_message(message.to_string()));
}

/// The bar's position (a byte count for [`Progress::bytes`]).
pub fn set_position(pos: u64) {
    with_bar(|s| s.bar.set_position(pos));
}

/// The next `n` steps belong to one group (a kernel's cells, a figure's rounds); the previous
/// group counts as complete, however many of its steps were reported.
pub fn group(n: u64) {
    with_bar(|s| {
        s.steps.group(n);
        s.bar.set_position(s.steps.pos);
    });
}

/// A step of the current group has finished.
pub fn step_done() {
    with_bar(|s| {
        s.steps.done();
        s.bar.set_position(s.steps.pos);
    });
}

/// A step of the current group starts (the one before it, if any, has finished).
pub fn step_start(message: impl Display) {
    with_bar(|s| {
        s.steps.start();
        s.bar.set_position(s.steps.pos);
        s.bar.set_message(message.to_string());
    });
}

/// `println!` of `line`, through the bar if one is shown (use [`say!`]).
pub fn print_line(line: impl Display) {
    let _busy = Busy::enter();
    let slot = shown();
    match slot.as_ref() {
        Some(s) => s.bar.suspend(|| println!("{line}")),
        None => println!("{line}"),
    }
}

/// `eprintln!` of `line`, through the bar if one is shown (use [`say_err!`]).
pub fn eprint_line(line: impl Display) {
    let _busy = Busy::enter();
    let slot = shown();
    match slot.as_ref() {
        Some(s) => s.bar.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    }
}

/// Prints `line` (through the bar) and starts a step with it as the message, less its first
/// `<command>: ` (use [`step!`]).
pub fn step_line(line: impl Display) {
    let line = line.to_string();
    step_start(
        line.split_once(": ")
            .map_or(line.as_str(), |(_, rest)| rest),
    );
    print_line(&line);
}

/// `println!` of a line that starts a step of the bar (on a terminal).
macro_rules! step {
    ($($arg:tt)*) => {
        $crate::progress::step_line(format_args!($($arg)*))
    };
}
/// `println!`, through the bar if one is shown.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::progress::print_line(format_args!($($arg)*))
    };
}
/// `eprintln!`, through the bar if one is shown.
macro_rules! say_err {
    ($($arg:tt)*) => {
        $crate::progress::eprint_line(format_args!($($arg)*))
    };
}
pub(crate) use {say, say_err, step};

/// A panic message (a bench figure's panic is caught and the run goes on) is written by the
/// panic hook straight to stderr, behind the bar's back: the hook erases the bar's line, so the
/// message starts at the left edge, and prints it with the bar suspended, so that the bar's
/// steady tick cannot draw into the middle of a backtrace. Not suspended when that could wait
/// for ever: if this thread panicked inside a call on the bar (a print through it whose stdout
/// is gone) it holds the bar's locks, and another thread holding `SHOWN` might be waiting for
/// them.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !ON_SCREEN.load(Ordering::SeqCst) {
                return previous(info);
            }
            let bar = if BUSY.get() {
                None
            } else {
                match SHOWN.try_lock() {
                    Ok(s) => s.as_ref().map(|s| s.bar.clone()),
                    Err(TryLockError::Poisoned(s)) => {
                        s.into_inner().as_ref().map(|s| s.bar.clone())
                    }
                    Err(TryLockError::WouldBlock) => None,
                }
            };
            // indicatif neither clears nor draws from a panicking thread (its suspend does not
            // clear the bar here): the bar's line is erased by hand in both cases.
            let erase_and_print = || {
                let _ = std::io::stderr().write_all(b"\r\x1b[2K");
                previous(info);
            };
            match bar {
                Some(bar) => bar.suspend(erase_and_print),
                None => erase_and_print(),
            }
        }));
    });
}

/// The position of a bar over groups of steps whose sizes are known in advance but may fall
/// short or run over (a kernel that does not boot runs none of its cells; a figure stops its
/// rounds at a time budget): steps move within their group, never past its end, and the next
/// group starts at the end of the previous one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    /// Steps finished (the bar's position).
    pub pos: u64,
    /// Where the current group ends.
    end: u64,
    /// Whether a step of the current group was started and not yet counted as finished.
    running: bool,
}

impl Steps {
    pub fn group(&mut self, n: u64) {
        self.pos = self.end;
        self.end += n;
        self.running = false;
    }

    pub fn done(&mut self) {
        self.pos = (self.pos + 1).min(self.end);
        self.running = false;
    }

    pub fn start(&mut self) {
        if self.running {
            self.done();
        }
        self.running = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_stay_in_their_group() {
        let mut s = Steps::default();
        s.group(3);
        s.done();
        assert_eq!(s.pos, 1);
        // A group that falls short: the next one starts at its end.
        s.group(2);
        assert_eq!(s.pos, 3);
        // One that runs over stays at its end.
        for _ in 0..5 {
            s.done();
        }
        assert_eq!(s.pos, 5);
        s.group(0);
        assert_eq!(s.pos, 5);
    }

    #[test]
    fn a_started_step_counts_when_the_next_starts() {
        let mut s = Steps::default();
        s.group(3);
        s.start();
        assert_eq!(s.pos, 0);
        s.start();
        s.start();
        assert_eq!(s.pos, 2);
        s.start();
        assert_eq!(s.pos, 3, "a fourth step of three stays at the group's end");
        s.group(1);
        s.start();
        assert_eq!(s.pos, 3);
    }

    #[test]
    fn off_a_terminal_nothing_is_shown() {
        let p = Progress::show(false, Some(3), "{pos}");
        assert!(!p.owner);
        assert!(shown().is_none());
    }

    /// Run as a child of the next test, with stderr a pipe: a bar's whole life, lines through it.
    #[test]
    #[ignore = "run by plain_lines_and_no_bar_off_a_terminal"]
    fn child_uses_a_bar() {
        if std::env::var_os("XTASK_PROGRESS_CHILD").is_none() {
            return;
        }
        let p = Progress::steps(3, "steps");
        group(3);
        step!("bench: figure 1, round {}/3: first", 1);
        say!("line {}", 1);
        say_err!("err {}", 2);
        step_start("second");
        set_message("x");
        step_done();
        // A caught panic (a bench figure's) under the bar.
        let _ = std::panic::catch_unwind(|| panic!("caught"));
        drop(p);
        let _b = Progress::bytes(None, "download");
        set_position(1 << 20);
        say!("line 3");
    }

    #[test]
    fn plain_lines_and_no_bar_off_a_terminal() {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "progress::tests::child_uses_a_bar",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env("XTASK_PROGRESS_CHILD", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("runs the test binary");
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The test harness adds its own lines to stdout; ours are there whole, in order.
        assert!(
            stdout.contains("bench: figure 1, round 1/3: first\nline 1\n"),
            "{stdout:?}"
        );
        assert!(stdout.contains("line 3\n"), "{stdout:?}");
        assert!(stdout.find("line 1").unwrap() < stdout.find("line 3").unwrap());
        // stderr is the line and the panic's message: no bar, no escape sequence, no carriage
        // return.
        assert!(stderr.starts_with("err 2\n"), "{stderr:?}");
        assert!(stderr.contains("caught"), "{stderr:?}");
        for text in [&stdout, &stderr] {
            assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
        }
    }
}
