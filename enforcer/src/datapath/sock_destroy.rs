//! Abort a local TCP socket by its 4-tuple: sock_diag `SOCK_DESTROY` over `NETLINK_SOCK_DIAG`
//! (what `ss -K` does). The owner's next call fails with `ECONNABORTED` and the peer gets a RST.
//!
//! An MPTCP subflow is destroyed too, but that does not end its MPTCP socket: `mptcp_abort`
//! then shuts that socket down in its owner's file table.
//!
//! The kernel looks the socket up in the network namespace the netlink socket was made in. A
//! socket of a process in another namespace (a container's) is looked up and destroyed through a
//! netlink socket made inside that namespace (`crate::netns::make_in`, from
//! `/proc/<owner>/ns/net`).
//! A socket bound to a device (`SO_BINDTODEVICE`) is not found, because the lookup is made for
//! interface 0.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use enforcer_common::flow::FlowKey;

use super::mptcp_abort;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then `inet_diag_sockid`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`: family, state, timer, retrans, `inet_diag_sockid`, five u32.
const MSG_LEN: usize = 72;
/// Offset of `inet_diag_sockid` in both structs; inside it: sport 0, dport 2, src 4, dst 20,
/// if 36, cookie 40.
const REQ_ID: usize = 8;
const MSG_ID: usize = 4;
const TCP_LISTEN: u8 = 10;
/// `idiag_ext` bit asking for `INET_DIAG_INFO`, with which TCP also reports its ULP.
const EXT_INFO: u8 = 1 << (2 - 1);
/// `INET_DIAG_ULP_INFO`, and inside it `INET_ULP_INFO_NAME`.
const INET_DIAG_ULP_INFO: u16 = 19;
const INET_ULP_INFO_NAME: u16 = 1;

/// Why a socket could not be destroyed. `flow` reads like `127.0.0.1:40000 -> 10.0.0.1:443`.
#[derive(Debug, thiserror::Error)]
pub enum SockDestroyError {
    #[error("no TCP socket {flow} in {netns} (already closed?)")]
    NotFound { flow: String, netns: String },
    #[error(
        "cannot look for TCP socket {flow} in the network namespace of process {pid}, which \
         holds it: {source}"
    )]
    Netns {
        flow: String,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("the kernel cannot destroy sockets: it was built without CONFIG_INET_DIAG_DESTROY")]
    Unsupported,
    #[error("not allowed to destroy TCP socket {flow}: needs CAP_NET_ADMIN (run as root)")]
    PermissionDenied { flow: String },
    #[error(
        "MPTCP socket {flow}: its subflow was aborted, but process {pid} holds no MPTCP socket \
         with these addresses (its packets are still dropped)"
    )]
    MptcpSocketNotFound { flow: String, pid: u32 },
    #[error(
        "MPTCP socket {flow}: its subflow was aborted, but the process holding it is not known \
         (its packets are still dropped)"
    )]
    MptcpOwnerUnknown { flow: String },
    #[error("invalid flow key: {0}")]
    InvalidFlow(String),
    #[error("sock_diag {step} for TCP socket {flow} failed: {source}")]
    Netlink {
        step: &'static str,
        flow: String,
        #[source]
        source: io::Error,
    },
}

/// Where [`destroy_in`] looks for a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Netns {
    /// The network namespace of its owner (the agent's when the owner is not known or gone).
    OfOwner,
    /// The agent's own only.
    Agent,
}

/// [`destroy_in`] the owner's network namespace.
pub fn destroy(flow: &FlowKey, owner: Option<u32>) -> Result<(), SockDestroyError> {
    destroy_in(flow, owner, Netns::OfOwner)
}

/// Destroys the local TCP socket whose local end is `flow.local_*` and remote end
/// `flow.remote_*`, in the network namespace of process `owner` (with `Netns::OfOwner`; the
/// agent's own with `Netns::Agent`, or when `owner` is `None` or gone). Listening sockets are
/// never touched. When it is an MPTCP subflow, its MPTCP socket is shut down in `owner`'s file
/// table too (`mptcp_abort`).
///
/// Two steps, because a `SOCK_DESTROY` for a 4-tuple without an established socket falls back
/// (like packet demultiplexing) to the *listener* on the local port and would abort it: first
/// look the socket up and check it really has this 4-tuple, then destroy it by its cookie, so
/// a socket that replaced it in between is not hit either.
///
/// Blocking, but only for two netlink round trips the kernel answers within `sendmsg()`.
pub fn destroy_in(
    flow: &FlowKey,
    owner: Option<u32>,
    netns: Netns,
) -> Result<(), SockDestroyError> {
    let (local, remote) = endpoints(flow)?;
    let shown = format!("{local} -> {remote}");
    let fail = |step| {
        let flow = shown.clone();
        move |source| SockDestroyError::Netlink { step, flow, source }
    };
    let (sock, netns) = open_for(owner.filter(|_| netns == Netns::OfOwner), &shown)?;
    let not_found = || SockDestroyError::NotFound {
        flow: shown.clone(),
        netns: netns.clone(),
    };

    let mut req = request(local, remote);
    req[2] = EXT_INFO;
    let found = match exchange(&sock, SOCK_DIAG_BY_FAMILY, &req) {
        Ok(Some(msg)) => msg,
        Ok(None) => return Err(fail("lookup")(io::Error::other("no reply message"))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(not_found()),
        Err(e) => return Err(fail("lookup")(e)),
    };
    let (state, found_local, found_remote, cookie) = parse_msg(&found)
        .ok_or_else(|| fail("lookup")(io::Error::other("malformed inet_diag_msg")))?;
    if state == TCP_LISTEN || found_local != local || found_remote != remote {
        return Err(not_found());
    }
    let mptcp = ulp_name(&found).is_some_and(|name| name == b"mptcp");
    req[REQ_ID + 40..REQ_ID + 48].copy_from_slice(&cookie);
    if let Err(e) = exchange(&sock, SOCK_DESTROY, &req) {
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) => not_found(),
            Some(libc::EOPNOTSUPP) => SockDestroyError::Unsupported,
            Some(libc::EPERM | libc::EACCES) => SockDestroyError::PermissionDenied { flow: shown },
            _ => fail("destroy")(e),
        });
    }
    if !mptcp {
        return Ok(());
    }
    let Some(pid) = owner.filter(|&pid| pid != 0) else {
        return Err(SockDestroyError::MptcpOwnerUnknown { flow: shown });
    };
    match mptcp_abort::shutdown_in(pid, local, remote) {
        Ok(true) => Ok(()),
        Ok(false) => Err(SockDestroyError::MptcpSocketNotFound { flow: shown, pid }),
        Err(e) => Err(fail("MPTCP shutdown")(e)),
    }
}

/// A sock_diag socket in the network namespace of process `owner` when that is not the agent's
/// (a container's), else in the agent's; and how to name that namespace in an error. A process
/// that is gone leaves its sockets to the agent's namespace: it cannot be entered any more, and
/// a socket it shared with another process is found there if that process is the agent's.
fn open_for(owner: Option<u32>, shown: &str) -> Result<(OwnedFd, String), SockDestroyError> {
    let here = || "the agent's network namespace".to_string();
    let fail = |source| SockDestroyError::Netlink {
        step: "socket",
        flow: shown.to_owned(),
        source,
    };
    let theirs = owner
        .filter(|&pid| pid != 0)
        .and_then(|pid| Some((pid, crate::netns::Ns::of_pid(pid)?)))
        .filter(|(_, ns)| !ns.is_own());
    let Some((pid, ns)) = theirs else {
        return Ok((open().map_err(fail)?, here()));
    };
    match crate::netns::make_in(&ns, open) {
        Ok(sock) => Ok((
            sock,
            format!(
                "the network namespace of process {pid} (inode {})",
                ns.id.ino
            ),
        )),
        Err(source) => Err(SockDestroyError::Netns {
            flow: shown.to_owned(),
            pid,
            source,
        }),
    }
}

/// The ULP name (`INET_DIAG_ULP_INFO` / `INET_ULP_INFO_NAME`, NUL stripped) in the attributes
/// after an `inet_diag_msg`; `None` when there is none or the attributes are malformed.
fn ulp_name(msg: &[u8]) -> Option<&[u8]> {
    let ulp = attribute(msg.get(MSG_LEN..)?, INET_DIAG_ULP_INFO)?;
    let name = attribute(ulp, INET_ULP_INFO_NAME)?;
    Some(name.split(|&b| b == 0).next().unwrap_or_default())
}

/// The payload of the first netlink attribute of type `kind` in `attrs` (nested flag ignored).
fn attribute(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        let payload = attrs.get(4..len)?;
        if ty == kind {
            return Some(payload);
        }
        attrs = attrs.get(len.next_multiple_of(4)..)?;
    }
    None
}

/// The inode of the established local TCP socket of `flow`, for finding its owner in `/proc`
/// (`events::hello`); `None` if there is none or the lookup fails.
pub fn socket_inode(flow: &FlowKey) -> Option<u64> {
    let (local, remote) = endpoints(flow).ok()?;
    let sock = open().ok()?;
    let msg = exchange(&sock, SOCK_DIAG_BY_FAMILY, &request(local, remote)).ok()??;
    let (state, found_local, found_remote, _) = parse_msg(&msg)?;
    if state == TCP_LISTEN || found_local != local || found_remote != remote {
        return None;
    }
    // `idiag_inode`, the last of the five u32 after the socket id.
    let inode = msg.get(MSG_LEN - 4..MSG_LEN)?;
    Some(u32::from_ne_bytes(inode.try_into().ok()?) as u64).filter(|i| *i != 0)
}

/// For each flow, whether a TCP socket with exactly its 4-tuple exists in this network namespace
/// (listeners never count). One netlink socket for all of them; a lookup that fails counts as a
/// live socket, so a flow is never taken for socket-less on an error.
pub fn live(flows: &[FlowKey]) -> Vec<bool> {
    let Ok(sock) = open() else {
        return vec![true; flows.len()];
    };
    flows
        .iter()
        .map(|flow| {
            let Ok((local, remote)) = endpoints(flow) else {
                return true;
            };
            match exchange(&sock, SOCK_DIAG_BY_FAMILY, &request(local, remote)) {
                Ok(Some(msg)) => parse_msg(&msg).is_none_or(|(state, l, r, _)| {
                    state != TCP_LISTEN && l == local && r == remote
                }),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
                _ => true,
            }
        })
        .collect()
}

/// Local and remote socket addresses of `flow`; IPv4-mapped IPv6 addresses count as IPv4.
fn endpoints(flow: &FlowKey) -> Result<(SocketAddr, SocketAddr), SockDestroyError> {
    let ip = |bytes: &[u8; 16]| -> Result<IpAddr, SockDestroyError> {
        match flow.family {
            4 => Ok(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            6 => Ok(Ipv6Addr::from(*bytes).to_canonical()),
            other => Err(SockDestroyError::InvalidFlow(format!(
                "address family {other} (expected 4 or 6)"
            ))),
        }
    };
    let local = SocketAddr::new(ip(&flow.local_addr)?, flow.local_port);
    let remote = SocketAddr::new(ip(&flow.remote_addr)?, flow.remote_port);
    if local.is_ipv4() != remote.is_ipv4() {
        let why = format!("{local} -> {remote} mixes IPv4 and IPv6");
        return Err(SockDestroyError::InvalidFlow(why));
    }
    Ok((local, remote))
}

/// The `inet_diag_req_v2` for this 4-tuple, with `INET_DIAG_NOCOOKIE`. IPv4 goes as AF_INET
/// (address in `src[0]`), which also finds AF_INET6 sockets talking IPv4-mapped addresses.
fn request(local: SocketAddr, remote: SocketAddr) -> [u8; REQ_LEN] {
    let mut req = [0u8; REQ_LEN];
    req[0] = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    req[1] = libc::IPPROTO_TCP as u8;
    req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
    let id = &mut req[REQ_ID..];
    id[0..2].copy_from_slice(&local.port().to_be_bytes());
    id[2..4].copy_from_slice(&remote.port().to_be_bytes());
    put_addr(&mut id[4..20], local.ip());
    put_addr(&mut id[20..36], remote.ip());
    id[40..48].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    req
}

fn put_addr(out: &mut [u8], ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
}

/// `(state, local, remote, cookie)` of an `inet_diag_msg`.
fn parse_msg(msg: &[u8]) -> Option<(u8, SocketAddr, SocketAddr, [u8; 8])> {
    let id = msg.get(MSG_ID..MSG_LEN)?;
    let addr = |a: &[u8]| -> Option<IpAddr> {
        let a: [u8; 16] = a.try_into().ok()?;
        match i32::from(msg[0]) {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
            libc::AF_INET6 => Some(Ipv6Addr::from(a).to_canonical()),
            _ => None,
        }
    };
    let port = |p: &[u8]| u16::from_be_bytes([p[0], p[1]]);
    let local = SocketAddr::new(addr(&id[4..20])?, port(&id[0..2]));
    let remote = SocketAddr::new(addr(&id[20..36])?, port(&id[2..4]));
    Some((msg[1], local, remote, id[40..48].try_into().ok()?))
}

fn open() -> io::Result<OwnedFd> {
    let flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2) call; the fd is owned right after the check.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, flags, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // The kernel answers within sendmsg(); the timeout only guards against a lost reply.
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a valid timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Sends `req` as `nlmsg_type` with `NLM_F_ACK` and reads until the kernel's ACK or error.
/// Returns the payload of the reply message that came before the ACK, if any.
fn exchange(sock: &OwnedFd, nlmsg_type: u16, req: &[u8; REQ_LEN]) -> io::Result<Option<Vec<u8>>> {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
    out.extend_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    out.extend_from_slice(&nlmsg_type.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: let the kernel fill it
    out.extend_from_slice(req);
    // SAFETY: `sockaddr_nl` is plain data; all-zero is valid, family set below.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `out` and `kernel` are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            out.as_ptr().cast(),
            out.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reply = None;
    // On the stack: a lookup's reply and its ACK are well under 1 KiB, and under a flood this
    // runs for every blocked hello (a heap buffer each time fragmented the agent's heap).
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        let mut rest = &buf[..n];
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len < NLMSG_HDRLEN || len > rest.len() {
                return Err(io::Error::other("truncated netlink message"));
            }
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            let msg_seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
            let payload = &rest[NLMSG_HDRLEN..len];
            if msg_seq == seq {
                if kind == NLMSG_ERROR {
                    let code = payload
                        .get(..4)
                        .ok_or_else(|| io::Error::other("short NLMSG_ERROR"))?;
                    let errno = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
                    return match errno {
                        0 => Ok(reply),
                        e => Err(io::Error::from_raw_os_error(-e)),
                    };
                }
                reply = Some(payload.to_vec());
            }
            // Messages are padded to 4 bytes (NLMSG_ALIGN).
            rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    //! Needs root (CAP_NET_ADMIN) and CONFIG_INET_DIAG_DESTROY: fails, never skips, without them.
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn key(local: SocketAddr, remote: SocketAddr) -> FlowKey {
        let mut k = FlowKey::default();
        let put = |out: &mut [u8; 16], ip: IpAddr| match ip.to_canonical() {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => *out = v6.octets(),
        };
        k.family = if local.ip().to_canonical().is_ipv4() {
            4
        } else {
            6
        };
        (k.local_port, k.remote_port) = (local.port(), remote.port());
        put(&mut k.local_addr, local.ip());
        put(&mut k.remote_addr, remote.ip());
        k
    }

    /// Connects a client to a fresh listener on `listen`, destroys the client's socket by its
    /// 4-tuple and checks its next read fails with ECONNABORTED within a second.
    fn destroy_client(listen: &str, connect_ip: &str) {
        let listener = TcpListener::bind(listen).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut client = TcpStream::connect((connect_ip, port)).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let flow = key(
            client.local_addr().expect("local"),
            client.peer_addr().expect("peer"),
        );
        destroy(&flow, None).expect("destroy");
        client
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout");
        let err = client
            .read(&mut [0u8; 16])
            .expect_err("read after destroy must fail");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
        // The listener is untouched.
        TcpStream::connect((connect_ip, port)).expect("listener still accepts");
    }

    #[test]
    fn destroys_ipv4_socket() {
        destroy_client("127.0.0.1:0", "127.0.0.1");
    }

    #[test]
    fn destroys_ipv6_socket() {
        destroy_client("[::1]:0", "::1");
    }

    #[test]
    fn destroys_ipv4_mapped_socket_given_as_ipv4() {
        // An AF_INET6 client talking to 127.0.0.1: FlowKey records it as family 4.
        destroy_client("127.0.0.1:0", "::ffff:127.0.0.1");
    }

    #[test]
    fn unknown_tuple_is_not_found_and_listener_survives() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let local = listener.local_addr().expect("addr");
        // Nobody is connected from 127.0.0.1:1: a bare SOCK_DESTROY would hit the listener.
        let remote: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let err = destroy(&key(local, remote), None).expect_err("no such socket");
        assert!(matches!(err, SockDestroyError::NotFound { .. }), "{err}");
        let mut c = TcpStream::connect(local).expect("listener still accepts");
        c.write_all(b"x").expect("write");
        let unused: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let err = destroy(&key(unused, remote), None).expect_err("no such socket");
        assert!(matches!(err, SockDestroyError::NotFound { .. }), "{err}");
    }

    #[test]
    fn live_tells_sockets_from_socketless_tuples() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let connected = key(
            client.local_addr().expect("local"),
            client.peer_addr().expect("peer"),
        );
        let remote: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        // The listener's port with a peer nobody connected from: the listener does not count.
        let on_listener = key(listener.local_addr().expect("addr"), remote);
        assert_eq!(live(&[connected, on_listener]), vec![true, false]);
    }

    /// A connected socket in another network namespace (Python in `unshare -n`): not found from
    /// the agent's namespace, destroyed through its owner's; the owner's next read fails with
    /// ECONNABORTED.
    #[test]
    fn destroys_a_socket_in_its_owners_network_namespace() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        const SCRIPT: &str = r#"
import errno, socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname()); s, _ = l.accept()
print(c.getsockname()[1], l.getsockname()[1], flush=True)
sys.stdin.readline()
try:
    c.recv(1); print("read", flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
"#;
        let mut child = Command::new("unshare")
            .args([
                "-n",
                "sh",
                "-c",
                "ip link set lo up && exec python3 -c \"$1\"",
                "sh",
            ])
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare and python3");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("ports");
        let ports: Vec<u16> = line
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert_eq!(ports.len(), 2, "{line:?}");
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let flow = key(at(ports[0]), at(ports[1]));
        let err = destroy(&flow, None).expect_err("not in the agent's namespace");
        assert!(matches!(err, SockDestroyError::NotFound { .. }), "{err}");
        let err = destroy_in(&flow, Some(child.id()), Netns::Agent).expect_err("agent's only");
        assert!(matches!(err, SockDestroyError::NotFound { .. }), "{err}");
        destroy(&flow, Some(child.id())).expect("destroyed in the owner's namespace");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"\n")
            .expect("go on");
        line.clear();
        out.read_line(&mut line).expect("the read's outcome");
        assert_eq!(line.trim(), "ECONNABORTED");
        let _ = child.wait();
    }

    #[test]
    fn invalid_flows_are_rejected() {
        let k = FlowKey {
            family: 5,
            ..Default::default()
        };
        assert!(matches!(
            destroy(&k, None),
            Err(SockDestroyError::InvalidFlow(_))
        ));
    }
}
