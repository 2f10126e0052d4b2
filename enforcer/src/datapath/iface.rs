//! Network interfaces: name → index, and which interface carries the default route.
//!
//! Everything here answers for the network namespace of the caller (for [`ifindex`]) or of the
//! rtnetlink socket behind the handle (for [`default_route_interface`]); the agent runs both in
//! the host namespace.

use std::ffi::{CStr, CString};
use std::io;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteType};

/// Why an interface could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("interface '{name}' does not exist; list interfaces with `ip link`")]
    NotFound { name: String },
    #[error("invalid interface name {name:?}: it must be 1 to 15 bytes without NUL")]
    InvalidName { name: String },
    #[error("interface index {ifindex} (used by the default route) does not exist any more")]
    IndexNotFound { ifindex: u32 },
    #[error("no default route: pass --iface")]
    NoDefaultRoute,
    #[error(
        "interface '{name}' is not Ethernet (link type {link_type}): enforcer's XDP and tc \
         programs parse Ethernet frames and would enforce nothing there; pick an Ethernet \
         interface (tun, WireGuard and other layer-3 devices are not supported yet)"
    )]
    NotEthernet { name: String, link_type: String },
    #[error("{what} over rtnetlink failed: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The index of interface `name` (`if_nametoindex(3)`).
pub fn ifindex(name: &str) -> Result<u32, IfaceError> {
    let invalid = || IfaceError::InvalidName {
        name: name.to_owned(),
    };
    // IFNAMSIZ is 16 including the terminating NUL.
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(invalid());
    }
    let c_name = CString::new(name).map_err(|_| invalid())?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(IfaceError::NotFound {
            name: name.to_owned(),
        });
    }
    Ok(index)
}

/// Refuses interfaces whose frames do not start with an Ethernet header: the packet programs would
/// parse garbage and fail open, silently enforcing nothing. Loopback frames carry a (zeroed)
/// Ethernet header and are accepted.
pub fn require_ethernet(name: &str) -> Result<(), IfaceError> {
    const ARPHRD_ETHER: &str = "1";
    const ARPHRD_LOOPBACK: &str = "772";
    let path = format!("/sys/class/net/{name}/type");
    let link_type = std::fs::read_to_string(&path)
        .map_err(|_| IfaceError::NotFound {
            name: name.to_owned(),
        })?
        .trim()
        .to_owned();
    match link_type.as_str() {
        ARPHRD_ETHER | ARPHRD_LOOPBACK => Ok(()),
        _ => Err(IfaceError::NotEthernet {
            name: name.to_owned(),
            link_type,
        }),
    }
}

/// The name of interface `ifindex` in the caller's namespace, if it exists (`if_indextoname(3)`).
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: on success the kernel wrote a NUL-terminated name into `buf`.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// `'eth0' (index 2)`, or `index 2` when the interface has no name (any more): for messages.
pub(crate) fn describe(ifindex: u32) -> String {
    match name_of(ifindex) {
        Some(name) => format!("'{name}' (index {ifindex})"),
        None => format!("index {ifindex}"),
    }
}

/// An rtnetlink error as the `io::Error` of its errno, so callers can match on the errno.
pub(crate) fn netlink_io(err: rtnetlink::Error) -> io::Error {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other),
    }
}

/// The name of the interface of the IPv4 default route in the main table, or if there is none,
/// of the IPv6 one. Among several default routes the one with the lowest metric wins; for a
/// multipath route, its first next hop.
pub async fn default_route_interface(handle: &rtnetlink::Handle) -> Result<String, IfaceError> {
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        if let Some(index) = default_route_ifindex(handle, family).await? {
            return link_name(handle, index).await;
        }
    }
    Err(IfaceError::NoDefaultRoute)
}

/// Output interface of the best default route of one family, if any.
async fn default_route_ifindex(
    handle: &rtnetlink::Handle,
    family: AddressFamily,
) -> Result<Option<u32>, IfaceError> {
    let mut query = RouteMessage::default();
    query.header.address_family = family;
    // A dump: without NETLINK_GET_STRICT_CHK the kernel filters by family only, so the
    // table / prefix / type checks are done here.
    let mut routes = handle.route().get(query).execute();
    let mut best: Option<(u32, u32)> = None; // (metric, ifindex)
    while let Some(route) = routes.try_next().await.map_err(|e| IfaceError::Netlink {
        what: "listing routes",
        source: netlink_io(e),
    })? {
        if route.header.destination_prefix_length != 0
            || route.header.kind != RouteType::Unicast
            || route_table(&route) != u32::from(RouteHeader::RT_TABLE_MAIN)
        {
            continue;
        }
        let Some(oif) = output_interface(&route) else {
            continue;
        };
        let metric = route
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Priority(p) => Some(*p),
                _ => None,
            })
            .unwrap_or(0);
        if best.is_none_or(|(m, _)| metric < m) {
            best = Some((metric, oif));
        }
    }
    Ok(best.map(|(_, oif)| oif))
}

/// The routing table: `RTA_TABLE` when present (tables above 255), else the header's.
fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// `RTA_OIF`, or the first next hop of an `RTA_MULTIPATH` route.
fn output_interface(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
        _ => None,
    })
}

/// Interface name by index, asked over the same rtnetlink socket (so the same namespace).
async fn link_name(handle: &rtnetlink::Handle, ifindex: u32) -> Result<String, IfaceError> {
    let mut links = handle.link().get().match_index(ifindex).execute();
    let link = match links.try_next().await {
        Ok(Some(link)) => link,
        Ok(None) => return Err(IfaceError::IndexNotFound { ifindex }),
        Err(e) => {
            let source = netlink_io(e);
            if source.raw_os_error() == Some(libc::ENODEV) {
                return Err(IfaceError::IndexNotFound { ifindex });
            }
            return Err(IfaceError::Netlink {
                what: "looking up the default route's interface",
                source,
            });
        }
    };
    link.attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name),
            _ => None,
        })
        .ok_or(IfaceError::IndexNotFound { ifindex })
}

#[cfg(test)]
pub(crate) mod tests {
    //! Needs root. Also holds the namespace / veth helpers of the `tc` tests.
    use super::*;
    use std::future::Future;
    use std::process::Command;

    /// Runs a shell command, panicking with its output when it fails.
    pub(crate) fn sh(cmd: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .expect("spawn sh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// A named network namespace (`ip netns add`), deleted on drop even when the test panics.
    pub(crate) struct NetnsGuard(String);
    impl NetnsGuard {
        pub(crate) fn new(tag: &str) -> Self {
            let name = format!("enf-{}-{tag}", std::process::id());
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            sh(&format!("ip netns add {name}"));
            Self(name)
        }
        pub(crate) fn name(&self) -> &str {
            &self.0
        }
    }
    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }

    /// A veth pair in the current namespace named `<tag><pid>` / `<tag><pid>p`, up, deleted on drop.
    pub(crate) struct VethGuard(pub(crate) String);
    impl VethGuard {
        pub(crate) fn new(tag: &str) -> Self {
            let name = format!("{tag}{}", std::process::id() % 100_000);
            let _ = Command::new("ip").args(["link", "del", &name]).output();
            sh(&format!("ip link add {name} type veth peer name {name}p"));
            sh(&format!("ip link set {name} up"));
            Self(name)
        }
        pub(crate) fn ifindex(&self) -> u32 {
            ifindex(&self.0).expect("veth exists")
        }
    }
    impl Drop for VethGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).output();
        }
    }

    /// Runs `f` with an rtnetlink handle on a current-thread runtime, in the current namespace.
    pub(crate) fn with_handle<T, Fut>(f: impl FnOnce(rtnetlink::Handle) -> Fut) -> T
    where
        Fut: Future<Output = T>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().expect("rtnetlink socket");
            tokio::spawn(conn);
            f(handle).await
        })
    }

    /// Like [`with_handle`], on a thread that first enters namespace `ns` (setns only moves the
    /// calling thread, and the netlink socket belongs to the namespace it is created in).
    pub(crate) fn in_netns<T, Fut, F>(ns: &NetnsGuard, f: F) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T>,
        F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
    {
        let path = format!("/run/netns/{}", ns.name());
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: a valid namespace fd; only this thread changes namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            with_handle(f)
        })
        .join()
        .expect("netns thread panicked")
    }

    #[test]
    fn loopback_and_missing_names() {
        assert_eq!(ifindex("lo").expect("lo exists"), 1);
        let err = ifindex("enf-no-such0").expect_err("must not exist");
        assert!(
            err.to_string().contains("'enf-no-such0' does not exist"),
            "{err}"
        );
        assert!(matches!(ifindex(""), Err(IfaceError::InvalidName { .. })));
        assert!(matches!(
            ifindex("a\0b"),
            Err(IfaceError::InvalidName { .. })
        ));
        assert!(matches!(
            ifindex("x".repeat(16).as_str()),
            Err(IfaceError::InvalidName { .. })
        ));
        assert_eq!(name_of(1).as_deref(), Some("lo"));
    }

    /// A namespace with a veth `v4a` (IPv4 default route) and `v6a` (IPv6 default route).
    fn routed_netns(tag: &str, v4: bool, v6: bool) -> NetnsGuard {
        let ns = NetnsGuard::new(tag);
        let n = ns.name();
        if v4 {
            sh(&format!("ip -n {n} link add v4a type veth peer name v4b"));
            sh(&format!("ip -n {n} link set v4a up"));
            sh(&format!("ip -n {n} addr add 10.99.0.1/24 dev v4a"));
            sh(&format!(
                "ip -n {n} route add default via 10.99.0.254 dev v4a onlink"
            ));
        }
        if v6 {
            sh(&format!("ip -n {n} link add v6a type veth peer name v6b"));
            sh(&format!("ip -n {n} link set v6a up"));
            sh(&format!("ip -n {n} -6 addr add fd99::1/64 dev v6a nodad"));
            sh(&format!(
                "ip -n {n} -6 route add default via fd99::fe dev v6a onlink"
            ));
        }
        ns
    }

    #[test]
    fn default_route_prefers_ipv4() {
        let ns = routed_netns("rt46", true, true);
        let got = in_netns(&ns, |h| async move { default_route_interface(&h).await });
        assert_eq!(got.expect("default route"), "v4a");
    }

    #[test]
    fn default_route_falls_back_to_ipv6() {
        let ns = routed_netns("rt6", false, true);
        let got = in_netns(&ns, |h| async move { default_route_interface(&h).await });
        assert_eq!(got.expect("default route"), "v6a");
    }

    #[test]
    fn no_default_route_is_a_clear_error() {
        let ns = routed_netns("rtnone", false, false);
        let got = in_netns(&ns, |h| async move { default_route_interface(&h).await });
        let err = got.expect_err("no default route");
        assert!(matches!(err, IfaceError::NoDefaultRoute), "{err}");
        assert_eq!(err.to_string(), "no default route: pass --iface");
    }
}
