//! Rules scoped to who is talking: a rule's `executables`, `cgroups` and `users` (docs/policy.md,
//! "Scoped rules"), as written, validated, and matched against a process's facts.
//!
//! A rule with any of them decides only the TLS of the processes they match; every key present
//! must match. `executables` match the executable's path on this host (the file the process runs,
//! named in the agent's own mount namespace) and, with `sha256`, its contents; `cgroups` the
//! process's cgroup v2 path (`/system.slice/nginx.service`); `users` its uid. Which process
//! sent a flow's hello is kernel truth (`enforcer_common::who`); the names are resolved here
//! from it, never taken from the process.

use std::path::Path;

use serde::Deserialize;

use super::glob::{PathGlob, parse_sha256};

/// Most entries in one rule's `executables`, `cgroups` or `users`.
pub const MAX_ENTRIES_PER_KEY: usize = 64;

/// One entry of `executables:` as written: a path glob, or `{path, sha256}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawExecutable {
    Path(String),
    Pinned(RawPinned),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPinned {
    pub(super) path: String,
    #[serde(default)]
    pub(super) sha256: Option<String>,
}

/// One entry of `users:` as written: a name, or a numeric uid.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawUser {
    Id(u32),
    Name(String),
}

/// An executable a rule names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executable {
    pub path: PathGlob,
    /// Lowercase hex; `None`: any contents.
    pub sha256: Option<String>,
}

/// A user a rule names: as written, and its uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub text: String,
    pub uid: u32,
}

/// A rule's `executables`, `cgroups` and `users` (each `None` when absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Who {
    pub executables: Option<Vec<Executable>>,
    pub cgroups: Option<Vec<PathGlob>>,
    pub users: Option<Vec<User>>,
}

/// What is known of the process that sent a hello, in host terms. `None`: not known (the process
/// is gone, its executable has no name on this host, its cgroup could not be found), which no
/// rule's key matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Speaker {
    pub pid: Option<u32>,
    /// The executable's path in the agent's mount namespace, checked to be the very file the
    /// kernel saw run.
    pub exe: Option<std::path::PathBuf>,
    /// The SHA-256 of that file (made only when a rule asks for one).
    pub exe_sha256: Option<String>,
    /// Path below the cgroup v2 root, starting with `/`.
    pub cgroup: Option<String>,
    pub uid: Option<u32>,
    /// The runtime's file it maps (a JVM, `abi: jvm`), looked for only when a rule names a
    /// runtime family (`crate::libraries::jvm::of_process`).
    pub runtime: Option<crate::libraries::Library>,
}

impl Who {
    /// True if any executable entry pins its contents (the resolver then hashes the file).
    pub fn needs_sha256(&self) -> bool {
        self.executables
            .iter()
            .flatten()
            .any(|e| e.sha256.is_some())
    }

    /// Why the process matches every key (one reason per key), or `None`.
    pub fn matches(&self, s: &Speaker) -> Option<Vec<String>> {
        let mut why = Vec::new();
        if let Some(list) = &self.executables {
            let exe = s.exe.as_deref()?;
            let hit = list.iter().find(|e| {
                e.path.is_match(exe)
                    && e.sha256
                        .as_ref()
                        .is_none_or(|h| s.exe_sha256.as_deref() == Some(h.as_str()))
            })?;
            why.push(match &hit.sha256 {
                Some(_) => format!(
                    "executable {} matches '{}' with its sha256",
                    exe.display(),
                    hit.path.text
                ),
                None => format!("executable {} matches '{}'", exe.display(), hit.path.text),
            });
        }
        if let Some(list) = &self.cgroups {
            let cgroup = s.cgroup.as_deref()?;
            let hit = list.iter().find(|g| g.is_match(Path::new(cgroup)))?;
            why.push(format!("cgroup {cgroup} matches '{}'", hit.text));
        }
        if let Some(list) = &self.users {
            let uid = s.uid?;
            let hit = list.iter().find(|u| u.uid == uid)?;
            why.push(format!("user {} is uid {uid}", hit.text));
        }
        Some(why)
    }

    /// The keys, for reports: `executables=[/opt/a] users=[alice]`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(list) = &self.executables {
            let names: Vec<String> = list
                .iter()
                .map(|e| match &e.sha256 {
                    Some(h) => format!("{}@sha256:{}", e.path.text, h.get(..12).unwrap_or(h)),
                    None => e.path.text.clone(),
                })
                .collect();
            parts.push(format!("executables=[{}]", names.join(", ")));
        }
        if let Some(list) = &self.cgroups {
            let names: Vec<&str> = list.iter().map(|g| g.text.as_str()).collect();
            parts.push(format!("cgroups=[{}]", names.join(", ")));
        }
        if let Some(list) = &self.users {
            let names: Vec<&str> = list.iter().map(|u| u.text.as_str()).collect();
            parts.push(format!("users=[{}]", names.join(", ")));
        }
        parts.join(" ")
    }
}

/// Parses one `executables` entry; the error names what is wrong (the caller adds where).
pub(super) fn executable(
    raw: &RawExecutable,
) -> Result<Executable, (Option<&'static str>, String)> {
    let (path, sha256) = match raw {
        RawExecutable::Path(p) => (p, None),
        RawExecutable::Pinned(p) => (&p.path, p.sha256.as_ref()),
    };
    let glob = PathGlob::new(path).map_err(|e| {
        let at = matches!(raw, RawExecutable::Pinned(_)).then_some("path");
        (
            at,
            format!("invalid glob '{}': {e}", super::error::show(path)),
        )
    })?;
    let sha256 = match sha256 {
        None => None,
        Some(h) => Some(parse_sha256(h).ok_or_else(|| {
            (
                Some("sha256"),
                format!(
                    "expected 64 hexadecimal digits, found '{}'",
                    super::error::show(h)
                ),
            )
        })?),
    };
    Ok(Executable { path: glob, sha256 })
}

/// Parses one `cgroups` entry: an absolute glob over cgroup v2 paths (`/kubepods.slice/**`).
pub(super) fn cgroup(text: &str) -> Result<PathGlob, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "invalid cgroup glob '{}': a cgroup path starts with '/' (the cgroup v2 root), e.g. /system.slice/nginx.service",
            super::error::show(text)
        ));
    }
    PathGlob::new(text)
        .map_err(|e| format!("invalid cgroup glob '{}': {e}", super::error::show(text)))
}

/// Parses one `users` entry: a uid as is, a name looked up in this host's user database.
pub(super) fn user(raw: &RawUser) -> Result<User, String> {
    match raw {
        RawUser::Id(uid) => Ok(User {
            text: uid.to_string(),
            uid: *uid,
        }),
        RawUser::Name(name) => match uid_of(name) {
            Some(uid) => Ok(User {
                text: name.clone(),
                uid,
            }),
            None => Err(format!(
                "unknown user '{}' (not in this host's user database; a numeric uid is taken as is)",
                super::error::show(name)
            )),
        },
    }
}

/// The uid of user `name` (`getpwnam_r`), if it exists.
pub fn uid_of(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives it; the result is read only
    // through `out`, which points at `pw` when set.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    (rc == 0 && !out.is_null()).then_some(pw.pw_uid)
}

/// The name of user `uid` (`getpwuid_r`), if it has one.
pub fn name_of(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16384];
    // SAFETY: as in `uid_of`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in `uid_of`; `pw_name` points into `buf`, read before it goes.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}
