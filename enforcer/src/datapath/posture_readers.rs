//! The ServerHello readers (`enforcer-ebpf/src/posture.rs`): loaded beside the packet program
//! that tail-calls them and put in that program's table, before the packet program is attached,
//! so no ServerHello goes unread. One reader per caller kind: the kernel tail-calls only into
//! programs of the caller's type and, for XDP, of its frags support.

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{CgroupSkb, Program, ProgramFd, SchedClassifier, Xdp},
};
use enforcer_common::posture;

/// The packet programs that tail-call a reader, by name, with their table and reader.
const READERS: [(&str, &str, &str); 5] = [
    ("enforcer_egress", posture::POSTURE_TC, posture::READER_TC),
    (
        "enforcer_ingress_tc",
        posture::POSTURE_TC,
        posture::READER_TC,
    ),
    (
        "enforcer_ingress",
        posture::POSTURE_XDP,
        posture::READER_XDP,
    ),
    (
        "enforcer_ingress_nofrags",
        posture::POSTURE_XDP_NOFRAGS,
        posture::READER_XDP_NOFRAGS,
    ),
    ("enforcer_cg_judge", posture::POSTURE_CG, posture::READER_CG),
];

/// Loads the reader of packet program `caller` (once: a loaded one is reused) and puts it in
/// its table.
pub fn load_for(ebpf: &mut Ebpf, caller: &str) -> Result<()> {
    let Some((_, table, reader)) = READERS.iter().find(|(c, _, _)| *c == caller) else {
        bail!("{caller} tail-calls no ServerHello reader");
    };
    install(ebpf, table, reader, "ServerHello", caller)
}

/// Loads program `reader` (once) and puts it in slot 0 of tail-call table `table`; `what` and
/// `caller` name it in errors. Shared with the ClientHello readers (`offer_readers.rs`).
pub fn install(ebpf: &mut Ebpf, table: &str, reader: &str, what: &str, caller: &str) -> Result<()> {
    let fd = load_program(ebpf, reader)
        .with_context(|| format!("loading the {what} reader {reader} (for {caller})"))?;
    let map = ebpf
        .map_mut(table)
        .with_context(|| format!("map {table} is missing from the eBPF object"))?;
    let mut table_map: ProgramArray<_> = ProgramArray::try_from(map)?;
    table_map
        .set(0, &fd, 0)
        .with_context(|| format!("putting {reader} in {table}"))?;
    Ok(())
}

/// Loads classifier, XDP or cgroup_skb program `name` (once: a loaded one is reused); its fd.
pub fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<ProgramFd> {
    let Some(program) = ebpf.program_mut(name) else {
        bail!("program {name} is missing from the eBPF object");
    };
    let loaded = match program {
        Program::SchedClassifier(p) => load_once(p, SchedClassifier::load, SchedClassifier::fd)?,
        Program::Xdp(p) => load_once(p, Xdp::load, Xdp::fd)?,
        Program::CgroupSkb(p) => load_once(p, CgroupSkb::load, CgroupSkb::fd)?,
        _ => bail!("program {name} is not a classifier, XDP or cgroup_skb program"),
    };
    Ok(loaded)
}

fn load_once<P>(
    program: &mut P,
    load: fn(&mut P) -> Result<(), aya::programs::ProgramError>,
    fd: fn(&P) -> Result<&ProgramFd, aya::programs::ProgramError>,
) -> Result<ProgramFd> {
    if fd(program).is_err() {
        load(program)?;
    }
    Ok(fd(program)?.try_clone()?)
}
