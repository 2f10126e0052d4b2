//! `--host-layer cgroup`: the cgroup_skb programs (`enforcer-ebpf/src/cgroup.rs`) on the root of
//! the cgroup v2 hierarchy, egress (with its ClientHello and ServerHello readers) and ingress,
//! as bpf links (which the kernel chains like
//! `BPF_F_ALLOW_MULTI`: other tools' programs there keep running; a packet any of them drops is
//! dropped). The links belong
//! to the loaded object: they go when the agent exits, whatever way; they are not pinned.

use std::{fs::File, path::PathBuf};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use tracing::info;

use crate::datapath::{offer_readers, posture_readers};

/// `--host-layer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HostLayer {
    /// Packets are filtered on the `--iface` interfaces only.
    None,
    /// Also cgroup_skb on the root cgroup v2: blocklisted flows' packets are dropped and every
    /// local socket's hellos judged on every interface and in every network namespace, loopback
    /// included.
    Cgroup,
}

pub const EGRESS: &str = "enforcer_cg_egress";
pub const INGRESS: &str = "enforcer_cg_ingress";
/// The egress program's hello judge, which it tail-calls through `JUDGE_TABLE`.
const JUDGE: &str = "enforcer_cg_judge";
const JUDGE_TABLE: &str = "JUDGE_CG";

/// Attaches both programs to the root cgroup v2; returns the hierarchy's mount point.
pub fn attach(ebpf: &mut Ebpf) -> Result<PathBuf> {
    let root = cgroup2_root()?;
    let dir = File::open(&root).with_context(|| format!("opening {}", root.display()))?;
    for (name, kind) in [
        (EGRESS, CgroupSkbAttachType::Egress),
        (INGRESS, CgroupSkbAttachType::Ingress),
    ] {
        cgroup_skb(ebpf, name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
        if name == EGRESS {
            // Its judge and the judge's readers in their tables before it runs, so no hello
            // goes unjudged or unread.
            posture_readers::load_for(ebpf, JUDGE)?;
            offer_readers::load_for(ebpf, JUDGE)?;
            posture_readers::install(ebpf, JUDGE_TABLE, JUDGE, "hello judge", EGRESS)?;
        }
        let program = cgroup_skb(ebpf, name)?;
        // A bpf link (aya makes one on 5.7+, and enforcer needs 5.15): the kernel wants no
        // flags on a cgroup link (EINVAL) and chains links as BPF_F_ALLOW_MULTI does. `Single`
        // is aya's "no flags".
        program
            .attach(&dir, kind, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to the cgroup {}", root.display()))?;
    }
    info!(cgroup = %root.display(), "host layer attached: cgroup_skb egress and ingress");
    Ok(root)
}

fn cgroup_skb<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSkb> {
    let Some(program) = ebpf.program_mut(name) else {
        bail!("program {name} is missing from the eBPF object");
    };
    Ok(program.try_into()?)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one), from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Result<PathBuf> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    match mount_of(&text, "cgroup2") {
        Some(path) => Ok(path),
        None => bail!(
            "--host-layer cgroup: no cgroup v2 hierarchy is mounted (mount -t cgroup2 none \
             /sys/fs/cgroup/unified, or boot with systemd.unified_cgroup_hierarchy=1)"
        ),
    }
}

/// The mount point of the first mount of `fstype` whose root is the hierarchy's root (`/`).
fn mount_of(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mountpoint options [optional...] - fstype source super
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let kind = right.split(' ').next()?;
        (kind == fstype && fields.get(3) == Some(&"/"))
            .then(|| fields.get(4).map(|m| PathBuf::from(unescape(m))))?
    })
}

/// mountinfo writes space, tab, newline and backslash as `\040`-style octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_hybrid_and_unified_hosts() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
                      31 30 0:27 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_of(hybrid, "cgroup2"),
            Some("/sys/fs/cgroup/unified".into())
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(mount_of(unified, "cgroup2"), Some("/sys/fs/cgroup".into()));
        // A container's view: the hierarchy's root is not "/" there.
        let nested = "40 30 0:27 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(mount_of(nested, "cgroup2"), None);
        let escaped = "31 30 0:27 / /mnt/a\\040b rw - cgroup2 cgroup2 rw\n";
        assert_eq!(mount_of(escaped, "cgroup2"), Some("/mnt/a b".into()));
        assert_eq!(mount_of("garbage\n\n - \n", "cgroup2"), None);
    }
}
