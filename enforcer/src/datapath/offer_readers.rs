//! The ClientHello readers (`enforcer-ebpf/src/offer.rs`): loaded beside the packet program
//! that tail-calls them and put in that program's table before it is attached, like the
//! ServerHello readers (`posture_readers.rs`, whose loading this reuses).

use anyhow::{Context, Result};
use aya::{Ebpf, maps::ProgramArray};
use enforcer_common::offer;

use super::posture_readers::load_program;

/// The packet programs that tail-call a ClientHello reader, with their table and reader.
const READERS: [(&str, &str, &str); 4] = [
    ("enforcer_egress", offer::OFFER_TC, offer::READER_TC),
    ("enforcer_ingress_tc", offer::OFFER_TC, offer::READER_TC),
    ("enforcer_ingress", offer::OFFER_XDP, offer::READER_XDP),
    (
        "enforcer_ingress_nofrags",
        offer::OFFER_XDP_NOFRAGS,
        offer::READER_XDP_NOFRAGS,
    ),
];

/// Loads the ClientHello reader of packet program `caller` (once) and puts it in its table; a
/// caller that tail-calls none is left alone.
pub fn load_for(ebpf: &mut Ebpf, caller: &str) -> Result<()> {
    let Some((_, table, reader)) = READERS.iter().find(|(c, _, _)| *c == caller) else {
        return Ok(());
    };
    let fd = load_program(ebpf, reader)
        .with_context(|| format!("loading the ClientHello reader {reader} (for {caller})"))?;
    let map = ebpf
        .map_mut(table)
        .with_context(|| format!("map {table} is missing from the eBPF object"))?;
    let mut table_map: ProgramArray<_> = ProgramArray::try_from(map)?;
    table_map
        .set(0, &fd, 0)
        .with_context(|| format!("putting {reader} in {table}"))?;
    Ok(())
}
