//! One agent per interface. Two agents on one interface would remove each other's tc filters
//! (each takes the other's for a killed agent's), and since the tc ingress classifier, unlike
//! XDP, does not refuse a second program, nothing else stops the second one. Each agent holds an
//! exclusive `flock` on `/run/enforcer/interfaces/<netns inode>-<ifindex>` for its whole life;
//! the kernel releases it when the process dies however it dies, so a SIGKILLed or pinned
//! agent's successor is never refused. The directory is root's (0700): no other user can take a
//! lock first and keep the agent from starting.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

const DIR: &str = "/run/enforcer/interfaces";

/// The locks of this agent's interfaces; released when dropped (or when the process exits).
pub struct IfaceLocks {
    _files: Vec<File>,
}

/// Takes the lock of every interface, or fails naming the one another agent holds (and that
/// agent's pid) before anything is attached.
pub fn acquire(ifaces: &[(String, u32)]) -> Result<IfaceLocks> {
    acquire_in(Path::new(DIR), ifaces)
}

fn acquire_in(dir: &Path, ifaces: &[(String, u32)]) -> Result<IfaceLocks> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let netns = std::fs::metadata("/proc/self/ns/net")
        .context("reading /proc/self/ns/net")?
        .ino();
    let mut files = Vec::with_capacity(ifaces.len());
    for (name, index) in ifaces {
        let path: PathBuf = dir.join(format!("{netns}-{index}"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on an fd we own; LOCK_NB: never wait for another agent.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let pid: Option<u32> = holder.parse().ok();
            bail!(
                "interface {name} is already filtered by another enforcer agent{}: stop it first \
                 (one agent per interface; {} is its lock)",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                path.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        files.push(file);
    }
    Ok(IfaceLocks { _files: files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ifaces = [("lo".to_string(), 1)];
        let first = acquire_in(dir.path(), &ifaces).expect("first");
        // flock locks belong to the open file: a second open in this process conflicts too.
        let err = acquire_in(dir.path(), &ifaces)
            .err()
            .expect("second refused");
        let msg = format!("{err:#}");
        let pid = std::process::id().to_string();
        assert!(
            msg.contains("interface lo is already filtered") && msg.contains(&pid),
            "{msg}"
        );
        drop(first);
        acquire_in(dir.path(), &ifaces).expect("free again");
    }
}
