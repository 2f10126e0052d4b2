//! The workload: COMMAND run once per chunk, in its own process group (so it can be killed whole),
//! dying with us (`PR_SET_PDEATHSIG`), bounded by a timeout; and SIGINT / SIGTERM turned into a
//! flag the scan checks, so an interrupted scan still kills the workload and closes its links.

use std::{
    ffi::OsString,
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// The signal that interrupted the scan (0: none yet).
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(signal, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM only set a flag (see [`interrupted`]).
pub fn catch_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// The signal received, if any.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// How one run ended.
#[derive(Debug)]
pub enum RunEnd {
    Exited(ExitStatus),
    TimedOut,
    Interrupted(i32),
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub argv: Vec<OsString>,
    pub timeout: Duration,
    /// Let the workload write to our stdout/stderr (else both go to /dev/null).
    pub show_output: bool,
}

impl Workload {
    pub fn describe(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the command to its end, its timeout, or an interrupt (then it is killed).
    pub fn run(&self) -> anyhow::Result<RunEnd> {
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("no workload command given (after --)"))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).process_group(0);
        if !self.show_output {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", program.to_string_lossy()))?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(RunEnd::Exited(status));
            }
            if let Some(signal) = interrupted() {
                kill(&mut child);
                return Ok(RunEnd::Interrupted(signal));
            }
            if started.elapsed() > self.timeout {
                kill(&mut child);
                return Ok(RunEnd::TimedOut);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Kills the workload's whole process group and reaps it.
fn kill(child: &mut Child) {
    // SAFETY: plain syscall; the group id is the child's pid (process_group(0)).
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.kill();
    let _ = child.wait();
}

/// A line describing a run's end, for warnings.
pub fn describe_end(end: &RunEnd) -> String {
    match end {
        RunEnd::Exited(s) if s.success() => "exited 0".to_owned(),
        RunEnd::Exited(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited {c}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => format!("{s}"),
        },
        RunEnd::TimedOut => "timed out (killed)".to_owned(),
        RunEnd::Interrupted(s) => format!("interrupted by signal {s} (killed)"),
    }
}
