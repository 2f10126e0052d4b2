//! Which container a process runs in, from its cgroup v2 path (`/proc/PID/cgroup`, the `0::`
//! line): the runtimes name their scopes after the container id. Docker (`docker-<id>.scope`
//! under systemd, `/docker/<id>` under cgroupfs), containerd's CRI plugin
//! (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`), Podman (`libpod-<id>.scope`).
//! The path is hostile input (any local user can name a cgroup it owns): only a 64-digit
//! lowercase hex id after a known prefix counts, and nothing here is used to decide a verdict.

/// A container the cgroup path names: its runtime and its 64-digit id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub runtime: &'static str,
    pub id: String,
}

/// Longest `/proc/PID/cgroup` read (a path is at most a few hundred bytes).
const MAX_CGROUP_FILE: u64 = 4096;

/// The cgroup v2 path of process `pid`, if it still runs and has one.
pub fn cgroup_of(pid: u32) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(format!("/proc/{pid}/cgroup"))
        .ok()?
        .take(MAX_CGROUP_FILE)
        .read_to_string(&mut text)
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The container `cgroup` (a cgroup v2 path) names, if any: the innermost component that is a
/// runtime's scope.
pub fn container_of(cgroup: &str) -> Option<Container> {
    const SCOPES: [(&str, &str, &str); 4] = [
        ("docker-", ".scope", "docker"),
        ("cri-containerd-", ".scope", "containerd"),
        ("crio-", ".scope", "cri-o"),
        ("libpod-", ".scope", "podman"),
    ];
    let parts: Vec<&str> = cgroup.split('/').collect();
    for (i, part) in parts.iter().enumerate().rev() {
        for (prefix, suffix, runtime) in SCOPES {
            if let Some(id) = part
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(suffix))
                && is_id(id)
            {
                return Some(Container {
                    runtime,
                    id: id.to_owned(),
                });
            }
        }
        // cgroupfs driver: `/docker/<id>`.
        if i > 0 && parts[i - 1] == "docker" && is_id(part) {
            return Some(Container {
                runtime: "docker",
                id: (*part).to_owned(),
            });
        }
    }
    None
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c9a0b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a";

    #[test]
    fn runtimes_are_told_by_their_scope_names() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), "docker"),
            (format!("/docker/{ID}"), "docker"),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"
                ),
                "containerd",
            ),
            (format!("/kubepods.slice/crio-{ID}.scope"), "cri-o"),
            (
                format!("/user.slice/user-1000.slice/libpod-{ID}.scope/container"),
                "podman",
            ),
        ];
        for (path, runtime) in cases {
            let c = container_of(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!((c.runtime, c.id.as_str()), (runtime, ID), "{path}");
        }
    }

    #[test]
    fn other_and_forged_paths_name_no_container() {
        for path in [
            "/user.slice/user-0.slice/session-1.scope",
            "/",
            "",
            "/system.slice/docker-short.scope",
            &format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
            &format!("/docker-{ID}"),
        ] {
            assert_eq!(container_of(path), None, "{path}");
        }
        assert!(cgroup_of(std::process::id()).is_some_and(|c| c.starts_with('/')));
        assert_eq!(cgroup_of(u32::MAX), None);
    }
}
