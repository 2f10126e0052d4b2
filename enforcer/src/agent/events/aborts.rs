//! One socket abort per blocked flow, whichever report of it comes first.
//!
//! A blocked flow is reported on both rings: its connection event (`EVENTS`) and its hello event
//! (`HELLO_EVENTS`), read by two threads in either order. Both ask for the socket to be aborted;
//! the second finds no socket, because the first destroyed it. That second report must still say
//! the socket was aborted (it was, by this agent), not that the abort failed.
//!
//! A `NotFound` counts as done only for a flow this agent aborted within [`REMEMBER_FOR`]: the
//! abort is always tried, so a new socket that reuses the 4-tuple is found and destroyed, and a
//! flow nobody aborted is reported as it is.

use std::{
    collections::VecDeque,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use enforcer_common::flow::FlowKey;

use super::AbortNamespaces;
use crate::datapath::sock_destroy::{self, SockDestroyError};

/// Flows remembered at most (oldest forgotten first): both reports of a flow arrive within
/// milliseconds of each other, so a few hundred covers any burst the rings can hold unread.
const REMEMBERED: usize = 512;
/// How long a successful abort answers for a later report of the same flow.
const REMEMBER_FOR: Duration = Duration::from_secs(30);

/// Shared by every clone of the reporter.
#[derive(Default)]
pub struct Aborts {
    /// Flows aborted successfully, oldest first.
    done: Mutex<VecDeque<(FlowKey, Instant)>>,
    /// Whose sockets are aborted: in the owner's network namespace, or the agent's only.
    namespaces: AbortNamespaces,
}

impl Aborts {
    pub fn new(namespaces: AbortNamespaces) -> Aborts {
        Aborts {
            done: Mutex::default(),
            namespaces,
        }
    }

    /// Aborts the local socket of `flow` (`owner`: the process holding it, for MPTCP).
    ///
    /// The lock is held across the abort: otherwise the second report could see its abort fail
    /// after the first destroyed the socket but before the first wrote that down. An abort is two
    /// netlink round trips the kernel answers within `sendmsg()`.
    pub fn abort(&self, flow: &FlowKey, owner: Option<u32>) -> Result<(), SockDestroyError> {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while done
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > REMEMBER_FOR)
        {
            done.pop_front();
        }
        let netns = match self.namespaces {
            AbortNamespaces::All => sock_destroy::Netns::OfOwner,
            AbortNamespaces::Own => sock_destroy::Netns::Agent,
        };
        match sock_destroy::destroy_in(flow, owner, netns) {
            Ok(()) => {
                if done.len() == REMEMBERED {
                    done.pop_front();
                }
                done.push_back((*flow, now));
                Ok(())
            }
            Err(SockDestroyError::NotFound { .. }) if done.iter().any(|(f, _)| f == flow) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};

    use enforcer_common::flow::family;

    use super::*;

    fn key(local: SocketAddr, remote: SocketAddr) -> FlowKey {
        let (SocketAddr::V4(l), SocketAddr::V4(r)) = (local, remote) else {
            unreachable!("IPv4 only");
        };
        let mut flow = FlowKey {
            family: family::V4,
            local_port: l.port(),
            remote_port: r.port(),
            ..Default::default()
        };
        flow.local_addr[..4].copy_from_slice(&l.ip().octets());
        flow.remote_addr[..4].copy_from_slice(&r.ip().octets());
        flow
    }

    /// A real loopback connection: the first abort destroys it, the second report of the same
    /// flow is told it was aborted; a flow this agent never aborted stays `NotFound`. Needs
    /// CAP_NET_ADMIN, like the agent (the suite runs as root).
    #[test]
    fn the_second_report_of_an_aborted_flow_is_told_it_was_aborted() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
        let (_server, _) = listener.accept().expect("accept");
        let flow = key(client.local_addr().unwrap(), client.peer_addr().unwrap());
        let aborts = Aborts::default();
        aborts.abort(&flow, None).expect("first abort");
        aborts
            .abort(&flow, None)
            .expect("second report: aborted already");

        let never = key(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 2)),
        );
        assert!(matches!(
            Aborts::default().abort(&never, None),
            Err(SockDestroyError::NotFound { .. })
        ));
    }
}
