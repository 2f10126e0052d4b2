//! Abort an MPTCP connection whose subflow carried a blocked hello.
//!
//! `SOCK_DESTROY` (`sock_destroy`) reaches the subflow only: a TCP socket the kernel made for
//! the MPTCP socket, held by no process. Past the MPTCP handshake the kernel does not pass a
//! subflow's error up to the MPTCP socket (it waits for another subflow), so a denied client
//! would wait for its own timeout, its packets dropped. The MPTCP socket itself is in the
//! client's file table: the agent takes a duplicate of it (`pidfd_getfd`, which needs
//! `PTRACE_MODE_ATTACH` over the process: root) and shuts it down. The client's next read then
//! returns end of file and its next write fails with `EPIPE`.
//!
//! The process is hostile input: at most `MAX_SOCKETS` of its descriptors are looked at, and a
//! descriptor counts only when it is an MPTCP socket whose own addresses are the flow's.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `IPPROTO_MPTCP` (not in every libc version).
const IPPROTO_MPTCP: libc::c_int = 262;
/// Socket descriptors of one process looked at, at most.
const MAX_SOCKETS: usize = 4096;

/// Shuts down the MPTCP socket of process `pid` whose local and remote addresses are `local`
/// and `remote`. `Ok(false)`: the process has no such socket (or is gone).
pub fn shutdown_in(pid: u32, local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
    let Some(pidfd) = pidfd_open(pid)? else {
        return Ok(false);
    };
    let entries = match fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let sockets = entries
        .filter_map(Result::ok)
        .filter(|e| {
            fs::read_link(e.path()).is_ok_and(|target| {
                target
                    .as_os_str()
                    .as_encoded_bytes()
                    .starts_with(b"socket:")
            })
        })
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .take(MAX_SOCKETS);
    for target_fd in sockets {
        let Some(fd) = pidfd_getfd(&pidfd, target_fd) else {
            continue;
        };
        // An MPTCP socket that fell back to TCP ended with its subflow: it has no peer any
        // more, and counts as done (a listener on the same port never matches).
        if option(&fd, libc::SO_PROTOCOL) == Some(IPPROTO_MPTCP)
            && option(&fd, libc::SO_ACCEPTCONN) == Some(0)
            && name(&fd, libc::getsockname).map(canonical) == Some(canonical(local))
            && name(&fd, libc::getpeername).is_none_or(|peer| canonical(peer) == canonical(remote))
        {
            // SAFETY: `fd` is a descriptor we own (a duplicate of the process's socket).
            if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) } < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOTCONN) {
                    return Err(e);
                }
            }
            return Ok(true);
        }
    }
    Ok(false)
}

fn pidfd_open(pid: u32) -> io::Result<Option<OwnedFd>> {
    // SAFETY: plain syscall; the result is owned right after the check.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

/// A duplicate of the process's descriptor `target_fd`; `None` when it is gone or refused.
fn pidfd_getfd(pidfd: &OwnedFd, target_fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: plain syscall; the result is owned right after the check.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    // SAFETY: a fresh descriptor (close-on-exec) nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A `SOL_SOCKET` option's integer value.
fn option(fd: &OwnedFd, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

type NameCall =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

fn name(fd: &OwnedFd, call: NameCall) -> Option<SocketAddr> {
    // SAFETY: `sockaddr_storage` is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` and `len` are valid for the sizes passed.
    if unsafe { call(fd.as_raw_fd(), (&raw mut ss).cast(), &mut len) } != 0 {
        return None;
    }
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in for AF_INET.
            let sin = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled a sockaddr_in6 for AF_INET6.
            let sin6 = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack socket talking IPv4).
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

#[cfg(test)]
mod tests {
    //! Needs root (pidfd_getfd of a process) and an MPTCP kernel: fails, never skips, without.
    use super::*;
    use std::io::Read;
    use std::net::TcpStream;
    use std::os::fd::FromRawFd;

    fn mptcp_socket() -> OwnedFd {
        // SAFETY: plain socket(2) call; owned right after the check.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP) };
        assert!(fd >= 0, "MPTCP socket: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn sockaddr(to: SocketAddr) -> libc::sockaddr_in {
        let SocketAddr::V4(v4) = to else {
            unreachable!()
        };
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }

    /// A real MPTCP connection over loopback in this process (MPTCP on both ends, or it falls
    /// back to TCP): (client socket, listener, accepted side, client address, server address).
    fn mptcp_connection() -> (OwnedFd, OwnedFd, OwnedFd, SocketAddr, SocketAddr) {
        let listener = mptcp_socket();
        let any = sockaddr("127.0.0.1:0".parse().expect("addr"));
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: valid socket and sockaddr_in of the size passed.
        let rc = unsafe { libc::bind(listener.as_raw_fd(), (&raw const any).cast(), len) };
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        // SAFETY: a bound socket.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 8) }, 0);
        let to = name(&listener, libc::getsockname).expect("listener address");
        let sock = mptcp_socket();
        let sin = sockaddr(to);
        // SAFETY: `sin` is a valid sockaddr_in of the size passed.
        let rc = unsafe { libc::connect(sock.as_raw_fd(), (&raw const sin).cast(), len) };
        assert_eq!(rc, 0, "connect: {}", io::Error::last_os_error());
        // SAFETY: a listening socket; the result is owned right after the check.
        let server = unsafe {
            libc::accept(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        assert!(server >= 0, "accept: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor.
        let server = unsafe { OwnedFd::from_raw_fd(server) };
        let local = name(&sock, libc::getsockname).expect("local");
        (sock, listener, server, local, to)
    }

    /// Found by its addresses and shut down (its read returns end of file at once); a plain
    /// TCP socket of the same process is never touched.
    #[test]
    fn an_mptcp_socket_is_found_by_its_addresses_and_shut_down() {
        let (sock, listener, _server, local, to) = mptcp_connection();
        let plain_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let plain = TcpStream::connect(plain_listener.local_addr().expect("addr")).expect("plain");
        let pid = std::process::id();
        let (plain_local, plain_peer) = (
            plain.local_addr().expect("a"),
            plain.peer_addr().expect("b"),
        );
        assert!(
            !shutdown_in(pid, plain_local, plain_peer).expect("scan"),
            "a TCP socket matched"
        );
        // The listener's own address is the server's, with no peer: never a match.
        let unknown_peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        assert!(
            !shutdown_in(pid, to, unknown_peer).expect("scan"),
            "the listener matched"
        );
        drop(listener);
        assert!(
            shutdown_in(pid, local, to).expect("scan"),
            "the MPTCP socket not found"
        );
        let mut stream = TcpStream::from(sock);
        let mut buf = [0u8; 1];
        assert_eq!(stream.read(&mut buf).expect("read after shutdown"), 0);
    }

    /// `sock_destroy::destroy` on the 4-tuple: the subflow goes, and with its owner known the
    /// MPTCP socket ends too; without an owner it says so instead of reporting success.
    #[test]
    fn destroying_a_subflow_ends_its_mptcp_socket_when_the_owner_is_known() {
        let key = |local: SocketAddr, remote: SocketAddr| {
            let mut k = enforcer_common::flow::FlowKey {
                family: 4,
                local_port: local.port(),
                remote_port: remote.port(),
                ..Default::default()
            };
            let (IpAddr::V4(l), IpAddr::V4(r)) = (local.ip(), remote.ip()) else {
                unreachable!()
            };
            k.local_addr[..4].copy_from_slice(&l.octets());
            k.remote_addr[..4].copy_from_slice(&r.octets());
            k
        };
        let (_sock, _listener, _server, local, to) = mptcp_connection();
        let err = super::super::sock_destroy::destroy(&key(local, to), None).expect_err("no owner");
        assert!(
            matches!(
                err,
                super::super::sock_destroy::SockDestroyError::MptcpOwnerUnknown { .. }
            ),
            "{err}"
        );
        let (sock, _listener, _server, local, to) = mptcp_connection();
        let pid = Some(std::process::id());
        super::super::sock_destroy::destroy(&key(local, to), pid).expect("destroy");
        let mut stream = TcpStream::from(sock);
        let mut buf = [0u8; 1];
        assert_eq!(stream.read(&mut buf).expect("read after the abort"), 0);
    }

    #[test]
    fn a_process_that_is_gone_has_no_socket() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert!(!shutdown_in(u32::MAX >> 2, a, a).expect("gone"));
    }
}
