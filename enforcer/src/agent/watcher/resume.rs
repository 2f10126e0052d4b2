//! Resuming paused processes: by pidfd while the agent runs, and by a small helper process if
//! the agent dies (even by SIGKILL) while some are paused.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

/// A process we may have to resume: a pidfd, so a pid reused after the process died can never
/// receive our signal.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    /// `None` if the process is gone.
    pub fn open(pid: u32) -> Option<Pidfd> {
        // SAFETY: plain syscall; the fd returned is ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh fd owned by nobody else.
        Some(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }

    /// Sends `signal`; `false` if the process is gone.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        // SAFETY: plain syscall with a valid fd and no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }
}

/// The helper: a forked child that outlives the agent if the agent dies (even by SIGKILL) and
/// then resumes every process listed in `PAUSED` (the hooks list a process there *before*
/// stopping it).
///
/// A dying agent releases its files in an order we do not control, and releasing hundreds of
/// uprobes can take minutes, during which its hooks may still pause processes. So from the
/// moment the agent starts dying (its end of the pipe closes without the goodbye byte, or its
/// pidfd turns readable) until it is entirely gone (pidfd readable), the helper sends `SIGCONT`
/// to every listed process every [`DYING_POLL_MS`] ms, then once more, and exits. Entries are
/// never deleted: a walk may run between a hook's listing and its `SIGSTOP`, so the next walk
/// must still see that process. On a clean shutdown the agent, having resumed everyone itself,
/// writes one byte to the pipe and the helper exits at once.
pub struct Resumer {
    pipe: Option<OwnedFd>,
    child: libc::pid_t,
}

impl Resumer {
    /// `paused`: the fd of the `PAUSED` map (`HashMap<u32, u64>`, keys are tgids).
    pub fn spawn(paused: BorrowedFd<'_>) -> io::Result<Resumer> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fds, owned by nobody else.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let map = paused.as_raw_fd();
        // SAFETY: the child only makes async-signal-safe system calls and never returns.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => helper(read_end.as_raw_fd(), map),
            child => Ok(Resumer {
                pipe: Some(write_end),
                child,
            }),
        }
    }

    /// Clean shutdown (nothing is paused any more): tells the helper to exit, and reaps it.
    pub fn finish(mut self) {
        self.quit();
    }

    fn quit(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            let byte = b'q';
            // SAFETY: writes one byte from a valid buffer.
            unsafe { libc::write(pipe.as_raw_fd(), (&raw const byte).cast(), 1) };
            drop(pipe);
            let mut status = 0;
            // SAFETY: our own child.
            unsafe { libc::waitpid(self.child, &mut status, 0) };
        }
    }
}

impl Drop for Resumer {
    fn drop(&mut self) {
        self.quit();
    }
}

const PIPE_FD: RawFd = 0;
const MAP_FD: RawFd = 1;
const AGENT_FD: RawFd = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
/// How often a dying agent's paused processes are resumed.
pub const DYING_POLL_MS: libc::c_int = 100;
/// `PAUSED`'s size: the walk cannot take longer than that.
pub(super) const MAX_KEYS: usize = 16384;

/// The helper's whole life. Runs in a child forked from a multi-threaded process: only system
/// calls, no allocation, no locks, no return.
fn helper(pipe: RawFd, map: RawFd) -> ! {
    // SAFETY: async-signal-safe calls on fds this process owns, then _exit.
    unsafe {
        let agent = libc::syscall(libc::SYS_pidfd_open, libc::getppid(), 0) as RawFd;
        // F_DUPFD takes the lowest free number >= 3, so no copy clobbers another.
        let pipe = libc::fcntl(pipe, libc::F_DUPFD, 3);
        let map = libc::fcntl(map, libc::F_DUPFD, 3);
        let agent_copy = libc::fcntl(agent, libc::F_DUPFD, 3);
        if agent < 0 || pipe < 0 || map < 0 || agent_copy < 0 {
            libc::_exit(1);
        }
        // Keep only these three, as fds 0, 1 and 2: drop the agent's links, sockets and maps,
        // so nothing the agent attached outlives it because of us.
        libc::dup2(pipe, PIPE_FD);
        libc::dup2(map, MAP_FD);
        libc::dup2(agent_copy, AGENT_FD);
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_NAME, c"enforcer-resume".as_ptr());
        let mut fds = [
            libc::pollfd {
                fd: PIPE_FD,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: AGENT_FD,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Alive: wait for the goodbye byte or for the agent to start dying.
        loop {
            let n = libc::poll(fds.as_mut_ptr(), 2, -1);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n < 0 || fds[1].revents != 0 {
                break;
            }
            if fds[0].revents != 0 {
                let mut byte = 0u8;
                let r = libc::read(PIPE_FD, (&raw mut byte).cast(), 1);
                if r == 1 && byte == b'q' {
                    libc::_exit(0); // clean shutdown: nothing is paused
                }
                break; // end of file without the byte: the agent is dying
            }
        }
        // Dying: resume everyone listed, again and again, until the agent is gone.
        let mut gone = [libc::pollfd {
            fd: AGENT_FD,
            events: libc::POLLIN,
            revents: 0,
        }];
        loop {
            resume_listed(MAP_FD);
            let n = libc::poll(gone.as_mut_ptr(), 1, DYING_POLL_MS);
            if n < 0 && *libc::__errno_location() != libc::EINTR {
                break;
            }
            if n > 0 {
                break;
            }
        }
        resume_listed(MAP_FD);
        libc::_exit(0)
    }
}
/// `SIGCONT` to every tgid in the map, walked with raw `bpf(2)` calls.
fn resume_listed(map: RawFd) {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    let mut key: u32 = 0;
    let mut next: u32 = 0;
    let mut first = true;
    for _ in 0..MAX_KEYS {
        let attr = Attr {
            map_fd: map as u32,
            _pad: 0,
            key: if first { 0 } else { (&raw const key) as u64 },
            next_key: (&raw mut next) as u64,
            flags: 0,
        };
        // SAFETY: a valid bpf_attr for BPF_MAP_GET_NEXT_KEY, pointers to live stack values.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &raw const attr,
                size_of::<Attr>() as u32,
            )
        };
        if r != 0 {
            break;
        }
        // SAFETY: plain syscall.
        unsafe { libc::kill(next as libc::pid_t, libc::SIGCONT) };
        key = next;
        first = false;
    }
}
