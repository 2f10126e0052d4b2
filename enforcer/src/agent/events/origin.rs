//! Where the process of a reported flow runs, for the `connection` and `client_hello` records:
//! its network namespace (the cookie), its cgroup v2 path and the container that path names
//! (`crate::containers`), and both names of its library (`crate::libraries::views`).
//!
//! All of it is read from `/proc`: a blocked flow's before its socket is aborted (a denied client
//! often exits at once, and its namespace with it), others' when the record is made. A process
//! gone by then has none (`null`): the flow key itself carries no namespace
//! (docs/architecture.md, "Containers").
//! The cgroup path and the library's names are hostile strings: they are only ever reported.

use serde_json::{Value, json};

use crate::{containers, datapath::table::LibInfo, netns};

/// The namespace, cgroup and container of one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub netns_cookie: Option<u64>,
    pub cgroup: Option<String>,
    pub container: Option<containers::Container>,
}

impl Origin {
    /// Of process `pid`; `cgroup`, `cookie`: what was read of it earlier (it may be gone now),
    /// the rest is read now.
    pub fn of(
        pid: u32,
        cgroup: Option<String>,
        cookie: Option<u64>,
        cookies: &netns::Cookies,
    ) -> Origin {
        if pid == 0 {
            return Origin::default();
        }
        let cgroup = cgroup.or_else(|| containers::cgroup_of(pid));
        let netns_cookie = cookie.or_else(|| cookies.of_pid(pid));
        Origin {
            netns_cookie,
            container: cgroup.as_deref().and_then(containers::container_of),
            cgroup,
        }
    }

    /// The record's `container` field.
    pub fn container_json(&self) -> Value {
        match &self.container {
            Some(c) => json!({ "runtime": c.runtime, "id": c.id }),
            None => Value::Null,
        }
    }

    /// The short id operators know a container by (`docker ps`), for log lines.
    pub fn container_short(&self) -> &str {
        self.container.as_ref().map_or("", |c| &c.id[..12])
    }
}

/// The record's `library` object of a known library.
pub fn library_json(id: u32, lib: &LibInfo) -> Value {
    json!({
        "id": id,
        "family": lib.family.name(),
        "path": lib.path,
        "version": lib.version,
        "container_path": lib.container_path,
        "host_path": lib.host_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_is_gone_has_no_origin_but_what_was_read_before() {
        let cookies = netns::Cookies::default();
        assert_eq!(Origin::of(0, None, None, &cookies), Origin::default());
        let id = "4f1c9a0b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a";
        let origin = Origin::of(u32::MAX, Some(format!("/docker/{id}")), None, &cookies);
        assert_eq!(origin.netns_cookie, None);
        assert_eq!(
            origin.container_json(),
            json!({ "runtime": "docker", "id": id })
        );
        assert_eq!(origin.container_short(), &id[..12]);
        let me = Origin::of(std::process::id(), None, None, &cookies);
        assert!(me.netns_cookie.is_some() && me.cgroup.is_some(), "{me:?}");
        let known = Origin::of(std::process::id(), None, Some(7), &cookies);
        assert_eq!(known.netns_cookie, Some(7));
    }
}
