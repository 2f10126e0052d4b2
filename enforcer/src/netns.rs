//! Network namespaces of other processes: which one a process is in (its cookie, what
//! `bpf_get_netns_cookie` and `SO_NETNS_COOKIE` return: unique for the life of the machine, never
//! reused), and a socket opened inside it.
//!
//! A socket belongs to the namespace it was created in for its whole life, whichever thread uses
//! it later: so a `NETLINK_SOCK_DIAG` socket made inside a container's namespace finds (and
//! destroys) that container's sockets from the agent's own threads. It is made on a short-lived
//! helper thread that joins the namespace (`setns(CLONE_NEWNET)` changes the calling thread only)
//! and ends with it, so no thread of the agent is ever left in a foreign namespace.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

/// A namespace as the filesystem names it: `st_dev` and `st_ino` of `/proc/PID/ns/net`. The
/// inode number is freed with the namespace and may be given to a later one: it tells two live
/// namespaces apart, the cookie tells namespaces apart over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

/// The namespace of process `pid`, by name only (`None`: it is gone, or its `ns/net` cannot be
/// read).
pub fn of_pid(pid: u32) -> Option<NsId> {
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    Some(NsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The namespace of the calling thread.
pub fn own() -> io::Result<NsId> {
    let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok(NsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// An open handle on a network namespace (`/proc/PID/ns/net`): it keeps the namespace, so what
/// is asked of it later (its cookie, a socket in it) still works once the process is gone. Open
/// it before a step that may end the process (a socket abort), use it after.
pub struct Ns {
    file: File,
    pub id: NsId,
}

impl Ns {
    /// The namespace of process `pid` (`None`: it is gone, or its `ns/net` cannot be opened).
    pub fn of_pid(pid: u32) -> Option<Ns> {
        let file = File::open(format!("/proc/{pid}/ns/net")).ok()?;
        let meta = file.metadata().ok()?;
        Some(Ns {
            file,
            id: NsId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
        })
    }

    /// Whether it is the calling thread's own namespace.
    pub fn is_own(&self) -> bool {
        own().is_ok_and(|o| o == self.id)
    }
}

/// Runs `make` on a helper thread inside namespace `ns` and hands back what it made (a socket
/// made there stays in that namespace). Errors: the namespace cannot be joined
/// (`PermissionDenied` without `CAP_SYS_ADMIN`), or `make` failed.
pub fn make_in<T, F>(ns: &Ns, make: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let fd = ns.file.try_clone()?;
    let helper = thread::Builder::new()
        .name("netns-helper".into())
        .spawn(move || {
            // SAFETY: `fd` is an open nsfs descriptor; setns changes this thread only.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(fd);
            make()
        })?;
    helper
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace helper thread panicked")))
}

/// The cookie of the network namespace `sock` was created in (`SO_NETNS_COOKIE`, Linux 5.14+).
pub fn cookie_of(sock: &OwnedFd) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is valid for `len` bytes; `len` is updated by the kernel.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// A socket of no consequence to read a namespace's cookie from.
fn probe_socket() -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the descriptor is owned right after the check.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Namespaces remembered at most; the table is emptied when full (a host runs far fewer).
const REMEMBERED: usize = 1024;
/// How long a remembered cookie answers for its inode (the inode of a destroyed namespace may be
/// given to a new one; a cookie never is). Events only report it: no verdict depends on it.
const REMEMBER_FOR: Duration = Duration::from_secs(10);

/// Cookies of the namespaces processes were seen in: one helper thread per namespace per
/// [`REMEMBER_FOR`], not per event.
#[derive(Default)]
pub struct Cookies {
    known: Mutex<HashMap<NsId, (u64, Instant)>>,
}

impl Cookies {
    /// The cookie of the network namespace of process `pid` (`None`: it is gone, or the
    /// namespace could not be joined).
    pub fn of_pid(&self, pid: u32) -> Option<u64> {
        self.of(&Ns::of_pid(pid)?)
    }

    /// The cookie of namespace `ns` (`None`: it could not be joined).
    pub fn of(&self, ns: &Ns) -> Option<u64> {
        let now = Instant::now();
        {
            let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((cookie, at)) = known.get(&ns.id)
                && now.duration_since(*at) < REMEMBER_FOR
            {
                return Some(*cookie);
            }
        }
        let cookie = match ns.is_own() {
            true => cookie_of(&probe_socket().ok()?).ok()?,
            false => make_in(ns, || cookie_of(&probe_socket()?)).ok()?,
        };
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= REMEMBERED {
            known.clear();
        }
        known.insert(ns.id, (cookie, now));
        Some(cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CAP_SYS_ADMIN for setns), like the agent.
    #[test]
    fn a_new_namespace_has_its_own_cookie_and_sockets_made_there_stay_there() {
        let cookies = Cookies::default();
        let mine = cookies.of_pid(std::process::id()).expect("own cookie");
        assert_eq!(cookies.of_pid(std::process::id()), Some(mine));
        // A child in a namespace of its own (`unshare -n`), waiting to be looked at.
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "sleep", "30"])
            .spawn()
            .expect("unshare (util-linux)");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while of_pid(pid) == own().ok() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let theirs = cookies.of_pid(pid).expect("the child's cookie");
        assert_ne!(theirs, mine);
        let ns = Ns::of_pid(pid).expect("the child's namespace");
        assert!(!ns.is_own());
        let sock = make_in(&ns, probe_socket).expect("a socket in the child's namespace");
        assert_eq!(cookie_of(&sock).expect("cookie"), theirs);
        assert_eq!(
            own().ok(),
            of_pid(std::process::id()),
            "this thread stayed home"
        );
        // The handle outlives the process: its namespace is still there to ask.
        let _ = child.kill();
        let _ = child.wait();
        assert!(Ns::of_pid(pid).is_none());
        let sock = make_in(&ns, probe_socket).expect("a socket once the child is gone");
        assert_eq!(cookie_of(&sock).expect("cookie"), theirs);
        assert_eq!(cookies.of_pid(u32::MAX), None);
    }
}
