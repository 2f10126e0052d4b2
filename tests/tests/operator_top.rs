//! `enforcer top` in a real terminal: tmux runs it against an agent (enforce, OpenSSL only) while
//! the test makes an allowed `openssl s_client` and a denied `gnutls-cli` connection; the pane
//! shows both, with library names and verdicts, and the denied one as a violation with its
//! process, version and 4-tuple; `q` exits and the shell is back (no alternate screen left).
//! Also: no terminal, or no agent, is a clear message and a failure; and `enforcer libs` draws
//! its progress bar on a terminal only, and `enforcer discover` one bar over its chunks.

use std::{
    net::IpAddr,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cert, NetNs, Server, cmd, enforcer_bin, require_root, run_with_timeout,
};

const OPENSSL_ONLY: &str =
    "mode: enforce\ndefault: deny\nlibraries:\n  - family: openssl\n    action: allow\n";
const READY: Duration = Duration::from_secs(60);
const EVENT: Duration = Duration::from_secs(10);
/// How long the pane may take to show what the test waits for (the view polls once a second).
const SCREEN: Duration = Duration::from_secs(15);
const PROMPT: &str = "top-test$ ";

/// A tmux server of its own (`-L`), one session running `sh` in a 120x24 pane; killed on drop.
struct Tmux {
    server: String,
}

impl Tmux {
    fn new() -> Tmux {
        assert!(
            Command::new("tmux").arg("-V").output().is_ok(),
            "tmux is missing: `cargo xtask setup` installs it"
        );
        // A server of its own per session: the tests of this file run in one process, and a
        // new session on the name of the server the last test just killed can find it still
        // going away ("server exited unexpectedly").
        static SESSIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmux = Tmux {
            server: format!("enforcer-top-{}-{n}", std::process::id()),
        };
        let out = tmux
            .cmd(&[
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "top",
                "-x",
                "120",
                "-y",
                "24",
            ])
            .args(["env", &format!("PS1={PROMPT}"), "sh"])
            .output()
            .expect("tmux runs");
        assert!(out.status.success(), "tmux new-session: {out:?}");
        tmux.wait_screen("the shell's prompt", |s| s.contains(PROMPT.trim_end()));
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.server]).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("tmux runs");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `line` and Enter.
    fn type_line(&self, line: &str) {
        self.run(&["send-keys", "-t", "top", "-l", line]);
        self.run(&["send-keys", "-t", "top", "Enter"]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Whether the pane is in the alternate screen (a full-screen program is drawing).
    fn alternate_on(&self) -> bool {
        self.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"])
            .trim()
            == "1"
    }

    /// Polls the pane until `done` holds for it; panics with the screen at the deadline.
    fn wait_screen(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the pane did not show {what} within {SCREEN:?}:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).output();
    }
}

/// What `echo top-exit=$?` printed (the typed command line has it too, not at the start).
fn exit_code(screen: &str) -> Option<&str> {
    screen
        .lines()
        .find_map(|l| l.strip_prefix("top-exit="))
        .map(str::trim)
}

/// A line of the pane that has all of `words`.
fn line_with<'a>(screen: &'a str, words: &[&str]) -> Option<&'a str> {
    screen.lines().find(|l| words.iter().all(|w| l.contains(w)))
}

fn top_line(socket: &Path) -> String {
    format!(
        "{} top --control-socket {}; echo top-exit=$?",
        enforcer_bin().display(),
        socket.display()
    )
}

#[test]
fn not_a_terminal_is_refused_with_what_to_use_instead() {
    let out = run_with_timeout(
        &mut cmd(
            enforcer_bin().to_str().expect("utf-8"),
            ["top", "--control-socket", "/nonexistent/agent.sock"],
        ),
        b"",
        Duration::from_secs(10),
    );
    assert!(!out.success(), "{out:?}");
    let err = out.stderr_str();
    assert!(err.contains("not one"), "{err}");
    assert!(err.contains("enforcer status --json"), "{err}");
    assert!(err.contains("enforcer flows"), "{err}");
    assert!(out.stdout_str().is_empty(), "{out:?}");
}

#[test]
fn live_view_shows_allowed_and_denied_connections_and_q_restores_the_terminal() {
    require_root();
    let tmux = Tmux::new();
    let dir = tempfile::tempdir().expect("temp dir");

    // No agent: one clear message naming the socket, a failure, the shell back.
    let missing = dir.path().join("no-agent.sock");
    tmux.type_line(&top_line(&missing));
    let screen = tmux.wait_screen("top's exit without an agent", |s| exit_code(s).is_some());
    assert_eq!(exit_code(&screen), Some("1"), "{screen}");
    let error = line_with(&screen, &["error:", "connecting to the agent"])
        .unwrap_or_else(|| panic!("no error line:\n{screen}"));
    assert!(
        screen.contains(missing.to_str().expect("utf-8")),
        "the message names the socket: {error}\n{screen}"
    );
    assert!(!tmux.alternate_on(), "{screen}");
    tmux.run(&["send-keys", "-t", "top", "clear", "Enter"]);

    let ns = NetNs::new();
    let (local, peer) = (IpAddr::V4(ns.host_v4), IpAddr::V4(ns.peer_v4));
    let cert = Cert::new(&[peer]);
    let allowed_server = Server::plain(&ns, peer, 9460, &cert);
    let denied_server = Server::plain(&ns, peer, 9461, &cert);
    let socket = dir.path().join("agent.sock");
    let mut args = enforcer_tests::hook_args();
    args.extend(["--control-socket".into(), socket.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::with_policy(&ns.host_if, OPENSSL_ONLY, &args);
    agent.wait_ready(READY);
    // The agent pauses (SIGSTOP) a process that maps an executable file new to the host until
    // it is examined (docs/architecture.md, "Trade-offs of SIGSTOP"): the interactive shell
    // would see its foreground job stop and take the terminal back. The test's enforcer binary
    // is new to this agent; let it be examined once outside the pane.
    let out = run_with_timeout(
        &mut cmd(enforcer_bin().to_str().expect("utf-8"), ["--version"]),
        b"",
        EVENT,
    );
    assert!(out.success(), "{out:?}");

    tmux.type_line(&top_line(&socket));
    tmux.wait_screen("the view", |s| {
        s.contains("q: quit") && s.contains("agent pid")
    });
    assert!(tmux.alternate_on(), "top draws on the alternate screen");

    // One allowed connection, one denied.
    let line = b"openssl says hello\n";
    let out = run_with_timeout(
        &mut cmd(
            "openssl",
            [
                "s_client",
                "-quiet",
                "-no_ign_eof",
                "-connect",
                &allowed_server.addr().to_string(),
            ],
        ),
        line,
        EVENT,
    );
    assert!(out.success(), "s_client must complete: {out:?}");
    agent.wait_connection("openssl", local, allowed_server.addr(), EVENT);
    let port = denied_server.addr().port().to_string();
    let out = run_with_timeout(
        &mut cmd(
            "gnutls-cli",
            ["--insecure", "--port", &port, &peer.to_string()],
        ),
        b"MUST-NOT-ARRIVE\n",
        EVENT,
    );
    assert!(!out.success(), "gnutls-cli must be refused: {out:?}");
    let event = agent.wait_connection("gnutls-cli", local, denied_server.addr(), EVENT);
    assert_eq!(event["verdict"], "blocked", "{event}");
    let local_end = format!(
        "{}:{}",
        event["local"]["addr"].as_str().unwrap_or("?"),
        event["local"]["port"]
    );
    let remote_end = denied_server.addr().to_string();
    let version = event["library"]["version"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();

    let screen = tmux.wait_screen("both connections and the violation", |s| {
        line_with(s, &["openssl", "allowed"]).is_some()
            && line_with(s, &["gnutls", "blocked"]).is_some()
            && line_with(
                s,
                &[
                    "gnutls-cli",
                    "gnutls",
                    &version,
                    &local_end,
                    &remote_end,
                    "blocked",
                ],
            )
            .is_some()
    });
    // The capture the README shows (`--nocapture`).
    println!("--- enforcer top, captured by tmux:\n{screen}---");
    assert!(
        line_with(&screen, &["drops on", &ns.host_if]).is_some(),
        "{screen}"
    );
    assert!(screen.contains("ring-buffer losses"), "{screen}");

    // `q`: top exits 0, the alternate screen is gone, the shell is back.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    // The shell prints its prompt after `echo top-exit=$?`: wait for both, not the first alone.
    let last_line = |s: &str| {
        s.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim_end()
            .to_owned()
    };
    let screen = tmux.wait_screen("the shell's prompt after q", |s| {
        exit_code(s).is_some() && last_line(s) == PROMPT.trim_end()
    });
    assert_eq!(exit_code(&screen), Some("0"), "{screen}");
    assert!(!tmux.alternate_on(), "alternate screen left on:\n{screen}");
    assert!(
        !screen.contains("q: quit"),
        "the view is still on the screen:\n{screen}"
    );
    // The terminal is out of raw mode: what is typed is echoed and runs.
    tmux.type_line("echo typed-after-top");
    tmux.wait_screen("an echoed command", |s| {
        s.lines().any(|l| l.trim_end() == "typed-after-top")
    });
    drop(agent);
}

/// Types `line` (which ends by echoing `<exit>=$?`) and polls the pane often until the command
/// is done, keeping the last line seen with all of `bar_words` (a progress bar mid-way: the work
/// may take only seconds). Returns (that line, the final screen).
fn watch_bar(tmux: &Tmux, line: &str, bar_words: &[&str], exit: &str) -> (String, String) {
    tmux.type_line(line);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = None;
    while Instant::now() < deadline {
        let screen = tmux.screen();
        if let Some(bar) = line_with(&screen, bar_words) {
            seen = Some(bar.to_owned());
        }
        if screen.lines().any(|l| l.starts_with(exit)) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let screen = tmux.screen();
    let bar = seen.unwrap_or_else(|| panic!("no progress bar seen:\n{screen}"));
    assert!(bar.contains('█') || bar.contains('░'), "{bar}");
    (bar, screen)
}

/// `enforcer libs` on a terminal: a progress bar over the files it examines on stderr, cleared
/// when done (stdout unchanged); with stderr not a terminal, no bar at all.
#[test]
fn libs_shows_a_progress_bar_on_a_terminal_only() {
    require_root();
    let tmux = Tmux::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let listing = dir.path().join("libs.txt");
    let line = format!(
        "{} libs > {}; echo libs-exit=$?",
        enforcer_bin().display(),
        listing.display()
    );
    let (_, screen) = watch_bar(
        &tmux,
        &line,
        &["examining files for TLS libraries", "/"],
        "libs-exit=",
    );
    assert!(screen.lines().any(|l| l == "libs-exit=0"), "{screen}");
    assert!(
        !screen.contains("examining files"),
        "the bar is cleared:\n{screen}"
    );
    let text = std::fs::read_to_string(&listing).expect("the listing");
    assert!(text.contains("TLS libraries (policy"), "{text}");
    assert!(
        !text.contains("examining files"),
        "the bar is not in stdout:\n{text}"
    );

    let out = run_with_timeout(
        &mut cmd(enforcer_bin().to_str().expect("utf-8"), ["libs"]),
        b"",
        Duration::from_secs(60),
    );
    assert!(out.success(), "{out:?}");
    assert!(!out.stderr_str().contains("examining files"), "{out:?}");
}

/// `enforcer discover` on a terminal: one bar over the functions probed, with the chunk it is
/// at, in place of a line per chunk; cleared when the pass ends. (The workload here makes no TLS,
/// so the scan ends in its "no function enclosed" error: the bar is all this test looks at; the
/// plain lines off a terminal are `discover.rs`'s.)
#[test]
fn discover_shows_one_progress_bar_on_a_terminal() {
    require_root();
    // Another test's agent would see this scan's probes; the discover tests hold it too.
    let _host = enforcer_tests::host_lock();
    let tmux = Tmux::new();
    let line = format!(
        "{} discover --lib /usr/lib/x86_64-linux-gnu/libssl.so.3 --chunk 256 -- sleep 0.3; \
         echo discover-exit=$?",
        enforcer_bin().display(),
    );
    let (bar, screen) = watch_bar(
        &tmux,
        &line,
        &["[discover] scan chunk", "functions"],
        "discover-exit=",
    );
    assert!(bar.contains(" of "), "the bar names the chunk: {bar}");
    assert!(
        !screen.lines().any(|l| l.contains("[discover] scan chunk")),
        "no line per chunk, and the bar is cleared:\n{screen}"
    );
    assert!(
        screen.contains("no function of"),
        "the scan ran to its end:\n{screen}"
    );
}
