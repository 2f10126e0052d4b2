//! `run_with_timeout`: run a client with some stdin, kill it at a deadline.

use std::{
    io::{Read, Write},
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// What a command did.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// From spawn to exit (or to the kill at the deadline).
    pub elapsed: Duration,
    /// The deadline passed and the command's process group was killed.
    pub timed_out: bool,
}

impl Outcome {
    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `cmd` in its own process group with `stdin` written to it (then closed), and
/// SIGKILLs the whole group once `timeout` has passed. Panics only if it cannot start.
pub fn run_with_timeout(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Outcome {
    crate::tie_to_parent(cmd, libc::SIGKILL, true);
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;

    // Stdin on its own thread: a child that never reads must not block us. Not joined.
    let mut input = child.stdin.take().expect("stdin is piped");
    let bytes = stdin.to_vec();
    thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = drain(child.stdout.take().expect("stdout is piped"));
    let err = drain(child.stderr.take().expect("stderr is piped"));

    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, Instant::now()));
    });
    let (timed_out, (status, end)) = match rx.recv_timeout(timeout) {
        Ok(done) => (false, done),
        Err(_) => {
            let killed_at = Instant::now();
            // SAFETY: signalling the process group we created (the leader may just have been
            // reaped; its pid cannot have been reused within this instant).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let (status, _) = rx.recv().expect("the waiter thread reports");
            (true, (status, killed_at))
        }
    };
    let status = status.unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"));
    if !timed_out {
        // Leftover processes of the group (daemons, ip netns exec children) die too.
        // SAFETY: as above; ESRCH when the group is already gone is fine.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    Outcome {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        elapsed: end - start,
        timed_out,
    }
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}
